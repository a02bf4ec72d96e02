//! Dynamic interest from the `mqlink_interest` Mosquitto plugin, end to end:
//! real Mosquitto brokers configured the way an operator installs mqlink
//! (`make -C deploy/mosquitto`, then `deploy/mosquitto/mqlink.conf` with
//! `@DEPLOY@` replaced), real agent processes with `dynamic: mosquitto`.
//! Needs the plugin built (`.ci/run` builds it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic

use std::collections::BTreeSet;
use std::time::Duration;

use mqlink_e2e::procs::{Options, ProcFederation};
use mqlink_e2e::{topic, wait_until};
use rumqttc::v5::mqttbytes::QoS;

const LIMIT: Duration = Duration::from_secs(30);

/// Publish `cmd/<i>` for `i` in `range` at QoS 1 from region a.
async fn publish(fed: &ProcFederation, range: std::ops::Range<u32>) {
    let publ = fed.client("a", "pub-a").await.unwrap();
    for i in range {
        publ.publish(&format!("cmd/{i}"), b"x", QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    publ.disconnect().await;
}

/// Wait until `region`'s agent has delivered `n` messages to its broker
/// (counted since its last start).
async fn delivered(fed: &ProcFederation, region: &str, n: f64) {
    wait_until(&format!("{n} deliveries in {region}"), LIMIT, || async {
        fed.metric(region, "mqlink_delivered_total")
            .await
            .is_some_and(|d| d >= n)
    })
    .await
    .unwrap();
}

/// A device with a persistent session subscribes and goes offline before
/// any agent runs; what region a publishes for it is queued for it, also
/// after its broker restarts (persistence on) and after its region's agent
/// is SIGKILLed and started again. The `$SYS` log alone saw none of it
/// (0 of 50 before the plugin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_persistent_subscriber_from_before_the_agents_gets_everything() {
    let opts = Options {
        interest_plugin: true,
        persistent_brokers: true,
        agents_later: true,
        ..Options::default()
    };
    let mut fed =
        ProcFederation::start_with("plugin-offline", &["a", "b"], &[("a", "b", 10)], &[], &opts)
            .unwrap();
    // A client id with a space: the plugin keeps ids as they are.
    let mut dev = fed.persistent_client("b", "dev 42").await.unwrap();
    dev.subscribe("cmd/#", QoS::AtLeastOnce).await.unwrap();
    dev.disconnect().await;

    fed.start_agent("a").unwrap();
    fed.start_agent("b").unwrap();
    wait_until("b's interest known at a", LIMIT, || async {
        fed.metric_sum("a", "mqlink_interest_filters").await >= 1.0
    })
    .await
    .unwrap();
    publish(&fed, 0..50).await;
    delivered(&fed, "b", 50.0).await;

    // The broker restarts: the session and its queue survive, and so does
    // the plugin's table (its state file).
    fed.restart_broker("b", Duration::from_millis(300))
        .await
        .unwrap();
    publish(&fed, 50..100).await;
    delivered(&fed, "b", 100.0).await;

    // The agent is killed and started again: it learns the interest anew
    // from the plugin.
    fed.kill_agent("b");
    fed.start_agent("b").unwrap();
    wait_until("b's agent back", LIMIT, || async {
        fed.metric("b", "mqlink_interest_local_filters")
            .await
            .is_some_and(|n| n >= 1.0)
    })
    .await
    .unwrap();
    publish(&fed, 100..150).await;
    delivered(&fed, "b", 50.0).await;

    let mut dev = fed.persistent_client("b", "dev 42").await.unwrap();
    let got = dev.take(150, LIMIT).await.unwrap();
    let topics: BTreeSet<String> = got.iter().map(topic).collect();
    assert_eq!(topics.len(), 150, "every message once");
    assert_eq!(
        fed.metric("b", "mqlink_interest_local_filters").await,
        Some(1.0),
        "the agent's own subscriptions are not interest"
    );
    dev.disconnect().await;
    fed.stop().await;
}

/// How many filters region a holds for region b.
async fn seen_at_a(fed: &ProcFederation) -> f64 {
    fed.metric_sum("a", "mqlink_interest_filters").await
}

async fn wait_seen(fed: &ProcFederation, what: &str, n: f64) {
    wait_until(what, LIMIT, || async { seen_at_a(fed).await == n })
        .await
        .unwrap();
}

/// Interest ends with an unsubscribe, a clean disconnect and a
/// persistent session's expiry, and 10,000 subscriptions from 1,000
/// clients are learned and reach the other region within the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_follows_unsubscribes_session_ends_and_a_thousand_clients() {
    let opts = Options {
        interest_plugin: true,
        ..Options::default()
    };
    let mut fed =
        ProcFederation::start_with("plugin-ends", &["a", "b"], &[("a", "b", 10)], &[], &opts)
            .unwrap();
    let port = fed.regions["b"].broker.port();
    let mut c = fed.client("b", "clean-1").await.unwrap();
    c.subscribe("x/1", QoS::AtLeastOnce).await.unwrap();
    wait_seen(&fed, "x/1 at a", 1.0).await;
    c.unsubscribe("x/1").await.unwrap();
    wait_seen(&fed, "x/1 gone at a", 0.0).await;
    c.subscribe("x/2", QoS::AtLeastOnce).await.unwrap();
    wait_seen(&fed, "x/2 at a", 1.0).await;
    c.disconnect().await;
    wait_seen(&fed, "a clean disconnect ends x/2", 0.0).await;

    // A persistent session with a 1 s expiry: its interest outlives the
    // connection, then ends when the broker expires the session.
    let mut p = mqlink_e2e::Client::connect_expiring(port, "expiring", Some(1))
        .await
        .unwrap();
    p.subscribe("y/1", QoS::AtLeastOnce).await.unwrap();
    wait_seen(&fed, "y/1 at a", 1.0).await;
    p.disconnect().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen_at_a(&fed).await, 1.0, "kept while the session lives");
    wait_seen(&fed, "the expired session's y/1 gone at a", 0.0).await;

    // 1,000 clients, 10 subscriptions each.
    let started = std::time::Instant::now();
    let mut connecting = tokio::task::JoinSet::new();
    // Fifty at a time: a thousand at once overflows the broker's backlog.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(50));
    for i in 0..1000 {
        let gate = gate.clone();
        connecting.spawn(async move {
            let _turn = gate.acquire().await.unwrap();
            let c = mqlink_e2e::Client::connect(port, &format!("fleet-{i}"))
                .await
                .unwrap();
            for k in 0..10 {
                c.inner
                    .subscribe(format!("fleet/{i}/{k}"), QoS::AtMostOnce)
                    .await
                    .unwrap();
            }
            c
        });
    }
    let clients = connecting.join_all().await;
    let subscribed = started.elapsed();
    wait_seen(&fed, "10,000 filters at a", 10_000.0).await;
    println!(
        "10,000 subscriptions from 1,000 clients: made in {subscribed:?}, known at a {:?} later",
        started.elapsed() - subscribed
    );
    // b's agent restarts: it learns all 10,000 again from one snapshot,
    // which the plugin sends in several parts (64 KB each).
    fed.kill_agent("b");
    fed.start_agent("b").unwrap();
    wait_until("b's agent holds 10,000 filters again", LIMIT, || async {
        fed.metric("b", "mqlink_interest_local_filters").await == Some(10_000.0)
    })
    .await
    .unwrap();
    assert_eq!(seen_at_a(&fed).await, 10_000.0);
    let mut ends = tokio::task::JoinSet::new();
    for c in clients {
        ends.spawn(c.disconnect());
    }
    ends.join_all().await;
    wait_seen(&fed, "the fleet gone at a", 0.0).await;
    fed.stop().await;
}

