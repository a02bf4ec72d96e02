//! QoS >= 1 custody on simulated time: nothing is acknowledged upstream
//! before every region that wants it has it, and nothing held is lost when
//! a transit agent, a link or the destination fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic

mod net;

use std::collections::BTreeSet;
use std::time::Duration;

use mqlink_proto::DropReason;
use net::*;

fn tokens(range: std::ops::RangeInclusive<u64>) -> BTreeSet<u64> {
    range.collect()
}

#[test]
fn the_broker_is_released_only_after_the_destination_broker_acked() {
    let mut net = Net::new(&["a", "b"], &[("a", "b", 10)]);
    net.warm();
    net.subscribe("b", "t/#");
    net.slow_brokers.insert("b".into());
    for _ in 0..20 {
        net.publish_qos1("a", "t/1");
    }
    assert_eq!(net.payloads("b"), (1..=20).collect::<Vec<_>>());
    assert!(
        net.released.get("a").is_none_or(BTreeSet::is_empty),
        "nothing released while b's broker has not acknowledged"
    );
    assert_eq!(net.agent("a").stats().held, 20);
    assert_eq!(net.agent("b").stats().held, 20);
    net.ack_deliveries("b");
    assert_eq!(net.released["a"], tokens(1..=20));
    assert_eq!(net.agent("a").stats().held, 0);
    assert_eq!(net.agent("b").stats().held, 0);
}

#[test]
fn a_dead_transit_agent_loses_nothing_and_duplicates_nothing() {
    // a - b - c is the path; a - c is the expensive spare.
    let mut net = Net::new(
        &["a", "b", "c"],
        &[("a", "b", 1), ("b", "c", 1), ("a", "c", 50)],
    );
    net.warm();
    net.subscribe("c", "t/#");
    // c's broker is slow: b and a keep custody of the first 30.
    net.slow_brokers.insert("c".into());
    for _ in 0..30 {
        net.publish_qos1("a", "t/x");
    }
    assert!(net.sent("a", "c") == 0, "the cheap path carries them");
    // And the b-c link is cut, so 30 more wait at b.
    net.disconnect("b", "c");
    for _ in 0..30 {
        net.publish_qos1("a", "t/x");
    }
    net.advance(Duration::from_millis(10));
    // b dies holding all of it.
    net.kill("b");
    net.advance(Duration::from_secs(2));
    net.ack_deliveries("c");
    net.advance(Duration::from_secs(1));
    net.ack_deliveries("c");
    assert_eq!(
        net.payloads("c"),
        (1..=60).collect::<Vec<_>>(),
        "every message once, through the spare link"
    );
    assert_eq!(net.released["a"], tokens(1..=60));
    assert_eq!(net.agent("a").stats().held, 0);
    assert_eq!(net.agent("c").stats().held, 0);
    let drops = net.agent("c").stats().drops;
    assert_eq!(
        drops.get(&DropReason::Duplicate).copied().unwrap_or(0),
        30,
        "the 30 c had already delivered came again and were not delivered twice"
    );
}

#[test]
fn a_destination_that_restarts_gets_what_was_held_for_it() {
    let mut net = Net::new(
        &["a", "b", "c"],
        &[("a", "b", 1), ("b", "c", 1), ("a", "c", 1)],
    );
    net.warm();
    net.subscribe("c", "t/#");
    net.slow_brokers.insert("c".into());
    for _ in 0..10 {
        net.publish_qos1("a", "t/1");
    }
    assert_eq!(net.payloads("c").len(), 10);
    net.kill("c");
    for _ in 0..10 {
        net.publish_qos1("a", "t/1");
    }
    net.advance(Duration::from_secs(3));
    assert!(
        net.released.get("a").is_none_or(BTreeSet::is_empty),
        "nothing released while c is down: its interest outlives its links"
    );
    // Waiting for a path: the 10 sent before c died (some re-sent to b
    // before b noticed, held there) and the 10 published since.
    let parked = net.agent("a").stats().parked + net.agent("b").stats().parked;
    assert_eq!(parked, 20);
    net.slow_brokers.remove("c");
    net.revive("c", &["t/#"]);
    net.advance(Duration::from_secs(1));
    let got = net.payloads("c");
    let unique: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(unique, tokens(1..=20), "all 20 arrive");
    assert_eq!(net.released["a"], tokens(1..=20));
    assert_eq!(net.agent("a").stats().held, 0);
}

