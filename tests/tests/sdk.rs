//! The C ABI (`sdk/`) proven from three languages against a live server: a C program on the
//! driver level, a Java program through JNA in the shape of an Android app, and a Python
//! program through ctypes on the state-machine level with sockets of its own. Each runs the
//! same script: log in, receive a push and acknowledge it, send a message up to the backend
//! and get its answer, survive a server restart, receive one more push.
//!
//! The toolchains (a C compiler, `javac` with JNA, `python3`) are installed by `.ci/run`; a
//! missing one fails the test with what to install, it does not skip it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use tether_proto::{Frame, UpstreamAnswer};
use tether_tests::{expiry, http, minter, sdk_library_dir, Server, Settings};

/// How long one step of the script may take (a reconnect after a restart backs off a few s).
const STEP: Duration = Duration::from_secs(60);

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A program's stdout, a line at a time.
struct Lines {
    rx: Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(child: &mut Child) -> Lines {
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line starting with `prefix`; returns it.
    fn expect(&mut self, prefix: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("  program: {line}");
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return Ok(line);
                    }
                    if line.starts_with("error") || line.starts_with("stopped") {
                        bail!("waiting for {prefix:?}, the program said {line:?}");
                    }
                }
                Err(_) => bail!(
                    "no line starting with {prefix:?} within {STEP:?}; lines so far: {:?}",
                    self.seen
                ),
            }
        }
    }
}

/// Pushes `payload` to `user` asking for an acknowledgement; the answer must be `acked`.
fn push_acked(server: &Server, user: &str, payload: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({"user": user, "payload": payload, "want_ack": true});
    let r = http::post(server.api, "/api/push", &[], &body)?.json();
    let outcome = &r["results"][0]["outcome"];
    if outcome != "acked" {
        bail!("push {payload:?} to {user}: {r}");
    }
    Ok(())
}

/// Runs `program` (already told where the SDK is) through the script, as `user`.
fn run_script(language: &str, mut program: Command) -> anyhow::Result<()> {
    let user = format!("sdk-{language}");
    let device = "phone";
    let mut server = Server::start(&Settings::default())?;
    let addr = server.addr;
    let mut backend = server.upstream_backend("chat")?;
    let token = minter().client(&user, device, expiry())?;
    let mut child = program
        .env("TETHER_SERVER", addr.to_string())
        .env("TETHER_USER", &user)
        .env("TETHER_DEVICE", device)
        .env("TETHER_TOKEN", token)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the {language} program"))?;
    let result = (|| -> anyhow::Result<()> {
        let mut lines = Lines::new(&mut child);
        // A call with a missing user is refused with a code and a sentence.
        let refused = lines.expect("refused")?;
        assert!(
            refused.contains("-1") && refused.contains("options.user"),
            "{refused}"
        );
        lines.expect("online restarted=0")?;

        // A push, acknowledged by the program: the API's answer says `acked`.
        push_acked(&server, &user, "first")?;
        lines.expect("push first")?;

        // The program sends one message up after the first push; the backend answers it.
        let deliver = loop {
            match backend.recv()? {
                Frame::UpstreamDeliver(d) => break d,
                _ => continue,
            }
        };
        assert_eq!(
            (
                deliver.user.as_str(),
                deliver.device.as_str(),
                deliver.client_id
            ),
            (user.as_str(), device, 1)
        );
        assert_eq!(
            deliver.payload,
            Bytes::from(format!("hello backend from {language}"))
        );
        backend.send(&Frame::UpstreamAnswer(UpstreamAnswer {
            id: deliver.id,
            accepted: true,
            reply: Bytes::from_static(b"seq=1"),
        }))?;
        lines.expect("upstream 1 accepted seq=1")?;

        // The server restarts on the same address: the program notices, comes back by itself.
        server.kill();
        lines.expect("offline")?;
        let settings = Settings {
            listen: addr,
            ..Settings::default()
        };
        server = Server::start(&settings)?;
        lines.expect("online restarted=1")?;
        push_acked(&server, &user, "second")?;
        lines.expect("push second")?;
        lines.expect("done")?;
        Ok(())
    })();
    let status = wait(&mut child, Duration::from_secs(30));
    result?;
    match status {
        Some(s) if s.success() => Ok(()),
        other => bail!("the {language} program ended with {other:?}"),
    }
}

/// Waits up to `limit` for `child` to exit; kills it after that.
fn wait(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Runs `cmd` to completion; fails with its output when it fails.
fn build_step(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| {
        format!("{what}: could not run {cmd:?} (is it installed? .ci/run installs it)")
    })?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[test]
fn a_c_program_logs_in_receives_acknowledges_sends_up_and_survives_a_restart() {
    let lib = sdk_library_dir().expect("building the SDK");
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("chat");
    let root = root();
    build_step(
        "compiling the C example",
        Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&exe)
            .arg(root.join("sdk/examples/c/chat.c"))
            .arg("-I")
            .arg(root.join("sdk/include"))
            .arg(lib.join("libtether_sdk.a"))
            .args(["-lpthread", "-ldl", "-lm"]),
    )
    .unwrap();
    run_script("c", Command::new(&exe)).unwrap();
}

/// Where Debian's `libjna-java` puts JNA (`TETHER_JNA_JAR` overrides it).
fn jna_jar() -> PathBuf {
    std::env::var_os("TETHER_JNA_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/java/jna.jar"))
}

#[test]
fn a_java_program_through_jna_runs_the_same_steps_as_an_android_app() {
    let lib = sdk_library_dir().expect("building the SDK");
    let jna = jna_jar();
    assert!(
        jna.exists(),
        "{} is missing: install Debian's libjna-java (.ci/run does)",
        jna.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let root = root();
    build_step(
        "compiling the Java example",
        Command::new("javac")
            .arg("-cp")
            .arg(&jna)
            .arg("-d")
            .arg(dir.path())
            .arg(root.join("sdk/examples/java/TetherClient.java"))
            .arg(root.join("sdk/examples/java/ChatDemo.java")),
    )
    .unwrap();
    let mut java = Command::new("java");
    java.arg("-cp")
        .arg(format!("{}:{}", dir.path().display(), jna.display()))
        .arg(format!("-Djna.library.path={}", lib.display()))
        .arg("ChatDemo");
    run_script("java", java).unwrap();
}

#[test]
fn a_python_program_through_ctypes_owns_its_sockets_and_runs_the_same_steps() {
    let lib = sdk_library_dir().expect("building the SDK");
    let mut python = Command::new("python3");
    python
        .arg(root().join("sdk/examples/python/chat.py"))
        .env("TETHER_LIB", lib.join("libtether_sdk.so"));
    run_script("python", python).unwrap();
}
