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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use mqlink_topology::{
    Applied, Cost, Delta, DeltaOp, Digest, InterestTable, InterestVersion, LsaLink, LsaOutcome,
    NodeName, RegionName, Router, Snapshot, TopicFilter, TopicName,
};

use crate::dedupe::{Dedupe, Seen};
use crate::frame::{DataBatch, Envelope, Frame, Hello, Message, PROTOCOL_VERSION, TableId};

/// The user property that marks a message imported by mqlink: such a
/// message is never exported again (DESIGN step 5d).
pub const ORIGIN_PROPERTY: &str = "mqlink-origin";

/// Most filters one interest table may hold; a peer announcing more is
/// closed (it would otherwise make us buffer without bound).
pub const MAX_TABLE_FILTERS: u64 = 1_000_000;

/// Most snapshots a peer may have in progress at once.
pub const MAX_OPEN_SNAPSHOTS: usize = 10_000;

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
    /// Link cost advertised in our LSA.
    pub cost: Cost,
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
    /// Older than the dedupe window or from an older epoch.
    TooOld,
    /// The routing core would send it to a region it already visited.
    Visited,
    /// Past the hop limit.
    HopLimit,
    /// Our own message came back.
    OwnOrigin,
    /// The next hop is not connected (QoS 0; QoS ≥ 1 goes to the spool, issue #3 runtime).
    NoPeer,
}

/// Counters the runtime exports as metrics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Drops by reason.
    pub drops: BTreeMap<DropReason, u64>,
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
    /// Publish this message to the local broker.
    Deliver(Box<Envelope>),
    /// The set of filters to subscribe to on the local broker (to export) changed.
    ExportChanged(BTreeSet<TopicFilter>),
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
    /// Envelopes waiting to be batched.
    pending: Vec<Envelope>,
    /// Next data batch number.
    next_batch: u64,
}

