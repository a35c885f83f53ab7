//! The heartbeat targets, checked in the deterministic simulator (see docs/heartbeat.md):
//! final interval ≥ 0.9 T for every T, converged within an hour for T ≤ 15 min (within 20
//! minutes at 15 min, within an hour at 28 min), no main connection lost while learning, at
//! most one lost when T drops, and idle gaps of at least 0.8 T under 9-minute alarm batching.

use tether_proto::heartbeat::sim::{
    self, baseline::BaselineKind, run, Policy, Scenario, TimerLateness,
};
use tether_proto::heartbeat::HeartbeatConfig;

const HOUR: u64 = 3_600_000;

fn tether() -> Policy {
    Policy::Tether(HeartbeatConfig::default())
}

fn check_targets(sc: &Scenario) {
    let r = run(sc, &tether());
    let t = r.final_timeout_ms;
    let ratio = f64::from(r.final_interval_ms) / f64::from(t);
    assert!(
        (0.9..1.0).contains(&ratio),
        "{} seed {}: final interval {} ms is {ratio:.3} T",
        sc.name,
        sc.seed,
        r.final_interval_ms
    );
    let converged = r
        .converged_after_ms
        .unwrap_or_else(|| panic!("{} seed {}: never converged: {r:?}", sc.name, sc.seed));
    if t <= 900_000 {
        assert!(converged <= HOUR, "{} seed {}: {r:?}", sc.name, sc.seed);
    }
    if sc.last_change() == 0 {
        assert_eq!(r.main_losses, 0, "{} seed {}: {r:?}", sc.name, sc.seed);
    } else {
        // One loss at most, and only after the drop (none while learning the first T).
        assert!(
            r.losses_after_change <= 1,
            "{} seed {}: {r:?}",
            sc.name,
            sc.seed
        );
        assert_eq!(r.main_losses, r.losses_after_change, "{}: {r:?}", sc.name);
    }
    // Time advanced normally: no client wake-up loop.
    assert!(r.events < 100_000, "{}: {r:?}", sc.name);
    // Close to the ideal of one heartbeat per timeout (loss retries and lateness add a few).
    let ideal = HOUR as f64 / f64::from(t);
    assert!(r.pings_per_hour <= ideal * 1.2 + 2.0, "{}: {r:?}", sc.name);
}

#[test]
fn tether_meets_the_targets_in_every_standard_scenario() {
    for seed in 1..=5 {
        for mut sc in sim::standard_scenarios() {
            sc.seed = seed;
            check_targets(&sc);
        }
    }
}

#[test]
fn long_timeouts_are_learned_within_about_one_probe_duration() {
    for (index, limit_min) in [(4, 20), (5, 60)] {
        for seed in 1..=5 {
            let mut sc = sim::standard_scenarios()[index].clone(); // T = 15 min, T = 28 min
            sc.seed = seed;
            let r = run(&sc, &tether());
            let converged = r.converged_after_ms.unwrap_or(u64::MAX);
            assert!(
                converged <= limit_min * 60_000,
                "{} seed {seed}: converged after {} min: {r:?}",
                sc.name,
                converged as f64 / 60_000.0
            );
            assert_eq!(r.main_losses, 0, "{} seed {seed}: {r:?}", sc.name);
            // Finer probes near the top of the range cost more probe connections, not many.
            assert!(r.probes <= 30, "{} seed {seed}: {r:?}", sc.name);
        }
    }
}

#[test]
fn tether_survives_heavy_loss_and_late_timers() {
    for seed in 1..=3 {
        let mut sc = sim::standard_scenarios()[3].clone(); // T = 10 min
        sc.seed = seed;
        sc.loss = 0.05;
        sc.lateness = TimerLateness::Uniform { max_ms: 5_000 };
        check_targets(&sc);
    }
}

#[test]
fn slow_lossy_links_and_late_timers_cost_interval_but_never_the_main_connection() {
    for seed in 1..=3 {
        for mut sc in sim::standard_scenarios() {
            sc.seed = seed;
            sc.one_way_ms = 300;
            sc.loss = 0.02;
            sc.lateness = TimerLateness::Uniform { max_ms: 5_000 };
            let r = run(&sc, &tether());
            let expected_losses = u32::from(sc.last_change() > 0);
            assert!(
                r.main_losses <= expected_losses,
                "{} seed {seed}: {r:?}",
                sc.name
            );
            // 5 s of lateness and a 600 ms round trip come off the interval: 0.85 T at 60 s.
            let ratio = f64::from(r.final_interval_ms) / f64::from(r.final_timeout_ms);
            assert!(
                (0.8..1.0).contains(&ratio),
                "{} seed {seed}: {r:?}",
                sc.name
            );
        }
    }
}

#[test]
fn tether_keeps_the_main_connection_under_nine_minute_timer_batching() {
    for seed in 1..=5 {
        let mut sc = sim::stress_scenarios()[0].clone();
        sc.seed = seed;
        let r = run(&sc, &tether());
        assert_eq!(r.main_losses, 0, "seed {seed}: {r:?}");
        // The gaps the NAT sees are whole batching windows: three of them (27 min) fit below
        // T = 28 min, and the firings' grid is learned from the timers alone.
        let gap = r.final_gap_ms as f64 / f64::from(r.final_timeout_ms);
        assert!(
            (0.8..1.0).contains(&gap),
            "seed {seed}: gap {gap:.3} T: {r:?}"
        );
        assert!(
            r.final_interval_ms < r.final_timeout_ms,
            "seed {seed}: {r:?}"
        );
        // Before any lateness was seen, a late first ping may outlive the server's idle
        // window (the lease it was told was the 45 s safe interval): a reconnect, not a loss.
        assert!(r.main_connects <= 3, "seed {seed}: {r:?}");
    }
}

