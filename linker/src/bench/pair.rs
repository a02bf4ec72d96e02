//! `mqlink bench --pair`: the capacity of two agents with the brokers out
//! of the way. Two agents run in this process, each on its own one-worker
//! runtime (as `mqlink run` has), linked over a real QUIC connection on
//! loopback with mutual TLS; a stand-in for broker A feeds agent A's core
//! what its broker session would (`Input::Publish`, at QoS 1 with at most
//! [`EXPORT_INFLIGHT`] unacknowledged, as Mosquitto's in-flight limit
//! does), and a stand-in for broker B takes every import agent B's core
//! hands out and acknowledges it at once. Custody, the spool thread's
//! durable dedupe marks and the links run as in production. The stand-ins
//! run on a third thread; the report gives each agent's worker thread CPU
//! time per message (from `/proc/self/task`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqlink_proto::{Message, Properties, Qos};
use mqlink_topology::TopicName;
use serde::Serialize;
use tokio::sync::Notify;

use super::{BenchError, failed};
use crate::broker::EXPORT_INFLIGHT;
use crate::core::{ExportCmd, ImportCmd, Input};
use crate::run::{BrokerSide, start_detached};

/// What `--pair` measured.
#[derive(Debug, Clone, Serialize)]
pub struct PairReport {
    /// QoS of the messages.
    pub qos: u8,
    /// Messages fed to agent A.
    pub fed: u64,
    /// Messages agent B handed to its broker.
    pub delivered: u64,
    /// Messages the agents dropped (QoS 0 under overload), with reasons.
    pub dropped: Vec<(String, u64)>,
    /// Seconds from the first message fed to the last delivered.
    pub seconds: f64,
    /// Delivered per second.
    pub rate: f64,
    /// CPU per delivered message of agent A's and agent B's worker
    /// threads, and of both spool threads together, in µs.
    pub cpu_us: (f64, f64, f64),
}

impl PairReport {
    /// One line a person reads.
    pub fn line(&self) -> String {
        let dropped: Vec<String> = self
            .dropped
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        format!(
            "agent pair, QoS {}: {} of {} delivered in {:.2} s = {} msgs/s; dropped: {}; CPU per message: agent a {:.2} µs, agent b {:.2} µs, spool threads {:.2} µs",
            self.qos,
            super::group(self.delivered as f64),
            super::group(self.fed as f64),
            self.seconds,
            super::group(self.rate),
            if dropped.is_empty() {
                "none".to_owned()
            } else {
                dropped.join(", ")
            },
            self.cpu_us.0,
            self.cpu_us.1,
            self.cpu_us.2,
        )
    }
}

/// QoS 0 messages fed and not yet delivered, at most.
const QOS0_WINDOW: u64 = 4096;

/// CPU time of this process's threads whose name starts with `prefix`.
fn threads_cpu(prefix: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .filter_map(|t| super::run::stat_cpu(&t.path().join("stat").to_string_lossy()))
        .sum()
}

fn runtime(name: &str) -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(failed("agent pair: runtime"))
}

fn config(
    dir: &Path,
    region: &str,
    links: &str,
    interest: &str,
) -> Result<mqlink_config::RegionConfig, BenchError> {
    let certs = dir.join("certs");
    let yaml = format!(
        "region: {region}\nnode: {region}-1\nbroker: {{ url: \"mqtt://127.0.0.1:1\" }}\n\
         listen: {{ quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\", metrics: \"127.0.0.1:0\" }}\n\
         tls: {{ cert: {c}/{region}.pem, key: {c}/{region}.key, ca: {c}/ca.pem }}\n\
         interest: {{ static: [{interest}] }}\nspool: {{ dir: {d}/spool-{region} }}\nlinks:\n{links}",
        c = certs.display(),
        d = dir.display(),
    );
    mqlink_config::parse(&dir.join(format!("{region}.yaml")), &yaml, "bench")
        .map_err(failed("agent pair: config"))
}

/// Feed `messages` to agent A and count what agent B delivers.
pub fn pair(dir: &Path, qos: u8, messages: u64) -> Result<PairReport, BenchError> {
    std::fs::create_dir_all(dir).map_err(failed("agent pair: scratch directory"))?;
    crate::certs::init(&dir.join("certs")).map_err(failed("agent pair: CA"))?;
    for r in ["a", "b"] {
        let name = mqlink_topology::RegionName::new(r).map_err(failed("agent pair: region"))?;
        crate::certs::issue(&name, &dir.join("certs"))
            .map_err(failed("agent pair: certificate"))?;
    }
    let (rt_a, rt_b) = (runtime("pair-agent-a")?, runtime("pair-agent-b")?);
    let cfg_b = config(
        dir,
        "b",
        "  - region: a\n    endpoints: [\"127.0.0.1:9\"]\n",
        "\"bench/#\"",
    )?;
    let (run_b, side_b) = rt_b
        .block_on(start_detached(&cfg_b))
        .map_err(failed("agent pair: agent b"))?;
    let links = format!(
        "  - region: b\n    endpoints: [\"{}\"]\n    cost: 10\n",
        run_b.quic_addr
    );
    let cfg_a = config(dir, "a", &links, "")?;
    let (run_a, side_a) = rt_a
        .block_on(start_detached(&cfg_a))
        .map_err(failed("agent pair: agent a"))?;
    let stand_in = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed("agent pair: runtime"))?;
    let report = stand_in.block_on(drive(side_a, side_b, qos, messages));
    let stats = stand_in.block_on(async {
        let (a, b) = (run_a.stats().await, run_b.stats().await);
        (a, b)
    });
    rt_a.block_on(run_a.shutdown());
    rt_b.block_on(run_b.shutdown());
    let mut report = report?;
    let mut dropped = std::collections::BTreeMap::new();
    for s in [stats.0, stats.1].into_iter().flatten() {
        for (reason, n) in s.stats.drops {
            *dropped.entry(reason.label().to_owned()).or_insert(0) += n;
        }
    }
    report.dropped = dropped.into_iter().filter(|(_, n)| *n > 0).collect();
    Ok(report)
}