/// The protocol core of one agent.
#[derive(Debug)]
pub struct Agent {
    /// Configuration.
    cfg: AgentConfig,
    /// Routing brain.
    router: Router,
    /// Our own interest table.
    local: InterestTable,
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
        let local = InterestTable::new(cfg.region.clone(), cfg.node.clone(), cfg.epoch);
        router.handle_snapshot(local.snapshot());
        let mut agent = Self {
            router,
            local,
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

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
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
                cost: l.cost,
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

    /// The runtime connected to (or accepted) an agent of `peer.region`,
    /// whose identity it verified from the peer's certificate.
    pub fn handle_connect(&mut self, _now: Instant, peer: &PeerId) {
        let region = &peer.region;
        if self.policy(region).is_none() {
            self.close(
                peer,
                format!("region `{region}` is not a configured neighbour"),
            );
            return;
        }
        self.peers.insert(
            peer.clone(),
            Peer {
                hello: None,
                incoming: BTreeMap::new(),
                pending: Vec::new(),
                next_batch: 1,
            },
        );
        let hello = Hello {
            region: self.cfg.region.clone(),
            node: self.cfg.node.clone(),
            epoch: self.cfg.epoch,
            version: PROTOCOL_VERSION,
        };
        self.outbox.push_back((peer.clone(), Frame::Hello(hello)));
    }

    /// The connection `peer` is gone.
    pub fn handle_disconnect(&mut self, now: Instant, peer: &PeerId) {
        if let Some(peer) = self.peers.remove(peer) {
            let was_up = peer.hello.is_some();
            self.drop_pending(peer);
            if was_up {
                self.originate(now);
            }
        }
    }

    /// A frame arrived on connection `from`.
    pub fn handle_frame(&mut self, now: Instant, from: &PeerId, frame: Frame) {
        self.frame(now, from, frame);
        self.note_interest(now);
    }

    fn frame(&mut self, now: Instant, from: &PeerId, frame: Frame) {
        let Some(peer) = self.peers.get(from) else {
            return;
        };
        match (&peer.hello, frame) {
            (None, Frame::Hello(h)) => self.on_hello(now, from, h),
            (None, _) => self.close(from, "frame before hello".to_owned()),
            (Some(_), Frame::Hello(_)) => self.close(from, "second hello".to_owned()),
            (Some(_), Frame::Lsa(lsa)) => match self.router.handle_lsa(now, lsa.clone()) {
                LsaOutcome::Installed => self.broadcast(Some(from), &Frame::Lsa(lsa)),
                LsaOutcome::Older => {
                    if let Some(ours) = self.router.lsdb().lsa(&lsa.origin, &lsa.node).cloned() {
                        self.outbox.push_back((from.clone(), Frame::Lsa(ours)));
                    }
                }
                LsaOutcome::OwnStale => self.originate(now),
                LsaOutcome::Duplicate => {}
            },
            (Some(_), Frame::SummaryStart { table, seq, count }) => {
                let open = self.peers.get(from).map_or(0, |p| p.incoming.len());
                if count > MAX_TABLE_FILTERS || open >= MAX_OPEN_SNAPSHOTS {
                    return self.close(
                        from,
                        format!("summary of {count} filters with {open} snapshots open exceeds the limits ({MAX_TABLE_FILTERS} filters, {MAX_OPEN_SNAPSHOTS} open)"),
                    );
                }
                if let Some(p) = self.peers.get_mut(from) {
                    p.incoming.insert(
                        table,
                        Incoming {
                            seq,
                            count,
                            filters: Vec::new(),
                        },
                    );
                }
            }
            (Some(_), Frame::SummaryEntries { table, filters }) => {
                let Some(inc) = self
                    .peers
                    .get_mut(from)
                    .and_then(|p| p.incoming.get_mut(&table))
                else {
                    return self.close(
                        from,
                        format!("summary entries for {table:?} without a start"),
                    );
                };
                inc.filters.extend(filters);
                if inc.filters.len() as u64 > inc.count {
                    self.close(
                        from,
                        format!("summary for {table:?} holds more filters than announced"),
                    );
                }
            }
            (Some(_), Frame::SummaryEnd { table, digest }) => {
                self.on_snapshot_end(from, table, digest)
            }
            (
                Some(_),
                Frame::SummaryDelta {
                    table,
                    seq,
                    add,
                    remove,
                },
            ) => self.on_delta(from, table, seq, add, remove),
            (Some(_), Frame::Digest { table, seq, digest }) => {
                self.on_digest(from, table, seq, digest)
            }
            (Some(_), Frame::ResyncRequest { table }) => self.send_snapshot_of(from, &table),
            (Some(_), Frame::DigestSum { tables, sum }) => {
                if (tables, sum) != self.digest_sum() {
                    // Something differs: show the peer every table's digest;
                    // it asks for (or sends) the snapshots that fix it.
                    let batch = Frame::DigestBatch(self.table_digests());
                    self.outbox.push_back((from.clone(), batch));
                }
            }
            (Some(_), Frame::DigestBatch(entries)) => {
                for (table, seq, digest) in entries {
                    self.on_digest(from, table, seq, digest);
                }
            }
            (Some(_), Frame::Ack { .. }) => {}
            (Some(_), Frame::Data(batch)) => self.on_data(from, batch),
        }
    }

    fn on_hello(&mut self, now: Instant, from: &PeerId, h: Hello) {
        if h.region != from.region {
            return self.close(
                from,
                format!(
                    "hello claims region `{}` but the certificate says `{}`",
                    h.region, from.region
                ),
            );
        }
        if h.version != PROTOCOL_VERSION {
            return self.close(
                from,
                format!(
                    "protocol version {} not supported (we speak {PROTOCOL_VERSION})",
                    h.version
                ),
            );
        }
        let node = h.node.clone();
        // One connection per agent: a newer one (a restart, or a reconnect
        // before the old connection timed out) replaces the older.
        let older: Vec<PeerId> = self
            .peers
            .range(PeerId::range(&from.region))
            .filter(|(id, p)| *id != from && p.hello.as_ref().is_some_and(|o| o.node == node))
            .map(|(id, _)| id.clone())
            .collect();
        let mut carried_over = Vec::new();
        for old in older {
            if let Some(p) = self.peers.remove(&old) {
                carried_over.extend(p.pending); // same agent: what was queued still goes
            }
            self.events.push_back(Event::Replaced { peer: old });
        }
        if let Some(p) = self.peers.get_mut(from) {
            p.hello = Some(h);
            p.pending.extend(carried_over);
        }
        self.events.push_back(Event::PeerUp {
            peer: from.clone(),
            node,
        });
        // Bring the newcomer up to date: every LSA, every table.
        let lsas: Vec<Frame> = self.router.lsdb().lsas().cloned().map(Frame::Lsa).collect();
        for f in lsas {
            self.outbox.push_back((from.clone(), f));
        }
        let tables: Vec<TableId> = self
            .router
            .interests()
            .tables()
            .map(|t| table_id(t.version()))
            .collect();
        for t in tables {
            self.send_snapshot_of(from, &t);
        }
        self.originate(now);
    }

    /// Queue a snapshot of `table` (ours or one we follow) to `to`.
    fn send_snapshot_of(&mut self, to: &PeerId, table: &TableId) {
        let snapshot = if *table == table_id(self.local.version()) {
            Some(self.local.snapshot())
        } else {
            self.router
                .interests()
                .table(&table.region, &table.node)
                .map(InterestTable::snapshot)
        };
        let Some(s) = snapshot else { return };
        let frames = self.snapshot_frames(s);
        for f in frames {
            self.outbox.push_back((to.clone(), f));
        }
    }

    fn snapshot_frames(&self, s: Snapshot) -> Vec<Frame> {
        let table = table_id(&s.version);
        let digest = InterestTable::from_snapshot(s.clone()).digest();
        let mut frames = vec![Frame::SummaryStart {
            table: table.clone(),
            seq: s.version.seq,
            count: s.filters.len() as u64,
        }];
        for chunk in s.filters.chunks(self.cfg.summary_chunk.max(1)) {
            frames.push(Frame::SummaryEntries {
                table: table.clone(),
                filters: chunk.to_vec(),
            });
        }
        frames.push(Frame::SummaryEnd { table, digest });
        frames
    }

    fn request_resync(&mut self, from: &PeerId, table: TableId) {
        self.stats.resyncs += 1;
        self.outbox
            .push_back((from.clone(), Frame::ResyncRequest { table }));
    }

    /// Whether we hold (region, node)'s table at `epoch` with at least `seq`.
    fn have(&self, table: &TableId, seq: u64) -> Option<std::cmp::Ordering> {
        let t = self.router.interests().table(&table.region, &table.node)?;
        let v = t.version();
        Some((v.epoch, v.seq).cmp(&(table.epoch, seq)))
    }

    fn on_snapshot_end(&mut self, from: &PeerId, table: TableId, digest: Digest) {
        let Some(inc) = self
            .peers
            .get_mut(from)
            .and_then(|p| p.incoming.remove(&table))
        else {
            return self.close(from, format!("summary end for {table:?} without a start"));
        };
        if table.region == self.cfg.region && table.node == self.cfg.node {
            return; // our own table, relayed back
        }
        let snapshot = Snapshot {
            version: InterestVersion {
                region: table.region.clone(),
                node: table.node.clone(),
                epoch: table.epoch,
                seq: inc.seq,
            },
            filters: inc.filters,
        };
        if snapshot.filters.len() as u64 != inc.count
            || InterestTable::from_snapshot(snapshot.clone()).digest() != digest
        {
            return self.request_resync(from, table);
        }
        if matches!(
            self.have(&table, inc.seq),
            Some(std::cmp::Ordering::Equal | std::cmp::Ordering::Greater)
        ) {
            return; // we are as new already
        }
        let frames = self.snapshot_frames(snapshot.clone());
        self.router.handle_snapshot(snapshot);
        for f in frames {
            self.broadcast(Some(from), &f);
        }
    }

    fn on_delta(
        &mut self,
        from: &PeerId,
        table: TableId,
        seq: u64,
        add: Vec<TopicFilter>,
        remove: Vec<TopicFilter>,
    ) {
        if table.region == self.cfg.region && table.node == self.cfg.node {
            return;
        }
        let known_epoch = self
            .router
            .interests()
            .table(&table.region, &table.node)
            .map(|t| t.version().epoch);
        match known_epoch {
            Some(e) if e > table.epoch => return, // from an older incarnation
            Some(e) if e == table.epoch => {}
            _ => return self.request_resync(from, table),
        }
        let ops: Vec<DeltaOp> = add
            .iter()
            .cloned()
            .map(DeltaOp::Add)
            .chain(remove.iter().cloned().map(DeltaOp::Remove))
            .collect();
        let delta = Delta {
            epoch: table.epoch,
            seq,
            ops,
        };
        match self.router.handle_delta(&table.region, &table.node, &delta) {
            Ok(Applied::Changed(_)) => self.broadcast(
                Some(from),
                &Frame::SummaryDelta {
                    table,
                    seq,
                    add,
                    remove,
                },
            ),
            Ok(Applied::Stale) => {}
            Err(_) => self.request_resync(from, table),
        }
    }

    fn on_digest(&mut self, from: &PeerId, table: TableId, seq: u64, digest: Digest) {
        if table.region == self.cfg.region && table.node == self.cfg.node {
            return;
        }
        match self.have(&table, seq) {
            None | Some(std::cmp::Ordering::Less) => self.request_resync(from, table),
            Some(std::cmp::Ordering::Equal) => {
                if self.router.interests().digest(&table.region, &table.node) != Some(digest) {
                    self.request_resync(from, table);
                }
            }
            Some(std::cmp::Ordering::Greater) => self.send_snapshot_of(from, &table),
        }
    }

    /// A connection went away with envelopes still queued for it.
    fn drop_pending(&mut self, peer: Peer) {
        if !peer.pending.is_empty() {
            *self.stats.drops.entry(DropReason::NoPeer).or_insert(0) += peer.pending.len() as u64;
        }
    }

    fn drop(&mut self, reason: DropReason) {
        *self.stats.drops.entry(reason).or_insert(0) += 1;
    }

    fn on_data(&mut self, from: &PeerId, batch: DataBatch) {
        let import = self
            .policy(&from.region)
            .map(|p| p.import.clone())
            .unwrap_or_default();
        *self.stats.received.entry(from.region.clone()).or_insert(0) +=
            batch.envelopes.len() as u64;
        for env in batch.envelopes {
            if !import.iter().any(|f| f.matches(&env.message.topic)) {
                self.drop(DropReason::ImportPolicy);
                continue;
            }
            if env.origin == self.cfg.region {
                self.drop(DropReason::OwnOrigin);
                continue;
            }
            match self
                .dedupe
                .check(&env.origin, &env.origin_node, env.epoch, env.seq)
            {
                Seen::New => {}
                Seen::Duplicate => {
                    self.drop(DropReason::Duplicate);
                    continue;
                }
                Seen::TooOld => {
                    self.drop(DropReason::TooOld);
                    continue;
                }
            }
            self.route(env);
        }
        self.outbox.push_back((
            from.clone(),
            Frame::Ack {
                up_to: batch.batch_seq,
            },
        ));
    }

    /// Deliver and forward an envelope that arrived here (or originated here).
    fn route(&mut self, mut env: Envelope) {
        let origin = env.origin.clone();
        let d = self
            .router
            .decide(&origin, &env.message.topic, &env.visited, env.hops);
        if d.hop_limited {
            self.drop(DropReason::HopLimit);
        }
        for _ in 0..d.skipped_visited {
            self.drop(DropReason::Visited);
        }
        if !env.visited.contains(&self.cfg.region) {
            env.visited.push(self.cfg.region.clone());
        }
        for next in &d.forward {
            let allowed = self
                .policy(next)
                .is_some_and(|p| p.export.iter().any(|f| f.matches(&env.message.topic)));
            let Some(peer) = self.carrier(next) else {
                self.drop(DropReason::NoPeer);
                continue;
            };
            if !allowed {
                continue; // clipped by export policy: by configuration, not a loss
            }
            let mut copy = env.clone();
            copy.hops += 1;
            peer.pending.push(copy);
        }
        if d.deliver_local && origin != self.cfg.region {
            self.stats.delivered += 1;
            self.events.push_back(Event::Deliver(Box::new(env)));
        }
    }

    /// A message published on the local broker matched our export
    /// subscriptions. Returns false if it was dropped (an import coming back).
    pub fn handle_publish(&mut self, _now: Instant, message: Message) -> bool {
        if message
            .properties
            .user
            .iter()
            .any(|(k, _)| k == ORIGIN_PROPERTY)
        {
            self.drop(DropReason::Reimport);
            return false;
        }
        let env = Envelope {
            origin: self.cfg.region.clone(),
            origin_node: self.cfg.node.clone(),
            epoch: self.cfg.epoch,
            seq: self.next_seq,
            hops: 0,
            visited: vec![self.cfg.region.clone()],
            transit_ms: 0,
            message,
        };
        self.next_seq += 1;
        self.route(env);
        true
    }

    /// A local client subscribed to `filter` (refcounted).
    pub fn handle_subscribe(&mut self, now: Instant, filter: TopicFilter) {
        if let Some(delta) = self.local.subscribe(filter) {
            self.publish_delta(delta);
        }
        self.note_interest(now);
    }

    /// A local subscription to `filter` went away.
    pub fn handle_unsubscribe(&mut self, now: Instant, filter: &TopicFilter) {
        if let Some(delta) = self.local.unsubscribe(filter) {
            self.publish_delta(delta);
        }
        self.note_interest(now);
    }

    fn publish_delta(&mut self, delta: Delta) {
        let region = self.cfg.region.clone();
        let node = self.cfg.node.clone();
        // Our router follows our own table like any other.
        if self.router.handle_delta(&region, &node, &delta).is_err() {
            self.router.handle_snapshot(self.local.snapshot());
        }
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for op in delta.ops {
            match op {
                DeltaOp::Add(f) => add.push(f),
                DeltaOp::Remove(f) => remove.push(f),
            }
        }
        let table = table_id(self.local.version());
        self.broadcast(
            None,
            &Frame::SummaryDelta {
                table,
                seq: delta.seq,
                add,
                remove,
            },
        );
    }

    /// Timers: LSA refresh, LSA ageing, digests.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.refresh_export(now);
        if self.next_lsa.is_some_and(|t| now >= t) {
            self.originate(now);
        }
        self.router.handle_timeout(now);
        if self.forget_departed() {
            self.note_interest(now);
        }
        if self.next_digest.is_some_and(|t| now >= t) {
            self.next_digest = Some(now + self.cfg.digest_interval);
            let (tables, sum) = self.digest_sum();
            self.broadcast(None, &Frame::DigestSum { tables, sum });
        }
    }

