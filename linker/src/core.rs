//! The core task: owns the sans-IO [`mqlink_proto::Agent`] and the clock.
//! Every input (frames from peers, messages from the local broker, peers
//! coming and going) arrives on one channel; after each burst of inputs the
//! task drains the agent's transmits and events and hands them to the peer
//! writers and the broker task. Draining after a burst, not after each
//! input, is what batches many envelopes into one data frame.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use mqlink_proto::{Agent, Envelope, Event, Frame, Message, PeerId, Stats};
use mqlink_topology::{RegionName, TopicFilter};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

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
    /// The local broker delivered a message on an export subscription.
    Publish(Message),
    /// A local client subscribed (dynamic interest).
    Subscribe(TopicFilter),
    /// A local subscription went away.
    Unsubscribe(TopicFilter),
    /// Report the counters.
    Stats(oneshot::Sender<StatsReport>),
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
    /// Data frames dropped because a peer's queue was full.
    pub queue_full_drops: u64,
    /// Connections closed for bad input.
    pub peer_errors: u64,
    /// Shortest-path trees computed so far.
    pub tree_builds: u64,
}

/// Channels to one connection's writers.
#[derive(Debug, Clone)]
pub struct PeerOut {
    /// Control frames (small, never dropped).
    pub control: mpsc::UnboundedSender<Frame>,
    /// Data batches (bounded: a slow peer loses QoS 0 data, counted, rather
    /// than growing memory without bound).
    pub data: mpsc::Sender<Frame>,
}

/// What the core asks the broker task to do.
#[derive(Debug)]
pub enum BrokerCmd {
    /// Publish an imported message locally.
    Deliver(Box<Envelope>),
    /// Subscribe to exactly this set of filters.
    SetExport(BTreeSet<TopicFilter>),
}

struct PeerConn {
    out: PeerOut,
    conn: quinn::Connection,
}

/// Live connections by the agent's name for them. A region with replicas
/// is several connections, one per agent; the protocol core closes an
/// older connection to the same agent when a newer one says hello.
type Peers = BTreeMap<PeerId, PeerConn>;

/// Run the core until `inputs` closes.
pub async fn run(
    mut agent: Agent,
    mut inputs: mpsc::Receiver<Input>,
    broker: mpsc::Sender<BrokerCmd>,
) {
    let mut peers = Peers::new();
    let mut report = StatsReport::default();
    loop {
        let deadline = agent.poll_timeout().map(tokio::time::Instant::from_std);
        let first = tokio::select! {
            input = inputs.recv() => match input {
                Some(i) => Some(i),
                None => return,
            },
            () = sleep_until(deadline) => None,
        };
        let now = Instant::now();
        if let Some(input) = first {
            handle(&mut agent, &mut peers, &mut report, now, input);
            // Take whatever else is already waiting: one burst, one batch per peer.
            for _ in 0..4096 {
                match inputs.try_recv() {
                    Ok(input) => handle(&mut agent, &mut peers, &mut report, now, input),
                    Err(_) => break,
                }
            }
        }
        if agent.poll_timeout().is_some_and(|t| t <= now) {
            agent.handle_timeout(now);
        }
        drain(&mut agent, &mut peers, &mut report, &broker, now).await;
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
            peers.insert(peer.clone(), PeerConn { out, conn });
            agent.handle_connect(now, &peer);
        }
        Input::PeerGone { peer } => {
            if peers.remove(&peer).is_some() {
                info!(peer = %peer.region, conn = peer.conn, "link down");
                agent.handle_disconnect(now, &peer);
            }
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
        Input::Publish(message) => {
            agent.handle_publish(now, message);
        }
        Input::Subscribe(filter) => agent.handle_subscribe(now, filter),
        Input::Unsubscribe(filter) => agent.handle_unsubscribe(now, &filter),
        Input::Stats(reply) => {
            let mut r = report.clone();
            r.stats = agent.stats().clone();
            r.peers_up = agent.peers_up();
            for id in peers.keys() {
                *r.connections.entry(id.region.clone()).or_insert(0) += 1;
            }
            r.tree_builds = agent.router().tree_builds();
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
    metrics::counter!("mqlink_peer_errors_total", "peer" => peer.region.to_string()).increment(1);
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
    broker: &mpsc::Sender<BrokerCmd>,
    now: Instant,
) {
    loop {
        let mut progressed = false;
        while let Some((id, frame)) = agent.poll_transmit() {
            progressed = true;
            let Some(peer) = peers.get(&id) else {
                continue;
            };
            if matches!(frame, Frame::Data(_)) {
                if peer.out.data.try_send(frame).is_err() {
                    report.queue_full_drops += 1;
                    metrics::counter!("mqlink_drops_total", "reason" => "peer_queue_full")
                        .increment(1);
                }
            } else {
                let _ = peer.out.control.send(frame);
            }
        }
        while let Some(event) = agent.poll_event() {
            progressed = true;
            match event {
                Event::Deliver(env) => {
                    let _ = broker.send(BrokerCmd::Deliver(env)).await;
                }
                Event::ExportChanged(set) => {
                    report.export = set.clone();
                    let _ = broker.send(BrokerCmd::SetExport(set)).await;
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
            return;
        }
    }
}
