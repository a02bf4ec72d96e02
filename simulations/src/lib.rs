//! The mqlink WAN simulator: a seeded, deterministic discrete-event
//! simulation that drives the SAME `mqlink-topology` router and
//! `mqlink-proto` protocol core as the agent, under simulated time, so an
//! operator can try a topology before rollout.
//!
//! # Layout
//!
//! - [`scenario`]: the scenario YAML (regions, links, workloads, faults)
//!   into checked types, errors at file:line:column (through
//!   `mqlink-config`'s YAML diagnostics).
//! - [`engine`]: the event loop: agents, links with latency, jitter, loss
//!   and bandwidth queues, publishers, faults.
//! - [`report`]: measurements and the text / JSON report, with the flood
//!   bridge and one-hop mesh alternatives on the same workload.
//! - [`charts`]: the SVG charts written by `--out`.
//!
//! Determinism: one seeded ChaCha RNG, ordered maps only, events ordered by
//! (time, insertion number): the same scenario and seed give the same report.

pub mod charts;
pub mod engine;
pub mod report;
pub mod scenario;

pub use engine::Sim;
pub use report::Report;
pub use scenario::{Scenario, load, parse};

/// Run `scenario` with `seed` (the scenario's own if `None`).
pub fn simulate(mut scenario: Scenario, seed: Option<u64>, progress: impl FnMut(f64)) -> Report {
    if let Some(seed) = seed {
        scenario.seed = seed;
    }
    let seed = scenario.seed;
    Sim::new(scenario, seed).run(progress)
}
