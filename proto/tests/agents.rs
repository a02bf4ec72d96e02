//! Several protocol cores in memory on simulated time (the `net` harness):
//! hello, LSAs, summaries, forwarding, replicas, protocol violations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic

mod net;

use std::collections::BTreeSet;
use std::time::Duration;

use mqlink_proto::{Frame, PeerId};
use mqlink_topology::NodeName;
use net::*;

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
    assert_eq!(env.visited.as_slice(), [r("a"), r("b")]);
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
        net.delivered["d"][0].visited.as_slice(),
        [r("a"), r("b"), r("c"), r("d")]
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
    let reasons = net.close_reasons("a");
    assert_eq!(
        reasons,
        [
            "second hello",
            "summary of 18446744073709551615 filters with 0 snapshots (0 filters) open exceeds the limits (1000000 filters per table, 10000 open, 2000000 filters open)",
            "region `zz` is not a configured neighbour",
            "hello claims region `c` but the certificate says `b`"
        ]
    );
    assert_eq!(net.agent("a").stats().protocol_errors, 4);
}

/// A peer that floods: deltas that grow a table past the limit, the
/// same snapshot requested again and again, snapshots announced beyond
/// what may be buffered. Each is bounded: the first and last close the
/// connection with a reason, the repeats get one snapshot.
#[test]
fn a_flooding_peer_is_bounded() {
    let mut net = Net::new_with(&["a", "b"], &[("a", "b", 1)], |c| c.max_table_filters = 5);
    for i in 0..6 {
        net.subscribe("b", &format!("t/{i}"));
    }
    let now = net.now;
    let b = net.id("a", "b").unwrap();
    let own = mqlink_proto::TableId {
        region: r("a"),
        node: NodeName::new("a-a").unwrap(),
        epoch: 1000,
    };
    for _ in 0..50 {
        net.agent("a")
            .handle_frame(now, &b, Frame::ResyncRequest { table: own.clone() });
    }
    let mut starts = 0;
    while let Some((_, f)) = net.agent("a").poll_transmit() {
        starts += usize::from(matches!(f, Frame::SummaryStart { .. }));
    }
    assert_eq!(starts, 1, "fifty requests, one snapshot");
    for (i, count) in [5, 5, 1].into_iter().enumerate() {
        let table = mqlink_proto::TableId {
            region: r("b"),
            node: NodeName::new(&format!("x-{i}")).unwrap(),
            epoch: 1,
        };
        net.agent("a").handle_frame(
            now,
            &b,
            Frame::SummaryStart {
                table,
                seq: 1,
                count,
            },
        );
    }
    net.pump();
    let reasons = net.close_reasons("a");
    assert_eq!(
        reasons,
        [
            "delta grows b/b-a's table to 6 filters, above the limit of 5",
            "summary of 1 filters with 2 snapshots (10 filters) open exceeds the limits (5 filters per table, 10000 open, 10 filters open)",
        ]
    );
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
    // QoS 0 acknowledgements leave within `ack_delay`; until then a
    // closing link counts what it carried as `link_closed`.
    net.advance(Duration::from_millis(10));
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

#[test]
fn a_region_gone_for_good_is_forgotten_after_max_age_and_remembered_when_back() {
    let mut net = Net::new_with(&["a", "b"], &[("a", "b", 10)], |c| {
        c.max_age = Duration::from_secs(600);
    });
    net.subscribe("b", "x/#");
    assert_eq!(net.exports["a"], BTreeSet::from([f("x/#")]));
    net.kill("b");
    // Interest outlives the link and the LSA: traffic for b waits.
    net.advance(Duration::from_secs(300));
    assert_eq!(net.exports["a"], BTreeSet::from([f("x/#")]), "still wanted");
    assert_eq!(net.agent("a").stats().regions_forgotten, 0);
    // Past max_age with no live agent of b: nothing would wait that long.
    net.advance(Duration::from_secs(600));
    assert!(net.exports["a"].is_empty(), "b's interest is gone");
    assert_eq!(net.agent("a").stats().regions_forgotten, 1);
    assert!(
        net.agent("a")
            .router()
            .interests()
            .tables()
            .all(|t| t.version().region != r("b")),
        "no table of b is held"
    );
    // b comes back: its summary is taken again.
    net.revive("b", &["x/#"]);
    net.advance(Duration::from_secs(5));
    assert_eq!(net.exports["a"], BTreeSet::from([f("x/#")]));
}

/// A fleet subscribing per device: 100,000 local filters under a budget
/// of 100 are advertised aggregated, so the other region's table stays
/// small and its summary bytes are a few kilobytes, and every device's
/// topic still reaches the fleet's region. Without a budget the same
/// interest is 100,000 filters on every other agent.
#[test]
fn a_fleet_interest_is_aggregated_under_the_budget() {
    let fleet = |budget: Option<usize>| {
        let mut net = Net::new_with(&["a", "b"], &[("a", "b", 10)], |c| {
            if c.region == r("a") {
                c.interest_budget = budget;
            }
        });
        net.advance(Duration::from_secs(1));
        let before = net.summary_bytes;
        let now = net.now;
        for d in 0..100_000 {
            net.agent("a")
                .handle_subscribe(now, f(&format!("dev/{d}/cmd")));
        }
        net.subscribe("a", "site/+/alarm");
        net.advance(Duration::from_secs(2));
        (net.summary_bytes - before, net)
    };
    let (bytes, mut net) = fleet(Some(100));
    let (local, advertised, widened, budget) = net.agent("a").interest_summary();
    assert_eq!((local, budget), (100_001, Some(100)));
    assert!(advertised <= 100, "{advertised} filters advertised");
    assert!(widened >= 1);
    let seen = net
        .agent("b")
        .router()
        .interests()
        .table(&r("a"), &node_of("a"))
        .map_or(0, |t| t.len());
    assert!(seen <= 100, "b holds {seen} filters of a");
    for d in [0, 77, 99_999] {
        let topic = format!("dev/{d}/cmd");
        net.publish("b", &topic);
        assert_eq!(net.count("a", &topic), 1, "{topic}");
    }
    net.publish("b", "site/3/alarm");
    assert_eq!(net.count("a", "site/3/alarm"), 1);
    net.publish("b", "other/topic");
    assert_eq!(
        net.count("a", "other/topic"),
        0,
        "never wider than needed to cover"
    );
    let (exact_bytes, mut exact) = fleet(None);
    assert_eq!(
        exact
            .agent("b")
            .router()
            .interests()
            .table(&r("a"), &node_of("a"))
            .map(|t| t.len()),
        Some(100_001)
    );
    println!(
        "summary bytes for 100,001 local filters: {bytes} with a budget of 100, {exact_bytes} exact"
    );
    assert!(bytes * 20 < exact_bytes, "{bytes} vs {exact_bytes}");
}

/// A link policy of `to` with `cost`, exporting everything and importing
/// what `import` says.
fn policy(to: &str, cost: u64, import: &str) -> mqlink_proto::LinkPolicy {
    mqlink_proto::LinkPolicy {
        region: r(to),
        cost: Some(mqlink_topology::Cost::new(cost).unwrap()),
        export: vec![f("#")],
        import: vec![f(import)],
    }
}

#[test]
fn a_reload_adds_and_removes_links_and_changes_policies_in_place() {
    let mut net = Net::new(&["a", "b", "c"], &[("a", "b", 10), ("b", "c", 10)]);
    net.subscribe("c", "t/#");
    net.subscribe("a", "t/#");
    net.publish("a", "t/1");
    assert_eq!(net.count("c", "t/1"), 1, "through b");
    let before_ab = net.sent("a", "b");

    // a and c gain a cheap direct link; a's link to b imports only x/#.
    let now = net.now;
    let gone = net
        .agent("a")
        .handle_reconfigure(now, vec![policy("b", 10, "x/#"), policy("c", 1, "#")]);
    assert!(gone.is_empty(), "b is still a neighbour");
    let gone = net
        .agent("c")
        .handle_reconfigure(now, vec![policy("b", 10, "#"), policy("a", 1, "#")]);
    assert!(gone.is_empty());
    net.connect("a", "c");
    net.publish("a", "t/2");
    assert_eq!(net.count("c", "t/2"), 1);
    assert_eq!(net.sent("a", "c"), 1, "the new link carries it");
    assert_eq!(
        net.sent("a", "b"),
        before_ab,
        "b wants nothing: nothing more to b"
    );
    // b's t/3 is refused by a's new import policy (c still gets it).
    net.publish("b", "t/3");
    assert_eq!(net.count("a", "t/3"), 0);
    assert_eq!(net.count("c", "t/3"), 1);
    let refused = net
        .agent("a")
        .stats()
        .drops
        .get(&mqlink_proto::DropReason::ImportPolicy)
        .copied();
    assert_eq!(refused, Some(1));

    // a drops its link to b: the connection is handed back to close, and
    // a's LSA no longer lists b.
    let gone = net
        .agent("a")
        .handle_reconfigure(now, vec![policy("c", 1, "#")]);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].region, r("b"));
    net.close_conn("a", &gone[0]);
    net.pump();
    let lsa = net
        .agent("c")
        .router()
        .lsdb()
        .lsas()
        .find(|l| l.origin == r("a"))
        .cloned()
        .unwrap();
    let peers: Vec<&str> = lsa.links.iter().map(|l| l.peer.as_str()).collect();
    assert_eq!(peers, ["c"]);
    // b still reaches a, now through c.
    net.publish("b", "x/1");
    net.subscribe("a", "x/#");
    net.publish("b", "x/2");
    assert_eq!(net.count("a", "x/2"), 1);
}
