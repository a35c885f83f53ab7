//! `tether check`: is this box ready to hold the configured number of connections?
//!
//! It reads the live kernel settings, process limits, memory and NICs (from `/proc` and
//! `/sys`, or from fake trees given with `--proc-root` / `--sys-root`), judges each against
//! what the target needs, and prints one line per check with PASS / WARN / FAIL and the exact
//! command that fixes it. It needs no privileges: a file it cannot read becomes a warning
//! that says which file and why. The exit code is non-zero when anything fails.
//!
//! - [`probes`] reads values (and nothing else),
//! - [`rules`] holds the single table of checks and their thresholds (tuning.md documents
//!   every key of that table),
//! - [`report`] renders the findings as a table or JSON.

pub mod probes;
pub mod report;
pub mod rules;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::config::Config;
use probes::Probe;
use report::Report;
use rules::RULES;

/// Command-line arguments of `tether check`.
#[derive(clap::Args, Clone, Debug)]
pub struct CheckArgs {
    /// Directory holding the `proc` tree to read (a fake tree in tests).
    #[arg(long, default_value = "/")]
    pub proc_root: PathBuf,
    /// Directory holding the `sys` tree to read.
    #[arg(long, default_value = "/")]
    pub sys_root: PathBuf,
    /// Connections the box must hold (default: server.max_connections of the configuration).
    #[arg(long, value_name = "N")]
    pub connections: Option<u64>,
    /// Print the findings as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Per-socket TCP keepalive the server sets when it is enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle seconds before the first probe.
    pub idle_s: u32,
    /// Seconds between probes.
    pub interval_s: u32,
    /// Unanswered probes before the kernel drops the connection.
    pub count: u32,
}

/// What the box is checked for: the parts of the configuration the rules need.
#[derive(Clone, Debug)]
pub struct CheckInput {
    /// Connections the box must hold.
    pub connections: u64,
    /// Shards the server runs (resolved: never 0).
    pub shards: u64,
    /// Addresses the server listens on.
    pub listeners: Vec<SocketAddr>,
    /// The longest a live connection may stay silent before the server closes it: the
    /// largest lease times the lease multiplier plus the grace, in milliseconds.
    pub max_idle_ms: u64,
    /// Keepalive the server sets on each socket, when enabled.
    pub keepalive: Option<Keepalive>,
    /// Submission-queue entries of each shard's io_uring.
    pub ring_entries: u32,
}

impl CheckInput {
    /// The input for `cfg`, with the target from `args` and, when the configuration says
    /// "one shard per CPU", the CPUs of the probed box.
    pub fn new(args: &CheckArgs, cfg: &Config, probe: &Probe) -> CheckInput {
        let shards = match cfg.server.shards {
            0 => probe
                .online_cpus()
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or(cfg.shard_count() as u64),
            n => n as u64,
        };
        let s = &cfg.session;
        let max_idle_ms = u64::from(s.max_lease_ms) * u64::from(s.lease_multiplier_pct) / 100
            + u64::from(s.grace_ms);
        let k = &cfg.keepalive;
        CheckInput {
            connections: args
                .connections
                .unwrap_or(cfg.server.max_connections as u64),
            shards,
            listeners: vec![cfg.server.listen],
            max_idle_ms,
            keepalive: k.enabled.then_some(Keepalive {
                idle_s: k.idle_s,
                interval_s: k.interval_s,
                count: k.count,
            }),
            ring_entries: cfg.server.ring_entries,
        }
    }
}

/// Applies every rule to the box seen through `probe`.
pub fn evaluate(probe: &Probe, input: &CheckInput) -> Report {
    let findings = RULES
        .iter()
        .map(|rule| {
            let mut finding = (rule.eval)(rule.key, probe, input);
            finding.check = rule.key;
            finding
        })
        .collect();
    Report {
        connections: input.connections,
        shards: input.shards,
        listeners: input.listeners.iter().map(|a| a.to_string()).collect(),
        findings,
    }
}

/// Runs `tether check`: prints the report and returns the process exit code (1 when any
/// check fails, else 0).
pub fn run(args: &CheckArgs, cfg: &Config) -> anyhow::Result<i32> {
    let probe = Probe::new(&args.proc_root, &args.sys_root);
    let input = CheckInput::new(args, cfg, &probe);
    let report = evaluate(&probe, &input);
    let text = if args.json {
        report.to_json() + "\n"
    } else {
        report.to_text()
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("writing the report")?;
    Ok(report.exit_code())
}