/// The destination's broker acknowledged 10 messages and their dedupe
/// marks are durable, but the destination agent dies before its
/// acknowledgement leaves: the origin sends them again to the restarted
/// agent, which recognises them from its durable marks.
#[test]
fn a_destination_restart_after_its_broker_acked_delivers_nothing_twice() {
    let mut net = Net::new(&["a", "c"], &[("a", "c", 1)]);
    net.warm();
    net.subscribe("c", "t/#");
    net.slow_brokers.insert("c".into());
    net.hold_marks.insert("c".into());
    for _ in 0..10 {
        net.publish_qos1("a", "t/1");
    }
    net.ack_deliveries("c");
    assert!(net.released.get("a").is_none_or(BTreeSet::is_empty));
    net.kill("c");
    net.slow_brokers.remove("c");
    net.hold_marks.remove("c");
    // Two more published while c was down, never delivered before.
    for _ in 0..2 {
        net.publish_qos1("a", "t/1");
    }
    net.revive("c", &["t/#"]);
    net.advance(Duration::from_secs(1));
    assert_eq!(
        net.payloads("c"),
        (1..=12).collect::<Vec<u64>>(),
        "each message reached c's broker exactly once"
    );
    assert_eq!(net.released["a"], tokens(1..=12), "a released all 12");
    assert_eq!(net.agent("c").stats().drops[&DropReason::Duplicate], 10);
}

#[test]
fn messages_published_before_interest_is_known_wait_for_it() {
    let mut net = Net::new(&["a", "b"], &[("a", "b", 10)]);
    // Published at start, before b's interest reached a.
    net.publish_qos1("a", "t/1");
    let unwanted = net.publish_qos1("a", "nobody/wants/this");
    assert!(net.released.get("a").is_none_or(BTreeSet::is_empty));
    net.subscribe("b", "t/#");
    assert_eq!(
        net.payloads("b"),
        vec![1],
        "delivered once interest arrived"
    );
    net.advance(Duration::from_secs(6));
    assert_eq!(
        net.released["a"],
        BTreeSet::from([1, unwanted]),
        "after the warm-up the unwanted one is released"
    );
    assert_eq!(net.payloads("b"), vec![1]);
}

#[test]
fn a_full_window_holds_messages_back_instead_of_dropping_them() {
    let mut net = Net::new(&["a", "b"], &[("a", "b", 10)]);
    net.warm();
    net.subscribe("b", "t/#");
    net.slow_brokers.insert("b".into());
    // Far more than one window (4096).
    for _ in 0..10_000 {
        let _ = net.publish_qos1("a", "t/1");
    }
    let at_b = net.payloads("b").len();
    assert!(at_b <= 4096, "the window bounds what is in flight: {at_b}");
    assert_eq!(net.agent("a").stats().held, 10_000);
    for _ in 0..10 {
        net.ack_deliveries("b");
    }
    assert_eq!(net.payloads("b"), (1..=10_000).collect::<Vec<_>>());
    assert_eq!(net.released["a"].len(), 10_000);
    assert!(net.agent("a").stats().drops.is_empty());
}

