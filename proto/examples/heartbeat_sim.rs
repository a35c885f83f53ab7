//! Regenerates the simulator tables of `docs/heartbeat.md`:
//! `cargo run -p tether-proto --example heartbeat_sim --release`.

use std::time::Instant;

use tether_proto::heartbeat::sim;

fn main() {
    let started = Instant::now();
    println!("### Standard scenarios\n");
    println!("{}", sim::markdown_table(&sim::standard_scenarios()));
    println!("### Stress scenarios\n");
    println!("{}", sim::markdown_table(&sim::stress_scenarios()));
    eprintln!("simulated in {:.2?}", started.elapsed());
}
