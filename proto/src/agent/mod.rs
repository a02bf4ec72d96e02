//! The protocol core of one agent: a sans-IO state machine.
//!
//! The runtime (or the simulator, or a test) drives it:
//!
//! ```text
//! loop {
//!     input arrives -> agent.handle_connect / handle_disconnect / handle_frame /
//!                      handle_publish / handle_subscribe / handle_unsubscribe (now, ...)
//!     timer fires   -> agent.handle_timeout(now)
//!     while let Some((peer, frame)) = agent.poll_transmit() { send it }
//!     while let Some(event) = agent.poll_event() { act on it }
//!     sleep until agent.poll_timeout()
//! }
//! ```
//!
//! Nothing here reads a clock or touches a socket.
//!
//! What it does: greets neighbours (hello, checked against the region the
//! runtime verified from the certificate); floods LSAs; keeps every
//! region's interest tables in step by flooding snapshots (start / entries /
//! end, verified by digest), sequenced deltas and periodic digests, and asks
//! for a snapshot when a gap or a digest mismatch shows drift; forwards
//! envelopes along the routing core's trees, within the link's export and
//! import filters, dropping duplicates (dedupe window), visited regions and
//! anything past the hop limit. Every drop is counted by reason in
//! [`Stats`]. Interest outlives links: a peer going down changes the
//! graph, not what remote regions want.
//!
//! Custody (QoS >= 1): a message is held here until every region it must
//! reach is covered: delivered to our broker and acknowledged there
//! ([`Agent::handle_delivered`]), or acknowledged by the neighbour it was
//! sent to, which then holds the obligation for the regions it was told
//! to reach (the envelope's `dests`). Only then is the upstream released:
//! the broker message ([`Event::Release`]) or the previous agent's
//! envelope (an ack on that link). A connection that closes hands its
//! unacknowledged obligations back here; they wait for a path (a reroute,
//! the peer's return) and are sent again; the destination's dedupe window
//! keeps a replay from being delivered twice. Every connection keeps a
//! bounded window of unacknowledged envelopes, so what one agent holds is
//! bounded by its upstreams' windows: a slow or dead path stops the
//! acknowledgements, and the broker holds and slows the publisher.
//!
//! # Layout
//!
//! - `mod.rs`: types, configuration, timers.
//! - `peers`: connect, disconnect, hello, frame dispatch.
//! - `summary`: interest summaries and the export subscriptions.
//! - `forward`: the data path: envelopes in, routing, batches out.
//! - `custody`: QoS >= 1 custody: held messages, acks, reroutes.
//! - `window`: a connection's unacknowledged envelopes (a ring by link
//!   sequence number).
//! - `views`: read-only views for the admin API (links, peers, trace).
//! - `cost`: link costs from measured round-trip times, with hysteresis.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqlink_topology::{
    Applied, BudgetedInterest, Cost, Delta, DeltaOp, Digest, Due, InterestTable, InterestVersion,
    LsaLink, LsaOutcome, NodeName, RegionName, Router, Snapshot, TopicFilter, TopicName,
};

use crate::dedupe::{Dedupe, Mark, Seen};
use crate::frame::{DATA_SHARDS, shard_of};
use custody::Upstream;

mod cost;
mod custody;
pub use cost::MeasuredCost;
mod forward;
mod peers;
mod summary;
mod views;
mod window;
use crate::frame::{
    DataBatch, Envelope, Frame, Hello, Message, PROTOCOL_VERSION, Regions, TableId,
};

/// The user property that marks a message imported by mqlink: such a
/// message is never exported again (DESIGN step 5d).
pub const ORIGIN_PROPERTY: &str = "mqlink-origin";

/// Most filters one interest table may hold; a peer announcing more is
/// closed (it would otherwise make us buffer without bound).
pub const MAX_TABLE_FILTERS: u64 = 1_000_000;

/// How long after the last configured neighbour came up the warm-up
/// ends (if that is sooner than `AgentConfig::warmup`).
pub const WARM_AFTER_ALL_UP: Duration = Duration::from_millis(500);

