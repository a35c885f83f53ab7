//! `tether-loadgen`: parses the command line and runs a scenario (or, re-executed by itself
//! with the hidden `worker` subcommand, one worker process).

use std::time::Duration;

use clap::Parser;
use tether_loadgen::cli::{Cli, Cmd, Plan};
use tether_loadgen::state_bench::{self, StateBench};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Worker => tether_loadgen::worker::run(),
        Cmd::State {
            sessions,
            interval,
            duration,
            tick,
            json,
        } => {
            let ms = |d: Duration| d.as_millis() as u64;
            let bench = StateBench {
                sessions,
                interval_ms: u32::try_from(ms(interval))?,
                duration_ms: ms(duration),
                tick_ms: ms(tick),
            };
            let report = state_bench::run(&bench, |line| eprintln!("{line}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        cmd => {
            let plan = Plan::from_cmd(cmd)?.expect("scenario subcommands have a plan");
            scenario(plan)
        }
    }
}

fn scenario(plan: Plan) -> anyhow::Result<()> {
    let json = plan.common.json;
    let out = plan.common.out.clone();
    let summary = tether_loadgen::run::run(plan)?;
    if let Some(dir) = &out {
        summary.write_files(dir)?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.table());
        if let Some(dir) = &out {
            println!("\n  files: {}", dir.display());
        }
    }
    Ok(())
}
