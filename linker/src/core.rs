//! The core task: owns the sans-IO [`mqlink_proto::Agent`] and the clock.
//! Every input (frames from peers, messages from the local broker, peers
//! coming and going) arrives on one channel; after each burst of inputs the
//! task drains the agent's transmits and events and hands them to the peer
//! writers and the broker task. Draining after a burst, not after each
//! input, is what batches many envelopes into one data frame.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use mqlink_proto::{Agent, DropReason, Envelope, Event, Frame, Message, PeerId, Stats};
use mqlink_topology::{RegionName, TopicFilter};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::spool::SpoolCmd;

/// Inputs to the core task.
#[derive(Debug)]
pub enum Input {
    /// A connection to a neighbour is ready (TLS verified, control stream open).
    PeerConnected {
        /// The neighbour's region and this connection's number.
        peer: PeerId,
        /// Where to send frames for this connection.
        out: PeerOut,
        /// The connection, to close it on a protocol violation.
        conn: quinn::Connection,
    },
    /// The connection is gone.
    PeerGone {
        /// Which connection.
        peer: PeerId,
        /// Why (QUIC's close reason).
        reason: String,
    },
    /// A connection attempt to a neighbour failed (for `ctl peers`).
    DialFailed {
        /// The neighbour.
        region: RegionName,
        /// Why.
        reason: String,
    },
    /// What a neighbour's endpoint name resolved to (for `ctl peers`).
    Resolved {
        /// The neighbour.
        region: RegionName,
        /// The endpoint as configured.
        endpoint: String,
        /// Its addresses.
        addrs: Vec<std::net::SocketAddr>,
    },
    /// A question from the admin API.
    Admin(crate::admin::Query),
    /// A reload changed the links or the static interest.
    Reconfigure {
        /// Every link's policy, as configured now.
        links: Vec<mqlink_proto::LinkPolicy>,
        /// Static filters added.
        subscribe: Vec<TopicFilter>,
        /// Static filters removed.
        unsubscribe: Vec<TopicFilter>,
    },
    /// A frame arrived.
    Frame {
        /// On which connection.
        peer: PeerId,
        /// The frame.
        frame: Frame,
    },
    /// Bytes that are not a valid frame arrived: close that connection.
    PeerError {
        /// On which connection.
        peer: PeerId,
        /// What was wrong.
        reason: String,
    },
    /// The local broker delivered a message on an export subscription;
    /// QoS >= 1 carries the export task's token for its acknowledgement.
    Publish(Message, Option<u64>),
    /// The local broker acknowledged the import with this custody number.
    Delivered(u64),
    /// The dedupe mark of this custody number's delivery is durable.
    Marked(u64),
    /// The import with this custody number was lost with the broker
    /// connection: publish it again.
    DeliveryLost(u64),
    /// The broker tasks dropped a message (counted by the core); with a
    /// custody number, that delivery is over.
    Dropped(DropReason, Option<u64>),
    /// A local client subscribed (dynamic interest).
    Subscribe(TopicFilter),
    /// A local subscription went away.
    Unsubscribe(TopicFilter),
    /// The spool wrote (or, full, refused) custody entry `custody`.
    Spooled {
        /// The core's custody number.
        custody: u64,
        /// Durable now.
        ok: bool,
    },
    /// A message back from the spool.
    Unspooled {
        /// Its spool record.
        key: u64,
        /// The message.
        env: Box<Envelope>,
    },
    /// The spool answered a replay request.
    ReplayDone {
        /// It had nothing more.
        exhausted: bool,
    },
    /// Report the counters.
    Stats(oneshot::Sender<StatsReport>),
    /// Several inputs at once (the spool's replies, a harness's).
    Batch(Vec<Input>),
    /// What the broker session read, in one go (one channel operation,
    /// one wake-up); the guard counts its messages as queued for the core
    /// until they are handled.
    Exports(Vec<Input>, QueueGuard),
}

