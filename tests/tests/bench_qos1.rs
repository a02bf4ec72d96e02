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
//! `MQLINK_BENCH_MESSAGES` sets the message count per run (default
//! 100,000), `MQLINK_BENCH_ROUNDS` the rounds (default 3),
//! `MQLINK_BENCH_IDLE_SECS` the silence that ends a run (default 5): the
//! setups stay up and take turns, and the table gives each one's median,
//! with the agents' CPU time per message for mqlink (from `/proc`; steadier
//! than the rates on a shared machine). Rebuild the `mqlink` binary in
//! release first (`cargo build --release -p mqlink`): the agents are that
//! binary, which `-p mqlink-e2e` does not rebuild.

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
    /// mqlink only: CPU time of each agent per message delivered, in µs.
    agent_cpu_us: Option<(f64, f64)>,
}

/// Publish `n` messages on `publ` as fast as it goes; count at `sub`.
async fn measure(publ: &Client, sub: &mut Client, n: u64, idle: Duration) -> Run {
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
            idle
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
        agent_cpu_us: None,
    }
}

/// One setup, kept up across rounds: its publisher and subscriber.
struct Setup {
    name: &'static str,
    publ: Client,
    sub: Client,
    runs: Vec<Run>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it on a release build with --run-ignored only"]
async fn bench_qos1_one_broker_bridge_and_mqlink() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env("MQLINK_BENCH_MESSAGES", 100_000);
    let rounds = env("MQLINK_BENCH_ROUNDS", 3);
    // How long a silence ends a run (the messages not seen by then are lost).
    let idle = Duration::from_secs(env("MQLINK_BENCH_IDLE_SECS", 5));
    let sub_pub = |sub: Client, publ: Client, name| Setup {
        name,
        publ,
        sub,
        runs: Vec::new(),
    };
    async fn clients(sub_port: u16, pub_port: u16) -> (Client, Client) {
        let mut sub = Client::connect(sub_port, "bench-sub").await.unwrap();
        sub.subscribe("bench/#", QoS::AtLeastOnce).await.unwrap();
        let publ = Client::connect(pub_port, "bench-pub").await.unwrap();
        (sub, publ)
    }

    // All three setups stay up; the rounds take turns, so a noisy moment
    // of the machine hits every setup alike. One broker:
    let dir = scratch("bench-one");
    let one = LocalBroker::mosquitto(&dir, "one").unwrap();
    let (sub, publ) = clients(one.port(), one.port()).await;
    let mut setups = vec![sub_pub(sub, publ, "one broker")];
    // A Mosquitto bridge A -> B:
    let dir = scratch("bench-bridge");
    let b = LocalBroker::mosquitto(&dir, "b").unwrap();
    let bridge = format!(
        "connection bench-bridge\naddress 127.0.0.1:{}\ntopic bench/# out 1\nbridge_protocol_version mqttv50\n",
        b.port()
    );
    let a = LocalBroker::mosquitto_with(&dir, "a", &bridge).unwrap();
    let (sub, publ) = clients(b.port(), a.port()).await;
    setups.push(sub_pub(sub, publ, "Mosquitto bridge"));
    // mqlink: two agents (processes), custody, spool and durable dedupe
    // marks on:
    let fed = ProcFederation::start(
        "bench-mqlink",
        &["a", "b"],
        &[("a", "b", 10)],
        &[("b", "bench/#")],
    )
    .unwrap();
    let (sub, publ) = clients(
        fed.regions["b"].broker.port(),
        fed.regions["a"].broker.port(),
    )
    .await;
    setups.push(sub_pub(sub, publ, "mqlink"));

    let cpu = |fed: &ProcFederation, region: &str| {
        fed.regions[region]
            .agent
            .as_ref()
            .and_then(|a| a.cpu_time())
            .unwrap_or_default()
    };
    for round in 0..rounds {
        for s in &mut setups {
            let before = (cpu(&fed, "a"), cpu(&fed, "b"));
            let mut r = measure(&s.publ, &mut s.sub, n, idle).await;
            if s.name == "mqlink" {
                let per = |after: Duration, before: Duration| {
                    (after - before).as_secs_f64() * 1e6 / n as f64
                };
                r.agent_cpu_us =
                    Some((per(cpu(&fed, "a"), before.0), per(cpu(&fed, "b"), before.1)));
            }
            eprintln!("round {}: {}: {:.0} msg/s", round + 1, s.name, r.rate);
            s.runs.push(r);
        }
    }
    fed.stop().await;
    a.stop().await;
    b.stop().await;
    one.stop().await;

    let rate = |s: &Setup| median(s.runs.iter().map(|r| r.rate).collect());
    let bridge_rate = rate(&setups[1]);
    println!(
        "\nQoS 1, {n} messages of 100 B over 100 topics, one publisher as fast as it goes, \
         {rounds} rounds taking turns (median; all rounds):"
    );
    println!(
        "| setup | delivered msg/s | vs bridge | rounds | lost | duplicates | agent CPU per message (a / b) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for s in &setups {
        let all: Vec<String> = s.runs.iter().map(|r| format!("{:.0}", r.rate)).collect();
        let cpu: Vec<(f64, f64)> = s.runs.iter().filter_map(|r| r.agent_cpu_us).collect();
        let cpu = if cpu.is_empty() {
            "-".to_owned()
        } else {
            format!(
                "{:.1} / {:.1} µs",
                median(cpu.iter().map(|c| c.0).collect()),
                median(cpu.iter().map(|c| c.1).collect())
            )
        };
        println!(
            "| {} | {:.0} | {:.2}x | {} | {} | {} | {} |",
            s.name,
            rate(s),
            rate(s) / bridge_rate,
            all.join(", "),
            s.runs.iter().map(|r| r.lost).sum::<u64>(),
            s.runs.iter().map(|r| r.duplicates).sum::<u64>(),
            cpu
        );
    }
    for s in &setups {
        assert!(
            s.runs.iter().all(|r| r.lost == 0),
            "{} lost QoS 1 messages",
            s.name
        );
    }
}
