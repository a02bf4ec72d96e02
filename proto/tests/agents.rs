//! Several protocol cores in memory on simulated time: frames go through
//! the real wire encoding, links can be cut, time jumps to the next timer.
//! No sockets, no sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mqlink_proto::{
    Agent, AgentConfig, Envelope, Event, Frame, LinkPolicy, Message, PeerId, Properties, Qos,
    decode, encode,
};
use mqlink_topology::{Cost, NodeName, RegionName, TopicFilter, TopicName};

fn r(s: &str) -> RegionName {
    RegionName::new(s).unwrap()
}
fn f(s: &str) -> TopicFilter {
    TopicFilter::new(s).unwrap()
}
fn msg(topic: &str) -> Message {
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
fn region_of(agent: &str) -> RegionName {
    r(agent.split(':').next().unwrap())
}
fn node_of(agent: &str) -> NodeName {
    let (region, node) = agent.split_once(':').unwrap_or((agent, "a"));
    NodeName::new(&format!("{region}-{node}")).unwrap()
}

struct Net {
    now: Instant,
    agents: BTreeMap<String, Agent>,
    /// Connections currently up: (agent, the id it uses) -> (the agent at
    /// the other end, the id that one uses).
    conns: BTreeMap<(String, PeerId), (String, PeerId)>,
    next_conn: u64,
    delivered: BTreeMap<String, Vec<Envelope>>,
    exports: BTreeMap<String, BTreeSet<TopicFilter>>,
    /// (agent, peer region, reason) of every ClosePeer.
    closed: Vec<(String, RegionName, String)>,
    /// Drop the next delta from agent a to agent b (to simulate loss).
    lose_next_delta: Option<(String, String)>,
}

impl Net {
    /// Agents and region links `(a, b, cost)`; every agent of a region is
    /// connected to every agent of its neighbours.
    fn new(agents: &[&str], links: &[(&str, &str, u64)]) -> Self {
        let now = Instant::now();
        let mut map = BTreeMap::new();
        for (i, name) in agents.iter().enumerate() {
            let region = region_of(name);
            let policies = links
                .iter()
                .filter(|(a, b, _)| r(a) == region || r(b) == region)
                .map(|(a, b, c)| LinkPolicy {
                    region: if r(a) == region { r(b) } else { r(a) },
                    cost: Cost::new(*c).unwrap(),
                    export: vec![f("#")],
                    import: vec![f("#")],
                })
                .collect();
            let cfg = AgentConfig::new(region, node_of(name), 1000 + i as u64, policies);
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
        };
        for (a, b, _) in links {
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

    fn agent(&mut self, name: &str) -> &mut Agent {
        self.agents.get_mut(name).unwrap()
    }

    /// The id `at` uses for its (newest) connection to `to`, if up.
    fn id(&self, at: &str, to: &str) -> Option<PeerId> {
        self.conns
            .iter()
            .rev()
            .find(|((x, _), (y, _))| x == at && y == to)
            .map(|((_, id), _)| id.clone())
    }

    /// Close one connection at both ends (as the runtime does).
    fn close_conn(&mut self, at: &str, id: &PeerId) {
        let now = self.now;
        if let Some((other, back)) = self.conns.remove(&(at.to_owned(), id.clone())) {
            self.agent(at).handle_disconnect(now, id);
            if self.conns.remove(&(other.clone(), back.clone())).is_some() {
                self.agent(&other).handle_disconnect(now, &back);
            }
        }
    }

    fn connect(&mut self, a: &str, b: &str) {
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

    fn disconnect(&mut self, a: &str, b: &str) {
        while let Some(id) = self.id(a, b) {
            self.close_conn(a, &id);
        }
        self.pump();
    }

    /// Move frames and events until everything is quiet.
    fn pump(&mut self) {
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
                    let mut buf = BytesMut::new();
                    encode(frame, &mut buf);
                    let frame = decode(&mut buf).unwrap().unwrap();
                    let now = self.now;
                    self.agent(&to).handle_frame(now, &back, frame);
                }
                while let Some(ev) = self.agents.get_mut(from).unwrap().poll_event() {
                    moved = true;
                    match ev {
                        Event::Deliver(env) => {
                            self.delivered.entry(from.clone()).or_default().push(*env)
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
    fn advance(&mut self, d: Duration) {
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

    fn subscribe(&mut self, agent: &str, filter: &str) {
        let now = self.now;
        self.agent(agent).handle_subscribe(now, f(filter));
        self.pump();
        self.advance(Duration::from_millis(100)); // export subscriptions follow after a debounce
    }

    fn unsubscribe(&mut self, agent: &str, filter: &str) {
        let now = self.now;
        self.agent(agent).handle_unsubscribe(now, &f(filter));
        self.pump();
        self.advance(Duration::from_millis(100));
    }

    fn publish(&mut self, agent: &str, topic: &str) {
        let now = self.now;
        self.agent(agent).handle_publish(now, msg(topic));
        self.pump();
    }

    /// Copies of `topic` delivered in `region` (by any of its agents).
    fn count(&self, region: &str, topic: &str) -> usize {
        self.delivered
            .iter()
            .filter(|(agent, _)| region_of(agent) == r(region))
            .flat_map(|(_, v)| v)
            .filter(|e| e.message.topic.as_str() == topic)
            .count()
    }

    fn sent(&mut self, from: &str, to: &str) -> u64 {
        self.agent(from)
            .stats()
            .sent
            .get(&r(to))
            .copied()
            .unwrap_or(0)
    }
}

#[test]
fn two_regions_forward_only_what_is_wanted() {
    let mut net = Net::new(&["a", "b"], &[("a", "b", 10)]);
    net.subscribe("b", "factory/+/temp");
    assert_eq!(net.exports["a"], BTreeSet::from([f("factory/+/temp")]));
    for _ in 0..5 {
        net.publish("a", "factory/1/temp");
    }
    net.publish("a", "factory/1/humidity");
    net.publish("a", "other");
    assert_eq!(net.count("b", "factory/1/temp"), 5);
    assert_eq!(net.sent("a", "b"), 5, "unwanted topics never cross");
    assert_eq!(net.count("a", "factory/1/temp"), 0, "no echo to the origin");
    let env = &net.delivered["b"][0];
    assert_eq!(env.origin, r("a"));
    assert_eq!(env.hops, 1);
    assert_eq!(env.visited, vec![r("a"), r("b")]);
    assert!(net.closed.is_empty());
}

#[test]
fn triangle_delivers_exactly_once_and_nothing_loops() {
    let mut net = Net::new(
        &["a", "b", "c"],
        &[("a", "b", 10), ("b", "c", 10), ("a", "c", 10)],
    );
    net.subscribe("b", "t/#");
    net.subscribe("c", "t/#");
    net.subscribe("a", "t/#");
    for i in 0..10 {
        net.publish("a", &format!("t/{i}"));
        net.publish("c", &format!("t/{i}"));
    }
    for i in 0..10 {
        let t = format!("t/{i}");
        assert_eq!(net.count("b", &t), 2, "one copy from a, one from c");
        assert_eq!(net.count("c", &t), 1);
        assert_eq!(net.count("a", &t), 1);
    }
    for name in ["a", "b", "c"] {
        let drops = &net.agent(name).stats().drops;
        assert!(drops.is_empty(), "{name}: {drops:?}");
    }
}

#[test]
fn line_of_four_transits_and_interest_comes_and_goes() {
    let mut net = Net::new(
        &["a", "b", "c", "d"],
        &[("a", "b", 1), ("b", "c", 1), ("c", "d", 1)],
    );
    net.publish("a", "x/1");
    assert_eq!(net.sent("a", "b"), 0, "nobody wants x/1 yet");
    net.subscribe("d", "x/+");
    net.publish("a", "x/1");
    assert_eq!(net.count("d", "x/1"), 1);
    assert_eq!(
        net.count("b", "x/1") + net.count("c", "x/1"),
        0,
        "transit regions do not deliver"
    );
    assert_eq!(
        net.delivered["d"][0].visited,
        vec![r("a"), r("b"), r("c"), r("d")]
    );
    net.unsubscribe("d", "x/+");
    net.publish("a", "x/1");
    assert_eq!(
        net.count("d", "x/1"),
        1,
        "no new copy after the unsubscribe"
    );
    assert_eq!(net.sent("a", "b"), 1);
    assert!(net.exports["a"].is_empty());
}

#[test]
fn a_failed_link_reroutes_and_interest_survives_it() {
    // a-c is cheap, a-b-c the detour.
    let mut net = Net::new(
        &["a", "b", "c"],
        &[("a", "c", 1), ("a", "b", 5), ("b", "c", 5)],
    );
    net.subscribe("c", "t");
    net.publish("a", "t");
    assert_eq!(net.sent("a", "c"), 1);
    net.disconnect("a", "c");
    net.publish("a", "t");
    assert_eq!(net.count("c", "t"), 2);
    assert_eq!(net.sent("a", "b"), 1, "rerouted through b");
    net.connect("a", "c");
    net.publish("a", "t");
    assert_eq!(net.sent("a", "c"), 2, "back on the direct link");
    assert_eq!(net.count("c", "t"), 3);
}

#[test]
fn lost_deltas_are_repaired_by_digests() {
    let mut net = Net::new(&["a", "b"], &[("a", "b", 1)]);
    net.subscribe("b", "one");
    net.lose_next_delta = Some(("b".to_owned(), "a".to_owned()));
    net.subscribe("b", "two");
    net.publish("a", "two");
    assert_eq!(net.count("b", "two"), 0, "a missed the delta");
    net.advance(Duration::from_secs(11));
    assert!(net.agent("a").stats().resyncs >= 1);
    net.publish("a", "two");
    assert_eq!(net.count("b", "two"), 1, "the digest exchange resynced a");
}

#[test]
fn lsas_age_out_only_without_refresh() {
    let mut net = Net::new(&["a", "b", "c"], &[("a", "b", 1), ("b", "c", 1)]);
    net.subscribe("c", "t");
    net.advance(Duration::from_secs(600));
    net.publish("a", "t");
    assert_eq!(net.count("c", "t"), 1, "refreshes keep the topology alive");
}

#[test]
fn protocol_violations_close_only_that_peer() {
    let mut net = Net::new(&["a", "b"], &[("a", "b", 1)]);
    let now = net.now;
    let b = net.id("a", "b").unwrap();
    // A second hello after the exchange.
    let hello = mqlink_proto::Hello {
        region: r("b"),
        node: NodeName::new("b-a").unwrap(),
        epoch: 1,
        version: mqlink_proto::PROTOCOL_VERSION,
    };
    net.agent("a")
        .handle_frame(now, &b, Frame::Hello(hello.clone()));
    // A snapshot announcing more filters than any table may hold.
    let table = mqlink_proto::TableId {
        region: r("b"),
        node: NodeName::new("b-a").unwrap(),
        epoch: 1,
    };
    net.agent("a").handle_frame(
        now,
        &b,
        Frame::SummaryStart {
            table,
            seq: 1,
            count: u64::MAX,
        },
    );
    // A region that is not a neighbour.
    net.agent("a")
        .handle_connect(now, &PeerId::new(r("zz"), 900));
    // A fresh connection whose hello lies about the region.
    let liar = PeerId::new(r("b"), 901);
    net.agent("a").handle_connect(now, &liar);
    net.agent("a").handle_frame(
        now,
        &liar,
        Frame::Hello(mqlink_proto::Hello {
            region: r("c"),
            ..hello
        }),
    );
    net.pump();
    let reasons: Vec<&str> = net
        .closed
        .iter()
        .filter(|(at, _, _)| at == "a")
        .map(|(_, _, why)| why.as_str())
        .collect();
    assert_eq!(
        reasons,
        [
            "second hello",
            "summary of 18446744073709551615 filters with 0 snapshots open exceeds the limits (1000000 filters, 10000 open)",
            "region `zz` is not a configured neighbour",
            "hello claims region `c` but the certificate says `b`"
        ]
    );
    assert_eq!(net.agent("a").stats().protocol_errors, 4);
}

#[test]
fn replicas_share_a_region_and_either_carries_it() {
    // Region a has two agents (replicas behind one broker); a - b - c.
    let mut net = Net::new(&["a:1", "a:2", "b", "c"], &[("a", "b", 1), ("b", "c", 1)]);
    for agent in ["b", "c", "a:1", "a:2"] {
        net.subscribe(agent, "t/#"); // replicas see the same broker, so the same interest
    }
    assert_eq!(net.exports["a:1"], BTreeSet::from([f("t/#")]));
    assert_eq!(
        net.exports["a:1"], net.exports["a:2"],
        "one shared export set"
    );
    // The broker splits a's exports between the replicas (shared subscription).
    for i in 0..10 {
        net.publish(if i % 2 == 0 { "a:1" } else { "a:2" }, &format!("t/{i}"));
        net.publish("c", &format!("t/c{i}"));
    }
    for i in 0..10 {
        assert_eq!(net.count("b", &format!("t/{i}")), 1);
        assert_eq!(net.count("c", &format!("t/{i}")), 1);
        assert_eq!(
            net.count("a", &format!("t/c{i}")),
            1,
            "one replica imports it"
        );
    }
    assert_eq!(net.sent("a:1", "b") + net.sent("a:2", "b"), 10);
    // a:1 dies: b still reaches region a through a:2, and a:2's exports flow.
    net.disconnect("a:1", "b");
    net.publish("c", "t/after");
    net.publish("a:2", "t/from-a2");
    assert_eq!(net.count("a", "t/after"), 1);
    assert_eq!(net.count("c", "t/from-a2"), 1);
    assert_eq!(
        net.delivered["a:2"].last().unwrap().message.topic.as_str(),
        "t/after"
    );
    for agent in ["a:2", "b", "c"] {
        let drops = &net.agent(agent).stats().drops;
        assert!(drops.is_empty(), "{agent}: {drops:?}");
    }
    // Everyone still sees a - b - c as one line of regions.
    let (graph, _) = net.agent("c").router().tree(&r("a")).unwrap();
    assert_eq!(graph.edge_count(), 2);
    assert!(net.closed.is_empty(), "{:?}", net.closed);
}

#[test]
fn a_newer_connection_to_the_same_agent_replaces_the_older() {
    let mut net = Net::new(&["a", "b"], &[("a", "b", 1)]);
    net.subscribe("b", "t/#");
    let old = net.id("a", "b").unwrap();
    // b reconnects before a noticed the old connection die.
    net.connect("a", "b");
    let new = net.id("a", "b").unwrap();
    assert_ne!(old, new);
    assert_eq!(
        net.conns.len(),
        2,
        "the older connection was closed at both ends"
    );
    net.publish("a", "t/1");
    assert_eq!(net.count("b", "t/1"), 1);
    assert!(net.closed.is_empty(), "replacing is not a protocol error");
    assert_eq!(net.agent("a").stats().protocol_errors, 0);
}

#[test]
fn a_departed_replica_is_forgotten_but_a_departed_region_is_not() {
    let mut net = Net::new(&["a:1", "a:2", "b"], &[("a", "b", 1)]);
    net.subscribe("a:1", "t/#");
    net.subscribe("a:2", "t/#");
    net.subscribe("a:2", "left-behind/#");
    assert_eq!(
        net.exports["b"],
        BTreeSet::from([f("t/#"), f("left-behind/#")])
    );
    // a:2 is taken out of service; a:1 carries on.
    net.disconnect("a:2", "b");
    net.advance(Duration::from_secs(60));
    assert!(
        net.exports["b"].contains(&f("left-behind/#")),
        "interest outlives a short outage"
    );
    net.advance(Duration::from_secs(140)); // a:2's LSA ages out (120 s)
    assert_eq!(net.exports["b"], BTreeSet::from([f("t/#")]));
    net.publish("b", "left-behind/x");
    assert_eq!(net.count("a", "left-behind/x"), 0);
    assert_eq!(
        net.sent("b", "a"),
        0,
        "nothing is pulled for the departed replica"
    );
    // The whole region goes: its interest stays (its traffic can wait for it).
    net.disconnect("a:1", "b");
    net.advance(Duration::from_secs(300));
    assert_eq!(net.exports["b"], BTreeSet::from([f("t/#")]));
}
