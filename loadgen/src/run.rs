//! The parent process: splits the run into worker processes, drives them through the phases
//! (ramp, settle, load, stop), samples the server between phases, and builds the summary.
//!
//! Phases, and the server samples taken at each boundary:
//! `before` → ramp (progress bar) → settle → `ramped` → `load start` → load → `load end` →
//! stop → settle → `after close`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::Plan;
use crate::during::DuringLoad;
use crate::job::{Command, Job, Progress, WorkerMsg, WorkerReport};
use crate::net;
use crate::procfs::{self, ServerSample};
use crate::report::{RunFacts, Summary, SATURATED_PCT};
use crate::resolution::Instruments;
use crate::stats::LoadCounters;

/// Files a worker keeps free beyond its connections (stdio, epoll, the binary, slack).
const FD_RESERVE: u64 = 200;

/// One worker process as the parent sees it.
struct WorkerHandle {
    /// The process.
    child: Child,
    /// Where commands go.
    stdin: ChildStdin,
    /// Latest progress.
    progress: Progress,
    /// Whether it finished its ramp.
    ramped: bool,
    /// Its counts of the load phase, once done.
    load_done: Option<LoadCounters>,
    /// Its final report, once stopped.
    report: Option<WorkerReport>,
    /// Whether it already got a saturation warning.
    warned: bool,
    /// Whether its stdout closed.
    gone: bool,
}

/// A worker's message, or `None` when its stdout closed.
type Inbox = Receiver<(usize, Option<WorkerMsg>)>;

/// The parent's state during a run.
struct Run {
    plan: Plan,
    workers: Vec<WorkerHandle>,
    inbox: Inbox,
    started: Instant,
    timeline: Vec<(f64, u64)>,
    samples: Vec<ServerSample>,
    warnings: Vec<String>,
    bar: ProgressBar,
    /// When the load phase began, for its progress bar.
    load_started: Option<Instant>,
}

/// How the users of a run are split: (first user, users) per worker.
pub fn split(connections: u32, per_worker: u32) -> Vec<(u32, u32)> {
    let workers = connections.div_ceil(per_worker.max(1)).max(1);
    let base = connections / workers;
    let extra = connections % workers;
    let mut first = 0;
    (0..workers)
        .map(|i| {
            let n = base + u32::from(i < extra);
            let share = (first, n);
            first += n;
            share
        })
        .collect()
}