/// Messages the broker session has handed the core and the core has not
/// let go of. The input channel counts batches, not messages; the
/// session stops reading from its broker while this is at
/// [`CoreQueue::MAX`] (unless the broker owes it acknowledgements), so
/// what waits for the core is bounded in messages whatever the offered
/// load. The core also keeps the batches counted while QoS 0 envelopes
/// back up behind a full link window (`QOS0_BACKLOG`): the session then
/// stops reading and the broker holds the rest, instead of the agent
/// reading it only to drop it (`peer_queue_full`). Flat out at QoS 0
/// (`mqlink bench --compare --messages 500000`) that took the agents'
/// drops from 13-24 % to none and the rate from 153-168 k to 182-191 k
/// msgs/s; what a broker then drops beyond its own limits is its own
/// (Mosquitto logs "Outgoing messages are being dropped").
#[derive(Debug, Default)]
pub struct CoreQueue {
    count: std::sync::atomic::AtomicUsize,
    room: tokio::sync::Notify,
}

impl CoreQueue {
    /// Most messages queued for the core.
    pub const MAX: usize = 2048;

    /// Messages queued now.
    pub fn queued(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the session must wait before it reads more.
    pub fn full(&self) -> bool {
        self.queued() >= Self::MAX
    }

    /// Count `n` messages as queued until the guard is dropped.
    pub fn guard(self: &std::sync::Arc<Self>, n: usize) -> QueueGuard {
        self.count
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        QueueGuard {
            n,
            queue: self.clone(),
        }
    }

    /// Wait until the core has handled some.
    pub async fn room(&self) {
        self.room.notified().await;
    }
}

/// `n` messages queued for the core (see [`CoreQueue`]).
#[derive(Debug)]
pub struct QueueGuard {
    n: usize,
    queue: std::sync::Arc<CoreQueue>,
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        self.queue
            .count
            .fetch_sub(self.n, std::sync::atomic::Ordering::Relaxed);
        self.queue.room.notify_one();
    }
}

/// Counters and state for metrics and the demo summary.
#[derive(Debug, Clone, Default)]
pub struct StatsReport {
    /// Protocol counters.
    pub stats: Stats,
    /// Neighbours currently up.
    pub peers_up: Vec<RegionName>,
    /// Open connections per neighbouring region (one per agent of it).
    pub connections: BTreeMap<RegionName, usize>,
    /// Current export subscriptions.
    pub export: BTreeSet<TopicFilter>,
    /// What every known region wants (union over its agents' tables).
    pub interest: BTreeMap<RegionName, BTreeSet<TopicFilter>>,
    /// Connections closed for bad input.
    pub peer_errors: u64,
    /// Shortest-path trees computed so far.
    pub tree_builds: u64,
    /// Our own interest: (local filters, advertised filters, widened
    /// ones, budget).
    pub own_interest: (usize, usize, usize, Option<usize>),
    /// Why the last connection to each neighbour ended, or the last
    /// attempt failed.
    pub last_errors: BTreeMap<RegionName, String>,
    /// What each neighbour's endpoints resolved to, last time.
    pub resolved: BTreeMap<RegionName, BTreeMap<String, String>>,
}

/// Channels to one connection's writers.
#[derive(Debug, Clone)]
pub struct PeerOut {
    /// Control frames (small, never dropped).
    pub control: mpsc::UnboundedSender<Frame>,
    /// Data batches. Unbounded as a channel, bounded by the protocol: the
    /// core sends a connection at most its window of unacknowledged
    /// envelopes (`AgentConfig::window`), and a writer that cannot write
    /// holds up the acks that would open the window.
    pub data: mpsc::UnboundedSender<Frame>,
}

/// What the core asks the export session to do. Unbounded as a channel,
/// bounded by construction: releases never outnumber the messages the
/// broker has in flight to us (its Receive Maximum), and export changes
/// are debounced. (A bounded channel here could deadlock: the export task
/// waits on the core's inputs while the core waits on this channel.)
#[derive(Debug)]
pub enum ExportCmd {
    /// Acknowledge the broker messages with these tokens.
    Release(Vec<u64>),
    /// Subscribe to exactly this set of filters.
    SetExport(BTreeSet<TopicFilter>),
    /// Shutting down: take no more messages from the broker (QoS >= 1
    /// ones stay with it, unacknowledged, for the next start), keep
    /// acknowledging what the core releases.
    Drain,
}

/// What the core asks the import session to do.
#[derive(Debug)]
pub enum ImportCmd {
    /// Publish an imported message locally; report the broker's ack for
    /// `custody`.
    Deliver {
        /// The message (shared with the core's custody entry).
        env: std::sync::Arc<Envelope>,
        /// The custody number (QoS >= 1).
        custody: Option<u64>,
    },
}