async fn drive(
    mut a: BrokerSide,
    mut b: BrokerSide,
    qos: u8,
    messages: u64,
) -> Result<PairReport, BenchError> {
    // Agent A subscribes its broker to what b wants: then the route is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, a.export.recv()).await {
            Ok(Some(ExportCmd::SetExport(set))) if !set.is_empty() => break,
            Ok(Some(_)) => {}
            _ => {
                return Err(BenchError::NotCarried(
                    "agent pair: agent a never learned that b wants bench/#".into(),
                ));
            }
        }
    }
    let released = Arc::new(AtomicU64::new(0));
    let room = Arc::new(Notify::new());
    // Broker A's acknowledgements.
    let releases = {
        let (released, room) = (released.clone(), room.clone());
        tokio::spawn(async move {
            while let Some(cmd) = a.export.recv().await {
                if let ExportCmd::Release(tokens) = cmd {
                    released.fetch_add(tokens.len() as u64, Ordering::Relaxed);
                    room.notify_one();
                }
            }
        })
    };
    // Broker B: takes every import, acknowledges at once.
    let delivered = Arc::new(AtomicU64::new(0));
    let arrived = Arc::new(Notify::new());
    let last = Arc::new(std::sync::Mutex::new(Instant::now()));
    let imports = {
        let (delivered, last, core) = (delivered.clone(), last.clone(), b.core.clone());
        let arrived = arrived.clone();
        tokio::spawn(async move {
            let mut acks = Vec::new();
            while let Some(cmd) = b.import.recv().await {
                let mut n = 0;
                let mut take = |cmd: ImportCmd, acks: &mut Vec<Input>| {
                    let ImportCmd::Deliver { custody, .. } = cmd;
                    n += 1;
                    if let Some(c) = custody {
                        acks.push(Input::Delivered(c));
                    }
                };
                take(cmd, &mut acks);
                while let Ok(cmd) = b.import.try_recv() {
                    take(cmd, &mut acks);
                }
                delivered.fetch_add(n, Ordering::Relaxed);
                arrived.notify_one();
                if let Ok(mut l) = last.lock() {
                    *l = Instant::now();
                }
                if !acks.is_empty()
                    && core
                        .send(Input::Batch(std::mem::take(&mut acks)))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        })
    };
    let topics: Vec<TopicName> = (0..100)
        .filter_map(|i| TopicName::new(&format!("bench/{i}")).ok())
        .collect();
    let payload = Bytes::from(vec![b'x'; 100]);
    let qos_in = if qos == 0 {
        Qos::AtMostOnce
    } else {
        Qos::AtLeastOnce
    };
    let cpu = || {
        (
            threads_cpu("pair-agent-a"),
            threads_cpu("pair-agent-b"),
            threads_cpu("mqlink-spool"),
        )
    };
    let cpu0 = cpu();
    let start = Instant::now();
    let mut fed = 0u64;
    while fed < messages {
        // QoS 1: broker A's in-flight limit. QoS 0 has no acknowledgement:
        // a closed loop on deliveries keeps the offered load at what the
        // pair carries (flat out, the core counts `peer_queue_full` drops).
        let (done, window, wake) = if qos > 0 {
            (&released, u64::from(EXPORT_INFLIGHT), &room)
        } else {
            (&delivered, QOS0_WINDOW, &arrived)
        };
        while fed - done.load(Ordering::Relaxed) >= window {
            if tokio::time::timeout(Duration::from_secs(1), wake.notified())
                .await
                .is_err()
            {
                return Err(BenchError::NotCarried(format!(
                    "agent pair: nothing moved for a second ({} of {fed} done)",
                    done.load(Ordering::Relaxed)
                )));
            }
        }
        let room_now = window - (fed - done.load(Ordering::Relaxed));
        let n = room_now.min(256).min(messages - fed);
        let batch: Vec<Input> = (fed..fed + n)
            .map(|i| {
                Input::Publish(
                    Message {
                        topic: topics[(i % 100) as usize].clone(),
                        payload: payload.clone(),
                        qos: qos_in,
                        retain: false,
                        properties: Properties::default(),
                    },
                    (qos > 0).then_some(i),
                )
            })
            .collect();
        if a.core.send(Input::Batch(batch)).await.is_err() {
            return Err(BenchError::Setup("agent pair: agent a stopped".into()));
        }
        fed += n;
    }
    // Until everything arrived, or nothing more for a second.
    let mut seen = (0, Instant::now());
    loop {
        let got = delivered.load(Ordering::Relaxed);
        if got >= messages {
            break;
        }
        if got != seen.0 {
            seen = (got, Instant::now());
        } else if seen.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu1 = cpu();
    releases.abort();
    imports.abort();
    let got = delivered.load(Ordering::Relaxed);
    let end = last.lock().map(|l| *l).unwrap_or_else(|_| Instant::now());
    let seconds = end.saturating_duration_since(start).as_secs_f64().max(1e-9);
    let per = |a: Duration, b: Duration| (a - b).as_secs_f64() * 1e6 / got.max(1) as f64;
    Ok(PairReport {
        qos,
        fed,
        delivered: got,
        dropped: Vec::new(),
        seconds,
        rate: got as f64 / seconds,
        cpu_us: (
            per(cpu1.0, cpu0.0),
            per(cpu1.1, cpu0.1),
            per(cpu1.2, cpu0.2),
        ),
    })
}