/// Most forgotten regions remembered as such (see `Agent::forget_gone`).
pub const FORGOTTEN_MAX: usize = 4096;

/// Most snapshots a peer may have in progress at once.
pub const MAX_OPEN_SNAPSHOTS: usize = 10_000;

/// Most filters buffered for one peer's snapshots in progress, together
/// (announced counts): what a peer can make us hold before a table is
/// complete.
pub const MAX_INCOMING_FILTERS: u64 = 2 * MAX_TABLE_FILTERS;

/// A peer asking again for a snapshot of a table we already sent it, at
/// the same version, within this long gets nothing (the first one is
/// still on its way): repeated requests cannot make us queue snapshot
/// after snapshot.
pub const RESYNC_HOLDOFF: Duration = Duration::from_secs(5);

/// How soon an advertised interest over its budget is aggregated (a burst
/// of subscriptions is folded into one aggregation; at twice the budget it
/// is aggregated at once).
pub const AGGREGATE_AFTER: Duration = Duration::from_secs(1);

/// How soon an advertised interest left wider than needed (by
/// unsubscribes) is tightened.
pub const TIGHTEN_AFTER: Duration = Duration::from_secs(30);

/// One connection to an agent of a neighbouring region, as the runtime
/// names it: the region its certificate proved, and a number the runtime
/// picks, unique among its live connections. A region with replicas is
/// reached over several connections, one per agent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId {
    /// The neighbouring region.
    pub region: RegionName,
    /// The runtime's connection number.
    pub conn: u64,
}

impl PeerId {
    /// Connection `conn` to `region`.
    pub fn new(region: RegionName, conn: u64) -> Self {
        Self { region, conn }
    }

    /// Every connection to `region`, as a range of keys.
    fn range(region: &RegionName) -> std::ops::RangeInclusive<PeerId> {
        PeerId::new(region.clone(), 0)..=PeerId::new(region.clone(), u64::MAX)
    }
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.region, self.conn)
    }
}

/// A configured neighbour and what may cross the link.
#[derive(Debug, Clone)]
pub struct LinkPolicy {
    /// The neighbouring region.
    pub region: RegionName,
    /// Link cost advertised in our LSA; `None`: its measured round-trip
    /// time ([`Agent::handle_rtt`]).
    pub cost: Option<Cost>,
    /// Topics we may send to it.
    pub export: Vec<TopicFilter>,
    /// Topics we accept from it.
    pub import: Vec<TopicFilter>,
}

