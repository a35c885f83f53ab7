//! `tether-loadgen`: parses the command line and runs a scenario (or, re-executed by itself
//! with the hidden `worker` subcommand, one worker process).

use clap::Parser;
use tether_loadgen::cli::{Cli, Cmd, Plan};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Worker => tether_loadgen::worker::run(),
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
