//! The browser client (`web/`) against the real server: starts a server with a WebSocket
//! listener and runs `node --test web/test/` with its addresses, so the Node live tests (login,
//! heartbeat, a push through the HTTP API and its ack, an upstream message, a kick, a refused
//! text message) and the demo page in headless Chromium run with the rest of the suite.
//!
//! Node, Chromium and chromedriver are required: a machine without them fails this test with
//! a message saying what to install, it does not skip it (`.ci/run` installs them).

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tether_tests::{Server, Settings, BACKEND_SECRET, SECRET};

/// The longest the whole Node run may take (it takes seconds).
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// The workspace's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The first of `names` found on `PATH`.
fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// A port the kernel considers free now, for the page's static server: the server's
/// `allowed_origins` must name the page's origin before the page exists.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn the_browser_client_and_the_demo_page_work_against_the_server() {
    let root = root();
    let node = which(&["node", "nodejs"]).expect(
        "node is not installed: the web client's tests need Node.js 20 or newer \
         (apt-get install nodejs)",
    );
    let version = Command::new(&node)
        .arg("--version")
        .output()
        .expect("running node --version");
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "node {version} is too old: the web client's tests need Node.js 20 or newer"
    );
    let chromium = which(&["chromium", "chromium-browser", "google-chrome"]).expect(
        "chromium is not installed: the demo page's test needs a headless browser \
         (apt-get install chromium chromium-driver)",
    );
    let chromedriver = which(&["chromedriver"]).expect(
        "chromedriver is not installed: the demo page's test drives Chromium with it \
         (apt-get install chromium-driver)",
    );
    // The tests' fake server uses `ws`, a development dependency pinned by
    // web/package-lock.json: installed here when missing, so the suite stays one command.
    if !root.join("web/node_modules/ws/package.json").is_file() {
        let status = Command::new("npm")
            .args(["ci", "--prefix", "web", "--no-audit", "--no-fund"])
            .current_dir(&root)
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "web/node_modules is missing and `npm ci --prefix web` failed ({status:?}): \
             the tests' fake server needs the ws package (apt-get install npm)"
        );
    }

    let page_port = free_port();
    let server = Server::start(&Settings {
        extra: format!(
            "[websocket]\nlisten = \"127.0.0.1:0\"\npath = \"/tether\"\n\
             allowed_origins = [\"http://127.0.0.1:{page_port}\"]\n"
        ),
        ..Settings::default()
    })
    .unwrap();
    let ws = server
        .websocket
        .expect("the server printed its WebSocket address");
    // A second server for the drain test, which ends it.
    let draining = Server::start(&Settings {
        extra: "[websocket]\nlisten = \"127.0.0.1:0\"\n".into(),
        drain_ms: 3_000,
        ..Settings::default()
    })
    .unwrap();
    let draining_ws = draining
        .websocket
        .expect("the server printed its WebSocket address");
    // The screenshot goes to the target directory; TETHER_BLESS_SCREENSHOT=1 writes the one
    // the README shows instead.
    let screenshot = if std::env::var_os("TETHER_BLESS_SCREENSHOT").is_some() {
        root.join("docs/web-demo.png")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-demo.png")
    };
    if !screenshot.starts_with(root.join("docs")) {
        // A screenshot left by an earlier run must not pass for this run's.
        let _ = std::fs::remove_file(&screenshot);
    }
    // The output goes to files, so a run that hangs can be ended and still shown.
    let logs = tempfile::tempdir().expect("a temporary directory");
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut child = Command::new(&node)
        .arg("--test")
        .arg("--test-timeout=60000")
        .arg("web/test/")
        .current_dir(&root)
        .env("TETHER_LIVE", "1")
        .env("TETHER_WS_URL", format!("ws://{ws}/tether"))
        .env("TETHER_API", format!("http://{}", server.api))
        .env("TETHER_TCP", server.addr.to_string())
        .env("TETHER_SECRET", SECRET)
        .env("TETHER_BACKEND_SECRET", BACKEND_SECRET)
        .env("TETHER_PAGE_PORT", page_port.to_string())
        .env("TETHER_DRAIN_WS_URL", format!("ws://{draining_ws}/tether"))
        .env("TETHER_DRAIN_API", format!("http://{}", draining.api))
        .env("TETHER_CHROMIUM", &chromium)
        .env("TETHER_CHROMEDRIVER", &chromedriver)
        .env("TETHER_SCREENSHOT", &screenshot)
        // Its own process group, so a run that hangs ends with its browser and driver.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("a file for node's output"))
        .stderr(File::create(&err_path).expect("a file for node's errors"))
        .spawn()
        .expect("running node --test");
    let until = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for node") {
            break Some(status);
        }
        if Instant::now() > until {
            // SAFETY: kill(2) on the process group of our own child.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read(&out_path).unwrap_or_default();
    let err = std::fs::read(&err_path).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&out);
    let Some(status) = status else {
        panic!(
            "node --test web/test/ did not end within {RUN_LIMIT:?}:\n{stdout}\n{}",
            String::from_utf8_lossy(&err)
        );
    };
    assert!(
        status.success(),
        "node --test web/test/ failed ({status}):\n{stdout}\n{}\n--- server log ---\n{}",
        String::from_utf8_lossy(&err),
        server.log()
    );
    // The summary, and the tests marked todo (known gaps, which do not fail the run).
    for line in stdout.lines() {
        if (line.starts_with("# ") && !line.starts_with("# Subtest")) || line.contains("# TODO") {
            eprintln!("{line}");
        }
    }
    // Every live test ran: none was skipped for want of the server or the browser.
    assert!(
        stdout.lines().any(|l| l == "# skipped 0"),
        "some web tests were skipped:\n{stdout}"
    );
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );
}
