//! The discrete-event engine. Each region is the production protocol core
//! ([`mqlink_proto::Agent`], with its [`mqlink_topology::Router`]); links
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

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqlink_proto::{Agent, AgentConfig, Event, Frame, LinkPolicy, Message, Properties, Qos};
use mqlink_topology::{Cost, Matcher, NodeName, RegionIds, RegionName, TopicFilter, TopicName};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::report::{Recorder, Report};
use crate::scenario::{FaultKind, PayloadSize, Scenario};

/// How long agents take to notice a dead link (their QUIC idle timeout).
pub const DETECT: Duration = Duration::from_millis(1500);

/// Zeros to slice payloads from (no allocation per message).
static ZEROS: [u8; 65_536] = [0; 65_536];

#[derive(Debug)]
enum Ev {
    /// Publisher `publisher` of workload `workload` publishes, and schedules its next message.
    Publish { workload: usize, publisher: u32 },
    /// A frame arrives at `to` over `link`, if the connection `generation` is still current.
    Arrive {
        link: usize,
        to: usize,
        generation: u64,
        frame: Frame,
    },
    /// An agent's timer (stale if the agent's next timer moved).
    Timer { region: usize, generation: u64 },
    /// Fault number `i` of the schedule.
    Fault(usize),
    /// Both ends of `link` notice it is down (if still in `generation`).
    Detect { link: usize, generation: u64 },
    /// Both ends of `link` connect (if still in `generation` and up).
    Connect { link: usize, generation: u64 },
}

