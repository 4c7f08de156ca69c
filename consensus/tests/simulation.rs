//! The seeded Byzantine simulation of the PBFT engine.
//!
//! - `seeds`: `SIM_SEEDS` seeds (default 1,000), alternating 4 and 7 validators, each
//!   with a random mix of network faults, crashes and up to `f` faulty validators; every
//!   checker must stay silent. A failing seed prints the command that replays it.
//! - `replay_seed`: replays one seed (`SIM_SEED`, `SIM_VALIDATORS`), ignored by default.
//! - `same_seed_same_trace`: determinism.
//! - negative controls: faulty power at or above a third (two twins among four), and a
//!   deliberately broken engine, must be caught.
#![allow(clippy::unwrap_used)]

mod sim;

use std::sync::Mutex;
use std::time::Instant;

use sim::{Behaviour, Outcome, Scenario};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn replay_command(scenario: &Scenario) -> String {
    format!(
        "SIM_SEED={} SIM_VALIDATORS={} cargo test --workspace --profile ci --test simulation -- --ignored replay_seed --nocapture",
        scenario.seed, scenario.validators
    )
}

/// Runs `scenarios` on all cores; returns each outcome with its scenario.
fn run_all(scenarios: Vec<Scenario>) -> Vec<(Scenario, Outcome)> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    let queue = Mutex::new(scenarios.into_iter().enumerate().collect::<Vec<_>>());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let Some((i, scenario)) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let outcome = sim::run(scenario.clone());
                    results.lock().unwrap().push((i, scenario, outcome));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _, _)| *i);
    results.into_iter().map(|(_, s, o)| (s, o)).collect()
}