    /// Drop the interest tables of agents that left a region whose other
    /// agents live on: a replica taken out of service (its LSA aged out
    /// while its siblings' did not) must not keep pulling its old interest
    /// into the region forever. A region with no live agent at all keeps
    /// every table: interest outlives links, so traffic for it can wait.
    /// Decided from state (which LSAs are held), so a lagging peer that
    /// sends such a table again only has it dropped again. Returns whether
    /// anything was dropped.
    fn forget_departed(&mut self) -> bool {
        let state = (
            self.router.lsdb().version(),
            self.router.interests().revision(),
        );
        if self.departed_checked == Some(state) {
            return false;
        }
        let lsdb = self.router.lsdb();
        let live: BTreeSet<&RegionName> = lsdb.lsas().map(|l| &l.origin).collect();
        let gone: Vec<(RegionName, NodeName)> = self
            .router
            .interests()
            .tables()
            .map(InterestTable::version)
            .filter(|v| live.contains(&v.region) && lsdb.lsa(&v.region, &v.node).is_none())
            .map(|v| (v.region.clone(), v.node.clone()))
            .collect();
        for (region, node) in &gone {
            self.router.remove_interest(region, node);
        }
        self.departed_checked = Some((
            self.router.lsdb().version(),
            self.router.interests().revision(),
        ));
        !gone.is_empty()
    }

