//! Regenerates the simulator tables of `docs/heartbeat.md`:
//! `cargo run -p tether-proto --example heartbeat_sim --release`.

use std::time::Instant;

use tether_proto::heartbeat::sim;

fn main() {
    let started = Instant::now();
    let stress = sim::stress_scenarios();
    println!("### Standard scenarios\n");
    println!(
        "{}",
        sim::markdown_table(&sim::standard_scenarios(), &sim::policies())
    );
    println!("### Android-style timer batching\n");
    println!(
        "{}",
        sim::markdown_table(&stress[..1], &sim::stress_policies())
    );
    println!("### Heavy loss\n");
    println!("{}", sim::markdown_table(&stress[1..], &sim::policies()));
    println!("### With a server prior\n");
    println!(
        "{}",
        sim::markdown_table(&sim::prior_scenarios(), &sim::policies()[..1])
    );
    eprintln!("simulated in {:.2?}", started.elapsed());
}
