//! End-to-end test harness over `mqlink::federation`: real Mosquitto
//! brokers (started from a generated config on a free port, stopped by
//! PID), real agents over QUIC with mutual TLS on 127.0.0.1 (in this
//! process), and an MQTT 5 test client. Waits are on conditions with deadlines, never
//! fixed sleeps.
//!
//! [`procs`] runs agents as processes instead (`mqlink run`), for the
//! tests that kill one with SIGKILL.
//!
//! The tests themselves are in `tests/tests/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a failure should panic

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use mqlink::core::StatsReport;
use mqlink::federation::{BrokerKind, LinkSpec, LocalFederation, RegionSpec};
use mqlink_topology::RegionName;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

pub mod procs;

/// A fresh scratch directory under the system temp dir.
/// (Those of earlier test processes that are gone are removed.)
pub fn scratch(name: &str) -> PathBuf {
    mqlink::scratch::dir(&format!("mqlink-e2e-{name}")).unwrap()
}

/// A CA and a certificate for each of `names` in `dir/certs` (returned).
pub fn pki(dir: &Path, names: &[&str]) -> anyhow::Result<PathBuf> {
    let certs = dir.join("certs");
    mqlink::certs::init(&certs)?;
    for name in names {
        mqlink::certs::issue(&RegionName::new(name)?, &certs)?;
    }
    Ok(certs)
}

/// Wait until `cond` holds, polling every 20 ms, for at most `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("timed out after {limit:?} waiting for {what}")
}

/// Shorthand for a plain link without a configured cost.
pub fn link(a: &str, b: &str) -> LinkSpec {
    LinkSpec::new(a, b, None).unwrap()
}

/// Several regions, each a real Mosquitto broker and a real agent, linked
/// as asked; every region follows its broker's subscriptions
/// (`dynamic: mosquitto`).
pub struct Federation {
    /// The brokers and agents.
    pub inner: LocalFederation,
}

fn r(name: &str) -> RegionName {
    RegionName::new(name).unwrap()
}

impl Federation {
    /// Start `regions` with `links` and wait until every link is up (on
    /// every agent). `"a:2"` is region `a` served by two agents (replicas).
    pub async fn start(name: &str, regions: &[&str], links: &[LinkSpec]) -> anyhow::Result<Self> {
        let dir = scratch(name);
        let specs: Vec<RegionSpec> = regions
            .iter()
            .map(|n| {
                let (name, replicas) = n.split_once(':').unwrap_or((n, "1"));
                RegionSpec {
                    replicas: replicas.parse().unwrap(),
                    ..RegionSpec::new(name).unwrap()
                }
            })
            .collect();
        let inner = LocalFederation::start(&dir, &specs, links, BrokerKind::Mosquitto).await?;
        inner.wait_links_up(Duration::from_secs(10)).await?;
        Ok(Federation { inner })
    }

    /// The scratch directory (certificates, configs, broker logs).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The QUIC address of `region`'s (first) agent.
    pub fn quic_addr(&self, region: &str) -> std::net::SocketAddr {
        self.inner.agents[&r(region)][0].quic_addr
    }

    /// Counters of `region`'s (first) agent.
    pub async fn stats(&self, region: &str) -> StatsReport {
        self.inner.stats(&r(region)).await
    }

    /// Counters of agent `k` (0-based) of `region`.
    pub async fn replica_stats(&self, region: &str, k: usize) -> StatsReport {
        self.inner.replica_stats(&r(region), k).await
    }

    /// Stop agent `k` (0-based) of `region`.
    pub async fn stop_replica(&mut self, region: &str, k: usize) {
        self.inner.stop_replica(&r(region), k).await;
    }

    /// Wait until `region`'s agent exports `filter` (or stops exporting it).
    pub async fn wait_export(
        &self,
        region: &str,
        filter: &str,
        present: bool,
    ) -> anyhow::Result<()> {
        wait_until(
            &format!("{region} exporting {filter}: {present}"),
            Duration::from_secs(10),
            || async {
                self.stats(region)
                    .await
                    .export
                    .iter()
                    .any(|f| f.as_str() == filter)
                    == present
            },
        )
        .await
    }

    /// Wait until `at`'s agent knows that `region` wants `filter`.
    pub async fn wait_interest(&self, at: &str, region: &str, filter: &str) -> anyhow::Result<()> {
        let who = r(region);
        wait_until(
            &format!("{at} learning that {region} wants {filter}"),
            Duration::from_secs(10),
            || async {
                self.stats(at)
                    .await
                    .interest
                    .get(&who)
                    .is_some_and(|fs| fs.iter().any(|f| f.as_str() == filter))
            },
        )
        .await
    }