/// How an agent behaves.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Our region.
    pub region: RegionName,
    /// Our node.
    pub node: NodeName,
    /// Our epoch: new at each start, higher than the previous one (e.g. start time in ms).
    pub epoch: u64,
    /// Configured neighbours.
    pub links: Vec<LinkPolicy>,
    /// Drop envelopes that crossed this many links.
    pub hop_limit: u32,
    /// Re-originate our LSA this often (keeps it from ageing out elsewhere).
    pub lsa_refresh: Duration,
    /// Foreign LSAs not refreshed within this age are dropped.
    pub lsa_max_age: Duration,
    /// Send digests of every known table to every peer this often.
    pub digest_interval: Duration,
    /// Filters per `SummaryEntries` frame.
    pub summary_chunk: usize,
    /// Most envelopes per data batch.
    pub batch_max: usize,
    /// Delay before the export subscriptions follow an interest change.
    pub export_debounce: Duration,
    /// Most envelopes sent on one connection and not yet acknowledged (the
    /// link's flow-control window). QoS >= 1 envelopes beyond it wait in
    /// custody; QoS 0 envelopes wait too, up to [`Self::qos0_queue`].
    pub window: usize,
    /// QoS 0 envelopes are acknowledged (to free the sender's window)
    /// when this many are due on a connection ...
    pub ack_batch: usize,
    /// ... or this long after the first of them, whichever comes first;
    /// custody acknowledgements leave at once. One acknowledgement per
    /// received batch cost both agents a packet and a wake-up each at
    /// moderate rates, where a batch is a few messages.
    pub ack_delay: Duration,
    /// Most QoS 0 envelopes queued per connection behind a full window;
    /// more are dropped, counted as [`DropReason::PeerQueueFull`].
    pub qos0_queue: usize,
    /// After start, QoS >= 1 messages that no known region wants are held
    /// this long (the peers' summaries may not have arrived yet) before
    /// they are released as unwanted.
    pub warmup: Duration,
    /// Held QoS >= 1 messages older than this are dropped, counted as
    /// [`DropReason::Expired`] (the spool's `max_age`).
    pub max_age: Duration,
    /// Whether the runtime has a spool: messages waiting for a path are
    /// then handed to it ([`Event::Spool`]) and their upstream released
    /// once they are durable, instead of being held in memory.
    pub spool: bool,
    /// Most messages taken back from the spool and not yet passed on.
    pub spool_replay: usize,
    /// Whether the runtime keeps the dedupe marks of local deliveries
    /// durably: a delivery the broker acknowledged is then reported as
    /// [`Event::Mark`] and its upstream released only once the runtime
    /// says the mark is durable ([`Agent::handle_marked`]), so a replay
    /// after our own restart is recognised ([`Agent::restore_marks`]).
    pub durable_marks: bool,
    /// Most filters one interest table may hold ([`MAX_TABLE_FILTERS`]);
    /// a peer whose snapshot or delta goes beyond it is closed.
    pub max_table_filters: u64,
    /// Most filters our own summary advertises (`interest.budget`): past
    /// it the summary is aggregated, only widening
    /// ([`mqlink_topology::BudgetedInterest`]). `None`: exact.
    pub interest_budget: Option<usize>,
}

impl AgentConfig {
    /// A config with the default timers for `region`/`node`/`epoch`.
    pub fn new(region: RegionName, node: NodeName, epoch: u64, links: Vec<LinkPolicy>) -> Self {
        Self {
            region,
            node,
            epoch,
            links,
            hop_limit: mqlink_topology::DEFAULT_HOP_LIMIT,
            lsa_refresh: Duration::from_secs(30),
            lsa_max_age: Duration::from_secs(120),
            digest_interval: Duration::from_secs(10),
            summary_chunk: 1000,
            batch_max: 512,
            export_debounce: Duration::from_millis(50),
            window: 4096,
            ack_batch: 512,
            ack_delay: Duration::from_millis(5),
            qos0_queue: 8192,
            warmup: Duration::from_secs(5),
            max_age: Duration::from_secs(24 * 3600),
            spool: false,
            spool_replay: 4096,
            durable_marks: false,
            max_table_filters: MAX_TABLE_FILTERS,
            interest_budget: None,
        }
    }
}

/// Why a message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// It carries [`ORIGIN_PROPERTY`]: it was imported, never re-exported.
    Reimport,
    /// The link's import filter refuses the topic.
    ImportPolicy,
    /// Seen before (dedupe window).
    Duplicate,
    /// The routing core would send it to a region it already visited.
    Visited,
    /// Past the hop limit.
    HopLimit,
    /// Our own message came back.
    OwnOrigin,
    /// The next hop is not connected (QoS 0 only: QoS >= 1 waits in custody).
    NoPeer,
    /// The link's export filter refuses the topic (by configuration).
    ExportPolicy,
    /// QoS 0: the connection's queue behind a full window is full.
    PeerQueueFull,
    /// QoS 0: sent, but the connection closed before it was acknowledged
    /// (it may or may not have arrived).
    LinkClosed,
    /// QoS >= 1: held longer than `max_age` without reaching every region
    /// that wants it.
    Expired,
    /// From the local broker with a topic that is not a valid topic name
    /// (counted by the runtime, which never hands it to the core).
    BadTopic,
    /// Its message expiry ran out in transit: not published (MQTT 5
    /// §3.3.2.3.3).
    ExpiredInTransit,
    /// QoS >= 1 in the spool: dropped to make room for a newer message
    /// (`spool.full: drop-oldest`; counted by the runtime's spool).
    SpoolFull,
    /// QoS 0 from the local broker while the agent shuts down (QoS >= 1
    /// stays with the broker for the next start).
    ShuttingDown,
    /// QoS 0 import the local broker connection could not take (it was
    /// down or its queue full).
    BrokerUnavailable,
    /// The local broker refused an import: a failure reason code in its
    /// PUBACK / PUBREC (not authorised, quota exceeded, ...), or larger
    /// than its Maximum Packet Size.
    BrokerRefused,
}

