//! The in-memory test network: several protocol cores on simulated time;
//! frames go through the real wire encoding, links can be cut, time jumps
//! to the next timer. No sockets, no sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)] // test code

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mqlink_proto::dedupe::Dedupe;
use mqlink_proto::{
    Agent, AgentConfig, Envelope, Event, Frame, LinkPolicy, Message, PeerId, Properties, Qos,
    decode, encode,
};
use mqlink_topology::{Cost, NodeName, RegionName, TopicFilter, TopicName};

pub fn r(s: &str) -> RegionName {
    RegionName::new(s).unwrap()
}
pub fn f(s: &str) -> TopicFilter {
    TopicFilter::new(s).unwrap()
}
pub fn msg(topic: &str) -> Message {
    Message {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::from_static(b"x"),
        qos: Qos::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    }
}

/// Agents by name: `a` is region `a`'s only agent; `a:2` is replica `2` of
/// region `a` (node `a-2`).
pub fn region_of(agent: &str) -> RegionName {
    r(agent.split(':').next().unwrap())
}
pub fn node_of(agent: &str) -> NodeName {
    let (region, node) = agent.split_once(':').unwrap_or((agent, "a"));
    NodeName::new(&format!("{region}-{node}")).unwrap()
}

pub struct Net {
    pub now: Instant,
    pub agents: BTreeMap<String, Agent>,
    /// Connections currently up: (agent, the id it uses) -> (the agent at
    /// the other end, the id that one uses).
    pub conns: BTreeMap<(String, PeerId), (String, PeerId)>,
    pub next_conn: u64,
    pub delivered: BTreeMap<String, Vec<Envelope>>,
    pub exports: BTreeMap<String, BTreeSet<TopicFilter>>,
    /// (agent, peer region, reason) of every ClosePeer.
    pub closed: Vec<(String, RegionName, String)>,
    /// Drop the next delta from agent a to agent b (to simulate loss).
    pub lose_next_delta: Option<(String, String)>,
    /// Broker tokens released, per agent (QoS >= 1 custody passed on).
    pub released: BTreeMap<String, BTreeSet<u64>>,
    /// Agents whose broker holds its acknowledgements (deliveries wait in
    /// `unacked` until `ack_deliveries`); the others acknowledge at once.
    pub slow_brokers: BTreeSet<String>,
    /// Deliveries awaiting the broker's ack, per agent.
    pub unacked: BTreeMap<String, Vec<u64>>,
    /// Next broker token.
    pub next_token: u64,
    /// The region links, to start an agent again.
    pub links: Vec<(String, String, u64)>,
    /// A model spool per agent: (key, message, handed back yet).
    pub spools: BTreeMap<String, Vec<(u64, Envelope, bool)>>,
    /// Next spool key.
    pub next_key: u64,
    /// The durable dedupe marks per agent (they outlive `kill`).
    pub marks: BTreeMap<String, Dedupe>,
    /// Agents whose marks are written durably but not yet reported so
    /// (a crash then is the moment after the mark is on disk and before
    /// the acknowledgement left).
    pub hold_marks: BTreeSet<String>,
    /// Wire bytes of summary frames (snapshots, deltas, digests) sent.
    pub summary_bytes: u64,
}

/// The config of agent `name` among `links`, with `epoch`.
fn config(name: &str, links: &[(String, String, u64)], epoch: u64) -> AgentConfig {
    let region = region_of(name);
    let policies = links
        .iter()
        .filter(|(a, b, _)| r(a) == region || r(b) == region)
        .map(|(a, b, c)| LinkPolicy {
            region: if r(a) == region { r(b) } else { r(a) },
            cost: Some(Cost::new(*c).unwrap()),
            export: vec![f("#")],
            import: vec![f("#")],
        })
        .collect();
    let mut cfg = AgentConfig::new(region, node_of(name), epoch, policies);
    cfg.durable_marks = true;
    cfg
}

impl Net {
    /// Agents and region links `(a, b, cost)`; every agent of a region is
    /// connected to every agent of its neighbours.
    pub fn new(agents: &[&str], links: &[(&str, &str, u64)]) -> Self {
        Self::new_with(agents, links, |_| {})
    }

