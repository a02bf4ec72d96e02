//! Benchmark, not a test (ignored by default): QoS 1 throughput of one
//! publisher as fast as it goes, 100-byte payloads over 100 topics, to one
//! subscriber, through three setups measured in the same run: one
//! Mosquitto broker, a Mosquitto bridge A -> B, and mqlink (two agents,
//! custody and spool on, between two Mosquitto brokers). Run it on a
//! release build:
//!
//! ```sh
//! cargo nextest run --release -p mqlink-e2e --test bench_qos1 --run-ignored only --no-capture
//! ```
//!
//! `MQLINK_BENCH_MESSAGES` sets the message count (default 100,000).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark: a failure should panic

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqlink::brokers::LocalBroker;
use mqlink_e2e::procs::ProcFederation;
use mqlink_e2e::{Client, scratch, topic};
use rumqttc::v5::mqttbytes::QoS;

/// What one setup carried.
struct Run {
    rate: f64,
    lost: u64,
    duplicates: u64,
}

/// Publish `n` messages on `publ` as fast as it goes; count at `sub`.
async fn measure(publ: &Client, sub: &mut Client, n: u64) -> Run {
    // A warm-up message: the path is up before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        publ.publish("bench/warmup", b"w", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        if sub.next(Duration::from_millis(300)).await.is_some() {
            while sub.next(Duration::from_millis(300)).await.is_some() {}
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the setup never carried a message"
        );
    }
    let client = publ.inner.clone();
    let start = Instant::now();
    let publisher = tokio::spawn(async move {
        let payload = vec![b'x'; 100];
        for i in 0..n {
            let mut p = payload.clone();
            let id = i.to_string();
            p[..id.len()].copy_from_slice(id.as_bytes());
            client
                .publish(
                    format!("bench/{}", i % 100),
                    QoS::AtLeastOnce,
                    false,
                    Bytes::from(p),
                )
                .await
                .unwrap();
        }
    });
    let mut seen = BTreeSet::new();
    let mut total = 0u64;
    let mut last = start;
    loop {
        let wait = if (seen.len() as u64) < n {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(500)
        };
        let Some(p) = sub.next(wait).await else { break };
        if !topic(&p).starts_with("bench/") || topic(&p) == "bench/warmup" {
            continue;
        }
        let text = std::str::from_utf8(&p.payload).unwrap();
        let id: u64 = text.trim_end_matches('x').parse().unwrap();
        total += 1;
        seen.insert(id);
        last = Instant::now();
    }
    publisher.await.unwrap();
    let secs = last.duration_since(start).as_secs_f64();
    Run {
        rate: seen.len() as f64 / secs,
        lost: n - seen.len() as u64,
        duplicates: total - seen.len() as u64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it on a release build with --run-ignored only"]
async fn bench_qos1_one_broker_bridge_and_mqlink() {
    let n: u64 = std::env::var("MQLINK_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut rows = Vec::new();

    // One broker.
    let dir = scratch("bench-one");
    let one = LocalBroker::mosquitto(&dir, "one").unwrap();
    let mut sub = Client::connect(one.port(), "bench-sub").await.unwrap();
    sub.subscribe("bench/#", QoS::AtLeastOnce).await.unwrap();
    let publ = Client::connect(one.port(), "bench-pub").await.unwrap();
    rows.push(("one broker", measure(&publ, &mut sub, n).await));
    eprintln!("one broker: {:.0} msg/s", rows[0].1.rate);
    one.stop().await;

    // A Mosquitto bridge A -> B.
    let dir = scratch("bench-bridge");
    let b = LocalBroker::mosquitto(&dir, "b").unwrap();
    let bridge = format!(
        "connection bench-bridge\naddress 127.0.0.1:{}\ntopic bench/# out 1\nbridge_protocol_version mqttv50\n",
        b.port()
    );
    let a = LocalBroker::mosquitto_with(&dir, "a", &bridge).unwrap();
    let mut sub = Client::connect(b.port(), "bench-sub").await.unwrap();
    sub.subscribe("bench/#", QoS::AtLeastOnce).await.unwrap();
    let publ = Client::connect(a.port(), "bench-pub").await.unwrap();
    rows.push(("Mosquitto bridge", measure(&publ, &mut sub, n).await));
    eprintln!("bridge: {:.0} msg/s", rows[1].1.rate);
    a.stop().await;
    b.stop().await;

    // mqlink: two agents (processes), custody and spool on.
    let fed = ProcFederation::start(
        "bench-mqlink",
        &["a", "b"],
        &[("a", "b", 10)],
        &[("b", "bench/#")],
    )
    .unwrap();
    let mut sub = fed.client("b", "bench-sub").await.unwrap();
    sub.subscribe("bench/#", QoS::AtLeastOnce).await.unwrap();
    let publ = fed.client("a", "bench-pub").await.unwrap();
    rows.push(("mqlink", measure(&publ, &mut sub, n).await));
    fed.stop().await;

    let bridge_rate = rows[1].1.rate;
    println!("\nQoS 1, {n} messages of 100 B over 100 topics, one publisher as fast as it goes:");
    println!("| setup | delivered msg/s | vs bridge | lost | duplicates |");
    println!("|---|---|---|---|---|");
    for (name, r) in &rows {
        println!(
            "| {name} | {:.0} | {:.2}x | {} | {} |",
            r.rate,
            r.rate / bridge_rate,
            r.lost,
            r.duplicates
        );
    }
}
