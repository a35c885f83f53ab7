//! `--during-load`: a command that runs for the load phase alone (a profiler, typically), so
//! what it records leaves out the ramp and the close.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long the command may take to finish after SIGINT (perf writes its file then).
const STOP_WAIT: Duration = Duration::from_secs(60);

/// The running command, in a process group of its own so that SIGINT reaches whatever
/// `sh -c` started.
pub struct DuringLoad {
    child: Child,
    command: String,
}

impl DuringLoad {
    /// Starts `command` with `sh -c`; SERVER_PID is set when the server's pid is known. Its
    /// standard output goes to the loadgen's stderr, which keeps a `--json` report clean.
    pub fn start(command: &str, server_pid: Option<u32>) -> anyhow::Result<DuringLoad> {
        let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stderr))
            .process_group(0);
        if let Some(pid) = server_pid {
            cmd.env("SERVER_PID", pid.to_string());
        }
        // A loadgen started in the background (nohup, `&` in a script) has SIGINT ignored, and
        // a shell that starts with a signal ignored may not trap it: the stop would go unheard.
        // SAFETY: signal(2) is async-signal-safe, and nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::signal(libc::SIGINT, libc::SIG_DFL) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("--during-load: cannot start sh -c {command:?}"))?;
        Ok(DuringLoad {
            child,
            command: command.to_owned(),
        })
    }

    /// Sends SIGINT to the command's group and waits for it to end: killed after
    /// [`STOP_WAIT`]. Returns a warning for the report when it did not end well.
    pub fn stop(mut self) -> Option<String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(format!(
                "--during-load {:?} ended before the load phase did ({status})",
                self.command
            ));
        }
        self.signal_group(libc::SIGINT);
        let deadline = Instant::now() + STOP_WAIT;
        loop {
            match self.child.try_wait() {
                // A shell reports a child ended by SIGINT as 130; both mean it stopped as asked.
                Ok(Some(status))
                    if status.success()
                        || status.code() == Some(130)
                        || std::os::unix::process::ExitStatusExt::signal(&status)
                            == Some(libc::SIGINT) =>
                {
                    return None
                }
                Ok(Some(status)) => {
                    return Some(format!(
                        "--during-load {:?} ended with {status}",
                        self.command
                    ))
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) | Err(_) => break,
            }
        }
        self.kill();
        Some(format!(
            "--during-load {:?} did not end within {} s of SIGINT and was killed",
            self.command,
            STOP_WAIT.as_secs()
        ))
    }

    /// Signals the group the command leads.
    fn signal_group(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with a negative pid signals the group the child leads; no memory
        // is involved.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), signal) };
    }

    /// Kills the command's group and reaps the command.
    fn kill(&mut self) {
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for DuringLoad {
    /// A run that fails before [`DuringLoad::stop`] leaves no profiler behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_until_stopped_and_sees_the_server_pid() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pid");
        let cmd = format!(
            "echo $SERVER_PID > {}; trap 'exit 0' INT; while :; do sleep 0.05; done",
            out.display()
        );
        let during = DuringLoad::start(&cmd, Some(4242)).unwrap();
        let started = Instant::now();
        while !out.exists() || std::fs::read_to_string(&out).unwrap().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the command never ran"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(during.stop(), None);
        assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "4242");
    }

    #[test]
    fn a_command_dropped_unstopped_is_killed() {
        let during = DuringLoad::start("exec sleep 600", None).unwrap();
        let pid = during.child.id() as libc::pid_t;
        drop(during);
        // SAFETY: signal 0 only asks whether the process exists.
        assert_eq!(
            unsafe { libc::kill(pid, 0) },
            -1,
            "the command outlived its handle"
        );
    }

    #[test]
    fn a_command_that_ends_early_is_reported() {
        let mut during = DuringLoad::start("exit 3", None).unwrap();
        let started = Instant::now();
        while during.child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(10));
        }
        let warning = during.stop().expect("a warning");
        assert!(
            warning.contains("ended before the load phase did"),
            "{warning}"
        );
    }
}
