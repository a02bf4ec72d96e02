//! The discrete-event engine. Each region is one or more agents (replicas),
//! each the production protocol core ([`mqlink_proto::Agent`], with its
//! [`mqlink_topology::Router`]); links
//! carry the frames the agents emit, with latency, jitter, loss and a
//! bandwidth queue per direction; publishers are simulated clients; faults
//! cut and restore links and regions. Time is simulated: the agents get
//! `base + now` as their clock and the engine jumps from event to event.
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
use mqlink_proto::{
    Agent, AgentConfig, Event, Frame, LinkPolicy, Message, PeerId, Properties, Qos,
};
use mqlink_topology::{Cost, Matcher, RegionIds, RegionName, TopicFilter, TopicName};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::report::{Recorder, Report};
use crate::scenario::{FaultKind, PayloadSize, Scenario};

/// How long agents take to notice a dead link (their QUIC idle timeout).
pub const DETECT: Duration = Duration::from_millis(1500);

/// Zeros to slice payloads from (no allocation per message).
static ZEROS: [u8; 65_536] = [0; 65_536];

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
}

#[derive(Debug)]
struct Region {
    name: RegionName,
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
            cost: Cost::new(u64::from(l.cost)).unwrap_or_default(),
            export: everything.clone(),
            import: everything.clone(),
        })
        .collect();
    AgentConfig::new(me.clone(), spec.node(node as u32), epoch, links)
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

    fn push(&mut self, at: Duration, ev: Ev) {
        self.queue.insert((at, self.next_id), ev);
        self.next_id += 1;
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn start_node(&mut self, i: usize, n: usize) {
        let r = &mut self.regions[i];
        r.epochs += 1;
        let epoch = r.epochs;
        let cfg = agent_config(&self.scenario, i, n, epoch);
        let now = self.base + self.now;
        let mut agent = Agent::new(now, cfg);
        for f in &self.scenario.regions[i].interest {
            agent.handle_subscribe(now, f.clone());
        }
        let node = &mut self.regions[i].nodes[n];
        node.epoch = epoch;
        node.published = 0;
        node.agent = Some(agent);
        self.after(i, n);
    }

    fn stop_node(&mut self, i: usize, n: usize) {
        let node = &mut self.regions[i].nodes[n];
        node.agent = None;
        node.timer_generation += 1;
        node.timer = None;
    }

    /// The WAN link itself works (not failed, not partitioned).
    fn link_usable(&self, l: usize) -> bool {
        let link = &self.links[l];
        link.healthy && link.unpartitioned
    }

    /// Connection `pair` over `l` can exist: the link works and both agents run.
    fn pair_usable(&self, l: usize, (na, nb): Pair) -> bool {
        let link = &self.links[l];
        self.link_usable(l)
            && self.regions[link.a].nodes[na].agent.is_some()
            && self.regions[link.b].nodes[nb].agent.is_some()
    }

    /// Every agent pair over `l`.
    fn pairs(&self, l: usize) -> Vec<Pair> {
        let link = &self.links[l];
        let (ra, rb) = (
            self.regions[link.a].nodes.len(),
            self.regions[link.b].nodes.len(),
        );
        (0..ra).flat_map(|a| (0..rb).map(move |b| (a, b))).collect()
    }

    fn conn(&mut self, l: usize, pair: Pair) -> &mut Conn {
        self.links[l].conns.entry(pair).or_default()
    }

    fn rtt(&self, l: usize) -> Duration {
        self.links[l].latency * 2
    }

    /// Connect every usable, unconnected pair over `l` after a handshake.
    fn schedule_connects(&mut self, l: usize) {
        for pair in self.pairs(l) {
            self.schedule_connect(l, pair);
        }
    }

    fn schedule_connect(&mut self, l: usize, pair: Pair) {
        if self.pair_usable(l, pair) && !self.conn(l, pair).connected {
            let generation = self.conn(l, pair).generation;
            let at = self.now + self.rtt(l) * 3 / 2;
            self.push(
                at,
                Ev::Connect {
                    link: l,
                    pair,
                    generation,
                },
            );
        }
    }

    /// The connection became unusable: in-flight frames die now; the
    /// agents notice after DETECT.
    fn cut(&mut self, l: usize, pair: Pair) {
        let conn = self.conn(l, pair);
        conn.generation += 1;
        if conn.connected {
            conn.connected = false;
            let generation = conn.generation;
            self.push(
                self.now + DETECT,
                Ev::Detect {
                    link: l,
                    pair,
                    generation,
                },
            );
        }
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
            }
        }
    }

    /// Run `f` on the agent at each end of connection `pair` over `link`
    /// (with its id for the other end).
    fn at_both_ends(
        &mut self,
        link: usize,
        pair: Pair,
        mut f: impl FnMut(&mut Agent, &PeerId, Instant),
    ) {
        let (a, b) = (self.links[link].a, self.links[link].b);
        let now = self.instant();
        let id = conn_id(link, pair);
        for (me, n, peer) in [(a, pair.0, b), (b, pair.1, a)] {
            let peer_id = PeerId::new(self.regions[peer].name.clone(), id);
            if let Some(agent) = self.regions[me].nodes[n].agent.as_mut() {
                f(agent, &peer_id, now);
            }
            self.after(me, n);
        }
    }

    fn publish(&mut self, w: usize, p: u32) {
        // Short borrows of the workload: no per-message clone of it.
        let (rate, payload_size, qos_level) = {
            let wl = &self.scenario.workloads[w];
            (wl.rate, wl.payload, wl.qos)
        };
        // Next message: fixed rate with up to 10 % jitter, so publishers do not march in lockstep.
        let next = (0.95 + 0.1 * self.rng.random_range(0.0..1.0)) / rate;
        self.push(
            self.now + Duration::from_secs_f64(next),
            Ev::Publish {
                workload: w,
                publisher: p,
            },
        );
        let wl = &self.scenario.workloads[w];
        let Some(&origin) = self.rec.index.get(&wl.region) else {
            return;
        };
        // The broker hands the export to one live agent, in turn (shared subscription).
        let nodes = self.regions[origin].nodes.len();
        let start = self.regions[origin].turn;
        let Some(n) = (0..nodes)
            .map(|k| (start + k) % nodes)
            .find(|n| self.regions[origin].nodes[*n].agent.is_some())
        else {
            return;
        };
        self.regions[origin].turn = (n + 1) % nodes;
        let topic_text = wl
            .topic
            .replace("{id}", &p.to_string())
            .replace("{region}", wl.region.as_str());
        let Ok(topic) = TopicName::new(&topic_text) else {
            return;
        };
        let size = match payload_size {
            PayloadSize::Fixed(n) => n,
            PayloadSize::Uniform(a, b) => self.rng.random_range(a..=b),
        } as usize;
        let payload = if size <= ZEROS.len() {
            Bytes::from_static(&ZEROS[..size])
        } else {
            Bytes::from(vec![0u8; size])
        };
        let qos = match qos_level {
            0 => Qos::AtMostOnce,
            1 => Qos::AtLeastOnce,
            _ => Qos::ExactlyOnce,
        };
        let msg = Message {
            topic: topic.clone(),
            payload,
            qos,
            retain: false,
            properties: Properties::default(),
        };
        let wanted = self.wanted.matches(&topic);
        let origin_id = self.ids.intern(&self.regions[origin].name);
        let expected: Vec<usize> = wanted
            .iter()
            .filter(|id| *id != origin_id)
            .filter_map(|id| self.region_index(self.ids.name(id)).copied())
            .collect();
        let now = self.instant();
        let node = &mut self.regions[origin].nodes[n];
        let Some(agent) = node.agent.as_mut() else {
            return;
        };
        if agent.handle_publish(now, msg, None) {
            node.published += 1;
            // Epochs are unique within a region, so (origin, epoch, seq) names one message.
            let key = (origin, node.epoch, node.published);
            let direct = self.direct_alternatives(origin, &expected, size + topic_text.len());
            self.rec.published(key, self.now, &expected, direct);
        }
        self.after(origin, n);
    }

    fn region_index(&self, name: &RegionName) -> Option<&usize> {
        self.rec.index.get(name)
    }

    /// For the comparison: what a static flood bridge and a one-hop mesh
    /// would do with this message, given which links are usable now.
    fn direct_alternatives(
        &self,
        origin: usize,
        expected: &[usize],
        size: usize,
    ) -> crate::report::Alternatives {
        let mut alt = crate::report::Alternatives::default();
        // MQTT PUBLISH header and topic length (about 20 bytes) plus the same
        // per-packet overhead (40) that mqlink frames are charged.
        let bridge_bytes = size as u64 + 60;
        for (l, link) in self.links.iter().enumerate() {
            if link.a != origin && link.b != origin {
                continue;
            }
            let peer = link.other(origin);
            if self.link_usable(l) && self.regions[peer].up() {
                // Flood bridge: everything goes to every neighbour.
                alt.flood_links.push(l);
                if expected.contains(&peer) {
                    alt.flood_delivered.push(peer);
                }
                // One-hop mesh: only to neighbours that want it.
                if expected.contains(&peer) {
                    alt.mesh_links.push(l);
                    alt.mesh_delivered.push(peer);
                }
            }
        }
        alt.bytes = bridge_bytes;
        alt
    }

    /// Drain agent `n` of region `i` after it handled something.
    fn after(&mut self, i: usize, n: usize) {
        let mut out = Vec::new();
        let mut delivered = Vec::new();
        let mut closes = Vec::new();
        let now = self.instant();
        {
            let region = &mut self.regions[i].nodes[n];
            let Some(agent) = region.agent.as_mut() else {
                return;
            };
            // The simulated broker acknowledges a delivery at once, which
            // lets the agent release its custody and acknowledge upstream.
            loop {
                while let Some(t) = agent.poll_transmit() {
                    out.push(t);
                }
                let mut acks = Vec::new();
                while let Some(ev) = agent.poll_event() {
                    // Every event the runtime acts on, as it does: the
                    // broker acknowledges deliveries at once (no broker
                    // here sends to the agent with custody: there is no
                    // Release to act on), and a connection the agent
                    // closes is closed.
                    match ev {
                        Event::Deliver { env, custody } => {
                            delivered.push(env);
                            acks.extend(custody);
                        }
                        Event::ClosePeer { peer, .. } => {
                            self.rec.connection_closed();
                            closes.push(peer);
                        }
                        Event::Replaced { peer } => closes.push(peer),
                        Event::Release(_)
                        | Event::PeerUp { .. }
                        | Event::ExportChanged(_)
                        | Event::Spool { .. }
                        | Event::SpoolAck(_)
                        | Event::SpoolReplay(_) => {}
                    }
                }
                if acks.is_empty() {
                    break;
                }
                for c in acks {
                    agent.handle_delivered(now, c);
                }
            }
            let version = agent.router().lsdb().version();
            if version != region.lsdb_version {
                region.lsdb_version = version;
                let mut h = rustc_hash::FxHasher::default();
                if let Some(g) = agent.router().graph() {
                    for (a, b, c) in g.edges() {
                        (g.regions()[a].as_str(), g.regions()[b].as_str(), c).hash(&mut h);
                    }
                }
                let fp = h.finish();
                if fp != region.graph_fingerprint {
                    region.graph_fingerprint = fp;
                    self.rec.topology_changed(self.now);
                }
            }
            let next = agent
                .poll_timeout()
                .map(|t| t.saturating_duration_since(self.base));
            if next != region.timer {
                region.timer = next;
                region.timer_generation += 1;
                if let Some(at) = next {
                    let generation = region.timer_generation;
                    let at = at.max(self.now);
                    self.queue.insert(
                        (at, self.next_id),
                        Ev::Timer {
                            region: i,
                            node: n,
                            generation,
                        },
                    );
                    self.next_id += 1;
                }
            }
        }
        for env in delivered {
            let origin = self.region_index(&env.origin).copied();
            if let Some(origin) = origin {
                self.rec
                    .delivered((origin, env.epoch, env.seq), i, self.now);
            }
        }
        for (peer, frame) in out {
            let (l, pair) = pair_of(peer.conn);
            let Some(link) = self.links.get(l) else {
                continue;
            };
            if !(link.a == i || link.b == i) {
                continue;
            }
            let to = link.other(i);
            self.send(l, pair, i, to, frame);
        }
        for peer in closes {
            let (l, pair) = pair_of(peer.conn);
            if l < self.links.len() && self.conn(l, pair).connected {
                // Closed at once at both ends (QUIC's close frame), then
                // dialled again like any lost connection.
                let conn = self.conn(l, pair);
                conn.connected = false;
                conn.generation += 1;
                self.at_both_ends(l, pair, |agent, peer, now| {
                    agent.handle_disconnect(now, peer)
                });
                self.schedule_connect(l, pair);
            }
        }
    }

    fn send(&mut self, l: usize, pair: Pair, from: usize, to: usize, frame: Frame) {
        let size = mqlink_proto::encoded_len(&frame) as u64 + 40; // + QUIC/UDP/IP headers per frame, roughly
        let dir = self.links[l].dir(from);
        self.rec.sent(l, dir, &frame, size);
        let conn = *self.conn(l, pair);
        if !conn.connected {
            self.rec.frame_lost(&frame);
            return;
        }
        let link = &self.links[l];
        let tx = Duration::from_secs_f64(size as f64 * 8.0 / link.bandwidth_bps as f64);
        let start = link.busy_until[dir].max(self.now);
        let done = start + tx;
        let mut delay = link.latency;
        if !link.jitter.is_zero() {
            delay += Duration::from_secs_f64(
                self.rng.random_range(0.0..1.0) * link.jitter.as_secs_f64(),
            );
        }
        let mut retransmits = 0;
        while link.loss > 0.0 && retransmits < 20 && self.rng.random_bool(link.loss) {
            retransmits += 1;
        }
        delay += link.latency * 2 * retransmits;
        let arrival = (done + delay).max(link.last_arrival[dir]);
        let generation = conn.generation;
        let link = &mut self.links[l];
        link.busy_until[dir] = done;
        link.last_arrival[dir] = arrival;
        self.push(
            arrival,
            Ev::Arrive {
                link: l,
                pair,
                to,
                generation,
                frame,
            },
        );
    }

    fn set_partitioned(&mut self, l: usize, cut: bool) {
        self.change(l, |s| s.links[l].unpartitioned = !cut);
    }

    /// Apply `f` to link `l`'s state.
    fn change(&mut self, l: usize, f: impl FnOnce(&mut Self)) {
        self.change_links(vec![l], f);
    }

    /// Apply `f` to agents of region `r`, refreshing every link touching it.
    fn change_region(&mut self, r: usize, f: impl FnOnce(&mut Self)) {
        let touching: Vec<usize> = (0..self.links.len())
            .filter(|l| self.links[*l].a == r || self.links[*l].b == r)
            .collect();
        self.change_links(touching, f);
    }

    /// Apply `f`, then cut the connections over `links` it made unusable
    /// and schedule those it made usable.
    fn change_links(&mut self, links: Vec<usize>, f: impl FnOnce(&mut Self)) {
        let before: Vec<(usize, Pair, bool)> = links
            .iter()
            .flat_map(|&l| self.pairs(l).into_iter().map(move |p| (l, p)))
            .map(|(l, p)| (l, p, self.pair_usable(l, p)))
            .collect();
        f(self);
        for (l, pair, was) in before {
            let is = self.pair_usable(l, pair);
            if was && !is {
                self.cut(l, pair);
            } else if !was && is {
                self.conn(l, pair).generation += 1;
                self.schedule_connect(l, pair);
            }
        }
    }

    fn fault(&mut self, i: usize) {
        let kind = self.scenario.faults[i].kind.clone();
        self.rec.fault(self.now, &kind);
        let idx = |s: &Self, r: &RegionName| s.region_index(r).copied();
        match kind {
            FaultKind::LinkDown(a, b) | FaultKind::LinkUp(a, b) => {
                let up = matches!(self.scenario.faults[i].kind, FaultKind::LinkUp(..));
                let (Some(a), Some(b)) = (idx(self, &a), idx(self, &b)) else {
                    return;
                };
                let Some(&l) = self.link_of.get(&(a, b)) else {
                    return;
                };
                self.change(l, |s| s.links[l].healthy = up);
            }
            FaultKind::RegionDown(r) => {
                let Some(r) = idx(self, &r) else { return };
                self.change_region(r, |s| {
                    for n in 0..s.regions[r].nodes.len() {
                        s.stop_node(r, n);
                    }
                });
            }
            FaultKind::RegionUp(r) => {
                let Some(r) = idx(self, &r) else { return };
                self.change_region(r, |s| {
                    for n in 0..s.regions[r].nodes.len() {
                        if s.regions[r].nodes[n].agent.is_none() {
                            s.start_node(r, n);
                        }
                    }
                });
            }
            FaultKind::ReplicaDown(r, n) | FaultKind::ReplicaUp(r, n) => {
                let up = matches!(self.scenario.faults[i].kind, FaultKind::ReplicaUp(..));
                let Some(r) = idx(self, &r) else { return };
                let n = n as usize;
                if n >= self.regions[r].nodes.len()
                    || self.regions[r].nodes[n].agent.is_some() == up
                {
                    return;
                }
                self.change_region(r, |s| {
                    if up {
                        s.start_node(r, n);
                    } else {
                        s.stop_node(r, n);
                    }
                });
            }
            FaultKind::Partition(groups) => {
                let group_of: BTreeMap<usize, usize> = groups
                    .iter()
                    .enumerate()
                    .flat_map(|(g, rs)| {
                        rs.iter()
                            .filter_map(|r| idx(self, r))
                            .map(move |r| (r, g))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                for l in 0..self.links.len() {
                    let (a, b) = (self.links[l].a, self.links[l].b);
                    let cut = match (group_of.get(&a), group_of.get(&b)) {
                        (Some(x), Some(y)) => x != y,
                        _ => false,
                    };
                    if cut {
                        self.set_partitioned(l, true);
                    }
                }
            }
            FaultKind::Heal => {
                for l in 0..self.links.len() {
                    if !self.links[l].unpartitioned {
                        self.set_partitioned(l, false);
                    }
                }
            }
        }
    }

    /// The tree of every origin, as edges (parent, child), from the first
    /// running agent's view (every agent computes the same trees).
    fn routes(&mut self) -> BTreeMap<String, Vec<(String, String)>> {
        let names: Vec<RegionName> = self.regions.iter().map(|r| r.name.clone()).collect();
        let mut out = BTreeMap::new();
        let Some(agent) = self
            .regions
            .iter_mut()
            .flat_map(|r| r.nodes.iter_mut())
            .find_map(|n| n.agent.as_mut())
        else {
            return out;
        };
        for origin in &names {
            let Some((graph, tree)) = agent.router().tree(origin) else {
                continue;
            };
            let mut edges: Vec<(String, String)> = (0..graph.len())
                .filter_map(|p| {
                    tree.parent(p).map(|q| {
                        (
                            graph.regions()[q].to_string(),
                            graph.regions()[p].to_string(),
                        )
                    })
                })
                .collect();
            edges.sort();
            out.insert(origin.to_string(), edges);
        }
        out
    }
}