#[test]
fn an_app_that_declares_its_timer_batching_keeps_one_connection() {
    let cfg = HeartbeatConfig {
        assumed_lateness_ms: 9 * 60_000,
        ..HeartbeatConfig::default()
    };
    for seed in 1..=5 {
        let mut sc = sim::stress_scenarios()[0].clone();
        sc.seed = seed;
        let r = run(&sc, &Policy::Tether(cfg.clone()));
        assert_eq!(
            (r.main_losses, r.main_connects),
            (0, 1),
            "seed {seed}: {r:?}"
        );
        let gap = r.final_gap_ms as f64 / f64::from(r.final_timeout_ms);
        assert!(
            (0.8..1.0).contains(&gap),
            "seed {seed}: gap {gap:.3} T: {r:?}"
        );
    }
}

#[test]
fn a_server_prior_shortens_learning_without_risking_the_main_connection() {
    let [plain, with_prior] = &sim::prior_scenarios()[..] else {
        panic!("two scenarios")
    };
    let a = run(plain, &tether());
    let b = run(with_prior, &tether());
    assert_eq!(b.main_losses, 0, "{b:?}");
    // Learning without a prior already takes little more than one probe of about T; the prior
    // saves most of the probes and still some time.
    let (ta, tb) = (a.converged_after_ms.unwrap(), b.converged_after_ms.unwrap());
    assert!(tb < ta, "with a prior {tb} ms, without {ta} ms");
    assert!(b.probes * 2 < a.probes, "with a prior {b:?}, without {a:?}");
    // A prior far above the truth (a poisoned table) costs probes, not the main connection.
    let mut poisoned = with_prior.clone();
    poisoned.prior_ms = 1_800_000;
    let c = run(&poisoned, &tether());
    assert_eq!(c.main_losses, 0, "{c:?}");
    assert!(c.converged_after_ms.unwrap() <= HOUR, "{c:?}");
}

#[test]
fn a_network_whose_timeout_grows_is_relearned_by_the_recheck() {
    let sc = Scenario {
        name: "T 5 → 10 min".into(),
        duration_ms: 20 * HOUR,
        timeouts: vec![(0, 300_000), (2 * HOUR, 600_000)],
        loss: 0.0,
        lateness: TimerLateness::Uniform { max_ms: 1_000 },
        one_way_ms: 50,
        seed: 3,
        prior_ms: 0,
    };
    let r = run(&sc, &tether());
    assert_eq!(r.main_losses, 0, "{r:?}");
    let ratio = f64::from(r.final_interval_ms) / f64::from(r.final_timeout_ms);
    assert!(ratio >= 0.9, "{r:?}");
}

#[test]
fn the_baselines_behave_as_described() {
    let mut sc = sim::standard_scenarios()[1].clone(); // T = 3 min
    let fixed = Policy::Baseline(BaselineKind::Fixed {
        interval_ms: 240_000,
    });
    let r = run(&sc, &fixed);
    assert_eq!(r.final_interval_ms, 240_000);
    assert!(
        r.main_losses > 5,
        "a 4-minute interval cannot hold a 3-minute NAT: {r:?}"
    );
    let mars = Policy::Baseline(BaselineKind::Mars);
    sc.timeouts = vec![(0, 300_000)];
    let r = run(&sc, &mars);
    // 210 s, then 270 s after five successes, which fails twice: back to 270 − 20 s.
    assert_eq!(r.final_interval_ms, 250_000, "{r:?}");
    assert_eq!(r.main_losses, 2, "{r:?}");
}

#[test]
fn runs_are_deterministic() {
    let sc = &sim::standard_scenarios()[6];
    assert_eq!(run(sc, &tether()), run(sc, &tether()));
    let table = sim::markdown_table(&sim::standard_scenarios()[..1], &sim::policies());
    assert_eq!(
        table,
        sim::markdown_table(&sim::standard_scenarios()[..1], &sim::policies())
    );
    assert_eq!(table.lines().count(), 2 + sim::policies().len());
}

#[test]
fn docs_show_the_tables_the_simulator_produces() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/heartbeat.md");
    let doc = std::fs::read_to_string(path).expect("docs/heartbeat.md");
    let stress = sim::stress_scenarios();
    for table in [
        sim::markdown_table(&sim::standard_scenarios(), &sim::policies()),
        sim::markdown_table(&stress[..1], &sim::stress_policies()),
        sim::markdown_table(&stress[1..], &sim::policies()),
        sim::markdown_table(&sim::prior_scenarios(), &sim::policies()[..1]),
    ] {
        assert!(
            doc.contains(table.trim_end()),
            "docs/heartbeat.md is stale; regenerate with \
             `cargo run -p tether-proto --example heartbeat_sim --release`:\n{table}"
        );
    }
}