#[derive(Debug)]
struct Region {
    name: RegionName,
    /// The production core; `None` while the region is down.
    agent: Option<Agent>,
    /// Epoch of the current agent.
    epoch: u64,
    /// Envelope sequence numbers the agent has handed out (mirrors its counter).
    published: u64,
    /// When this region's agent timer is due, and its generation.
    timer: Option<Duration>,
    timer_generation: u64,
    /// LSDB version last seen, and a fingerprint of the graph it gave, to
    /// time convergence (LSA refreshes change the version, not the graph).
    lsdb_version: u64,
    graph_fingerprint: u64,
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
    /// Whether the agents currently have a connection over it.
    connected: bool,
    /// Bumped whenever the link's connection state changes.
    generation: u64,
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

fn agent_config(s: &Scenario, region: usize, epoch: u64) -> AgentConfig {
    let me = &s.regions[region].name;
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
    AgentConfig::new(me.clone(), NodeName::from(me), epoch, links)
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
                connected: false,
                generation: 0,
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
            sim.regions.push(Region {
                name: name.clone(),
                agent: None,
                epoch: 0,
                published: 0,
                timer: None,
                timer_generation: 0,
                lsdb_version: 0,
                graph_fingerprint: 0,
            });
            sim.start_region(i);
        }
        for l in 0..sim.links.len() {
            sim.schedule_connect(l);
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

    fn start_region(&mut self, i: usize) {
        let r = &mut self.regions[i];
        r.epoch += 1;
        r.published = 0;
        let cfg = agent_config(&self.scenario, i, r.epoch);
        let now = self.base + self.now;
        let mut agent = Agent::new(now, cfg);
        for f in &self.scenario.regions[i].interest {
            agent.handle_subscribe(now, f.clone());
        }
        self.regions[i].agent = Some(agent);
        self.after(i);
    }

    fn link_usable(&self, l: usize) -> bool {
        let link = &self.links[l];
        link.healthy
            && link.unpartitioned
            && self.regions[link.a].agent.is_some()
            && self.regions[link.b].agent.is_some()
    }

    fn rtt(&self, l: usize) -> Duration {
        self.links[l].latency * 2
    }

    fn schedule_connect(&mut self, l: usize) {
        if self.link_usable(l) && !self.links[l].connected {
            let generation = self.links[l].generation;
            let at = self.now + self.rtt(l) * 3 / 2;
            self.push(
                at,
                Ev::Connect {
                    link: l,
                    generation,
                },
            );
        }
    }

    /// The link became unusable: in-flight frames die now; agents notice after DETECT.
    fn cut(&mut self, l: usize) {
        let link = &mut self.links[l];
        link.generation += 1;
        if link.connected {
            link.connected = false;
            let generation = link.generation;
            self.push(
                self.now + DETECT,
                Ev::Detect {
                    link: l,
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
                to,
                generation,
                frame,
            } => {
                if self.links[link].generation != generation || !self.links[link].connected {
                    self.rec.frame_lost(&frame);
                    return;
                }
                let from = self.links[link].other(to);
                let from_name = self.regions[from].name.clone();
                let now = self.instant();
                if let Some(agent) = self.regions[to].agent.as_mut() {
                    agent.handle_frame(now, &from_name, frame);
                    self.after(to);
                }
            }
            Ev::Timer { region, generation } => {
                if self.regions[region].timer_generation != generation {
                    return;
                }
                self.regions[region].timer = None;
                let now = self.instant();
                if let Some(agent) = self.regions[region].agent.as_mut() {
                    agent.handle_timeout(now);
                    self.after(region);
                }
            }
            Ev::Fault(i) => self.fault(i),
            Ev::Detect { link, generation } => {
                if self.links[link].generation != generation {
                    return;
                }
                self.at_both_ends(link, |agent, peer, now| agent.handle_disconnect(now, peer));
                self.schedule_connect(link);
            }
            Ev::Connect { link, generation } => {
                if self.links[link].generation != generation
                    || !self.link_usable(link)
                    || self.links[link].connected
                {
                    return;
                }
                self.links[link].connected = true;
                self.links[link].generation += 1;
                self.at_both_ends(link, |agent, peer, now| {
                    // A reconnect after an undetected cut: the agent first drops the old link.
                    agent.handle_disconnect(now, peer);
                    agent.handle_connect(now, peer);
                });
            }
        }
    }

    /// Run `f` on the agent at each end of `link` (with the other end's name).
    fn at_both_ends(&mut self, link: usize, mut f: impl FnMut(&mut Agent, &RegionName, Instant)) {
        let (a, b) = (self.links[link].a, self.links[link].b);
        let now = self.instant();
        for (me, peer) in [(a, b), (b, a)] {
            let peer_name = self.regions[peer].name.clone();
            if let Some(agent) = self.regions[me].agent.as_mut() {
                f(agent, &peer_name, now);
            }
            self.after(me);
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
        if self.regions[origin].agent.is_none() {
            return;
        }
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
        let region = &mut self.regions[origin];
        let Some(agent) = region.agent.as_mut() else {
            return;
        };
        if agent.handle_publish(now, msg) {
            region.published += 1;
            let key = (origin, region.epoch, region.published);
            let direct = self.direct_alternatives(origin, &expected, size + topic_text.len());
            self.rec.published(key, self.now, &expected, direct);
        }
        self.after(origin);
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
            if self.link_usable(l) {
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

    /// Drain an agent's transmits and events after it handled something.
    fn after(&mut self, i: usize) {
        let mut out = Vec::new();
        let mut delivered = Vec::new();
        {
            let region = &mut self.regions[i];
            let Some(agent) = region.agent.as_mut() else {
                return;
            };
            while let Some(t) = agent.poll_transmit() {
                out.push(t);
            }
            while let Some(ev) = agent.poll_event() {
                if let Event::Deliver(env) = ev {
                    delivered.push(env);
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
        for (to_name, frame) in out {
            let Some(&to) = self.region_index(&to_name) else {
                continue;
            };
            let Some(&l) = self.link_of.get(&(i, to)) else {
                continue;
            };
            self.send(l, i, to, frame);
        }
    }

    fn send(&mut self, l: usize, from: usize, to: usize, frame: Frame) {
        let size = mqlink_proto::encoded_len(&frame) as u64 + 40; // + QUIC/UDP/IP headers per frame, roughly
        let dir = self.links[l].dir(from);
        self.rec.sent(l, dir, &frame, size);
        if !self.links[l].connected {
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
        let generation = link.generation;
        let link = &mut self.links[l];
        link.busy_until[dir] = done;
        link.last_arrival[dir] = arrival;
        self.push(
            arrival,
            Ev::Arrive {
                link: l,
                to,
                generation,
                frame,
            },
        );
    }

    fn set_partitioned(&mut self, l: usize, cut: bool) {
        let was = self.link_usable(l);
        self.links[l].unpartitioned = !cut;
        self.refresh(l, was);
    }

    fn refresh(&mut self, l: usize, was_usable: bool) {
        let is = self.link_usable(l);
        if was_usable && !is {
            self.cut(l);
        } else if !was_usable && is {
            self.links[l].generation += 1;
            self.schedule_connect(l);
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
                let was = self.link_usable(l);
                self.links[l].healthy = up;
                self.refresh(l, was);
            }
            FaultKind::RegionDown(r) => {
                let Some(r) = idx(self, &r) else { return };
                let touching: Vec<usize> = (0..self.links.len())
                    .filter(|l| self.links[*l].a == r || self.links[*l].b == r)
                    .collect();
                let before: Vec<bool> = touching.iter().map(|l| self.link_usable(*l)).collect();
                self.regions[r].agent = None;
                self.regions[r].timer_generation += 1;
                self.regions[r].timer = None;
                for (l, was) in touching.into_iter().zip(before) {
                    self.refresh(l, was);
                }
            }
            FaultKind::RegionUp(r) => {
                let Some(r) = idx(self, &r) else { return };
                if self.regions[r].agent.is_some() {
                    return;
                }
                let touching: Vec<usize> = (0..self.links.len())
                    .filter(|l| self.links[*l].a == r || self.links[*l].b == r)
                    .collect();
                let before: Vec<bool> = touching.iter().map(|l| self.link_usable(*l)).collect();
                self.start_region(r);
                for (l, was) in touching.into_iter().zip(before) {
                    self.refresh(l, was);
                }
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
        let Some(agent) = self.regions.iter_mut().find_map(|r| r.agent.as_mut()) else {
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
