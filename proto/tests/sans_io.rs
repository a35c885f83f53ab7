//! `tether-proto` is sans-IO: nothing under `proto/src` reads a clock or touches a socket, so
//! every state machine runs the same on a virtual clock as in the server. This test enforces it
//! by searching the source text.

use std::fs;
use std::path::{Path, PathBuf};

/// Text whose presence means a clock read or socket use.
const FORBIDDEN: &[&str] = &[
    "Instant::now",
    "SystemTime::now",
    "std::net",
    "UdpSocket",
    "TcpStream",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn proto_src_reads_no_clock_and_opens_no_socket() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("codec.rs")),
        "no sources found under {}",
        src.display()
    );
    let mut offences = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (n, line) in text.lines().enumerate() {
            for word in FORBIDDEN {
                if line.contains(word) {
                    offences.push(format!("{}:{}: {word}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "proto/src must stay sans-IO:\n{}",
        offences.join("\n")
    );
}
