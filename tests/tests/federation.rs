//! Real Mosquitto brokers and real agents over QUIC + mutual TLS on
//! 127.0.0.1: the federation cases of issue #3.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic

use std::time::Duration;

use mqlink_e2e::{Federation, link, topic, wait_until};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, PublishProperties, RetainForwardRule};

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_carry_exactly_what_is_wanted() {
    let fed = Federation::start("two", &["a", "b"], &[link("a", "b")])
        .await
        .unwrap();
    let mut sub = fed.client("b", "sub-b").await.unwrap();
    sub.subscribe("factory/+/temp", QoS::AtLeastOnce)
        .await
        .unwrap();
    fed.wait_export("a", "factory/+/temp", true).await.unwrap();

    let publ = fed.client("a", "pub-a").await.unwrap();
    for _ in 0..50 {
        publ.publish("factory/1/temp", b"21.5", QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    for _ in 0..20 {
        publ.publish("other/x", b"nobody wants this", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        publ.publish("factory/1/humidity", b"nor this", QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    publ.publish("factory/1/temp", b"end", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let got = sub.take(51, T).await.unwrap();
    assert!(got.iter().all(|p| topic(p) == "factory/1/temp"));
    assert_eq!(&got[50].payload[..], b"end", "order kept, sentinel last");
    // Exactly what was wanted crossed the link: 50 + the sentinel, nothing else.
    assert_eq!(fed.sent("a", "b").await, 51);
    assert_eq!(fed.sent("b", "a").await, 0);
    assert!(sub.drain().is_empty(), "no duplicates");
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_interest_still_crosses_once() {
    let fed = Federation::start("overlap", &["a", "b"], &[link("a", "b")])
        .await
        .unwrap();
    let mut s1 = fed.client("b", "sub-1").await.unwrap();
    let mut s2 = fed.client("b", "sub-2").await.unwrap();
    s1.subscribe("o/+/t", QoS::AtLeastOnce).await.unwrap();
    s2.subscribe("o/x/#", QoS::AtLeastOnce).await.unwrap();
    fed.wait_interest("a", "b", "o/+/t").await.unwrap();
    fed.wait_interest("a", "b", "o/x/#").await.unwrap();
    // a's export subscriptions on its broker do not overlap (one copy per message).
    wait_until("a's export cover", T, || async {
        fed.stats("a")
            .await
            .export
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            == ["o/+/#"]
    })
    .await
    .unwrap();
    let publ = fed.client("a", "pub-a").await.unwrap();
    for _ in 0..10 {
        publ.publish("o/x/t", b"both want it", QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    publ.publish("o/y/z", b"nobody wants it", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    publ.publish("o/x/t", b"end", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(s1.take(11, T).await.unwrap().len(), 11);
    assert_eq!(s2.take(11, T).await.unwrap().len(), 11);
    assert_eq!(
        fed.sent("a", "b").await,
        11,
        "one envelope per message, none for o/y/z"
    );
    assert!(s1.drain().is_empty() && s2.drain().is_empty());
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triangle_delivers_one_copy_each_and_nothing_loops() {
    let fed = Federation::start(
        "triangle",
        &["a", "b", "c"],
        &[link("a", "b"), link("b", "c"), link("a", "c")],
    )
    .await
    .unwrap();
    let mut sb = fed.client("b", "sub-b").await.unwrap();
    let mut sc = fed.client("c", "sub-c").await.unwrap();
    sb.subscribe("t/#", QoS::AtLeastOnce).await.unwrap();
    sc.subscribe("t/#", QoS::AtLeastOnce).await.unwrap();
    fed.wait_interest("a", "b", "t/#").await.unwrap();
    fed.wait_interest("a", "c", "t/#").await.unwrap();
    fed.wait_export("a", "t/#", true).await.unwrap();
    let publ = fed.client("a", "pub-a").await.unwrap();
    for _ in 0..20 {
        publ.publish("t/1", b"x", QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    assert_eq!(sb.take(20, T).await.unwrap().len(), 20);
    assert_eq!(sc.take(20, T).await.unwrap().len(), 20);
    // One copy per region, straight from a; nothing went round the triangle.
    assert_eq!(fed.sent("a", "b").await, 20);
    assert_eq!(fed.sent("a", "c").await, 20);
    for (x, y) in [("b", "c"), ("c", "b"), ("b", "a"), ("c", "a")] {
        assert_eq!(fed.sent(x, y).await, 0, "{x} -> {y}");
    }
    for r in ["a", "b", "c"] {
        let drops = fed.stats(r).await.stats.drops;
        assert!(drops.is_empty(), "{r}: {drops:?}");
    }
    assert!(
        sb.drain().is_empty() && sc.drain().is_empty(),
        "no duplicates"
    );
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_transits_through_the_middle_region() {
    let fed = Federation::start("line", &["a", "b", "c"], &[link("a", "b"), link("b", "c")])
        .await
        .unwrap();
    let mut sc = fed.client("c", "sub-c").await.unwrap();
    sc.subscribe("x/#", QoS::AtLeastOnce).await.unwrap();
    fed.wait_export("a", "x/#", true).await.unwrap();
    let publ = fed.client("a", "pub-a").await.unwrap();
    for _ in 0..10 {
        publ.publish("x/y", b"via b", QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    assert_eq!(sc.take(10, T).await.unwrap().len(), 10);
    assert_eq!(fed.sent("a", "b").await, 10);
    assert_eq!(fed.sent("b", "c").await, 10);
    assert_eq!(fed.stats("b").await.stats.delivered, 0, "b only transits");
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_retain_and_properties_arrive_intact() {
    let fed = Federation::start("props", &["a", "b"], &[link("a", "b")])
        .await
        .unwrap();
    let mut sub = fed.client("b", "sub-b").await.unwrap();
    // Retain As Published, so the live copy shows the retain flag as sent.
    let filter = Filter {
        path: "p/#".into(),
        qos: QoS::AtLeastOnce,
        nolocal: false,
        preserve_retain: true,
        retain_forward_rule: RetainForwardRule::OnEverySubscribe,
    };
    sub.inner.subscribe_many([filter]).await.unwrap();
    fed.wait_export("a", "p/#", true).await.unwrap();
    let publ = fed.client("a", "pub-a").await.unwrap();
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        topic_alias: None,
        response_topic: Some("reply/to".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x01\x02")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        subscription_identifiers: vec![],
        content_type: Some("text/plain".into()),
    };
    publ.publish_with("p/1", b"hello", QoS::AtLeastOnce, true, props)
        .await
        .unwrap();
    let got = sub.take(1, T).await.unwrap().remove(0);
    assert_eq!(topic(&got), "p/1");
    assert_eq!(&got.payload[..], b"hello");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert!(got.retain, "retain flag crossed");
    let p = got.properties.unwrap();
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.response_topic.as_deref(), Some("reply/to"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
    let expiry = p.message_expiry_interval.unwrap();
    assert!(
        (3590..=3600).contains(&expiry),
        "expiry reduced by transit only: {expiry}"
    );
    assert_eq!(
        &p.user_properties[..2],
        &[("k".into(), "v".into()), ("k".into(), "w".into())]
    );
    let origin = p
        .user_properties
        .iter()
        .find(|(k, _)| k == "mqlink-origin")
        .unwrap();
    assert!(origin.1.starts_with("a:"), "{origin:?}");

    // The import is retained on b's broker: a late subscriber gets it.
    let mut late = fed.client("b", "late-b").await.unwrap();
    late.subscribe("p/1", QoS::AtLeastOnce).await.unwrap();
    let retained = late.take(1, T).await.unwrap().remove(0);
    assert!(retained.retain);
    assert_eq!(&retained.payload[..], b"hello");
    // The import never went back out of b's broker to the federation.
    assert_eq!(fed.sent("b", "a").await, 0);

    // A large payload travels on a stream of its own and arrives whole.
    static BIG: [u8; 300 * 1024] = [7u8; 300 * 1024];
    publ.publish("p/big", &BIG, QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let big = sub.take(1, T).await.unwrap().remove(0);
    assert_eq!(topic(&big), "p/big");
    assert_eq!(big.payload.len(), BIG.len());
    assert!(big.payload.iter().all(|b| *b == 7));
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_and_clean_disconnect_stop_the_flow() {
    let fed = Federation::start("unsub", &["a", "b"], &[link("a", "b")])
        .await
        .unwrap();
    let mut sub = fed.client("b", "sub-b").await.unwrap();
    sub.subscribe("u/#", QoS::AtLeastOnce).await.unwrap();
    sub.subscribe("s/#", QoS::AtLeastOnce).await.unwrap();
    fed.wait_export("a", "u/#", true).await.unwrap();
    fed.wait_export("a", "s/#", true).await.unwrap();
    let publ = fed.client("a", "pub-a").await.unwrap();
    publ.publish("u/1", b"wanted", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    sub.take(1, T).await.unwrap();

    // After each publish that must not cross, a sentinel that must, from
    // the same publisher: broker a hands agent a its messages in order and
    // agent a's core takes them in order, so once the sentinel is at b
    // the unwanted message has been dealt with (and `sent` counts a
    // message when the core sends it, before the sentinel's).
    let sentinel = async |sub: &mut mqlink_e2e::Client, n: &'static str, before: u64| {
        publ.publish(n, b"sentinel", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        let got = sub.take(1, T).await.unwrap();
        assert_eq!(topic(&got[0]), n, "only the sentinel crossed");
        assert_eq!(
            fed.sent("a", "b").await,
            before + 1,
            "nothing else was sent"
        );
    };
    sub.unsubscribe("u/#").await.unwrap();
    fed.wait_export("a", "u/#", false).await.unwrap();
    let before = fed.sent("a", "b").await;
    publ.publish("u/1", b"unwanted now", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    sentinel(&mut sub, "s/1", before).await;

    // A clean-session client that disconnects takes its interest with it.
    let mut other = fed.client("b", "other-b").await.unwrap();
    other.subscribe("v/#", QoS::AtMostOnce).await.unwrap();
    fed.wait_export("a", "v/#", true).await.unwrap();
    other.disconnect().await;
    fed.wait_export("a", "v/#", false).await.unwrap();
    let before = fed.sent("a", "b").await;
    publ.publish("v/1", b"unwanted now", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    sentinel(&mut sub, "s/2", before).await;
    assert!(sub.next(Duration::from_millis(300)).await.is_none());
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_or_wrong_region_is_refused() {
    let fed = Federation::start("identity", &["a", "b"], &[link("a", "b")])
        .await
        .unwrap();
    let a_addr = fed.quic_addr("a");
    let certs = fed.dir().join("certs");
    // A certificate for `c` from the right CA: c is not a's neighbour.
    mqlink::certs::issue(&mqlink_topology::RegionName::new("c").unwrap(), &certs).unwrap();
    // A certificate for `b` from another CA.
    let rogue = fed.dir().join("rogue");
    mqlink::certs::init(&rogue).unwrap();
    mqlink::certs::issue(&mqlink_topology::RegionName::new("b").unwrap(), &rogue).unwrap();

    let attempt = |cert_dir: std::path::PathBuf, region: &'static str| {
        let ca = certs.join("ca.pem");
        async move {
            let tls = mqlink_config::TlsConfig {
                cert: cert_dir.join(format!("{region}.pem")),
                key: cert_dir.join(format!("{region}.key")),
                ca,
            };
            let id = mqlink::tls::Identity::load(
                &tls,
                &mqlink_topology::RegionName::new(region).unwrap(),
            )
            .unwrap();
            let client = id
                .client_config(mqlink::tls::transport(Duration::from_secs(2)))
                .unwrap();
            let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            ep.set_default_client_config(client);
            let outcome = match ep.connect(a_addr, "a").unwrap().await {
                Err(e) => format!("handshake failed: {e}"),
                Ok(conn) => {
                    // TLS 1.3: a rejected client certificate may surface after the
                    // client thinks the handshake is done; the server then closes.
                    if let Ok((mut s, _)) = conn.open_bi().await {
                        let _ = s.write_all(b"\x00").await;
                    }
                    format!("closed: {}", conn.closed().await)
                }
            };
            ep.close(0u32.into(), b"");
            outcome
        }
    };
    let wrong_region = tokio::time::timeout(T, attempt(certs.clone(), "c"))
        .await
        .unwrap();
    assert!(
        wrong_region.contains("certificate names no configured neighbour region"),
        "{wrong_region}"
    );
    let wrong_ca = tokio::time::timeout(T, attempt(rogue.clone(), "b"))
        .await
        .unwrap();
    assert!(
        wrong_ca.contains("handshake failed") || wrong_ca.to_lowercase().contains("certificate"),
        "{wrong_ca}"
    );
    // The real link is unaffected.
    wait_until("a still linked to b", T, || async {
        fed.stats("a")
            .await
            .peers_up
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            == ["b"]
    })
    .await
    .unwrap();
    fed.stop().await;
}

/// Envelopes agent `k` of region a sent.
async fn sent_by(fed: &Federation, k: usize) -> u64 {
    fed.replica_stats("a", k).await.stats.sent.values().sum()
}

/// (messages imported, imports dropped when the broker handed them back) by agent `k` of a.
async fn imports_of(fed: &Federation, k: usize) -> (u64, u64) {
    let s = fed.replica_stats("a", k).await.stats;
    let back = s
        .drops
        .get(&mqlink_proto::DropReason::Reimport)
        .copied()
        .unwrap_or(0);
    (s.delivered, back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_split_the_exports_and_the_survivor_carries_on() {
    // Region a: one Mosquitto, two agents exporting through `$share/mqlink-a/...`.
    let mut fed = Federation::start("replicas", &["a:2", "b"], &[link("a", "b")])
        .await
        .unwrap();
    let mut sub_b = fed.client("b", "sub-b").await.unwrap();
    sub_b.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    sub_b.subscribe("s/#", QoS::AtLeastOnce).await.unwrap();
    let mut sub_a = fed.client("a", "sub-a").await.unwrap();
    sub_a.subscribe("s/#", QoS::AtLeastOnce).await.unwrap();
    wait_until("both agents of a export r/# and s/#", T, || async {
        fed.replica_stats("a", 0).await.export.len() == 2
            && fed.replica_stats("a", 1).await.export.len() == 2
    })
    .await
    .unwrap();
    fed.wait_export("b", "s/#", true).await.unwrap();

    // a -> b: the broker splits the messages between the two agents; each crosses once.
    let publ_a = fed.client("a", "pub-a").await.unwrap();
    for i in 0..100 {
        publ_a
            .publish(&format!("r/{i}"), b"x", QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    let got = sub_b.take(100, T).await.unwrap();
    let distinct: std::collections::BTreeSet<String> = got.iter().map(topic).collect();
    assert_eq!(distinct.len(), 100, "every message once");
    let (s0, s1) = (sent_by(&fed, 0).await, sent_by(&fed, 1).await);
    assert_eq!(s0 + s1, 100, "nothing crossed twice");
    assert!(s0 > 0 && s1 > 0, "both agents carried a share: {s0} + {s1}");

    // b -> a: one agent imports each message; the copy the broker hands
    // back on the shared export subscription (no No Local there) is dropped.
    let publ_b = fed.client("b", "pub-b").await.unwrap();
    for i in 0..20 {
        publ_b
            .publish(&format!("s/{i}"), b"y", QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    let got = sub_a.take(20, T).await.unwrap();
    let distinct: std::collections::BTreeSet<String> = got.iter().map(topic).collect();
    assert_eq!(distinct.len(), 20);
    assert_eq!(
        sub_b.take(20, T).await.unwrap().len(),
        20,
        "b's own subscriber"
    );
    wait_until("every import came back once and was dropped", T, || async {
        let ((d0, r0), (d1, r1)) = (imports_of(&fed, 0).await, imports_of(&fed, 1).await);
        d0 + d1 == 20 && r0 + r1 == 20
    })
    .await
    .unwrap();

    // One agent of a stops: the other carries the region in both directions.
    fed.stop_replica("a", 0).await;
    wait_until("b has one connection to a", T, || async {
        fed.stats("b")
            .await
            .connections
            .get(&mqlink_topology::RegionName::new("a").unwrap())
            == Some(&1)
    })
    .await
    .unwrap();
    let before = sent_by(&fed, 0).await; // now the survivor
    for i in 100..150 {
        publ_a
            .publish(&format!("r/{i}"), b"x", QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    let got = sub_b.take(50, T).await.unwrap();
    assert!(
        got.iter()
            .all(|p| topic(p)[2..].parse::<u32>().unwrap() >= 100)
    );
    assert_eq!(sent_by(&fed, 0).await - before, 50);
    for i in 20..30 {
        publ_b
            .publish(&format!("s/{i}"), b"y", QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    assert_eq!(sub_a.take(10, T).await.unwrap().len(), 10);
    assert!(sub_b.take(10, T).await.is_ok());
    assert!(
        !fed.stats("b")
            .await
            .stats
            .drops
            .contains_key(&mqlink_proto::DropReason::NoPeer)
    );
    fed.stop().await;
}

/// Payloads above 64 KiB keep their place in their topic's order (they
/// used to travel on streams of their own and overtook, or were overtaken
/// by, the small messages around them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_keep_their_place_in_a_topics_order() {
    let fed = Federation::start("large-order", &["a", "b"], &[link("a", "b")])
        .await
        .unwrap();
    let mut sub = fed.client("b", "sub-b").await.unwrap();
    sub.subscribe("big/t", QoS::AtLeastOnce).await.unwrap();
    fed.wait_export("a", "big/t", true).await.unwrap();
    let publ = fed.client("a", "pub-a").await.unwrap();
    const N: usize = 40;
    for i in 0..N {
        let mut payload = format!("{i:03}").into_bytes();
        if i % 4 == 1 {
            payload.resize(300 * 1024, b'x');
        }
        publ.inner
            .publish(
                "big/t",
                QoS::AtLeastOnce,
                false,
                bytes::Bytes::from(payload),
            )
            .await
            .unwrap();
    }
    let got = sub.take(N, T).await.unwrap();
    let order: Vec<usize> = got
        .iter()
        .map(|p| {
            std::str::from_utf8(&p.payload[..3])
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(order, (0..N).collect::<Vec<_>>(), "one topic, one order");
    assert!(
        got.iter().filter(|p| p.payload.len() > 64 * 1024).count() == N / 4,
        "the large ones arrived whole"
    );
    fed.stop().await;
}
