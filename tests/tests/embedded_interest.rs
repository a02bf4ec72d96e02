//! The embedded demo broker tells its real subscriptions in the
//! `mqlink_interest` plugin's protocol (`interest.dynamic: plugin`), over
//! a real socket: read here as the agent reads it, with its own parser.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mqlink::brokers::LocalBroker;
use mqlink::mosquitto::Change;
use mqlink::plugin_feed::{PLUGIN_TOPIC, PluginFeed, SYNC_TOPIC};
use mqlink_e2e::Client;
use rumqttc::v5::mqttbytes::QoS;

/// What an agent knows from the broker's messages.
struct View {
    client: Client,
    feed: PluginFeed,
    filters: BTreeSet<String>,
}

impl View {
    /// Read messages until the filters are `want` (10 s at most).
    async fn until(&mut self, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|f| (*f).to_owned()).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.filters != want {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(p) = self.client.next(left).await else {
                panic!("the agent knows {:?}, not {want:?}", self.filters);
            };
            assert_eq!(&p.topic[..], PLUGIN_TOPIC.as_bytes());
            let feed = self.feed.handle(&p.payload);
            assert!(!feed.resync && feed.invalid == 0, "{feed:?}");
            for c in feed.changes {
                match c {
                    Change::Subscribe(f) => assert!(self.filters.insert(f.to_string())),
                    Change::Unsubscribe(f) => assert!(self.filters.remove(&f.to_string())),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_tells_its_real_subscriptions() {
    let broker = LocalBroker::embedded().await.unwrap();
    let port = broker.port();
    // Before any agent: a persistent session (1 s expiry) with a shared
    // subscription, and a clean one.
    let mut dev = Client::connect_expiring(port, "dev 1", Some(1))
        .await
        .unwrap();
    dev.subscribe("a/+", QoS::AtLeastOnce).await.unwrap();
    dev.subscribe("$share/g/b/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut clean = Client::connect(port, "clean").await.unwrap();
    clean.subscribe("c", QoS::AtMostOnce).await.unwrap();
    clean.subscribe("$SYS/#", QoS::AtMostOnce).await.unwrap();

    // The agent: its own subscriptions never count.
    let mut agent = Client::connect(port, "mqlink-agent").await.unwrap();
    agent
        .subscribe(PLUGIN_TOPIC, QoS::AtMostOnce)
        .await
        .unwrap();
    agent.subscribe("x/#", QoS::AtLeastOnce).await.unwrap();
    agent
        .publish(SYNC_TOPIC, b"", QoS::AtMostOnce, false)
        .await
        .unwrap();
    let mut view = View {
        client: agent,
        feed: PluginFeed::default(),
        filters: BTreeSet::new(),
    };
    view.until(&["a/+", "b/#", "c"]).await;
    assert!(view.feed.active());

    // Deltas: a new subscription, an unsubscribe.
    clean.subscribe("d/+/e", QoS::AtMostOnce).await.unwrap();
    view.until(&["a/+", "b/#", "c", "d/+/e"]).await;
    clean.unsubscribe("d/+/e").await.unwrap();
    view.until(&["a/+", "b/#", "c"]).await;

    // The persistent session outlives its connection until it expires;
    // the clean one ends at disconnect.
    let offline = Instant::now();
    dev.disconnect().await;
    clean.disconnect().await;
    view.until(&["a/+", "b/#"]).await;
    view.until(&[]).await;
    assert!(
        offline.elapsed() >= Duration::from_secs(1),
        "ended by its expiry, not its disconnect"
    );

    // An agent that (re)connects is told the whole table again.
    let mut late = Client::connect_expiring(port, "late", Some(60))
        .await
        .unwrap();
    late.subscribe("f/#", QoS::AtLeastOnce).await.unwrap();
    view.until(&["f/#"]).await;
    let mut second = Client::connect(port, "mqlink-agent-2").await.unwrap();
    second
        .subscribe(PLUGIN_TOPIC, QoS::AtMostOnce)
        .await
        .unwrap();
    second
        .publish(SYNC_TOPIC, b"", QoS::AtMostOnce, false)
        .await
        .unwrap();
    let mut view2 = View {
        client: second,
        feed: PluginFeed::default(),
        filters: BTreeSet::new(),
    };
    view2.until(&["f/#"]).await;
    broker.stop().await;
}