#[test]
fn seeds() {
    let count = env_u64("SIM_SEEDS", 1_000);
    let first = env_u64("SIM_FIRST_SEED", 0);
    let scenarios: Vec<Scenario> = (first..first + count)
        .map(|seed| Scenario::random(seed, if seed % 2 == 0 { 4 } else { 7 }))
        .collect();
    let started = Instant::now();
    let results = run_all(scenarios);
    let elapsed = started.elapsed();

    let mut failures = Vec::new();
    let mut mix: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let (mut heights_min, mut heights_sum) = (u64::MAX, 0u64);
    let mut evidence = 0;
    for (scenario, outcome) in &results {
        for (_, behaviour) in &scenario.faulty {
            *mix.entry(format!("{behaviour:?}")).or_default() += 1;
        }
        *mix.entry("crash".into()).or_default() += scenario.crashes as u64;
        *mix.entry(format!("loss {}", scenario.loss)).or_default() += 1;
        if !scenario.partitions.is_empty() {
            *mix.entry("partition".into()).or_default() += 1;
        }
        if scenario.changing_sets {
            *mix.entry("changing sets".into()).or_default() += 1;
        }
        heights_min = heights_min.min(outcome.min_height);
        heights_sum += outcome.min_height;
        evidence += outcome.evidence;
        if !outcome.violations.is_empty() {
            failures.push(format!(
                "seed {} ({} validators, {:?}): {}\n  replay: {}",
                scenario.seed,
                scenario.validators,
                scenario.faulty,
                outcome.violations.join("; "),
                replay_command(scenario)
            ));
        }
    }
    eprintln!(
        "simulation: {count} seeds in {elapsed:.1?}; heights decided per seed by the slowest honest node: min {heights_min}, mean {:.1}; {evidence} evidence reports; fault mix {mix:?}",
        heights_sum as f64 / count.max(1) as f64
    );
    assert!(
        failures.is_empty(),
        "{} failing seeds:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
#[ignore = "replays one seed: SIM_SEED=<seed> SIM_VALIDATORS=<4|7>"]
fn replay_seed() {
    let seed = env_u64("SIM_SEED", 0);
    let validators = env_u64("SIM_VALIDATORS", 4) as usize;
    let scenario = match std::env::var("SIM_SCENARIO").as_deref() {
        Ok("isolate-decisions") => isolate_decisions_scenario(seed, false),
        _ => Scenario::random(seed, validators),
    };
    eprintln!("{scenario:#?}");
    let outcome = sim::run(scenario);
    eprintln!("{outcome:#?}");
    assert!(outcome.violations.is_empty());
}

#[test]
fn same_seed_same_trace() {
    for seed in [3u64, 10, 77] {
        let validators = if seed % 2 == 0 { 4 } else { 7 };
        let a = sim::run(Scenario::random(seed, validators));
        let b = sim::run(Scenario::random(seed, validators));
        assert_eq!(a.digest, b.digest, "seed {seed}");
        assert_eq!(a.sim_time_ms, b.sim_time_ms);
    }
    let a = sim::run(Scenario::random(1, 4));
    let b = sim::run(Scenario::random(2, 4));
    assert_ne!(a.digest, b.digest);
}

/// Two of four keys run on two nodes each (nodes 4 and 5 are the second copies of keys
/// 0 and 1), and a partition keeps each twin apart from its copy during the fault
/// phase; the two honest nodes land on either side at random. Faulty power is half,
/// past the third the protocol tolerates: when both sides hold three distinct keys,
/// both can decide, so some seed must break agreement.
#[test]
fn negative_control_twins_break_safety() {
    let count = env_u64("SIM_CONTROL_SEEDS", 200);
    let scenarios: Vec<Scenario> = (0..count)
        .map(|seed| {
            let mut scenario = Scenario::random(1_000_000 + seed, 4);
            scenario.faulty = vec![(0, Behaviour::Twin), (1, Behaviour::Twin)];
            scenario.crashes = 0;
            let mut rng = sim::Rng::new(seed);
            let sides = vec![true, true, rng.chance(0.5), rng.chance(0.5), false, false];
            scenario.partitions = vec![(0, scenario.faults_end_ms, sides)];
            scenario
        })
        .collect();
    let results = run_all(scenarios);
    let caught = results
        .iter()
        .filter(|(_, o)| o.violations.iter().any(|v| v.starts_with("agreement")))
        .count();
    eprintln!(
        "negative control (two twins among four): agreement violated in {caught} of {count} seeds ({:.1}%)",
        100.0 * caught as f64 / count as f64
    );
    assert!(
        caught > 0,
        "no seed detected the safety violation twins can cause"
    );
}

/// Four honest validators under the schedule of PBFT's view-change argument (see
/// `Scenario::isolate_decisions`), running the correct or the broken engine.
fn isolate_decisions_scenario(seed: u64, broken: bool) -> Scenario {
    let mut scenario = Scenario::random(seed, 4);
    scenario.faulty.clear();
    scenario.crashes = 0;
    scenario.partitions.clear();
    scenario.isolate_decisions = true;
    scenario.broken_engine = broken;
    scenario
}

/// Honest validators running an engine whose new leaders ignore prepared certificates
/// (and whose replicas do not check): some seed must break agreement. The same
/// scenarios with the correct engine must not, so the detections are the bug's.
#[test]
fn negative_control_broken_engine_is_caught() {
    let count = env_u64("SIM_CONTROL_SEEDS", 200);
    let scenarios = |broken: bool| -> Vec<Scenario> {
        (0..count)
            .map(|seed| isolate_decisions_scenario(2_000_000 + seed, broken))
            .collect()
    };
    let broken = run_all(scenarios(true));
    let caught = broken
        .iter()
        .filter(|(_, o)| o.violations.iter().any(|v| v.starts_with("agreement")))
        .count();
    eprintln!(
        "negative control (new leader ignores prepared certificates): agreement violated in {caught} of {count} seeds ({:.1}%)",
        100.0 * caught as f64 / count as f64
    );
    assert!(caught > 0, "no seed detected the broken engine");
    let correct = run_all(scenarios(false));
    let failures: Vec<String> = correct
        .iter()
        .filter(|(_, o)| !o.violations.is_empty())
        .map(|(s, o)| format!("seed {}: {}", s.seed, o.violations.join("; ")))
        .collect();
    assert!(
        failures.is_empty(),
        "the correct engine fails the control's scenarios:\n{}",
        failures.join("\n")
    );
}