impl DropReason {
    /// Every reason, for metrics that list them all.
    pub const ALL: [DropReason; 17] = [
        DropReason::Reimport,
        DropReason::ImportPolicy,
        DropReason::Duplicate,
        DropReason::Visited,
        DropReason::HopLimit,
        DropReason::OwnOrigin,
        DropReason::NoPeer,
        DropReason::ExportPolicy,
        DropReason::PeerQueueFull,
        DropReason::LinkClosed,
        DropReason::Expired,
        DropReason::BadTopic,
        DropReason::ExpiredInTransit,
        DropReason::SpoolFull,
        DropReason::ShuttingDown,
        DropReason::BrokerUnavailable,
        DropReason::BrokerRefused,
    ];

    /// The metric label: snake case, one style for every reason.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Reimport => "reimport",
            DropReason::ImportPolicy => "import_policy",
            DropReason::Duplicate => "duplicate",
            DropReason::Visited => "visited",
            DropReason::HopLimit => "hop_limit",
            DropReason::OwnOrigin => "own_origin",
            DropReason::NoPeer => "no_peer",
            DropReason::ExportPolicy => "export_policy",
            DropReason::PeerQueueFull => "peer_queue_full",
            DropReason::LinkClosed => "link_closed",
            DropReason::Expired => "expired",
            DropReason::BadTopic => "bad_topic",
            DropReason::ExpiredInTransit => "expired_in_transit",
            DropReason::SpoolFull => "spool_full",
            DropReason::ShuttingDown => "shutting_down",
            DropReason::BrokerUnavailable => "broker_unavailable",
            DropReason::BrokerRefused => "broker_refused",
        }
    }
}

/// Counters the runtime exports as metrics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Drops by reason.
    pub drops: BTreeMap<DropReason, u64>,
    /// Messages taken from the local broker ([`Agent::handle_publish`]).
    pub published: u64,
    /// Envelopes sent, per peer.
    pub sent: BTreeMap<RegionName, u64>,
    /// Envelopes received, per peer.
    pub received: BTreeMap<RegionName, u64>,
    /// Messages handed to the local broker.
    pub delivered: u64,
    /// Peers closed for a protocol violation.
    pub protocol_errors: u64,
    /// Snapshots requested because of a gap or a digest mismatch.
    pub resyncs: u64,
    /// Messages delivered although the dedupe window could not tell
    /// whether they were new (older than the window).
    pub dedupe_unknown: u64,
    /// QoS >= 1 messages in custody now.
    pub held: u64,
    /// Of those, messages waiting for a path to some region (the spool).
    pub parked: u64,
    /// Payload bytes in custody now.
    pub held_bytes: u64,
    /// Messages in the spool not yet taken back.
    pub spool_unread: u64,
    /// Custody released upstream (broker or previous agent acknowledged).
    pub released: u64,
    /// Regions whose interest was forgotten after `max_age` with no live
    /// agent (gone for good, or down longer than anything would wait).
    pub regions_forgotten: u64,
}

