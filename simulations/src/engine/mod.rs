//! The discrete-event engine. Each region is one or more agents (replicas),
//! each the production protocol core ([`mqlink_proto::Agent`], with its
//! [`mqlink_topology::Router`]); links
//! carry the frames the agents emit, with latency, jitter, loss and a
//! bandwidth queue per direction; publishers are simulated clients; faults
//! cut and restore links and regions. Time is simulated: the agents get
//! `base + now` as their clock and the engine jumps from event to event.
//!
//! Layout: this file holds the state and the event loop; `network` the
//! links and connections, `faults` the fault schedule, `workload` the
//! publishers and the baselines, `observe` the draining of agents.
//!
//! Modelling choices:
//! - A link direction is one ordered stream (like the control stream):
//!   frames leave in order after queueing behind earlier frames at the
//!   link's bandwidth, and arrive in order after latency + jitter.
//! - Loss models QUIC: a lost packet is retransmitted after one round trip,
//!   so loss adds delay (repeatedly, with the loss probability), never drops.
//! - A failed link is noticed by both agents after [`DETECT`] (the agent's
//!   QUIC idle timeout); frames in flight or sent meanwhile are lost.
//!   A restored link connects after one and a half round trips (handshake).
//! - Messages whose region's broker is down are not published at all.
//! - Replicas: each agent of a region connects to each agent of every
//!   neighbouring region, all over the one region link (sharing its
//!   bandwidth queue and order); the region's broker hands exports to its
//!   live agents in turn, as a shared subscription does. A stopped replica
//!   is noticed by its peers after [`DETECT`], like a cut link.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqlink_proto::dedupe::Dedupe;
use mqlink_proto::{
    Agent, AgentConfig, Envelope, Event, Frame, LinkPolicy, Message, PeerId, Properties, Qos,
};
use mqlink_topology::{Cost, Matcher, RegionIds, RegionName, TopicFilter, TopicName};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::report::{Recorder, Report};
use crate::scenario::{FaultKind, PayloadSize, Scenario};

mod faults;
mod network;
mod observe;
mod workload;

/// How long agents take to notice a dead link (their QUIC idle timeout).
pub const DETECT: Duration = Duration::from_millis(1500);

/// Zeros to slice payloads from (no allocation per message).
static ZEROS: [u8; 65_536] = [0; 65_536];

/// How often a connection's round-trip time is sampled (the runtime's
/// rate).
const RTT_EVERY: Duration = Duration::from_secs(1);

/// One connection over a link: (agent index at end `a`, agent index at end `b`).
type Pair = (usize, usize);

#[derive(Debug)]
enum Ev {
    /// Publisher `publisher` of workload `workload` publishes, and schedules its next message.
    Publish { workload: usize, publisher: u32 },
    /// A frame arrives over connection `pair` of `link` at end `to`, if the
    /// connection `generation` is still current.
    Arrive {
        link: usize,
        pair: Pair,
        to: usize,
        generation: u64,
        frame: Frame,
    },
    /// An agent's timer (stale if the agent's next timer moved).
    Timer {
        region: usize,
        node: usize,
        generation: u64,
    },
    /// Fault number `i` of the schedule.
    Fault(usize),
    /// Both ends of a connection notice it is down (if still in `generation`).
    Detect {
        link: usize,
        pair: Pair,
        generation: u64,
    },
    /// Both ends of a connection connect (if still in `generation` and usable).
    Connect {
        link: usize,
        pair: Pair,
        generation: u64,
    },
    /// Both ends sample the connection's round-trip time (once a second
    /// while it lasts, on links without a configured cost), as the
    /// runtime reads QUIC's estimate.
    Rtt {
        link: usize,
        pair: Pair,
        generation: u64,
    },
}

