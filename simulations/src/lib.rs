//! The mqlink WAN simulator: a seeded, deterministic discrete-event
//! simulation that drives the SAME `mqlink-topology` and `mqlink-proto`
//! code as the agent, under simulated time.
//!
//! # Status
//!
//! Skeleton. Issue #4 fills it (scenario YAML, links with latency, jitter,
//! loss and bandwidth, fault schedules, reports and SVG charts, comparisons
//! with a flood bridge and a one-hop mesh). Nothing here works yet, and
//! nothing pretends to; `simulations/scenarios/` will hold the examples.
