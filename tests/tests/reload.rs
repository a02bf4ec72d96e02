//! Reload without a restart, as an operator does it: region a's agent
//! process runs with a link to b only while a QoS 1 stream crosses to b;
//! its file gains a link to c and a changed import policy on b, and
//! SIGHUP applies both while the stream keeps flowing to b without loss.
//! Then a broken file on SIGHUP changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use mqlink_e2e::procs::{Options, ProcFederation, mqlink_bin};
use mqlink_e2e::{Client, wait_until};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;

fn ctl_json(fed: &ProcFederation, region: &str, view: &str) -> Value {
    let out = Command::new(mqlink_bin().unwrap())
        .args(["ctl", "--json", "--admin"])
        .arg(format!("127.0.0.1:{}", fed.regions[region].admin_port))
        .arg(view)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn up(fed: &ProcFederation, region: &str) -> BTreeSet<String> {
    let peers = ctl_json(fed, region, "peers");
    peers["peers"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["up"] == true)
                .map(|p| p["region"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn hup(fed: &ProcFederation, region: &str) {
    let pid = fed.regions[region].agent.as_ref().unwrap().id();
    let ok = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Whether a message with `payload` reaches `client` (others may come
/// first; each waits at most 10 s).
async fn arrives(client: &mut Client, payload: &[u8]) -> bool {
    while let Some(m) = client.next(Duration::from_secs(10)).await {
        if &m.payload[..] == payload {
            return true;
        }
    }
    false
}

/// The `links:` entry of `region` cut out of a generated config.
fn without_link(yaml: &str, region: &str) -> String {
    let start = yaml.find(&format!("  - region: {region}\n")).unwrap();
    let end = yaml[start + 3..]
        .find("  - region: ")
        .map_or(yaml.len(), |i| start + 3 + i);
    format!("{}{}", &yaml[..start], &yaml[end..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_link_and_changes_a_policy_while_another_link_carries_traffic() {
    if !mqlink::bench::setups::mosquitto_available() {
        eprintln!("skipped: mosquitto not installed");
        return;
    }
    let mut fed = ProcFederation::start_with(
        "reload",
        &["a", "b", "c"],
        &[("a", "b", 10), ("a", "c", 10)],
        &[("b", "t/#"), ("c", "t/#")],
        &Options {
            agents_later: true,
            ..Options::default()
        },
    )
    .unwrap();
    // c's certificate expires in 10 days: its agent says so.
    mqlink::certs::issue_for(
        &mqlink_topology::RegionName::new("c").unwrap(),
        &fed.dir.join("certs"),
        10,
    )
    .unwrap();
    let file = fed.regions["a"].config.clone();
    let full = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, without_link(&full, "c")).unwrap();
    for r in ["a", "b", "c"] {
        fed.start_agent(r).unwrap();
    }
    wait_until("a to link with b", Duration::from_secs(20), || async {
        up(&fed, "a").contains("b")
    })
    .await
    .unwrap();
    assert!(!up(&fed, "a").contains("c"), "a has no link to c yet");

    let mut at_b = Client::connect(fed.regions["b"].broker.port(), "sub-b")
        .await
        .unwrap();
    at_b.subscribe("t/#", QoS::AtLeastOnce).await.unwrap();
    let mut at_c = Client::connect(fed.regions["c"].broker.port(), "sub-c")
        .await
        .unwrap();
    at_c.subscribe("t/#", QoS::AtLeastOnce).await.unwrap();
    let publisher = Client::connect(fed.regions["a"].broker.port(), "pub")
        .await
        .unwrap();
    wait_until("a to export t/#", Duration::from_secs(20), || async {
        let i = ctl_json(&fed, "a", "interest");
        i["own"]["export"]
            .as_array()
            .is_some_and(|e| e.iter().any(|f| f == "t/#"))
    })
    .await
    .unwrap();

    // A steady QoS 1 stream to b; halfway, a's file gains the link to c
    // and an import policy on b, and SIGHUP applies them.
    const N: usize = 300;
    let payloads: Vec<&'static [u8]> = (0..N)
        .map(|i| &*Box::leak(format!("{i}").into_bytes().into_boxed_slice()))
        .collect();
    for (i, p) in payloads.iter().enumerate() {
        if i == N / 2 {
            let changed = full.replacen(
                "  - region: b\n",
                "  - region: b\n    import: [\"x/#\"]\n",
                1,
            );
            std::fs::write(&file, changed).unwrap();
            hup(&fed, "a");
        }
        publisher
            .publish("t/s", p, QoS::AtLeastOnce, false)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = at_b.take(N, Duration::from_secs(30)).await.unwrap();
    let seen: BTreeSet<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(
        seen.len(),
        N,
        "every message reached b once the link to c was added"
    );
    wait_until("a to link with c", Duration::from_secs(20), || async {
        up(&fed, "a") == BTreeSet::from(["b".to_owned(), "c".to_owned()])
    })
    .await
    .unwrap();
    let peers = ctl_json(&fed, "a", "peers");
    let b = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["region"] == "b")
        .unwrap()
        .clone();
    assert!(b["connected_since_unix_ms"].as_u64().unwrap() > 0);
    // c gets what is published now that its link exists.
    publisher
        .publish("t/c", b"to c", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert!(
        arrives(&mut at_c, b"to c").await,
        "the added link carries traffic"
    );
    // c warned about its certificate, and exports the days left.
    let c_log = std::fs::read_to_string(fed.dir.join("c-agent-1.log")).unwrap();
    assert!(c_log.contains("certificate expires soon"), "{c_log}");
    let days = fed.metric("c", "mqlink_certificate_expiry_days").await;
    assert!(
        matches!(days, Some(d) if (9.0..=10.0).contains(&d)),
        "{days:?}"
    );

    // A broken file: refused, logged with its position; nothing changes.
    std::fs::write(&file, "region: a\nlinks: [\n").unwrap();
    hup(&fed, "a");
    let log = fed.dir.join("a-agent-1.log");
    wait_until(
        "the refusal in a's log",
        Duration::from_secs(10),
        || async { std::fs::read_to_string(&log).is_ok_and(|l| l.contains("reload refused")) },
    )
    .await
    .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let refusal = text.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(refusal.contains("a.yaml:"), "{refusal}");
    assert_eq!(
        up(&fed, "a"),
        BTreeSet::from(["b".to_owned(), "c".to_owned()])
    );
    publisher
        .publish("t/after", b"after", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert!(
        arrives(&mut at_b, b"after").await,
        "a still carries to b after the refused reload"
    );

    // `mqlink ctl reload` with a good file again: no change to apply.
    std::fs::write(&file, &full).unwrap();
    let out = Command::new(mqlink_bin().unwrap())
        .args(["ctl", "--admin"])
        .arg(format!("127.0.0.1:{}", fed.regions["a"].admin_port))
        .arg("reload")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.trim(), "reloaded: links changed: b");
}