/// Something the runtime must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A neighbour completed the hello exchange.
    PeerUp {
        /// The connection.
        peer: PeerId,
        /// The agent at the other end.
        node: NodeName,
    },
    /// Close this connection: the peer broke the protocol.
    ClosePeer {
        /// The connection.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// Close this connection without blame: a newer connection to the same
    /// agent replaced it (the agent restarted, or reconnected before the
    /// old connection timed out).
    Replaced {
        /// The older connection.
        peer: PeerId,
    },
    /// Publish this message to the local broker. With `custody`, the core
    /// holds it until the runtime reports the broker's acknowledgement
    /// ([`Agent::handle_delivered`] with this number).
    Deliver {
        /// The message (shared with the custody entry, which keeps it for
        /// a resend: no copy per delivery).
        env: Arc<Envelope>,
        /// QoS >= 1: the custody number to report back.
        custody: Option<u64>,
    },
    /// Custody of the broker message the runtime numbered `token` (see
    /// [`Agent::handle_publish`]) has passed on: acknowledge it to the
    /// broker (in arrival order, which the runtime keeps).
    Release(u64),
    /// The set of filters to subscribe to on the local broker (to export) changed.
    ExportChanged(BTreeSet<TopicFilter>),
    /// Write this message (waiting for a path to its `dests`) to the
    /// spool durably, then report [`Agent::handle_spooled`].
    Spool {
        /// The custody entry.
        custody: u64,
        /// The message, `dests` = the regions the spool now owes it to.
        env: Box<Envelope>,
    },
    /// The spooled message `key` has been passed on: mark it done.
    SpoolAck(u64),
    /// The local broker acknowledged custody entry `custody`'s delivery:
    /// write `mark` durably, then report [`Agent::handle_marked`] (with
    /// [`AgentConfig::durable_marks`] only).
    Mark {
        /// The custody entry.
        custody: u64,
        /// The delivered message's dedupe key.
        mark: Mark,
    },
    /// Hand back up to this many spooled messages, oldest first
    /// ([`Agent::handle_unspooled`], then [`Agent::handle_replay_done`]).
    SpoolReplay(usize),
}

/// A snapshot being received.
#[derive(Debug)]
struct Incoming {
    /// Its sequence number.
    seq: u64,
    /// Filters announced.
    count: u64,
    /// Filters so far.
    filters: Vec<TopicFilter>,
}

#[derive(Debug)]
struct Peer {
    /// Its node, once it said hello.
    hello: Option<Hello>,
    /// Snapshots in progress from it.
    incoming: BTreeMap<TableId, Incoming>,
    /// Snapshots sent to it on request: table -> (its seq, when).
    served: BTreeMap<TableId, (u64, Instant)>,
    /// Envelopes waiting to be sent, per data stream (shard), in order.
    pending: [VecDeque<Out>; DATA_SHARDS],
    /// QoS 0 envelopes among `pending` (bounded by `qos0_queue`).
    pending_qos0: usize,
    /// Next link sequence number.
    next_seq: u64,
    /// Sent and not yet acknowledged, by link sequence number: the custody
    /// entry and copy it carries (None for QoS 0). Its size is the window
    /// in use.
    unacked: window::Window,
    /// Link sequence numbers received from it whose acknowledgement is due.
    acks: Vec<u64>,
    /// A custody acknowledgement is among `acks`: they leave with the
    /// next transmit (the sender's upstream waits on it).
    acks_urgent: bool,
    /// When `acks` (QoS 0 only) leave at the latest ([`AgentConfig::ack_delay`]).
    acks_due: Option<Instant>,
    /// Which connection under this id this is (numbers from the agent).
    incarnation: u64,
}

impl Peer {
    fn new(incarnation: u64) -> Self {
        Self {
            incarnation,
            hello: None,
            incoming: BTreeMap::new(),
            served: BTreeMap::new(),
            pending: std::array::from_fn(|_| VecDeque::new()),
            pending_qos0: 0,
            next_seq: 1,
            unacked: window::Window::default(),
            acks: Vec::new(),
            acks_urgent: false,
            acks_due: None,
        }
    }
}

/// An envelope waiting for a connection's window.
#[derive(Debug)]
enum Out {
    /// QoS 0: the copy itself.
    Qos0(Box<Envelope>),
    /// QoS >= 1: copy `send` of custody entry `id`.
    Held {
        /// The custody entry.
        id: u64,
        /// Which copy of it.
        send: u64,
    },
}

