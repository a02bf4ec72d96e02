//! End-to-end test harness: real Mosquitto brokers (started from a
//! generated config on a free port, stopped by PID), real agents over QUIC
//! with mutual TLS on 127.0.0.1 (in this process, via `mqlink::run::start`),
//! and an MQTT 5 test client. Waits are on conditions with deadlines, never
//! fixed sleeps.
//!
//! The tests themselves are in `tests/tests/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a failure should panic

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use mqlink::core::StatsReport;
use mqlink::run::Running;
use mqlink_topology::RegionName;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

/// A fresh scratch directory under the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mqlink-e2e-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
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

/// A Mosquitto broker of our own, on a free port.
#[derive(Debug)]
pub struct Broker {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// The process (killed by PID on drop).
    child: Child,
}

impl Broker {
    /// Start `mosquitto` with a generated config in `dir`, with the log
    /// topics that `dynamic: mosquitto` follows.
    pub fn start(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf = dir.join(format!("{name}-mosquitto.conf"));
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 log_dest topic\nlog_type subscribe\nlog_type unsubscribe\nlog_type notice\n"
            ),
        )?;
        let log = std::fs::File::create(dir.join(format!("{name}-mosquitto.log")))?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting mosquitto (apt-get install -y mosquitto)")?;
        let mut broker = Broker { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || broker.child.try_wait()?.is_some() {
                bail!(
                    "mosquitto on port {port} did not come up; see {}",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(broker)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A link of a test federation.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    /// One end.
    pub a: &'static str,
    /// The other end.
    pub b: &'static str,
    /// Extra YAML lines for `a`'s side (e.g. `export: [...]`).
    pub a_extra: &'static str,
}

/// Shorthand for a plain link.
pub fn link(a: &'static str, b: &'static str) -> LinkSpec {
    LinkSpec { a, b, a_extra: "" }
}

/// Several regions, each a Mosquitto broker and an agent, linked as asked.
pub struct Federation {
    /// Scratch directory (configs, certificates, broker logs).
    pub dir: PathBuf,
    /// Brokers by region.
    pub brokers: BTreeMap<&'static str, Broker>,
    /// Agents by region.
    pub agents: BTreeMap<&'static str, Running>,
}

impl Federation {
    /// Start `regions` with `links`; every region follows its broker's
    /// subscriptions (`dynamic: mosquitto`).
    pub async fn start(
        name: &str,
        regions: &[&'static str],
        links: &[LinkSpec],
    ) -> anyhow::Result<Self> {
        let dir = scratch(name);
        let certs = dir.join("certs");
        mqlink::certs::init(&certs)?;
        for r in regions {
            mqlink::certs::issue(&RegionName::new(r)?, &certs)?;
        }
        let mut brokers = BTreeMap::new();
        for r in regions {
            brokers.insert(*r, Broker::start(&dir, r)?);
        }
        // Start in reverse name order: the first name dials, so its peers
        // must already be listening.
        let mut order = regions.to_vec();
        order.sort_unstable_by(|a, b| b.cmp(a));
        let mut agents: BTreeMap<&'static str, Running> = BTreeMap::new();
        for r in order {
            let mut yaml = format!(
                "region: {r}\nnode: {r}-1\nbroker: {{ url: \"mqtt://127.0.0.1:{}\" }}\n\
                 listen: {{ quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\", metrics: \"127.0.0.1:0\" }}\n\
                 tls: {{ cert: certs/{r}.pem, key: certs/{r}.key, ca: certs/ca.pem }}\n\
                 interest: {{ dynamic: mosquitto }}\nlinks:\n",
                brokers[r].port
            );
            for l in links.iter().filter(|l| l.a == r || l.b == r) {
                let peer = if l.a == r { l.b } else { l.a };
                // Peers named later are already up; the others dial us.
                let addr: SocketAddr = agents
                    .get(peer)
                    .map_or(SocketAddr::from(([127, 0, 0, 1], 9)), |a| a.quic_addr);
                yaml.push_str(&format!(
                    "  - region: {peer}\n    endpoints: [\"{addr}\"]\n"
                ));
                if l.a == r {
                    for line in l.a_extra.lines() {
                        yaml.push_str(&format!("    {line}\n"));
                    }
                }
            }
            let path = dir.join(format!("{r}.yaml"));
            std::fs::write(&path, &yaml)?;
            let cfg = mqlink_config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
            agents.insert(r, mqlink::run::start(&cfg).await?);
        }
        let fed = Federation {
            dir,
            brokers,
            agents,
        };
        for l in links {
            fed.wait_peers(l.a, l.b).await?;
        }
        Ok(fed)
    }

    /// Counters of `region`'s agent.
    pub async fn stats(&self, region: &str) -> StatsReport {
        self.agents[region].stats().await.unwrap_or_default()
    }

    /// Wait until the link a-b is up on both sides.
    pub async fn wait_peers(&self, a: &str, b: &str) -> anyhow::Result<()> {
        let (ra, rb) = (RegionName::new(a)?, RegionName::new(b)?);
        wait_until(
            &format!("link {a}-{b}"),
            Duration::from_secs(10),
            || async {
                self.stats(a).await.peers_up.contains(&rb)
                    && self.stats(b).await.peers_up.contains(&ra)
            },
        )
        .await
    }

    /// Wait until `region`'s agent exports `filter` (some other region wants it).
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
        let r = RegionName::new(region)?;
        wait_until(
            &format!("{at} learning that {region} wants {filter}"),
            Duration::from_secs(10),
            || async {
                self.stats(at)
                    .await
                    .interest
                    .get(&r)
                    .is_some_and(|fs| fs.iter().any(|f| f.as_str() == filter))
            },
        )
        .await
    }

    /// Envelopes `from` sent to `to`.
    pub async fn sent(&self, from: &str, to: &str) -> u64 {
        let to = RegionName::new(to).unwrap();
        self.stats(from)
            .await
            .stats
            .sent
            .get(&to)
            .copied()
            .unwrap_or(0)
    }

    /// A test client on `region`'s broker.
    pub async fn client(&self, region: &str, id: &str) -> anyhow::Result<Client> {
        Client::connect(self.brokers[region].port, id).await
    }

    /// Stop everything.
    pub async fn stop(self) {
        for (_, a) in self.agents {
            a.shutdown().await;
        }
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
}

impl Client {
    /// Connect with clean start and wait for the CONNACK.
    pub async fn connect(port: u16, id: &str) -> anyhow::Result<Self> {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_start(true);
        opts.set_keep_alive(Duration::from_secs(30));
        let (inner, mut events) = AsyncClient::new(opts, 1024);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (up_tx, mut up_rx) = mpsc::unbounded_channel();
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
        let _ = self.inner.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// The topic of a received message.
pub fn topic(p: &Publish) -> String {
    String::from_utf8_lossy(&p.topic).into_owned()
}
