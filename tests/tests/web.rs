//! The browser client (`web/`) against the real server: starts a server with a WebSocket
//! listener and runs `node --test web/test/` with its addresses, so the Node live tests (login,
//! heartbeat, a push through the HTTP API and its ack, an upstream message, a kick, a refused
//! text message) and the demo page in headless Chromium run with the rest of the suite.
//!
//! Node, Chromium and chromedriver are required: a machine without them fails this test with
//! a message saying what to install, it does not skip it (`.ci/run` installs them).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use tether_tests::{Server, Settings, BACKEND_SECRET, SECRET};

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
    assert!(
        root.join("web/node_modules/ws/package.json").is_file(),
        "web/node_modules is missing: run `npm ci --prefix web` (the tests' fake server uses ws)"
    );

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
    let out = Command::new(&node)
        .arg("--test")
        .arg("web/test/")
        .current_dir(&root)
        .env("TETHER_LIVE", "1")
        .env("TETHER_WS_URL", format!("ws://{ws}/tether"))
        .env("TETHER_API", format!("http://{}", server.api))
        .env("TETHER_TCP", server.addr.to_string())
        .env("TETHER_SECRET", SECRET)
        .env("TETHER_BACKEND_SECRET", BACKEND_SECRET)
        .env("TETHER_PAGE_PORT", page_port.to_string())
        .env("TETHER_CHROMIUM", &chromium)
        .env("TETHER_CHROMEDRIVER", &chromedriver)
        .env("TETHER_SCREENSHOT", &screenshot)
        .output()
        .expect("running node --test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test web/test/ failed ({}):\n{}\n{}\n--- server log ---\n{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr),
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