/// One agent of a region.
#[derive(Debug, Default)]
struct Node {
    /// The production core; `None` while the agent is down.
    agent: Option<Agent>,
    /// Epoch of the current agent (unique within the region).
    epoch: u64,
    /// Envelope sequence numbers the agent has handed out (mirrors its counter).
    published: u64,
    /// When the agent's timer is due, and its generation.
    timer: Option<Duration>,
    timer_generation: u64,
    /// LSDB version last seen, and a fingerprint of the graph it gave, to
    /// time convergence (LSA refreshes change the version, not the graph).
    lsdb_version: u64,
    graph_fingerprint: u64,
    /// The dedupe marks the runtime keeps on disk for this agent
    /// (`Event::Mark`): they outlive its restarts, as the spool's do.
    marks: Dedupe,
    /// The agent's spool: (key, message, handed back to the running
    /// agent yet). On disk: it outlives the agent's restarts.
    spool: Vec<(u64, Envelope, bool)>,
}

/// A message the broker keeps for an agent: the message, the key it was
/// published under, the agent (node) it was handed to.
type Unreleased = (Message, (usize, u64, u64), usize);

#[derive(Debug)]
struct Region {
    name: RegionName,
    /// The broker's QoS >= 1 messages not yet acknowledged by an agent,
    /// by token: (the message, the key it was published under, the agent
    /// it was handed to). Kept across agent and broker restarts
    /// (persistent sessions, persistence on), handed again to the same
    /// agent when it starts again.
    unreleased: BTreeMap<u64, Unreleased>,
    /// Its agents (replicas).
    nodes: Vec<Node>,
    /// Epochs handed out so far (every agent start takes the next).
    epochs: u64,
    /// Which live agent the broker hands the next export to (round robin).
    turn: usize,
}

impl Region {
    fn up(&self) -> bool {
        self.nodes.iter().any(|n| n.agent.is_some())
    }
}

/// State of one connection (agent pair) over a link.
#[derive(Debug, Default, Clone, Copy)]
struct Conn {
    /// Whether the two agents currently have the connection.
    connected: bool,
    /// Bumped whenever its state changes.
    generation: u64,
}

#[derive(Debug)]
struct Link {
    a: usize,
    b: usize,
    latency: Duration,
    jitter: Duration,
    loss: f64,
    bandwidth_bps: u64,
    /// Whether the agents measure its cost (none configured).
    measured: bool,
    /// Not failed by a link fault.
    healthy: bool,
    /// Not cut by a partition.
    unpartitioned: bool,
    /// Connections between the agents at its ends.
    conns: BTreeMap<Pair, Conn>,
    /// Per direction (0: a->b, 1: b->a): when the sender's queue drains, and the last arrival time.
    busy_until: [Duration; 2],
    last_arrival: [Duration; 2],
}

impl Link {
    fn dir(&self, from: usize) -> usize {
        usize::from(from != self.a)
    }
    fn other(&self, from: usize) -> usize {
        if from == self.a { self.b } else { self.a }
    }
}

/// A simulation in progress.
pub struct Sim {
    scenario: Scenario,
    rng: ChaCha8Rng,
    base: Instant,
    now: Duration,
    queue: BTreeMap<(Duration, u64), Ev>,
    next_id: u64,
    /// Next broker token (for QoS >= 1 messages handed to agents).
    next_token: u64,
    /// Next spool record key.
    next_spool_key: u64,
    regions: Vec<Region>,
    links: Vec<Link>,
    link_of: BTreeMap<(usize, usize), usize>,
    /// Who wants what (the scenario's interest), for expected deliveries.
    wanted: Matcher,
    ids: RegionIds,
    rec: Recorder,
}

/// The connection number both agents of `pair` use for it over `link`.
fn conn_id(link: usize, (a, b): Pair) -> u64 {
    ((link as u64) << 32) | ((a as u64) << 16) | b as u64
}

fn pair_of(conn: u64) -> (usize, Pair) {
    (
        (conn >> 32) as usize,
        (((conn >> 16) & 0xffff) as usize, (conn & 0xffff) as usize),
    )
}

