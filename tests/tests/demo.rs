//! `mqlink demo` with the embedded broker (the zero-install path the README
//! starts with) and with Mosquitto: every region gets everything it wants,
//! once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic

use std::time::Duration;

use mqlink::demo::{DemoOptions, run};
use mqlink::federation::BrokerKind;

fn everything_once(report: &mqlink::demo::DemoReport) {
    assert_eq!(report.deliveries.len(), 3);
    for (region, (got, expected, duplicates)) in &report.deliveries {
        assert!(*expected > 0, "{region} wants something");
        assert_eq!(got, expected, "{region}");
        assert_eq!(*duplicates, 0, "{region}");
    }
}

/// With Mosquitto the first message of a topic used to be lost: the demo
/// started publishing before the origin broker had granted the agent's
/// export subscription. It now waits for the SUBACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_mosquitto_delivers_everything_once() {
    if !mqlink::bench::setups::mosquitto_available() {
        eprintln!("skipped: mosquitto not installed");
        return;
    }
    let report = run(DemoOptions {
        regions: 3,
        duration: Some(Duration::from_secs(3)),
        broker: BrokerKind::Mosquitto,
    })
    .await
    .unwrap();
    everything_once(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_embedded_brokers_delivers_everything_once() {
    let report = run(DemoOptions {
        regions: 3,
        duration: Some(Duration::from_secs(3)),
        broker: BrokerKind::Embedded,
    })
    .await
    .unwrap();
    everything_once(&report);
    // The expensive ring link (ap-south <-> eu-west, cost 300) carries nothing:
    // eu-west and ap-south talk through us-east.
    let carried = |a: &str, b: &str| {
        report.carried[&(
            mqlink_topology::RegionName::new(a).unwrap(),
            mqlink_topology::RegionName::new(b).unwrap(),
        )]
    };
    assert_eq!(carried("eu-west", "ap-south"), 0);
    assert_eq!(carried("ap-south", "eu-west"), 0);
    assert!(carried("eu-west", "us-east") > 0 && carried("us-east", "ap-south") > 0);
}

/// `mqlink bench` through one embedded broker, at each QoS, a tenth of
/// the topics wanted by two subscribers: every expected message counted
/// once, nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_counts_every_wanted_message_once() {
    use mqlink::bench::{Workload, run};
    let broker = mqlink::brokers::LocalBroker::embedded().await.unwrap();
    let at = run::Endpoints {
        publish: format!("127.0.0.1:{}", broker.port()),
        subscribe: format!("127.0.0.1:{}", broker.port()),
    };
    for qos in 0..=2 {
        let w = Workload {
            publishers: 2,
            subscribers: 2,
            qos,
            payload: 64,
            topics: 20,
            wanted: 0.1,
            rate: None,
            messages: Some(3_001),
            duration: None,
            settle: Duration::from_secs(2),
        };
        let r = run::run("embedded", &at, &w, &[], false).await.unwrap();
        assert_eq!(r.sent, 3_001, "QoS {qos}");
        // Two of the 20 topics, round-robin from two publishers (1,501
        // and 1,500 messages: 151 and 150 on those topics), to two subscribers.
        assert_eq!(r.expected, 2 * (151 + 150), "QoS {qos}");
        assert_eq!(r.delivered, r.expected, "QoS {qos}: {}", r.line());
        assert_eq!((r.lost, r.duplicated, r.reordered), (0, 0, 0), "QoS {qos}");
        assert!(r.latency.p50_ms > 0.0 && r.latency.p50_ms <= r.latency.p99_ms);
    }
    broker.stop().await;
}

/// `mqlink bench --pair`: two agents, a real QUIC link, their cores fed
/// and drained in process: everything fed arrives, nothing is dropped,
/// at QoS 0 (closed loop) and QoS 1 (custody, durable marks).
#[test]
fn an_agent_pair_carries_everything_fed_to_it() {
    for qos in [0, 1] {
        let dir = mqlink_e2e::scratch(&format!("pair-{qos}"));
        let r = mqlink::bench::pair::pair(&dir, qos, 20_000).unwrap();
        assert_eq!((r.fed, r.delivered), (20_000, 20_000), "{}", r.line());
        assert!(r.dropped.is_empty(), "{}", r.line());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
