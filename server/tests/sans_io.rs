//! The shard's core stays socket-free: no source file under `server/src/core/` names a system
//! call, a descriptor, a socket, a channel, a thread or a clock (addresses, as plain data, it
//! may name). The driver (`driver/`, with
//! `mesh.rs`) does all of that and feeds the core events; this test fails the build of a core
//! that starts doing it itself.

use std::path::Path;

/// What the core may not name, and why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("libc::", "system calls"),
    ("std::os::", "descriptors"),
    ("RawFd", "descriptors"),
    ("OwnedFd", "descriptors"),
    ("TcpStream", "sockets"),
    ("TcpListener", "sockets"),
    ("UdpSocket", "sockets"),
    ("socket2", "sockets"),
    ("std::fs", "files"),
    ("std::thread", "threads"),
    ("std::sync::mpsc", "channels"),
    ("flume", "channels"),
    ("crossbeam", "channels"),
    ("MeshPort", "the mesh's channels and eventfds"),
    ("MeshShared", "the mesh's channels and eventfds"),
    ("crate::mesh", "the mesh's channels and eventfds"),
    ("crate::control", "control requests carry reply channels"),
    ("io_uring", "the ring"),
    ("glommio", "the executor"),
    ("tokio", "the executor"),
    ("Instant::now", "the clock (time comes in as `Now`)"),
    ("SystemTime", "the clock (time comes in as `Now`)"),
];

#[test]
fn the_core_makes_no_system_call_and_holds_no_channel() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    collect(&dir, &mut files);
    assert!(
        files.len() > 10,
        "the core's files were not found in {dir:?}"
    );
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (name, why) in FORBIDDEN {
                if code.contains(name) {
                    found.push(format!("{}:{}: {name} ({why})", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the core is no longer sans-IO:\n{}",
        found.join("\n")
    );
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}
