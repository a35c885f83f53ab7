//! A worker's conversation with the parent: progress and phase reports on stdout, commands
//! on stdin, and the final report.

use std::io;

use anyhow::Context;

use super::{emit, LoadPhase, Worker, REPORT_EVERY_NS};
use crate::clock::now_ns;
use crate::conn::State;
use crate::job::{Command, Progress, Scenario, Shape, WorkerMsg, WorkerReport};
use crate::net;
use crate::rate::Bucket;

impl Worker {
    pub(super) fn report_step(&mut self, now: u64) -> io::Result<()> {
        if !self.ramped_sent
            && self.ramp_next >= self.job.users as usize
            && self.settled >= self.conns.len()
        {
            self.ramped_sent = true;
            // Fresh counts first, so the parent's view matches the moment of the ramp's end.
            self.emit_progress(now)?;
            return emit(&WorkerMsg::Ramped);
        }
        if now >= self.last_report.0 + REPORT_EVERY_NS {
            self.emit_progress(now)?;
        }
        Ok(())
    }

    pub(super) fn emit_progress(&mut self, now: u64) -> io::Result<()> {
        let (last, last_cpu_us) = self.last_report;
        let wall_ns = now.saturating_sub(last).max(1);
        let (user, system) = crate::procfs::self_cpu_us();
        let cpu_us = user + system;
        // Intervals shorter than 50 ms say little about saturation: keep the last figure.
        // (CPU time, not time outside epoll_wait: on a crowded machine a worker waiting to be
        // scheduled is not itself the bottleneck; its lateness shows in `loop_lag`.)
        if wall_ns >= 50_000_000 {
            self.cpu_pct = 100.0 * (cpu_us - last_cpu_us) as f64 * 1000.0 / wall_ns as f64;
            self.max_cpu_pct = self.max_cpu_pct.max(self.cpu_pct);
        }
        let cpu_pct = self.cpu_pct;
        self.last_report = (now, cpu_us);
        emit(&WorkerMsg::Progress(Progress {
            attempted: self.attempted,
            online: self.online,
            failed: self.failed,
            pongs: self.counters.pongs,
            delivered: self.counters.delivered + self.counters.upstream_received,
            cpu_pct,
        }))
    }

    pub(super) fn on_stdin(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        loop {
            match net::read(0, &mut chunk) {
                Ok(0) => {
                    // The parent is gone: nothing will read our report.
                    self.stopping = true;
                    return Ok(());
                }
                Ok(n) => self.stdin_buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        while let Some(pos) = self.stdin_buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.stdin_buf.drain(..=pos).collect();
            let cmd: Command = serde_json::from_slice(&line).context("parsing a command")?;
            match cmd {
                Command::Load { duration_ms } => {
                    let now = now_ns();
                    let burst = (self.job.scenario == Scenario::Idle
                        && self.job.shape == Shape::Burst)
                        .then(super::load::new_burst);
                    self.load = Some(LoadPhase {
                        end_ns: now + duration_ms * 1_000_000,
                        bucket: Bucket::new(self.job.load_rate, now),
                        start: self.counters,
                        burst,
                    });
                }
                Command::Stop => self.stopping = true,
            }
        }
        Ok(())
    }

    pub(super) fn finish(mut self) -> WorkerReport {
        for slot in 0..self.conns.len() {
            if self.conns[slot].state != State::Free {
                self.close(slot);
            }
        }
        let (user, system) = crate::procfs::self_cpu_us();
        WorkerReport {
            hists: self.hists.export(),
            errors: std::mem::take(&mut self.errors),
            events: std::mem::take(&mut self.events),
            totals: self.counters,
            peak_online: self.peak_online,
            cpu_user_us: user,
            cpu_system_us: system,
            wall_us: (now_ns() - self.started_ns) / 1000,
            max_cpu_pct: self.max_cpu_pct,
            nofile: self.nofile,
        }
    }
}