/// The protocol core of one agent.
#[derive(Debug)]
pub struct Agent {
    /// Configuration.
    cfg: AgentConfig,
    /// Routing brain.
    router: Router,
    /// Our own interest: exact, and as advertised (under the budget).
    local: BudgetedInterest,
    /// When the advertised interest is next aggregated (it is due).
    aggregate_at: Option<Instant>,
    /// Connections to neighbouring agents.
    peers: BTreeMap<PeerId, Peer>,
    /// Frames to send, in order.
    outbox: VecDeque<(PeerId, Frame)>,
    /// Events for the runtime.
    events: VecDeque<Event>,
    /// Duplicate suppression.
    dedupe: Dedupe,
    /// Our next envelope sequence number.
    next_seq: u64,
    /// When to re-originate our LSA.
    next_lsa: Option<Instant>,
    /// When to send digests.
    next_digest: Option<Instant>,
    /// Export filter set last announced.
    export: BTreeSet<TopicFilter>,
    /// Interests version the export set was computed at.
    export_version: Option<u64>,
    /// When to recompute the export set (interest changed since).
    export_due: Option<Instant>,
    /// `digest_sum()` at an interests revision (it changes only with the tables).
    digest_sum_cache: Option<(u64, (u64, u64))>,
    /// (LSDB version, interests revision) of the last departed-agent check.
    departed_checked: Option<(u64, u64)>,
    /// Regions whose interest we hold but which have no live agent, since
    /// when (see `forget_gone`).
    silent_since: BTreeMap<RegionName, Instant>,
    /// (LSDB version, interests revision) of the last look for gone regions.
    gone_checked: Option<(u64, u64)>,
    /// Regions forgotten after `max_age` of silence: a table of theirs
    /// that a lagging peer sends again is dropped again, until the region
    /// has a live agent. At most [`FORGOTTEN_MAX`].
    forgotten: BTreeSet<RegionName>,
    /// QoS >= 1 messages in our custody.
    custody: custody::Custody,
    /// When parked entries are next handed to the spool.
    next_spool_tick: Option<Instant>,
    /// The time of the latest input (for custody entries begun deep in the
    /// data path).
    last_now: Instant,
    /// Measured costs of links without a configured one.
    measured: BTreeMap<RegionName, cost::MeasuredCost>,
    /// Until when unwanted QoS >= 1 messages are held (peers' summaries may
    /// still be on their way).
    warm_until: Instant,
    /// Counters.
    stats: Stats,
}

fn table_id(v: &InterestVersion) -> TableId {
    TableId {
        region: v.region.clone(),
        node: v.node.clone(),
        epoch: v.epoch,
    }
}

impl Agent {
    /// A new agent: its own interest table is empty, no peer is connected.
    pub fn new(now: Instant, cfg: AgentConfig) -> Self {
        let mut router = Router::new(cfg.region.clone(), cfg.lsa_max_age)
            .with_node(cfg.node.clone())
            .with_hop_limit(cfg.hop_limit);
        let local = BudgetedInterest::new(
            cfg.region.clone(),
            cfg.node.clone(),
            cfg.epoch,
            cfg.interest_budget,
        );
        router.handle_snapshot(local.advertised().snapshot());
        let mut agent = Self {
            router,
            local,
            aggregate_at: None,
            peers: BTreeMap::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            dedupe: Dedupe::default(),
            next_seq: 1,
            next_lsa: None,
            next_digest: Some(now + cfg.digest_interval),
            export: BTreeSet::new(),
            export_version: None,
            export_due: None,
            digest_sum_cache: None,
            departed_checked: None,
            silent_since: BTreeMap::new(),
            gone_checked: None,
            forgotten: BTreeSet::new(),
            custody: custody::Custody::default(),
            warm_until: now + cfg.warmup,
            last_now: now,
            measured: BTreeMap::new(),
            next_spool_tick: None,
            stats: Stats::default(),
            cfg,
        };
        agent.originate(now);
        agent
    }

