//! `tether-loadgen`: parses the command line and runs a scenario (or, re-executed by itself
//! with the hidden `worker` subcommand, one worker process).

use clap::Parser;
use tether_loadgen::cli::{Cli, Plan};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Some(plan) = Plan::from_cmd(cli.command)? else {
        return tether_loadgen::worker::run();
    };
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
