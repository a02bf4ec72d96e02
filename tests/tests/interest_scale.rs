//! Interest at scale, in real agent processes: 100,000 local filters
//! (a fleet subscribing per device) learned, advertised, held by the other
//! region and matched there, with the agents' memory measured.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic

use std::time::{Duration, Instant};

use mqlink_e2e::procs::ProcFederation;
use mqlink_e2e::{topic, wait_until};
use rumqttc::v5::mqttbytes::QoS;

/// Region b wants `dev/<id>/cmd` for 100,000 devices (static filters,
/// exact summary): region a holds all of them within the limit, routes a
/// device's topic to b, and neither agent's peak memory reaches 150 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_filters_cross_within_the_memory_bound() {
    let n = 100_000;
    let filters: Vec<String> = (0..n).map(|d| format!("dev/{d}/cmd")).collect();
    let interest: Vec<(&str, &str)> = filters.iter().map(|f| ("b", f.as_str())).collect();
    let started = Instant::now();
    let fed = ProcFederation::start("scale", &["a", "b"], &[("a", "b", 10)], &interest).unwrap();
    wait_until(
        "100,000 filters of b at a",
        Duration::from_secs(60),
        || async { fed.metric_sum("a", "mqlink_interest_filters").await >= n as f64 },
    )
    .await
    .unwrap();
    let known = started.elapsed();
    let mut sub = fed.client("b", "dev-77").await.unwrap();
    sub.subscribe("dev/77/cmd", QoS::AtLeastOnce).await.unwrap();
    let publ = fed.client("a", "ctl").await.unwrap();
    // Agent a subscribes to the 100,000 filters on broker a (its export);
    // until the broker has them all, a publish there reaches no one: try
    // until one arrives.
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        publ.publish("dev/77/cmd", b"on", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        if let Some(m) = sub.next(Duration::from_millis(500)).await {
            break vec![m];
        }
        assert!(Instant::now() < deadline, "no delivery within 60 s");
    };
    let routed = started.elapsed();
    assert_eq!(topic(&got[0]), "dev/77/cmd");
    let (a, b) = (
        fed.agent_peak_rss("a").unwrap(),
        fed.agent_peak_rss("b").unwrap(),
    );
    let summary = fed.metric_sum("b", "mqlink_bytes_out_total").await;
    println!(
        "{n} filters: from start, known at a in {known:?}, routed in {routed:?}; peak memory \
         a {} MB, b {} MB; b sent {summary} bytes on its link (summaries and all)",
        a / 1_000_000,
        b / 1_000_000
    );
    assert!(a < 150_000_000, "agent a peaked at {a} bytes");
    assert!(b < 150_000_000, "agent b peaked at {b} bytes");
    fed.stop().await;
}