fn agent_config(s: &Scenario, region: usize, node: usize, epoch: u64) -> AgentConfig {
    let spec = &s.regions[region];
    let me = &spec.name;
    let everything = TopicFilter::new("#").ok().into_iter().collect::<Vec<_>>();
    let links = s
        .links
        .iter()
        .filter(|l| l.a == *me || l.b == *me)
        .map(|l| LinkPolicy {
            region: if l.a == *me { l.b.clone() } else { l.a.clone() },
            cost: l.cost.and_then(|c| Cost::new(u64::from(c)).ok()),
            export: everything.clone(),
            import: everything.clone(),
        })
        .collect();
    let mut cfg = AgentConfig::new(me.clone(), spec.node(node as u32), epoch, links);
    cfg.durable_marks = true;
    cfg.durable_marks = true;
    cfg.spool = true;
    cfg
}

impl Sim {
    /// Prepare a run of `scenario` with `seed`.
    pub fn new(scenario: Scenario, seed: u64) -> Self {
        let base = Instant::now();
        let mut ids = RegionIds::default();
        let mut wanted = Matcher::new();
        let names: Vec<RegionName> = scenario.regions.iter().map(|r| r.name.clone()).collect();
        for r in &scenario.regions {
            let id = ids.intern(&r.name);
            for f in &r.interest {
                wanted.insert(f, id);
            }
        }
        let index: BTreeMap<&RegionName, usize> =
            names.iter().enumerate().map(|(i, n)| (n, i)).collect();
        let mut links = Vec::new();
        let mut link_of = BTreeMap::new();
        for l in &scenario.links {
            let (Some(&a), Some(&b)) = (index.get(&l.a), index.get(&l.b)) else {
                continue;
            };
            link_of.insert((a, b), links.len());
            link_of.insert((b, a), links.len());
            links.push(Link {
                a,
                b,
                latency: l.latency,
                jitter: l.jitter,
                loss: l.loss,
                bandwidth_bps: l.bandwidth_bps.max(1),
                measured: l.cost.is_none(),
                healthy: true,
                unpartitioned: true,
                conns: BTreeMap::new(),
                busy_until: [Duration::ZERO; 2],
                last_arrival: [Duration::ZERO; 2],
            });
        }
        let rec = Recorder::new(&scenario, &names);
        let mut sim = Sim {
            rng: ChaCha8Rng::seed_from_u64(seed),
            base,
            now: Duration::ZERO,
            queue: BTreeMap::new(),
            next_id: 0,
            next_token: 1,
            next_spool_key: 1,
            regions: Vec::new(),
            links,
            link_of,
            wanted,
            ids,
            rec,
            scenario,
        };
        for (i, name) in names.iter().enumerate() {
            let replicas = sim.scenario.regions[i].replicas.max(1) as usize;
            sim.regions.push(Region {
                name: name.clone(),
                nodes: (0..replicas).map(|_| Node::default()).collect(),
                epochs: 0,
                turn: 0,
                unreleased: BTreeMap::new(),
            });
            for n in 0..replicas {
                sim.start_node(i, n);
            }
        }
        for l in 0..sim.links.len() {
            sim.schedule_connects(l);
        }
        for (w, wl) in sim.scenario.workloads.clone().iter().enumerate() {
            for p in 0..wl.publishers {
                // Spread publishers' first messages over one interval.
                let first = sim.rng.random_range(0.0..1.0) / wl.rate;
                let at = sim.scenario.warmup + Duration::from_secs_f64(first);
                sim.push(
                    at,
                    Ev::Publish {
                        workload: w,
                        publisher: p,
                    },
                );
            }
        }
        for i in 0..sim.scenario.faults.len() {
            let at = sim.scenario.faults[i].at;
            sim.push(at, Ev::Fault(i));
        }
        sim
    }

    /// The next RTT sample of a connection, [`RTT_EVERY`] from now.
    fn next_rtt(&mut self, link: usize, pair: Pair, generation: u64) {
        self.push(
            self.now + RTT_EVERY,
            Ev::Rtt {
                link,
                pair,
                generation,
            },
        );
    }