/// The plugin under valgrind inside a real Mosquitto: subscriptions from
/// clean and persistent sessions, `$share`, unsubscribes, disconnects, a
/// snapshot request, an expiry relay and the state file; no invalid
/// access and nothing leaked when the broker stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_is_clean_under_valgrind() {
    let (dir, port, conf) = plugin_broker_conf("plugin-valgrind", "");
    let report = dir.join("valgrind.txt");
    let mut broker = std::process::Command::new("valgrind")
        .arg("--leak-check=full")
        .arg("--errors-for-leak-kinds=definite,indirect")
        .arg("--error-exitcode=99")
        .arg(format!("--log-file={}", report.display()))
        .arg("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("valgrind (apt-get install -y valgrind)");
    listening(port).await;

    let mut agent = mqlink_e2e::Client::connect(port, "mqlink-x-1")
        .await
        .unwrap();
    agent
        .subscribe("$mqlink/interest", QoS::AtMostOnce)
        .await
        .unwrap();
    let mut p = mqlink_e2e::Client::connect_expiring(port, "p 1", Some(300))
        .await
        .unwrap();
    p.subscribe("a/+", QoS::AtLeastOnce).await.unwrap();
    p.subscribe("$share/g/b/#", QoS::AtLeastOnce).await.unwrap();
    p.disconnect().await;
    let mut c = mqlink_e2e::Client::connect(port, "c1").await.unwrap();
    c.subscribe("c/1", QoS::AtMostOnce).await.unwrap();
    c.subscribe("c/2", QoS::AtMostOnce).await.unwrap();
    c.unsubscribe("c/1").await.unwrap();
    agent
        .publish("$mqlink/interest/sync", b"", QoS::AtMostOnce, false)
        .await
        .unwrap();
    // Deltas came first (the agent was already subscribed); then the
    // snapshot: "MQI1", kind 1, epoch, seq, last, count: a/+, b/#, c/2.
    let snapshot = loop {
        let m = agent.next(LIMIT).await.expect("a snapshot");
        if m.payload[4] == 1 {
            break m;
        }
    };
    assert_eq!(&snapshot.payload[21..26], &[1, 0, 0, 0, 3]);
    c.disconnect().await;
    agent
        .publish("$mqlink/interest/expired", b"p 1", QoS::AtMostOnce, false)
        .await
        .unwrap();
    // Two deltas: c/2 gone (clean disconnect), then a/+ and b/# (expired).
    let deltas = agent.take(2, LIMIT).await.unwrap();
    let removed: u32 = deltas
        .iter()
        .map(|d| u32::from_be_bytes(d.payload[25..29].try_into().unwrap()))
        .sum();
    assert_eq!(removed, 3);
    agent.disconnect().await;

    let status = mqlink::brokers::terminate(&mut broker, Duration::from_secs(30))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(
        status.success(),
        "valgrind found errors or leaks ({status}):\n{text}"
    );
    assert!(text.contains("ERROR SUMMARY: 0 errors"), "{text}");
}

