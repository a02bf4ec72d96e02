//! An agent whose local broker takes `mqtts://` with a password only:
//! Mosquitto with a TLS listener (certificate from a CA of the test's) and
//! a password file, no anonymous clients there. Region a's agent connects
//! over TLS with `username` + `password_file` and carries what is published
//! on its broker to region b.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::Duration;

use mqlink::brokers::{LocalBroker, free_port, free_udp_port};
use mqlink_e2e::{Client, pki, scratch, wait_until};
use rumqttc::v5::mqttbytes::QoS;

fn chmod(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reaches_its_broker_over_mqtts_with_a_password() {
    if !mqlink::bench::setups::mosquitto_available() {
        eprintln!("skipped: mosquitto not installed");
        return;
    }
    mqlink::run::install_crypto();
    let dir = scratch("broker-tls");
    let certs = pki(&dir, &["a", "b", "localhost"]).unwrap();
    // Mosquitto started as root reads its files as the `mosquitto` user.
    chmod(&certs.join("localhost.key"), 0o644);
    let passwd = dir.join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["agent", "s3cret"])
        .status()
        .unwrap();
    assert!(made.success());
    chmod(&passwd, 0o644);
    let pw = dir.join("agent.pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    chmod(&pw, 0o600);

    // Broker a: a plain listener for the test's clients, a TLS listener
    // with passwords only for the agent.
    let (plain, tls) = (free_port().unwrap(), free_port().unwrap());
    let conf = format!(
        "per_listener_settings true\npersistence false\n\
         listener {plain} 127.0.0.1\nallow_anonymous true\n\
         listener {tls} 127.0.0.1\ncertfile {c}/localhost.pem\nkeyfile {c}/localhost.key\n\
         allow_anonymous false\npassword_file {p}\n",
        c = certs.display(),
        p = passwd.display()
    );
    let _broker_a = LocalBroker::mosquitto_custom(&dir, "a", plain, &conf).unwrap();
    let broker_b = LocalBroker::mosquitto(&dir, "b").unwrap();

    let (qa, qb) = (free_udp_port().unwrap(), free_udp_port().unwrap());
    let yaml_a = format!(
        "region: a\nnode: a-1\n\
         broker: {{ url: \"mqtts://localhost:{tls}\", username: agent, password_file: agent.pw, ca: certs/ca.pem }}\n\
         listen: {{ quic: \"127.0.0.1:{qa}\", admin: \"127.0.0.1:0\", metrics: \"127.0.0.1:0\" }}\n\
         tls: {{ cert: certs/a.pem, key: certs/a.key, ca: certs/ca.pem }}\n\
         spool: {{ dir: spool-a }}\n\
         links:\n  - region: b\n    endpoints: [\"127.0.0.1:{qb}\"]\n    cost: 10\n"
    );
    let yaml_b = format!(
        "region: b\nnode: b-1\n\
         broker: {{ url: \"mqtt://127.0.0.1:{}\" }}\n\
         listen: {{ quic: \"127.0.0.1:{qb}\", admin: \"127.0.0.1:0\", metrics: \"127.0.0.1:0\" }}\n\
         tls: {{ cert: certs/b.pem, key: certs/b.key, ca: certs/ca.pem }}\n\
         interest: {{ static: [\"t/#\"] }}\n\
         spool: {{ dir: spool-b }}\n\
         links:\n  - region: a\n    endpoints: [\"127.0.0.1:{qa}\"]\n    cost: 10\n",
        broker_b.port()
    );
    std::fs::write(dir.join("a.yaml"), yaml_a).unwrap();
    std::fs::write(dir.join("b.yaml"), yaml_b).unwrap();
    let cfg_a = mqlink_config::load(&dir.join("a.yaml")).unwrap();
    let cfg_b = mqlink_config::load(&dir.join("b.yaml")).unwrap();
    assert!(cfg_a.broker.url.tls);
    let agent_a = mqlink::run::start(&cfg_a).await.unwrap();
    let agent_b = mqlink::run::start(&cfg_b).await.unwrap();

    // a exports t/# once it hears b's interest: over TLS, authenticated.
    wait_until("a to export t/#", Duration::from_secs(20), || async {
        agent_a
            .stats()
            .await
            .is_some_and(|r| r.export.iter().any(|f| f.as_str() == "t/#"))
    })
    .await
    .unwrap();
    let mut sub = Client::connect(broker_b.port(), "sub").await.unwrap();
    sub.subscribe("t/#", QoS::AtLeastOnce).await.unwrap();
    let publisher = Client::connect(plain, "pub").await.unwrap();
    // The export subscription is made on the broker a moment after the
    // core decides it: publish until one arrives.
    let mut got = None;
    for _ in 0..50 {
        publisher
            .publish("t/1", b"over tls", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        if let Some(m) = sub.next(Duration::from_millis(200)).await {
            got = Some(m);
            break;
        }
    }
    let m = got.expect("a message published on a's broker reached b");
    assert_eq!(&m.payload[..], b"over tls");

    // Mosquitto saw the agent log in with its user name (on the TLS
    // listener: the plain one is the test clients').
    let log = std::fs::read_to_string(dir.join("a-mosquitto.log")).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("as mqlink-a-1") && l.contains("u'agent'")),
        "the agent logged in to broker a: {log}"
    );
    agent_a.shutdown().await;
    agent_b.shutdown().await;
}
