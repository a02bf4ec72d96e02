//! The mqlink link protocol, the way `quinn-proto` sits under `quinn`: wire
//! frames and a sans-IO state machine driven only by `handle_*(now, ...)`
//! and `poll_*`, never by sockets or a clock.
//!
//! # Layout
//!
//! - `link.proto` (crate root): the wire format of control frames,
//!   compiled by `build.rs` with prost + protox (no system `protoc`) into
//!   the private `wire` module.
//! - [`frame`]: domain frames ([`Frame`], [`Envelope`], ...), their checked
//!   conversion from the wire types (bad peer input becomes a
//!   [`FrameError`], never a panic), and length-prefixed encode/decode;
//!   `frame/data.rs`: the lean encoding of data batches (tables of names
//!   per batch, topic aliases per stream).
//!
//! - [`agent`]: the protocol core ([`Agent`]): hello, LSA flooding,
//!   summary exchange (snapshot, deltas, digests, resync), envelope
//!   forwarding along the routing core's trees, drop counters. Peers are
//!   connections ([`PeerId`]): a region with replicas is several agents,
//!   each reached over its own connection.
//! - [`dedupe`]: the per-origin duplicate window (never calls an unseen
//!   message a duplicate).
//!
//! Tests: unit tests per file; `tests/agents.rs` runs several agents in
//! memory on simulated time (frames go through the real wire encoding).

pub mod agent;
pub mod dedupe;
pub mod frame;

/// The generated protobuf types. Private to the crate: they are converted
/// to domain types in [`frame`] at the boundary.
#[allow(missing_docs, clippy::all)]
mod wire {
    include!(concat!(env!("OUT_DIR"), "/mqlink.link.v1.rs"));
}

pub use agent::{
    Agent, AgentConfig, DropReason, Event, LinkPolicy, MeasuredCost, ORIGIN_PROPERTY, PeerId, Stats,
};
pub use frame::{
    ALIASES_MAX, DATA_SHARDS, DataBatch, Envelope, Frame, FrameError, Hello, MAX_ACK_RANGES,
    MAX_FRAME_LEN, Message, PROTOCOL_VERSION, Properties, Qos, Regions, TableId, TopicAliases,
    decode, decode_envelope, decode_with, encode, encode_envelope, encode_with, encoded_len,
    shard_of,
};
