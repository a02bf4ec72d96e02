//! mqlink's routing brain: pure data structures and algorithms, no I/O and
//! no clock reads (time is passed in as `now` where it matters), so the agent,
//! the simulator and the tests all drive the very same code.
//!
//! # Layout
//!
//! - [`topic`]: checked [`TopicName`], [`TopicFilter`] and [`Subscription`]
//!   types (MQTT 5.0 §4.7, §4.8.2) and filter matching, covering, overlap.
//! - [`region`]: [`RegionName`], [`NodeName`], [`Cost`], and the compact
//!   [`RegionId`] / [`RegionSet`] used on hot paths.
//! - [`interest`]: one region's [`InterestTable`] (filter -> refcount,
//!   versioned by region, node, epoch, seq) with snapshots, sequenced
//!   deltas, diffs and an order-independent [`Digest`].
//! - [`matcher`]: a trie answering "which regions want topic T" over all
//!   regions' filters, updated one filter at a time.
//! - [`interests`]: every region's tables kept in step with the matcher.
//! - [`aggregate`]: shrink a filter set to a budget, only widening.
//! - [`budget`]: a region's own interest, exact and as advertised under a
//!   budget ([`BudgetedInterest`]).
//! - [`lsdb`]: the link-state database (LSAs, newer wins, ageing out).
//! - [`graph`]: the petgraph region graph, shortest-path [`Tree`]s with a
//!   region-name tie-break, partitions, bridges and articulation points.
//! - [`route`]: the forwarding decision and its route cache ([`Router`]).
//! - [`trace`]: where a message would go and why not elsewhere ([`Trace`]).

pub mod aggregate;
pub mod budget;
pub mod graph;
pub mod interest;
pub mod interests;
pub mod lsdb;
pub mod matcher;
pub mod region;
pub mod route;
pub mod topic;
pub mod trace;

pub use aggregate::{Aggregation, WideningCost, aggregate, disjoint_cover, generalize};
pub use budget::{BudgetedInterest, Due};
pub use graph::{RegionGraph, Tree};
pub use interest::{
    Applied, Delta, DeltaOp, Digest, InterestError, InterestTable, InterestVersion, Snapshot,
};
pub use interests::{DeltaError, Interests};
pub use lsdb::{Lsa, LsaLink, LsaOutcome, Lsdb, MAX_LSA_SEQ};
pub use matcher::Matcher;
pub use region::{Cost, NameError, NodeName, RegionId, RegionIds, RegionName, RegionSet};
pub use route::{DEFAULT_HOP_LIMIT, Decision, Router};
pub use topic::{
    Level, MAX_TOPIC_LEN, Subscription, TopicCache, TopicError, TopicFilter, TopicName,
};
pub use trace::{Hop, Match, Miss, Trace};