    /// Our region.
    pub fn region(&self) -> &RegionName {
        &self.cfg.region
    }

    /// QoS 0 envelopes waiting behind a full window, on the connection
    /// with the most: the runtime stops taking messages from its broker
    /// while this is high ([`AgentConfig::qos0_queue`] drops the rest).
    pub fn qos0_backlog(&self) -> usize {
        self.peers
            .values()
            .map(|p| p.pending_qos0)
            .max()
            .unwrap_or(0)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        self.custody_stats(&mut s);
        s
    }

    /// The routing core (for admin queries and tests).
    pub fn router(&mut self) -> &mut Router {
        &mut self.router
    }

    /// Regions with at least one connection past hello, in name order.
    pub fn peers_up(&self) -> Vec<RegionName> {
        let mut regions: Vec<RegionName> = self.up().map(|id| id.region.clone()).collect();
        regions.dedup();
        regions
    }

    /// Connections past hello, in (region, connection) order.
    fn up(&self) -> impl Iterator<Item = &PeerId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.hello.is_some())
            .map(|(id, _)| id)
    }

    /// The connection that carries data to `region`: the lowest-numbered
    /// one past hello (runtimes number connections as they open them, so
    /// the oldest; sticky while it lives, so one topic's order holds).
    fn carrier(&mut self, region: &RegionName) -> Option<&mut Peer> {
        self.peers
            .range_mut(PeerId::range(region))
            .map(|(_, p)| p)
            .find(|p| p.hello.is_some())
    }

    fn policy(&self, region: &RegionName) -> Option<&LinkPolicy> {
        self.cfg.links.iter().find(|l| l.region == *region)
    }

    fn originate(&mut self, now: Instant) {
        let links: Vec<LsaLink> = self
            .cfg
            .links
            .iter()
            .map(|l| LsaLink {
                peer: l.region.clone(),
                cost: self.link_cost(&l.region),
                up: self
                    .peers
                    .range(PeerId::range(&l.region))
                    .any(|(_, p)| p.hello.is_some()),
            })
            .collect();
        let lsa = self.router.originate(now, links, self.cfg.epoch);
        self.next_lsa = Some(now + self.cfg.lsa_refresh);
        self.broadcast(None, &Frame::Lsa(lsa));
    }

    /// Queue `frame` to every connection past hello except `except`.
    fn broadcast(&mut self, except: Option<&PeerId>, frame: &Frame) {
        let targets: Vec<PeerId> = self.up().filter(|r| Some(*r) != except).cloned().collect();
        for r in targets {
            self.outbox.push_back((r, frame.clone()));
        }
    }

    fn close(&mut self, peer: &PeerId, reason: String) {
        self.stats.protocol_errors += 1;
        self.events.push_back(Event::ClosePeer {
            peer: peer.clone(),
            reason,
        });
    }

    /// Timers: LSA refresh, LSA ageing, digests.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        self.refresh_export(now);
        if self.next_lsa.is_some_and(|t| now >= t) {
            self.originate(now);
        }
        self.router.handle_timeout(now);
        self.aggregate_interest(now);
        if self.forget_departed() | self.forget_gone(now) {
            self.note_interest(now);
        }
        if self.next_digest.is_some_and(|t| now >= t) {
            self.next_digest = Some(now + self.cfg.digest_interval);
            let (tables, sum) = self.digest_sum();
            self.broadcast(None, &Frame::DigestSum { tables, sum });
        }
        self.retry_parked(now);
        if self.next_spool_tick.is_none_or(|t| now >= t) {
            self.next_spool_tick = Some(now + Duration::from_secs(1));
            self.spool_parked();
        }
        self.request_replay();
    }

    /// When [`Self::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.next_lsa,
            self.next_digest,
            self.export_due,
            self.aggregate_at,
            self.router.poll_timeout(),
            self.custody_timeout(),
            self.peers.values().filter_map(|p| p.acks_due).min(),
            self.silent_since
                .values()
                .min()
                .map(|t| *t + self.cfg.max_age),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next event for the runtime.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}