/// A Mosquitto configuration for a test broker the way an operator writes
/// it: a listener on a free port, `extra` lines, then the shipped
/// `deploy/mosquitto/mqlink.conf` with `@DEPLOY@` replaced and the
/// plugin's state file in the scratch directory. (directory, port, file)
fn plugin_broker_conf(name: &str, extra: &str) -> (std::path::PathBuf, u16, std::path::PathBuf) {
    let dir = mqlink_e2e::scratch(name);
    let shipped = mqlink::brokers::plugin_conf(&dir).expect("make -C deploy/mosquitto");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n{extra}\n{shipped}"),
    )
    .unwrap();
    (dir, port, conf)
}

async fn listening(port: u16) {
    wait_until("the broker listening", LIMIT, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await
    .unwrap();
}

/// On a broker with an `acl_file`, the plugin (`plugin_opt_acl auto`, as
/// shipped) defers its access answers: the acl_file still decides what
/// clients may do (a plugin that allowed would have opened the broker),
/// and the plugin still hands out its table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_acl_file_the_plugin_defers_and_the_acl_still_decides() {
    let scratch = mqlink_e2e::scratch("plugin-acl-file");
    let acl = scratch.join("acl");
    std::fs::write(
        &acl,
        "topic readwrite allowed/#\ntopic readwrite $mqlink/#\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&acl, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (dir, port, conf) = plugin_broker_conf(
        "plugin-acl",
        &format!("acl_file {}\nlog_dest stderr\nlog_type all", acl.display()),
    );
    let log = std::fs::File::create(dir.join("mosquitto.log")).unwrap();
    let mut broker = std::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("mosquitto");
    listening(port).await;
    let mut sub = mqlink_e2e::Client::connect(port, "sub").await.unwrap();
    sub.subscribe("allowed/#", QoS::AtMostOnce).await.unwrap();
    sub.subscribe("denied/#", QoS::AtMostOnce).await.unwrap();
    let publ = mqlink_e2e::Client::connect(port, "pub").await.unwrap();
    publ.publish("denied/1", b"no", QoS::AtMostOnce, false)
        .await
        .unwrap();
    publ.publish("allowed/1", b"yes", QoS::AtMostOnce, false)
        .await
        .unwrap();
    let got = sub.take(1, LIMIT).await.unwrap();
    assert_eq!(topic(&got[0]), "allowed/1");
    assert!(
        sub.next(Duration::from_millis(500)).await.is_none(),
        "the acl_file denied denied/#"
    );

    let mut agent = mqlink_e2e::Client::connect(port, "mqlink-x-1")
        .await
        .unwrap();
    agent
        .subscribe("$mqlink/interest", QoS::AtMostOnce)
        .await
        .unwrap();
    agent
        .publish("$mqlink/interest/sync", b"", QoS::AtMostOnce, false)
        .await
        .unwrap();
    let snapshot = loop {
        let m = agent.next(LIMIT).await.expect("a snapshot");
        if m.payload[4] == 1 {
            break m;
        }
    };
    // allowed/# and (seen before the acl_file refused it) denied/#.
    assert_eq!(&snapshot.payload[21..26], &[1, 0, 0, 0, 2]);
    for c in [sub, publ, agent] {
        c.disconnect().await;
    }
    mqlink::brokers::terminate(&mut broker, Duration::from_secs(10))
        .await
        .unwrap();
    let text = std::fs::read_to_string(dir.join("mosquitto.log")).unwrap();
    assert!(
        text.contains("found other access control in the configuration: access checks deferred"),
        "{text}"
    );
}