/// The core's channels to the broker tasks.
#[derive(Debug, Clone)]
pub struct BrokerTx {
    /// To the export session.
    pub export: mpsc::UnboundedSender<ExportCmd>,
    /// To the import session (bounded: a slow broker slows the core).
    pub import: mpsc::Sender<ImportCmd>,
    /// To the spool thread (unbounded by construction, see
    /// [`crate::spool::run`]).
    pub spool: mpsc::UnboundedSender<crate::spool::SpoolCmd>,
}

struct PeerConn {
    out: PeerOut,
    conn: quinn::Connection,
    since: std::time::SystemTime,
}

/// Live connections by the agent's name for them. A region with replicas
/// is several connections, one per agent; the protocol core closes an
/// older connection to the same agent when a newer one says hello.
type Peers = BTreeMap<PeerId, PeerConn>;

/// Run the core until `inputs` closes.
pub async fn run(mut agent: Agent, mut inputs: mpsc::Receiver<Input>, broker: BrokerTx) {
    let mut peers = Peers::new();
    // The broker session's batches, kept counted while QoS 0 envelopes
    // back up behind a full window: the session stops reading from its
    // broker (backpressure) before the queue has to drop.
    let mut held: Vec<QueueGuard> = Vec::new();
    let mut report = StatsReport::default();
    let mut losses = LossLog::new(Instant::now());
    let mut rtt_tick = tokio::time::interval(RTT_EVERY);
    rtt_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let deadline = agent.poll_timeout().map(tokio::time::Instant::from_std);
        let first = tokio::select! {
            input = inputs.recv() => match input {
                Some(i) => Some(i),
                None => return,
            },
            () = sleep_until(deadline) => None,
            _ = rtt_tick.tick() => {
                sample_rtts(&mut agent, &peers, Instant::now());
                None
            }
        };
        let now = Instant::now();
        if let Some(input) = first {
            let mut take = |input: Input| match input {
                Input::Exports(inputs, guard) => {
                    for i in inputs {
                        handle(&mut agent, &mut peers, &mut report, now, i);
                    }
                    held.push(guard);
                }
                input => handle(&mut agent, &mut peers, &mut report, now, input),
            };
            take(input);
            // Take whatever else is already waiting: one burst, one batch per peer.
            for _ in 0..4096 {
                match inputs.try_recv() {
                    Ok(input) => take(input),
                    Err(_) => break,
                }
            }
        }
        if agent.poll_timeout().is_some_and(|t| t <= now) {
            agent.handle_timeout(now);
        }
        drain(&mut agent, &mut peers, &mut report, &broker, now).await;
        if agent.qos0_backlog() < QOS0_BACKLOG {
            held.clear();
        }
        losses.check(&agent, now);
    }
}

/// How often QUIC's RTT estimates feed the measured link costs.
const RTT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Each neighbour's lowest RTT over its ready connections, to the agent
/// (links without a configured cost cost it: `Agent::handle_rtt`).
fn sample_rtts(agent: &mut Agent, peers: &Peers, now: Instant) {
    let mut best: BTreeMap<RegionName, std::time::Duration> = BTreeMap::new();
    for (id, p) in peers {
        if agent.peer_node(id).is_none() {
            continue;
        }
        let rtt = p.conn.rtt();
        best.entry(id.region.clone())
            .and_modify(|b| *b = (*b).min(rtt))
            .or_insert(rtt);
    }
    for (region, rtt) in best {
        agent.handle_rtt(now, &region, rtt);
    }
}

/// QoS 0 envelopes behind a full window at which the core stops
/// releasing the broker session's batches (half of the agent's
/// `qos0_queue`, past which it drops).
const QOS0_BACKLOG: usize = 1024;

/// Reasons that lose a message someone wanted (the others are by design:
/// duplicates, policy, imports coming back).
const LOSSES: [DropReason; 7] = [
    DropReason::NoPeer,
    DropReason::PeerQueueFull,
    DropReason::LinkClosed,
    DropReason::Expired,
    DropReason::ExpiredInTransit,
    DropReason::HopLimit,
    DropReason::BrokerRefused,
];

