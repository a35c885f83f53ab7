//! `tether-client`: a tether client for a shell. `watch` runs one heartbeat client, prints
//! every push and message it receives (and acknowledges each) and its interval as it learns the
//! network's NAT timeout; `upstream` sends lines to the app's backend and prints their results;
//! `backend` is such a backend, printing and answering every upstream message.
//!
//! This file only parses the command line; each command is a module with its own `run`.

mod backend;
mod login;
mod show;
mod upstream;
mod watch;

use clap::{Parser, Subcommand};

/// A tether client on real sockets.
#[derive(Parser, Debug)]
#[command(name = "tether-client", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Log in as USER, keep the connection alive, print (and acknowledge) every push and
    /// message received, and a line whenever the interval, the learned bounds, the probe count
    /// or the losses change.
    Watch(watch::Args),
    /// Log in as USER, send each line of stdin (or each --message) to the app's backend as an
    /// upstream message, print each result, and exit once every result arrived.
    #[command(alias = "send-up")]
    Upstream(upstream::Args),
    /// Log in as a backend service that receives upstream messages, print each one and answer
    /// it (accepted, with the reply "seq=N").
    Backend(backend::Args),
    /// Print a client token for USER/DEVICE minted from SECRET, as an app's login service
    /// would hand one to the app (for the SDK's examples, `docs/sdk.md`).
    Token(login::TokenArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Watch(args) => watch::run(args),
        Command::Upstream(args) => upstream::run(args),
        Command::Backend(args) => backend::run(args),
        Command::Token(args) => login::print_token(&args),
    }
}
