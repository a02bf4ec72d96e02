//! A peer endpoint given as a DNS name follows the name: a small DNS
//! server of the test's answers `b.mqlink.test` with 127.0.0.2 (TTL 1 s),
//! then with 127.0.0.3; region a's agent, dialling b by that name, ends
//! up connected to 127.0.0.3 without a restart, and `ctl peers` shows
//! what the name resolved to.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqlink::brokers::{LocalBroker, free_udp_port};
use mqlink_e2e::procs::mqlink_bin;
use mqlink_e2e::{pki, scratch, wait_until};
use tokio::net::UdpSocket;

/// Answer every A question with `addr` (TTL 1 s), every other with no
/// records. Enough DNS for a stub resolver: one question, no EDNS.
async fn dns_server(sock: UdpSocket, addr: Arc<Mutex<Ipv4Addr>>) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            return;
        };
        let q = &buf[..n];
        if n < 12 {
            continue;
        }
        // The question: labels up to the zero byte, then type and class.
        let mut end = 12;
        while end < n && q[end] != 0 {
            end += 1 + usize::from(q[end]);
        }
        let qend = end + 5;
        if qend > n {
            continue;
        }
        let qtype = u16::from_be_bytes([q[end + 1], q[end + 2]]);
        let a = qtype == 1;
        let mut out = Vec::with_capacity(qend + 16);
        out.extend_from_slice(&q[..2]); // id
        out.extend_from_slice(&[0x81, 0x80]); // response, recursion available
        out.extend_from_slice(&[0, 1, 0, u8::from(a), 0, 0, 0, 0]);
        out.extend_from_slice(&q[12..qend]);
        if a {
            out.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
            out.extend_from_slice(&addr.lock().unwrap().octets());
        }
        let _ = sock.send_to(&out, from).await;
    }
}

fn peers_json(admin: SocketAddr) -> serde_json::Value {
    let out = std::process::Command::new(mqlink_bin().unwrap())
        .args(["ctl", "--json", "--admin"])
        .arg(admin.to_string())
        .arg("peers")
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn endpoint_of_b(peers: &serde_json::Value) -> Option<String> {
    peers["peers"]
        .as_array()?
        .iter()
        .find(|p| p["region"] == "b" && p["up"] == true)
        .map(|p| p["endpoint"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_endpoint_is_followed_when_its_address_changes() {
    if !mqlink::bench::setups::mosquitto_available() {
        eprintln!("skipped: mosquitto not installed");
        return;
    }
    mqlink::run::install_crypto();
    let dir = scratch("dns");
    pki(&dir, &["a", "b"]).unwrap();
    let answer = Arc::new(Mutex::new(Ipv4Addr::new(127, 0, 0, 2)));
    let dns = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns_addr = dns.local_addr().unwrap();
    tokio::spawn(dns_server(dns, answer.clone()));

    let broker_a = LocalBroker::mosquitto(&dir, "a").unwrap();
    let broker_b = LocalBroker::mosquitto(&dir, "b").unwrap();
    let (qa, qb) = (free_udp_port().unwrap(), free_udp_port().unwrap());
    // b listens on every address, so 127.0.0.2 and 127.0.0.3 both reach it.
    let yaml = |me: &str, broker: u16, listen: &str, peer: &str, endpoint: String| {
        format!(
            "region: {me}\nnode: {me}-1\nbroker: {{ url: \"mqtt://127.0.0.1:{broker}\" }}\n\
             listen: {{ quic: \"{listen}\", admin: \"127.0.0.1:0\", metrics: \"127.0.0.1:0\" }}\n\
             tls: {{ cert: certs/{me}.pem, key: certs/{me}.key, ca: certs/ca.pem }}\n\
             dns: {{ servers: [\"{dns_addr}\"] }}\n\
             spool: {{ dir: spool-{me} }}\n\
             links:\n  - region: {peer}\n    endpoints: [\"{endpoint}\"]\n    cost: 10\n"
        )
    };
    std::fs::write(
        dir.join("a.yaml"),
        yaml(
            "a",
            broker_a.port(),
            &format!("127.0.0.1:{qa}"),
            "b",
            format!("b.mqlink.test:{qb}"),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("b.yaml"),
        yaml(
            "b",
            broker_b.port(),
            &format!("0.0.0.0:{qb}"),
            "a",
            format!("127.0.0.1:{qa}"),
        ),
    )
    .unwrap();
    let a = mqlink::run::start(&mqlink_config::load(&dir.join("a.yaml")).unwrap())
        .await
        .unwrap();
    let b = mqlink::run::start(&mqlink_config::load(&dir.join("b.yaml")).unwrap())
        .await
        .unwrap();

    let first = format!("127.0.0.2:{qb}");
    wait_until(
        "a to reach b at 127.0.0.2",
        Duration::from_secs(15),
        || async { endpoint_of_b(&peers_json(a.admin_addr)).as_deref() == Some(first.as_str()) },
    )
    .await
    .unwrap();
    let peers = peers_json(a.admin_addr);
    let resolved: Vec<&str> = peers["peers"][0]["resolved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(resolved, [format!("b.mqlink.test:{qb} -> {first}")]);

    // The name moves; within its TTL (1 s) and a reconnect, a follows.
    *answer.lock().unwrap() = Ipv4Addr::new(127, 0, 0, 3);
    let moved = format!("127.0.0.3:{qb}");
    wait_until(
        "a to reach b at 127.0.0.3",
        Duration::from_secs(15),
        || async { endpoint_of_b(&peers_json(a.admin_addr)).as_deref() == Some(moved.as_str()) },
    )
    .await
    .unwrap();
    a.shutdown().await;
    b.shutdown().await;
}
