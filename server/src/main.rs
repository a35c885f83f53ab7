//! `tether`: the gateway's command (`tether_server::cli`).

fn main() -> anyhow::Result<()> {
    tether_server::cli::main()
}
