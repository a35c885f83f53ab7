//! The `tether` command, built as a binary of the test package: cargo builds it with the
//! features the integration tests resolve, before it runs them, so they use a fresh server
//! without a second build of it (`tether_tests::server_binary`).

fn main() -> anyhow::Result<()> {
    tether_server::cli::main()
}