/// Every loss shows in the log as well as in the counters, at most once
/// every [`LossLog::EVERY`], with the counts since the last line.
struct LossLog {
    last: Instant,
    seen: BTreeMap<DropReason, u64>,
}

impl LossLog {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    fn new(now: Instant) -> Self {
        Self {
            last: now,
            seen: BTreeMap::new(),
        }
    }

    fn check(&mut self, agent: &Agent, now: Instant) {
        if now.duration_since(self.last) < Self::EVERY {
            return;
        }
        self.last = now;
        let drops = agent.stats().drops;
        let mut new = Vec::new();
        for r in LOSSES {
            let n = drops.get(&r).copied().unwrap_or(0);
            let before = self.seen.insert(r, n).unwrap_or(0);
            if n > before {
                new.push(format!("{}={}", r.label(), n - before));
            }
        }
        if !new.is_empty() {
            warn!(
                dropped = %new.join(" "),
                "messages dropped in the last {}s (mqlink_drops_total has every reason)",
                Self::EVERY.as_secs()
            );
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn handle(
    agent: &mut Agent,
    peers: &mut Peers,
    report: &mut StatsReport,
    now: Instant,
    input: Input,
) {
    match input {
        Input::PeerConnected { peer, out, conn } => {
            info!(peer = %peer.region, conn = peer.conn, "link up");
            peers.insert(
                peer.clone(),
                PeerConn {
                    out,
                    conn,
                    since: std::time::SystemTime::now(),
                },
            );
            agent.handle_connect(now, &peer);
        }
        Input::PeerGone { peer, reason } => {
            report.last_errors.insert(peer.region.clone(), reason);
            if peers.remove(&peer).is_some() {
                info!(peer = %peer.region, conn = peer.conn, "link down");
                agent.handle_disconnect(now, &peer);
            }
        }
        Input::Reconfigure {
            links,
            subscribe,
            unsubscribe,
        } => {
            for id in agent.handle_reconfigure(now, links) {
                if let Some(p) = peers.remove(&id) {
                    info!(peer = %id.region, conn = id.conn, "link removed from the configuration: closing it");
                    p.conn
                        .close(0u32.into(), b"link removed from the configuration");
                }
            }
            for f in subscribe {
                agent.handle_subscribe(now, f);
            }
            for f in unsubscribe {
                agent.handle_unsubscribe(now, &f);
            }
        }
        Input::DialFailed { region, reason } => {
            report.last_errors.insert(region, reason);
        }
        Input::Resolved {
            region,
            endpoint,
            addrs,
        } => {
            let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            report
                .resolved
                .entry(region)
                .or_default()
                .insert(endpoint, addrs.join(", "));
        }
        Input::Admin(query) => {
            // Connection statistics only for the view that shows them.
            let wanted = matches!(query, crate::admin::Query::Peers(_));
            let conns = peers
                .iter()
                .filter(|_| wanted)
                .map(|(id, p)| {
                    let s = p.conn.stats();
                    crate::admin::Conn {
                        id: id.clone(),
                        remote: p.conn.remote_address(),
                        rtt: p.conn.rtt(),
                        bytes: (s.udp_tx.bytes, s.udp_rx.bytes),
                        since: p.since,
                    }
                })
                .collect();
            let view = crate::admin::CoreView {
                conns,
                last_errors: &report.last_errors,
                resolved: &report.resolved,
                export: &report.export,
                now,
            };
            crate::admin::answer(query, agent, &view);
        }
        Input::Frame { peer, frame } => {
            if peers.contains_key(&peer) {
                agent.handle_frame(now, &peer, frame);
            }
        }
        Input::PeerError { peer, reason } => {
            if peers.contains_key(&peer) {
                close_for_error(agent, peers, report, now, &peer, &reason, "malformed input");
            }
        }
        Input::Publish(message, token) => {
            agent.handle_publish(now, message, token);
        }
        Input::Delivered(custody) => agent.handle_delivered(now, custody),
        Input::Marked(custody) => agent.handle_marked(now, custody),
        Input::DeliveryLost(custody) => agent.handle_delivery_lost(now, custody),
        Input::Dropped(reason, custody) => agent.handle_dropped(now, reason, custody),
        Input::Spooled { custody, ok } => agent.handle_spooled(now, custody, ok),
        Input::Unspooled { key, env } => agent.handle_unspooled(now, key, *env),
        Input::ReplayDone { exhausted } => agent.handle_replay_done(now, exhausted),
        Input::Batch(inputs) | Input::Exports(inputs, _) => {
            for i in inputs {
                handle(agent, peers, report, now, i);
            }
        }
        Input::Subscribe(filter) => agent.handle_subscribe(now, filter),
        Input::Unsubscribe(filter) => agent.handle_unsubscribe(now, &filter),
        Input::Stats(reply) => {
            let mut r = report.clone();
            r.stats = agent.stats();
            r.peers_up = agent.peers_up();
            for id in peers.keys() {
                *r.connections.entry(id.region.clone()).or_insert(0) += 1;
            }
            r.tree_builds = agent.router().tree_builds();
            r.own_interest = agent.interest_summary();
            for t in agent.router().interests().tables() {
                r.interest
                    .entry(t.version().region.clone())
                    .or_default()
                    .extend(t.filters().cloned());
            }
            let _ = reply.send(r);
        }
    }
}

/// Close a connection for bad input (`what`: which kind), counting it.
fn close_for_error(
    agent: &mut Agent,
    peers: &mut Peers,
    report: &mut StatsReport,
    now: Instant,
    peer: &PeerId,
    reason: &str,
    what: &str,
) {
    report.peer_errors += 1;
    let kind = if what == "malformed input" {
        "malformed_frame"
    } else {
        "protocol_violation"
    };
    metrics::counter!("mqlink_peer_errors_total", "peer" => peer.region.to_string(), "reason" => kind)
        .increment(1);
    warn!(peer = %peer.region, %reason, "closing link: {what}");
    if let Some(p) = peers.remove(peer) {
        p.conn.close(1u32.into(), reason.as_bytes());
    }
    agent.handle_disconnect(now, peer);
}

async fn drain(
    agent: &mut Agent,
    peers: &mut Peers,
    report: &mut StatsReport,
    broker: &BrokerTx,
    now: Instant,
) {
    // Broker acknowledgements due, sent as one command.
    let mut releases = Vec::new();
    loop {
        let mut progressed = false;
        while let Some((id, frame)) = agent.poll_transmit() {
            progressed = true;
            let Some(peer) = peers.get(&id) else {
                continue;
            };
            // A closed channel means the connection is going: the core
            // hears of it (PeerGone) and takes its unacknowledged
            // envelopes back.
            if matches!(frame, Frame::Data(_)) {
                let _ = peer.out.data.send(frame);
            } else {
                let _ = peer.out.control.send(frame);
            }
        }
        while let Some(event) = agent.poll_event() {
            progressed = true;
            match event {
                Event::Deliver { env, custody } => {
                    let _ = broker
                        .import
                        .send(ImportCmd::Deliver { env, custody })
                        .await;
                }
                Event::Spool { custody, env } => {
                    let _ = broker.spool.send(SpoolCmd::Put { custody, env });
                }
                Event::SpoolAck(key) => {
                    let _ = broker.spool.send(SpoolCmd::Ack(key));
                }
                Event::Mark { custody, mark } => {
                    let _ = broker.spool.send(SpoolCmd::Mark { custody, mark });
                }
                Event::SpoolReplay(max) => {
                    let _ = broker.spool.send(SpoolCmd::Replay(max));
                }
                Event::Release(token) => releases.push(token),
                Event::ExportChanged(set) => {
                    report.export = set.clone();
                    let _ = broker.export.send(ExportCmd::SetExport(set));
                }
                Event::ClosePeer { peer, reason } => {
                    close_for_error(
                        agent,
                        peers,
                        report,
                        now,
                        &peer,
                        &reason,
                        "protocol violation",
                    );
                }
                Event::Replaced { peer } => {
                    info!(peer = %peer.region, conn = peer.conn, "link replaced by a newer connection to the same agent");
                    if let Some(p) = peers.remove(&peer) {
                        p.conn.close(0u32.into(), b"replaced by a newer connection");
                    }
                }
                Event::PeerUp { peer, node } => {
                    info!(peer = %peer.region, %node, conn = peer.conn, "peer ready")
                }
            }
        }
        if !progressed {
            if !releases.is_empty() {
                let _ = broker.export.send(ExportCmd::Release(releases));
            }
            return;
        }
    }
}