    /// [`Self::new`] with every agent's config changed by `tweak`.
    pub fn new_with(
        agents: &[&str],
        links: &[(&str, &str, u64)],
        tweak: impl Fn(&mut AgentConfig),
    ) -> Self {
        let now = Instant::now();
        let links: Vec<(String, String, u64)> = links
            .iter()
            .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), *c))
            .collect();
        let mut map = BTreeMap::new();
        for (i, name) in agents.iter().enumerate() {
            let mut cfg = config(name, &links, 1000 + i as u64);
            tweak(&mut cfg);
            map.insert((*name).to_owned(), Agent::new(now, cfg));
        }
        let mut net = Net {
            now,
            agents: map,
            conns: BTreeMap::new(),
            next_conn: 1,
            delivered: BTreeMap::new(),
            exports: BTreeMap::new(),
            closed: Vec::new(),
            lose_next_delta: None,
            released: BTreeMap::new(),
            slow_brokers: BTreeSet::new(),
            unacked: BTreeMap::new(),
            next_token: 1,
            links: links.clone(),
            spools: BTreeMap::new(),
            next_key: 1,
            marks: BTreeMap::new(),
            hold_marks: BTreeSet::new(),
            summary_bytes: 0,
        };
        for (a, b, _) in &links {
            let ends: Vec<(String, String)> = agents
                .iter()
                .filter(|x| region_of(x) == r(a))
                .flat_map(|x| {
                    agents
                        .iter()
                        .filter(|y| region_of(y) == r(b))
                        .map(|y| ((*x).to_owned(), (*y).to_owned()))
                })
                .collect();
            for (x, y) in ends {
                net.connect(&x, &y);
            }
        }
        net
    }

    /// Why `at` closed connections, in order.
    pub fn close_reasons(&self, at: &str) -> Vec<&str> {
        self.closed
            .iter()
            .filter(|(a, _, _)| a == at)
            .map(|(_, _, why)| why.as_str())
            .collect()
    }

    pub fn agent(&mut self, name: &str) -> &mut Agent {
        self.agents.get_mut(name).unwrap()
    }

    /// The id `at` uses for its (newest) connection to `to`, if up.
    pub fn id(&self, at: &str, to: &str) -> Option<PeerId> {
        self.conns
            .iter()
            .rev()
            .find(|((x, _), (y, _))| x == at && y == to)
            .map(|((_, id), _)| id.clone())
    }

    /// Close one connection at both ends (as the runtime does).
    pub fn close_conn(&mut self, at: &str, id: &PeerId) {
        let now = self.now;
        if let Some((other, back)) = self.conns.remove(&(at.to_owned(), id.clone())) {
            self.agent(at).handle_disconnect(now, id);
            if self.conns.remove(&(other.clone(), back.clone())).is_some() {
                self.agent(&other).handle_disconnect(now, &back);
            }
        }
    }

    pub fn connect(&mut self, a: &str, b: &str) {
        let (ida, idb) = (
            PeerId::new(region_of(b), self.next_conn),
            PeerId::new(region_of(a), self.next_conn + 1),
        );
        self.next_conn += 2;
        self.conns
            .insert((a.to_owned(), ida.clone()), (b.to_owned(), idb.clone()));
        self.conns
            .insert((b.to_owned(), idb.clone()), (a.to_owned(), ida.clone()));
        let now = self.now;
        self.agent(a).handle_connect(now, &ida);
        self.agent(b).handle_connect(now, &idb);
        self.pump();
    }

    pub fn disconnect(&mut self, a: &str, b: &str) {
        while let Some(id) = self.id(a, b) {
            self.close_conn(a, &id);
        }
        self.pump();
    }

    /// Move frames and events until everything is quiet.
    pub fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            let names: Vec<String> = self.agents.keys().cloned().collect();
            for from in &names {
                while let Some((id, frame)) = self.agents.get_mut(from).unwrap().poll_transmit() {
                    moved = true;
                    let Some((to, back)) = self.conns.get(&(from.clone(), id)).cloned() else {
                        continue;
                    };
                    if matches!(frame, Frame::SummaryDelta { .. })
                        && self.lose_next_delta.as_ref() == Some(&(from.clone(), to.clone()))
                    {
                        self.lose_next_delta = None;
                        continue;
                    }
                    // Through the real wire format.
                    let summary = matches!(
                        frame,
                        Frame::SummaryStart { .. }
                            | Frame::SummaryEntries { .. }
                            | Frame::SummaryEnd { .. }
                            | Frame::SummaryDelta { .. }
                            | Frame::Digest { .. }
                            | Frame::DigestSum { .. }
                            | Frame::DigestBatch(_)
                    );
                    let mut buf = BytesMut::new();
                    encode(frame, &mut buf);
                    if summary {
                        self.summary_bytes += buf.len() as u64;
                    }
                    let frame = decode(&mut buf).unwrap().unwrap();
                    let now = self.now;
                    self.agent(&to).handle_frame(now, &back, frame);
                }
                while let Some(ev) = self.agents.get_mut(from).unwrap().poll_event() {
                    moved = true;
                    match ev {
                        Event::Deliver { env, custody } => {
                            self.delivered
                                .entry(from.clone())
                                .or_default()
                                .push(Envelope::clone(&env));
                            if let Some(c) = custody {
                                if self.slow_brokers.contains(from) {
                                    self.unacked.entry(from.clone()).or_default().push(c);
                                } else {
                                    let now = self.now;
                                    self.agent(from).handle_delivered(now, c);
                                }
                            }
                        }
                        Event::Spool { custody, env } => {
                            let key = self.next_key;
                            self.next_key += 1;
                            self.spools
                                .entry(from.clone())
                                .or_default()
                                .push((key, *env, false));
                            let now = self.now;
                            self.agent(from).handle_spooled(now, custody, true);
                        }
                        Event::SpoolAck(key) => {
                            if let Some(v) = self.spools.get_mut(from) {
                                v.retain(|(k, _, _)| *k != key);
                            }
                        }
                        Event::SpoolReplay(max) => {
                            let now = self.now;
                            let mut back = Vec::new();
                            for (k, e, given) in self.spools.entry(from.clone()).or_default() {
                                if !*given && back.len() < max {
                                    *given = true;
                                    back.push((*k, e.clone()));
                                }
                            }
                            let exhausted = back.len() < max;
                            for (k, e) in back {
                                self.agent(from).handle_unspooled(now, k, e);
                            }
                            self.agent(from).handle_replay_done(now, exhausted);
                        }
                        Event::Mark { custody, mark } => {
                            self.marks
                                .entry(from.clone())
                                .or_default()
                                .check_mark(&mark);
                            if !self.hold_marks.contains(from) {
                                let now = self.now;
                                self.agent(from).handle_marked(now, custody);
                            }
                        }
                        Event::Release(token) => {
                            self.released.entry(from.clone()).or_default().insert(token);
                        }
                        Event::ExportChanged(set) => {
                            self.exports.insert(from.clone(), set);
                        }
                        Event::ClosePeer { peer, reason } => {
                            self.closed
                                .push((from.clone(), peer.region.clone(), reason));
                        }
                        Event::Replaced { peer } => self.close_conn(from, &peer),
                        Event::PeerUp { .. } => {}
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the network never went quiet");
    }

    /// Jump simulated time by `d`, firing every timer due on the way.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self.agents.values().filter_map(Agent::poll_timeout).min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for a in self.agents.values_mut() {
                        if a.poll_timeout().is_some_and(|t| t <= now) {
                            a.handle_timeout(now);
                        }
                    }
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    pub fn subscribe(&mut self, agent: &str, filter: &str) {
        let now = self.now;
        self.agent(agent).handle_subscribe(now, f(filter));
        self.pump();
        self.advance(Duration::from_millis(100)); // export subscriptions follow after a debounce
    }

    pub fn unsubscribe(&mut self, agent: &str, filter: &str) {
        let now = self.now;
        self.agent(agent).handle_unsubscribe(now, &f(filter));
        self.pump();
        self.advance(Duration::from_millis(100));
    }

    pub fn publish(&mut self, agent: &str, topic: &str) {
        let now = self.now;
        self.agent(agent).handle_publish(now, msg(topic), None);
        self.pump();
    }

    /// Publish at QoS 1 with a broker token; returns the token.
    pub fn publish_qos1(&mut self, agent: &str, topic: &str) -> u64 {
        let now = self.now;
        let token = self.next_token;
        self.next_token += 1;
        let mut m = msg(topic);
        m.qos = Qos::AtLeastOnce;
        m.payload = Bytes::from(token.to_string());
        self.agent(agent).handle_publish(now, m, Some(token));
        self.pump();
        token
    }

    /// Let the agents' warm-up pass (messages published during it wait
    /// until every summary can have arrived).
    pub fn warm(&mut self) {
        self.advance(Duration::from_secs(6));
    }

    /// The broker of `agent` acknowledges every delivery it holds.
    pub fn ack_deliveries(&mut self, agent: &str) {
        let now = self.now;
        for c in self.unacked.remove(agent).unwrap_or_default() {
            self.agent(agent).handle_delivered(now, c);
        }
        self.pump();
    }

    /// `agent` dies: every connection of it closes (seen by the other
    /// ends), and it is gone.
    pub fn kill(&mut self, agent: &str) {
        let ids: Vec<PeerId> = self
            .conns
            .keys()
            .filter(|(x, _)| x == agent)
            .map(|(_, id)| id.clone())
            .collect();
        for id in ids {
            self.close_conn(agent, &id);
        }
        self.agents.remove(agent);
        self.unacked.remove(agent);
        self.pump();
    }

    /// Start agent `name` (again, after `kill`) with a new epoch, with the
    /// interest `filters`, and connect it to every agent of its
    /// neighbouring regions.
    pub fn revive(&mut self, name: &str, filters: &[&str]) {
        let now = self.now;
        let epoch = 1_000_000 + self.next_conn;
        let mut agent = Agent::new(now, config(name, &self.links, epoch));
        agent.restore_marks(self.marks.get(name).cloned().unwrap_or_default());
        // Its spool is on disk: all of it unread by the new agent.
        if let Some(spool) = self.spools.get_mut(name) {
            agent.enable_spool();
            spool.iter_mut().for_each(|e| e.2 = false);
            agent.handle_spool_recovered(spool.len() as u64);
        }
        for flt in filters {
            agent.handle_subscribe(now, f(flt));
        }
        self.agents.insert(name.to_owned(), agent);
        let region = region_of(name);
        let peers: Vec<String> = self
            .agents
            .keys()
            .filter(|other| {
                self.links.iter().any(|(a, b, _)| {
                    (r(a) == region && r(b) == region_of(other))
                        || (r(b) == region && r(a) == region_of(other))
                })
            })
            .cloned()
            .collect();
        for p in peers {
            self.connect(name, &p);
        }
        self.advance(Duration::from_millis(100));
    }

    /// Payloads (broker tokens) of QoS 1 copies delivered in `region`.
    pub fn payloads(&self, region: &str) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .delivered
            .iter()
            .filter(|(agent, _)| region_of(agent) == r(region))
            .flat_map(|(_, v)| v)
            .filter(|e| e.message.qos == Qos::AtLeastOnce)
            .map(|e| {
                std::str::from_utf8(&e.message.payload)
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Copies of `topic` delivered in `region` (by any of its agents).
    pub fn count(&self, region: &str, topic: &str) -> usize {
        self.delivered
            .iter()
            .filter(|(agent, _)| region_of(agent) == r(region))
            .flat_map(|(_, v)| v)
            .filter(|e| e.message.topic.as_str() == topic)
            .count()
    }

    pub fn sent(&mut self, from: &str, to: &str) -> u64 {
        self.agent(from)
            .stats()
            .sent
            .get(&r(to))
            .copied()
            .unwrap_or(0)
    }
}