    /// (table, seq, digest) of every table held, our own included.
    fn table_digests(&self) -> Vec<(TableId, u64, Digest)> {
        self.router
            .interests()
            .tables()
            .map(|t| (table_id(t.version()), t.version().seq, t.digest()))
            .collect()
    }

    /// A fingerprint over every table held: equal on two agents exactly
    /// when they hold the same tables at the same versions (barring hash
    /// collisions), whatever the order.
    fn digest_sum(&mut self) -> (u64, u64) {
        let version = self.router.interests().revision();
        if let Some((v, cached)) = self.digest_sum_cache
            && v == version
        {
            return cached;
        }
        let computed = self.compute_digest_sum();
        self.digest_sum_cache = Some((version, computed));
        computed
    }

    fn compute_digest_sum(&self) -> (u64, u64) {
        let mut sum = 0u64;
        let mut n = 0u64;
        let mut bytes = Vec::new();
        for (t, seq, d) in self.table_digests() {
            bytes.clear();
            bytes.extend_from_slice(t.region.as_str().as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(t.node.as_str().as_bytes());
            for w in [t.epoch, seq, d.count, d.sum] {
                bytes.extend_from_slice(&w.to_le_bytes());
            }
            sum = sum.wrapping_add(mqlink_topology::interest::stable_hash(&bytes));
            n += 1;
        }
        (n, sum)
    }

    /// When [`Self::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.next_lsa,
            self.next_digest,
            self.export_due,
            self.router.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next frame to send: control frames first, in order, then one
    /// data batch per peer with everything pending for it (up to `batch_max`).
    pub fn poll_transmit(&mut self) -> Option<(PeerId, Frame)> {
        if let Some(t) = self.outbox.pop_front() {
            return Some(t);
        }
        let batch_max = self.cfg.batch_max.max(1);
        let (id, peer) = self.peers.iter_mut().find(|(_, p)| !p.pending.is_empty())?;
        let take = peer.pending.len().min(batch_max);
        let envelopes: Vec<Envelope> = peer.pending.drain(..take).collect();
        let batch_seq = peer.next_batch;
        peer.next_batch += 1;
        *self.stats.sent.entry(id.region.clone()).or_insert(0) += envelopes.len() as u64;
        Some((
            id.clone(),
            Frame::Data(DataBatch {
                batch_seq,
                envelopes,
            }),
        ))
    }

    /// The next event for the runtime.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Interest changed: recompute the export subscriptions soon. Bursts of
    /// changes (a peer's snapshots arriving one table after another) are
    /// folded into one recomputation and one resubscription.
    fn note_interest(&mut self, now: Instant) {
        if self.export_version != Some(self.router.interests().version())
            && self.export_due.is_none()
        {
            self.export_due = Some(now + self.cfg.export_debounce);
        }
    }

    fn refresh_export(&mut self, now: Instant) {
        if self.export_due.is_none_or(|t| now < t) {
            return;
        }
        self.export_due = None;
        self.export_version = Some(self.router.interests().version());
        let set = self.export_filters();
        if set != self.export {
            self.export = set.clone();
            self.events.push_back(Event::ExportChanged(set));
        }
    }

    /// What to subscribe to on the local broker: a disjoint cover of every
    /// filter some other region wants that some link's export policy can let
    /// through. Widening here only costs local broker-to-agent traffic: what
    /// crosses a link is still decided per message by the routing core and
    /// the link's export filter.
    pub fn export_filters(&self) -> BTreeSet<TopicFilter> {
        let exports: Vec<&TopicFilter> = self.cfg.links.iter().flat_map(|l| &l.export).collect();
        let wanted = self
            .router
            .interests()
            .tables()
            .filter(|t| t.version().region != self.cfg.region)
            .flat_map(|t| t.filters())
            .filter(|f| exports.iter().any(|e| e.overlaps(f)))
            .cloned();
        // Non-overlapping, so the broker sends each message once (MQTT-3.3.4-2
        // lets it send one copy per matching subscription otherwise).
        mqlink_topology::disjoint_cover(wanted)
            .into_iter()
            .collect()
    }

    /// Whether a topic is wanted by some other region (for tests and `ctl`).
    pub fn wanted_elsewhere(&mut self, topic: &TopicName) -> bool {
        let me = self.cfg.region.clone();
        !self
            .router
            .decide(&me, topic, std::slice::from_ref(&me), 0)
            .forward
            .is_empty()
    }
}