    /// Envelopes `from` sent to `to`.
    pub async fn sent(&self, from: &str, to: &str) -> u64 {
        self.stats(from)
            .await
            .stats
            .sent
            .get(&r(to))
            .copied()
            .unwrap_or(0)
    }

    /// A test client on `region`'s broker.
    pub async fn client(&self, region: &str, id: &str) -> anyhow::Result<Client> {
        Client::connect(self.inner.brokers[&r(region)].port(), id).await
    }

    /// Stop everything.
    pub async fn stop(self) {
        self.inner.stop().await;
    }
}

/// An MQTT 5 test client.
pub struct Client {
    /// The rumqttc client.
    pub inner: AsyncClient,
    /// Messages received.
    rx: mpsc::UnboundedReceiver<Publish>,
    /// Acks of subscribe/unsubscribe.
    acks: mpsc::UnboundedReceiver<()>,
    /// The event loop task.
    task: tokio::task::JoinHandle<()>,
    /// Set by [`Client::disconnect`]: a persistent client stops
    /// reconnecting (it goes offline, its session stays on the broker).
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Client {
    /// Connect with clean start and wait for the CONNACK.
    pub async fn connect(port: u16, id: &str) -> anyhow::Result<Self> {
        Self::connect_with(port, id, false).await
    }

    /// With `persistent`: a session that outlives the connection (clean
    /// start off, 5 min expiry) and a client that reconnects when the
    /// broker goes away, as a device with a persistent session does.
    pub async fn connect_with(port: u16, id: &str, persistent: bool) -> anyhow::Result<Self> {
        Self::connect_expiring(port, id, persistent.then_some(300)).await
    }

    /// With `expiry`: a persistent session (clean start off) that the
    /// broker keeps this many seconds after the connection ends.
    pub async fn connect_expiring(
        port: u16,
        id: &str,
        expiry: Option<u32>,
    ) -> anyhow::Result<Self> {
        let persistent = expiry.is_some();
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_start(!persistent);
        if persistent {
            opts.set_session_expiry_interval(expiry);
        }
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(Some(16 * 1024 * 1024));
        let (inner, mut events) = AsyncClient::new(opts, 1024);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (up_tx, mut up_rx) = mpsc::unbounded_channel();
        let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = stopping.clone();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = up_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::SubAck(_) | Packet::UnsubAck(_))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) if persistent && !stop.load(std::sync::atomic::Ordering::SeqCst) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(_) => return,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), up_rx.recv())
            .await
            .context("CONNACK")?;
        Ok(Client {
            inner,
            rx,
            acks,
            task,
            stopping,
        })
    }

    /// Subscribe and wait for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        self.inner.subscribe(filter, qos).await?;
        tokio::time::timeout(Duration::from_secs(5), self.acks.recv())
            .await
            .context("SUBACK")?;
        Ok(())
    }

    /// Unsubscribe and wait for the UNSUBACK.
    pub async fn unsubscribe(&mut self, filter: &str) -> anyhow::Result<()> {
        self.inner.unsubscribe(filter).await?;
        tokio::time::timeout(Duration::from_secs(5), self.acks.recv())
            .await
            .context("UNSUBACK")?;
        Ok(())
    }

    /// Publish.
    pub async fn publish(
        &self,
        topic: &str,
        payload: &'static [u8],
        qos: QoS,
        retain: bool,
    ) -> anyhow::Result<()> {
        self.inner
            .publish(topic, qos, retain, Bytes::from_static(payload))
            .await?;
        Ok(())
    }

    /// Publish with properties.
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: &'static [u8],
        qos: QoS,
        retain: bool,
        props: PublishProperties,
    ) -> anyhow::Result<()> {
        self.inner
            .publish_with_properties(topic, qos, retain, Bytes::from_static(payload), props)
            .await?;
        Ok(())
    }

    /// The next message, if one arrives within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Publish> {
        tokio::time::timeout(limit, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Take `n` messages, failing if they do not all arrive within `limit`.
    pub async fn take(&mut self, n: usize, limit: Duration) -> anyhow::Result<Vec<Publish>> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(p)) => out.push(p),
                _ => bail!("got {} of {n} messages within {limit:?}", out.len()),
            }
        }
        Ok(out)
    }

    /// Messages already received and not yet taken.
    pub fn drain(&mut self) -> Vec<Publish> {
        let mut out = Vec::new();
        while let Ok(p) = self.rx.try_recv() {
            out.push(p);
        }
        out
    }

    /// Disconnect.
    pub async fn disconnect(self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.inner.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// The topic of a received message.
pub fn topic(p: &Publish) -> String {
    String::from_utf8_lossy(&p.topic).into_owned()
}