#[test]
fn messages_with_no_path_go_to_the_spool_and_come_back() {
    let mut net = Net::new(&["a", "b"], &[("a", "b", 10)]);
    net.warm();
    net.subscribe("b", "t/#");
    net.agent("a").enable_spool();
    net.disconnect("a", "b");
    for _ in 0..50 {
        net.publish_qos1("a", "t/1");
    }
    assert_eq!(net.agent("a").stats().parked, 50);
    // A busy agent (an input every 100 ms) still runs its spool timer.
    for _ in 0..20 {
        net.publish("a", "noise");
        net.advance(Duration::from_millis(100));
    }
    assert_eq!(net.spools["a"].len(), 50, "durable in the spool");
    assert_eq!(
        net.released["a"],
        tokens(1..=50),
        "the broker is released once the spool has them"
    );
    assert_eq!(net.agent("a").stats().held, 0, "and memory is free");
    net.connect("a", "b");
    net.advance(Duration::from_secs(2));
    assert_eq!(net.payloads("b"), (1..=50).collect::<Vec<_>>());
    assert!(net.spools["a"].is_empty(), "every record acknowledged");
    assert_eq!(net.agent("a").stats().held, 0);
}

/// A message owed to b (in flight: b's broker is slow to acknowledge)
/// and c (cut off): c's share goes to the spool, which hands it back
/// while the entry is still held for b. That copy joins the entry, so c
/// still gets the message when its link returns (it used to be
/// acknowledged in the spool at once, and c's copy was lost).
#[test]
fn a_spool_replay_of_a_message_still_held_keeps_its_destinations() {
    let mut net = Net::new(&["a", "b", "c"], &[("a", "b", 10), ("a", "c", 10)]);
    net.warm();
    net.subscribe("b", "t/#");
    net.subscribe("c", "t/#");
    net.agent("a").enable_spool();
    net.slow_brokers.insert("b".into());
    net.disconnect("a", "c");
    net.publish_qos1("a", "t/1");
    net.advance(Duration::from_secs(2));
    assert!(
        net.released.get("a").is_none_or(BTreeSet::is_empty),
        "b has not acknowledged yet"
    );
    net.slow_brokers.remove("b");
    net.ack_deliveries("b");
    net.connect("a", "c");
    net.advance(Duration::from_secs(2));
    assert_eq!(net.payloads("b"), vec![1]);
    assert_eq!(net.payloads("c"), vec![1], "c's share survived the replay");
    assert_eq!(net.released["a"], tokens(1..=1));
    assert!(net.spools["a"].is_empty(), "the record was acknowledged");
}

/// An agent restarts with a message for c in its spool, and replays it
/// before it has heard c's interest (c is down too): c is still owed
/// the message (it used to be taken for "c no longer wants it" and
/// released unsent), and gets it when it is back.
#[test]
fn a_restarted_agent_keeps_spooled_messages_for_regions_it_has_not_heard_from() {
    let mut net = Net::new(&["a", "b", "c"], &[("a", "b", 10), ("b", "c", 10)]);
    net.warm();
    net.subscribe("c", "t/#");
    net.agent("b").enable_spool();
    net.disconnect("b", "c");
    net.publish_qos1("b", "t/1");
    net.advance(Duration::from_secs(2));
    assert_eq!(net.spools["b"].len(), 1, "b spooled c's message");
    assert_eq!(net.released["b"], tokens(1..=1), "and released its broker");
    net.kill("c");
    net.kill("b");
    net.revive("b", &[]);
    net.advance(Duration::from_secs(10));
    assert!(net.payloads("c").is_empty());
    assert_eq!(net.spools["b"].len(), 1, "still owed to c");
    net.revive("c", &["t/#"]);
    net.advance(Duration::from_secs(2));
    assert_eq!(net.payloads("c"), vec![1]);
    assert!(net.spools["b"].is_empty());
}

#[test]
fn time_in_transit_grows_with_the_time_held() {
    let mut net = Net::new(&["a", "b"], &[("a", "b", 10)]);
    net.warm();
    net.subscribe("b", "t/#");
    net.disconnect("a", "b");
    net.publish_qos1("a", "t/1");
    net.advance(Duration::from_secs(3));
    net.connect("a", "b");
    net.advance(Duration::from_millis(100));
    let env = net.delivered["b"].last().unwrap().clone();
    assert!(
        (3000..4000).contains(&env.transit_ms),
        "held 3 s at a: transit {} ms",
        env.transit_ms
    );
}
