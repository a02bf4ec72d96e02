//! Several protocol cores in memory on simulated time: frames go through
//! the real wire encoding, links can be cut, time jumps to the next timer.
//! No sockets, no sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mqlink_proto::{
    Agent, AgentConfig, Envelope, Event, Frame, LinkPolicy, Message, Properties, Qos, decode,
    encode,
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

struct Net {
    now: Instant,
    agents: BTreeMap<RegionName, Agent>,
    /// Links currently connected (both directions).
    up: BTreeSet<(RegionName, RegionName)>,
    delivered: BTreeMap<RegionName, Vec<Envelope>>,
    exports: BTreeMap<RegionName, BTreeSet<TopicFilter>>,
    closed: Vec<(RegionName, RegionName, String)>,
    /// Drop the next frame of this kind from a to b (to simulate loss).
    lose_next_delta: Option<(RegionName, RegionName)>,
}

impl Net {
    /// Regions and links `(a, b, cost)`, all connected.
    fn new(regions: &[&str], links: &[(&str, &str, u64)]) -> Self {
        let now = Instant::now();
        let mut agents = BTreeMap::new();
        for (i, name) in regions.iter().enumerate() {
            let policies = links
                .iter()
                .filter(|(a, b, _)| a == name || b == name)
                .map(|(a, b, c)| LinkPolicy {
                    region: r(if a == name { b } else { a }),
                    cost: Cost::new(*c).unwrap(),
                    export: vec![f("#")],
                    import: vec![f("#")],
                })
                .collect();
            let cfg = AgentConfig::new(
                r(name),
                NodeName::new(&format!("{name}-a")).unwrap(),
                1000 + i as u64,
                policies,
            );
            agents.insert(r(name), Agent::new(now, cfg));
        }
        let mut net = Net {
            now,
            agents,
            up: BTreeSet::new(),
            delivered: BTreeMap::new(),
            exports: BTreeMap::new(),
            closed: Vec::new(),
            lose_next_delta: None,
        };
        for (a, b, _) in links {
            net.connect(a, b);
        }
        net
    }

    fn agent(&mut self, name: &str) -> &mut Agent {
        self.agents.get_mut(&r(name)).unwrap()
    }

    fn connect(&mut self, a: &str, b: &str) {
        self.up.insert((r(a), r(b)));
        self.up.insert((r(b), r(a)));
        let now = self.now;
        self.agent(a).handle_connect(now, &r(b));
        self.agent(b).handle_connect(now, &r(a));
        self.pump();
    }

    fn disconnect(&mut self, a: &str, b: &str) {
        self.up.remove(&(r(a), r(b)));
        self.up.remove(&(r(b), r(a)));
        let now = self.now;
        self.agent(a).handle_disconnect(now, &r(b));
        self.agent(b).handle_disconnect(now, &r(a));
        self.pump();
    }

    /// Move frames and events until everything is quiet.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            let names: Vec<RegionName> = self.agents.keys().cloned().collect();
            for from in &names {
                while let Some((to, frame)) = self.agents.get_mut(from).unwrap().poll_transmit() {
                    moved = true;
                    if !self.up.contains(&(from.clone(), to.clone())) {
                        continue;
                    }
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
                    self.agents
                        .get_mut(&to)
                        .unwrap()
                        .handle_frame(now, from, frame);
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
                        Event::ClosePeer { region, reason } => {
                            self.closed.push((from.clone(), region.clone(), reason));
                        }
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

    fn subscribe(&mut self, region: &str, filter: &str) {
        let now = self.now;
        self.agent(region).handle_subscribe(now, f(filter));
        self.pump();
        self.advance(Duration::from_millis(100)); // export subscriptions follow after a debounce
    }

    fn unsubscribe(&mut self, region: &str, filter: &str) {
        let now = self.now;
        self.agent(region).handle_unsubscribe(now, &f(filter));
        self.pump();
        self.advance(Duration::from_millis(100));
    }

    fn publish(&mut self, region: &str, topic: &str) {
        let now = self.now;
        self.agent(region).handle_publish(now, msg(topic));
        self.pump();
    }

    fn count(&self, region: &str, topic: &str) -> usize {
        self.delivered.get(&r(region)).map_or(0, |v| {
            v.iter()
                .filter(|e| e.message.topic.as_str() == topic)
                .count()
        })
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
    assert_eq!(net.exports[&r("a")], BTreeSet::from([f("factory/+/temp")]));
    for _ in 0..5 {
        net.publish("a", "factory/1/temp");
    }
    net.publish("a", "factory/1/humidity");
    net.publish("a", "other");
    assert_eq!(net.count("b", "factory/1/temp"), 5);
    assert_eq!(net.sent("a", "b"), 5, "unwanted topics never cross");
    assert_eq!(net.count("a", "factory/1/temp"), 0, "no echo to the origin");
    let env = &net.delivered[&r("b")][0];
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
        net.delivered[&r("d")][0].visited,
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
    assert!(net.exports[&r("a")].is_empty());
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
    net.lose_next_delta = Some((r("b"), r("a")));
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
    // A second hello after the exchange.
    let hello = mqlink_proto::Hello {
        region: r("b"),
        node: NodeName::new("b-a").unwrap(),
        epoch: 1,
        version: 1,
    };
    net.agent("a")
        .handle_frame(now, &r("b"), Frame::Hello(hello.clone()));
    // A snapshot announcing more filters than any table may hold.
    let table = mqlink_proto::TableId {
        region: r("b"),
        node: NodeName::new("b-a").unwrap(),
        epoch: 1,
    };
    net.agent("a").handle_frame(
        now,
        &r("b"),
        Frame::SummaryStart {
            table,
            seq: 1,
            count: u64::MAX,
        },
    );
    // A region that is not a neighbour.
    net.agent("a").handle_connect(now, &r("zz"));
    // A fresh connection whose hello lies about the region.
    net.agent("a").handle_disconnect(now, &r("b"));
    net.agent("a").handle_connect(now, &r("b"));
    net.agent("a").handle_frame(
        now,
        &r("b"),
        Frame::Hello(mqlink_proto::Hello {
            region: r("c"),
            ..hello
        }),
    );
    net.pump();
    // (b also objects to a's second hello, since this harness reuses b's side of the link.)
    let reasons: Vec<&str> = net
        .closed
        .iter()
        .filter(|(at, _, _)| *at == r("a"))
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
