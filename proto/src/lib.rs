//! The mqlink link protocol, the way `quinn-proto` sits under `quinn`: wire
//! frames and a sans-IO state machine driven only by `handle_*(now, ...)`
//! and `poll_*`, never by sockets or a clock.
//!
//! # Status
//!
//! Skeleton. Issue #3 fills it: `link.proto` (hello, LSA, summary snapshot /
//! delta / digest, ack, data batches) generated with prost, and the protocol
//! core (peers, LSA flooding, summary exchange, envelope forwarding with
//! dedupe and hop limit) on top of [`mqlink_topology`]. Nothing here works
//! yet, and nothing pretends to.
//!
//! # Layout (planned)
//!
//! - `frame`: domain frames and their conversion to and from the generated
//!   protobuf types.
//! - `peer`: per-neighbour state (hello, summaries sent and received).
//! - `core`: the agent's protocol state machine.