    fn push(&mut self, at: Duration, ev: Ev) {
        self.queue.insert((at, self.next_id), ev);
        self.next_id += 1;
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// Run to the end; `progress` is called now and then with the fraction done.
    pub fn run(mut self, mut progress: impl FnMut(f64)) -> Report {
        let end = self.scenario.duration;
        // Publishing stops at the end; messages in flight then get a grace
        // period to land, so they count as delivered or lost, not as cut off.
        let drain_until = end + Duration::from_secs(10);
        let mut handled = 0u64;
        while let Some(((at, _), ev)) = self.queue.pop_first() {
            if at > drain_until {
                break;
            }
            if at > end && matches!(ev, Ev::Publish { .. }) {
                continue;
            }
            self.now = at;
            self.handle(ev);
            handled += 1;
            if handled.is_multiple_of(200_000) {
                progress(at.as_secs_f64() / end.as_secs_f64().max(1e-9));
            }
        }
        let routes = self.routes();
        self.rec.finish(&self.scenario, routes)
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Publish {
                workload,
                publisher,
            } => self.publish(workload, publisher),
            Ev::Arrive {
                link,
                pair,
                to,
                generation,
                frame,
            } => {
                let conn = *self.conn(link, pair);
                if conn.generation != generation || !conn.connected {
                    self.rec.frame_lost(&frame);
                    return;
                }
                let from = self.links[link].other(to);
                let peer = PeerId::new(self.regions[from].name.clone(), conn_id(link, pair));
                let n = if to == self.links[link].a {
                    pair.0
                } else {
                    pair.1
                };
                let now = self.instant();
                if let Some(agent) = self.regions[to].nodes[n].agent.as_mut() {
                    agent.handle_frame(now, &peer, frame);
                    self.after(to, n);
                }
            }
            Ev::Timer {
                region,
                node,
                generation,
            } => {
                let now = self.instant();
                let nd = &mut self.regions[region].nodes[node];
                if nd.timer_generation != generation {
                    return;
                }
                nd.timer = None;
                if let Some(agent) = nd.agent.as_mut() {
                    agent.handle_timeout(now);
                    self.after(region, node);
                }
            }
            Ev::Fault(i) => self.fault(i),
            Ev::Detect {
                link,
                pair,
                generation,
            } => {
                if self.conn(link, pair).generation != generation {
                    return;
                }
                self.at_both_ends(link, pair, |agent, peer, now| {
                    agent.handle_disconnect(now, peer)
                });
                self.schedule_connect(link, pair);
            }
            Ev::Connect {
                link,
                pair,
                generation,
            } => {
                let conn = *self.conn(link, pair);
                if conn.generation != generation || !self.pair_usable(link, pair) || conn.connected
                {
                    return;
                }
                let conn = self.conn(link, pair);
                conn.connected = true;
                conn.generation += 1;
                self.at_both_ends(link, pair, |agent, peer, now| {
                    // A reconnect after an undetected cut: the agent first drops the old connection.
                    agent.handle_disconnect(now, peer);
                    agent.handle_connect(now, peer);
                });
                if self.links[link].measured {
                    let generation = self.conn(link, pair).generation;
                    self.next_rtt(link, pair, generation);
                }
            }
            Ev::Rtt {
                link,
                pair,
                generation,
            } => {
                let conn = *self.conn(link, pair);
                if conn.generation != generation || !conn.connected {
                    return;
                }
                let l = &self.links[link];
                let (latency, jitter) = (l.latency, l.jitter);
                // Each way: latency plus a uniform share of the jitter.
                let mut rtt = latency * 2;
                for _ in 0..2 {
                    rtt += jitter.mul_f64(self.rng.random_range(0.0..1.0));
                }
                self.at_both_ends(link, pair, |agent, peer, now| {
                    agent.handle_rtt(now, &peer.region, rtt);
                });
                self.next_rtt(link, pair, generation);
            }
        }
    }
}