/// Runs the plan and returns its summary.
pub fn run(plan: Plan) -> anyhow::Result<Summary> {
    let c = &plan.common;
    let hard = net::nofile_hard();
    let per_worker = (c.per_worker as u64).min(hard.saturating_sub(FD_RESERVE).max(1)) as u32;
    let shares = split(c.connections, per_worker);
    let loopback = plan.servers.iter().all(|s| s.ip().is_loopback());
    let sources = if loopback && c.sources > 0 {
        net::loopback_sources(c.sources)
    } else {
        Vec::new()
    };
    let mut warnings = Vec::new();
    if !loopback && c.sources > 0 {
        warnings.push("servers are not on loopback: source addresses left to the kernel".into());
    }
    let n_workers = shares.len() as f64;
    let exe = std::env::current_exe().context("finding this executable")?;
    let (tx, inbox) = mpsc::channel();
    let mut workers = Vec::new();
    let n = shares.len() as u32;
    for (i, &(first_user, users)) in shares.iter().enumerate() {
        // Upstream sinks go round the workers: worker i holds sinks i, i + n, i + 2n, ...
        let sinks = plan.backends / n + u32::from((i as u32) < plan.backends % n);
        let job = Job {
            worker: i as u32,
            scenario: plan.scenario,
            protocol: c.protocol,
            shape: plan.shape,
            rounds: plan.rounds,
            servers: plan.servers.clone(),
            sources: sources.clone(),
            first_user,
            users,
            total_users: c.connections,
            user_prefix: c.user_prefix.clone(),
            device: "d0".into(),
            secret: c.secret.clone(),
            backend_secret: c.backend_secret.clone(),
            token_ttl_s: 24 * 3600,
            backend_service: format!("loadgen-backend-{i}"),
            sinks,
            connect_rate: c.rate / n_workers,
            interval_ms: c.interval.as_millis() as u32,
            connect_timeout_ms: c.connect_timeout.as_millis() as u64,
            drain_ms: c.connect_timeout.as_millis() as u64,
            load_rate: plan.load_rate / n_workers,
            payload: plan.payload,
            tls: plan.tls.clone(),
            ws: plan.ws.clone(),
            max_frame: tether_proto::DEFAULT_MAX_FRAME,
            max_inflight: plan.max_inflight,
            reconnect: c.reconnect,
        };
        let mut child = Process::new(&exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a worker process")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        serde_json::to_writer(&mut stdin, &job)?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<WorkerMsg>(&line) {
                    Ok(msg) => {
                        if tx.send((i, Some(msg))).is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("worker {i}: unreadable message: {e}"),
                }
            }
            let _ = tx.send((i, None));
        });
        workers.push(WorkerHandle {
            child,
            stdin,
            progress: Progress::default(),
            ramped: false,
            load_done: None,
            report: None,
            warned: false,
            gone: false,
        });
    }
    let bar = if c.quiet {
        ProgressBar::hidden()
    } else {
        let b =
            ProgressBar::with_draw_target(Some(c.connections as u64), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template(
                "{prefix:>6} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        b
    };
    let mut run = Run {
        plan,
        workers,
        inbox,
        started: Instant::now(),
        timeline: Vec::new(),
        samples: Vec::new(),
        warnings,
        bar,
        load_started: None,
    };
    let result = run.phases(sources.len());
    if result.is_err() {
        for w in &mut run.workers {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
    run.bar.finish_and_clear();
    result
}

impl Run {
    fn phases(&mut self, n_sources: usize) -> anyhow::Result<Summary> {
        let c = self.plan.common.clone();
        self.sample("before");
        self.bar.set_prefix("ramp");
        let ramp_limit = Duration::from_secs_f64(c.connections as f64 / c.rate)
            + c.connect_timeout * 2
            + Duration::from_secs(30);
        self.wait("the ramp", ramp_limit, |w| w.ramped)?;
        let ramp_s = self.started.elapsed().as_secs_f64();
        self.settle(c.settle)?;
        let online_after_ramp = self.online();
        self.sample("ramped");

        self.bar.set_prefix("load");
        self.bar.set_length(self.plan.load_for.as_secs().max(1));
        self.bar.set_position(0);
        let load_started = Instant::now();
        self.load_started = Some(load_started);
        self.sample("load start");
        let during = match &c.during_load {
            Some(cmd) => Some(DuringLoad::start(cmd, c.server_pid)?),
            None => None,
        };
        self.command(&Command::Load {
            duration_ms: self.plan.load_for.as_millis() as u64,
        })?;
        let load_limit = self.plan.load_for + c.connect_timeout * 2 + Duration::from_secs(30);
        let waited = self.wait("the load phase", load_limit, |w| w.load_done.is_some());
        let load_s = load_started.elapsed().as_secs_f64();
        self.sample("load end");
        if let Some(warning) = during.and_then(DuringLoad::stop) {
            self.warnings.push(warning);
        }
        waited?;
        let online_after_load = self.online();
        let mut load = LoadCounters::default();
        for w in &self.workers {
            load.add(w.load_done.as_ref().expect("waited for every worker"));
        }

        self.bar.set_prefix("stop");
        self.command(&Command::Stop)?;
        self.wait("the workers' reports", Duration::from_secs(60), |w| {
            w.report.is_some()
        })?;
        for w in &mut self.workers {
            let status = w.child.wait()?;
            if !status.success() {
                self.warnings.push(format!("a worker exited with {status}"));
            }
        }
        if self.plan.common.server_pid.is_some() {
            std::thread::sleep(c.settle);
        }
        self.sample("after close");
        self.bar.finish_and_clear();

        let reports: Vec<WorkerReport> = self
            .workers
            .iter_mut()
            .filter_map(|w| w.report.take())
            .collect();
        if self.plan.common.server_pid.is_none() {
            self.warnings
                .push("no --server-pid: no server memory or CPU figures".into());
        }
        let facts = RunFacts {
            scenario: self.plan.scenario.name().into(),
            protocol: c.protocol.name().into(),
            tls: self.plan.tls.is_some(),
            websocket: self.plan.ws.is_some(),
            shape: self.plan.shape.name().into(),
            servers: self.plan.servers.iter().map(|s| s.to_string()).collect(),
            connections: c.connections,
            sources: n_sources,
            interval_ms: c.interval.as_millis() as u64,
            ramp_s,
            online_after_ramp,
            online_after_load,
            load_s,
            load,
            timeline: std::mem::take(&mut self.timeline),
            server_pid: c.server_pid,
            samples: std::mem::take(&mut self.samples),
            warnings: std::mem::take(&mut self.warnings),
        };
        Ok(Summary::build(facts, &reports, Instruments::here()))
    }

    fn online(&self) -> u64 {
        self.workers.iter().map(|w| w.progress.online).sum()
    }

    /// Takes a server sample when a pid was given; a failure becomes a warning.
    fn sample(&mut self, label: &str) {
        let Some(pid) = self.plan.common.server_pid else {
            return;
        };
        match procfs::sample(pid, label, self.started.elapsed().as_secs_f64()) {
            Ok(s) => self.samples.push(s),
            Err(e) => self
                .warnings
                .push(format!("server sample {label:?} failed: {e}")),
        }
    }

    fn command(&mut self, cmd: &Command) -> anyhow::Result<()> {
        let line = serde_json::to_string(cmd)? + "\n";
        for (i, w) in self.workers.iter_mut().enumerate() {
            w.stdin
                .write_all(line.as_bytes())
                .and_then(|_| w.stdin.flush())
                .with_context(|| format!("sending a command to worker {i}"))?;
        }
        Ok(())
    }

    /// Handles worker messages for `d` (used to let the server settle while staying current).
    fn settle(&mut self, d: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.pump(until - Instant::now())?;
        }
        Ok(())
    }

    /// Handles worker messages until `done` holds for every worker, or fails after `limit`.
    fn wait(
        &mut self,
        what: &str,
        limit: Duration,
        done: impl Fn(&WorkerHandle) -> bool,
    ) -> anyhow::Result<()> {
        let until = Instant::now() + limit;
        while !self.workers.iter().all(&done) {
            let now = Instant::now();
            if now >= until {
                bail!("{what} did not finish within {:.0} s", limit.as_secs_f64());
            }
            self.pump((until - now).min(Duration::from_millis(250)))?;
        }
        Ok(())
    }

    /// Receives messages for up to `d` and updates the state and the progress bar.
    fn pump(&mut self, d: Duration) -> anyhow::Result<()> {
        let (i, msg) = match self.inbox.recv_timeout(d) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => return Ok(()),
            Err(RecvTimeoutError::Disconnected) => bail!("every worker is gone"),
        };
        let w = &mut self.workers[i];
        match msg {
            None => {
                w.gone = true;
                if w.report.is_none() {
                    bail!("worker {i} ended without a report (see its messages above)");
                }
            }
            Some(WorkerMsg::Progress(p)) => {
                if p.cpu_pct > SATURATED_PCT && !w.warned {
                    w.warned = true;
                    self.bar.println(format!(
                        "warning: worker {i} uses {:.0}% of a core: the loadgen may be the bottleneck",
                        p.cpu_pct
                    ));
                }
                w.progress = p;
                self.on_progress();
            }
            Some(WorkerMsg::Ramped) => w.ramped = true,
            Some(WorkerMsg::LoadDone(c)) => w.load_done = Some(c),
            Some(WorkerMsg::Final(r)) => w.report = Some(*r),
        }
        Ok(())
    }

    fn on_progress(&mut self) {
        let t = self.started.elapsed().as_secs_f64();
        let online = self.online();
        let due = match self.timeline.last() {
            Some(&(last, _)) => t - last >= 0.1,
            None => true,
        };
        if due {
            self.timeline.push((t, online));
        }
        let failed: u64 = self.workers.iter().map(|w| w.progress.failed).sum();
        let pongs: u64 = self.workers.iter().map(|w| w.progress.pongs).sum();
        let delivered: u64 = self.workers.iter().map(|w| w.progress.delivered).sum();
        let busy = self
            .workers
            .iter()
            .map(|w| w.progress.cpu_pct)
            .fold(0.0, f64::max);
        if let Some(started) = self.load_started {
            let len = self.bar.length().unwrap_or(0);
            self.bar.set_position(started.elapsed().as_secs().min(len));
        } else {
            self.bar.set_position(online);
        }
        self.bar.set_message(format!(
            "online {online} failed {failed} pongs {pongs} delivered {delivered} busiest worker {busy:.0}% cpu"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_every_user_once() {
        let shares = split(100_000, 15_000);
        assert_eq!(shares.len(), 7);
        assert!(shares.iter().all(|&(_, n)| n <= 15_000));
        let mut next = 0;
        for &(first, n) in &shares {
            assert_eq!(first, next);
            next += n;
        }
        assert_eq!(next, 100_000);
        assert_eq!(split(10, 15_000), vec![(0, 10)]);
        assert_eq!(split(0, 15_000), vec![(0, 0)]);
    }
}
