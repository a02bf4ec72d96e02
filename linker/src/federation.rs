//! A whole federation on this machine: per region a local broker and an
//! agent (in this process), with a development PKI in a scratch directory.
//! Used by `mqlink demo` and by the end-to-end tests, so both exercise the
//! real thing: generated region YAML goes through the config loader, agents
//! talk QUIC with mutual TLS on 127.0.0.1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mqlink_topology::RegionName;

use crate::brokers::LocalBroker;
use crate::core::StatsReport;
use crate::run::Running;

/// Which broker each region runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerKind {
    /// The embedded `mqtt5` broker: nothing to install.
    Embedded,
    /// The system's Mosquitto 2.x (`apt-get install -y mosquitto`).
    Mosquitto,
}

/// One region of a local federation.
#[derive(Debug, Clone)]
pub struct RegionSpec {
    /// Its name.
    pub name: RegionName,
    /// Static interest filters (the only interest with the embedded broker,
    /// which has no subscription log to follow).
    pub static_interest: Vec<String>,
}

/// One link of a local federation.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    /// One end.
    pub a: RegionName,
    /// The other end.
    pub b: RegionName,
    /// Configured cost (both sides), if any.
    pub cost: Option<u32>,
    /// Extra YAML lines for `a`'s side of the link (e.g. `export: [...]`).
    pub a_extra: String,
}

impl LinkSpec {
    /// A link between `a` and `b`.
    pub fn new(a: &str, b: &str, cost: Option<u32>) -> anyhow::Result<Self> {
        Ok(Self {
            a: RegionName::new(a)?,
            b: RegionName::new(b)?,
            cost,
            a_extra: String::new(),
        })
    }
}

/// Brokers and agents of every region.
#[derive(Debug)]
pub struct LocalFederation {
    /// Scratch directory: certificates, generated configs, broker logs.
    pub dir: PathBuf,
    /// Brokers by region.
    pub brokers: BTreeMap<RegionName, LocalBroker>,
    /// Agents by region.
    pub agents: BTreeMap<RegionName, Running>,
    /// The links.
    pub links: Vec<LinkSpec>,
}

impl LocalFederation {
    /// Start every region in `dir` (which must exist).
    pub async fn start(
        dir: &Path,
        regions: &[RegionSpec],
        links: &[LinkSpec],
        kind: BrokerKind,
    ) -> anyhow::Result<Self> {
        let certs = dir.join("certs");
        crate::certs::init(&certs)?;
        for r in regions {
            crate::certs::issue(&r.name, &certs)?;
        }
        let mut brokers = BTreeMap::new();
        for r in regions {
            let broker = match kind {
                BrokerKind::Embedded => LocalBroker::embedded().await?,
                BrokerKind::Mosquitto => LocalBroker::mosquitto(dir, r.name.as_str())?,
            };
            brokers.insert(r.name.clone(), broker);
        }
        // The first name of a pair dials, so start in reverse name order:
        // every agent's dial targets are already listening.
        let mut order: Vec<&RegionSpec> = regions.iter().collect();
        order.sort_by(|x, y| y.name.cmp(&x.name));
        let mut agents: BTreeMap<RegionName, Running> = BTreeMap::new();
        for r in order {
            let path = dir.join(format!("{}.yaml", r.name));
            std::fs::write(&path, region_yaml(r, links, &brokers[&r.name], &agents))?;
            let cfg = mqlink_config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
            agents.insert(
                r.name.clone(),
                crate::run::start(&cfg)
                    .await
                    .with_context(|| format!("starting {}", r.name))?,
            );
        }
        Ok(LocalFederation {
            dir: dir.to_owned(),
            brokers,
            agents,
            links: links.to_vec(),
        })
    }

    /// Counters of `region`'s agent.
    pub async fn stats(&self, region: &RegionName) -> StatsReport {
        match self.agents.get(region) {
            Some(a) => a.stats().await.unwrap_or_default(),
            None => StatsReport::default(),
        }
    }

    /// Wait until every link is up on both sides.
    pub async fn wait_links_up(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        for l in &self.links {
            loop {
                let up = self.stats(&l.a).await.peers_up.contains(&l.b)
                    && self.stats(&l.b).await.peers_up.contains(&l.a);
                if up {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("link {} <-> {} did not come up within {limit:?}", l.a, l.b);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Stop every agent, then every broker.
    pub async fn stop(self) {
        for (_, a) in self.agents {
            a.shutdown().await;
        }
        for (_, b) in self.brokers {
            b.stop().await;
        }
    }
}

/// The YAML of one region, as an operator would write it.
fn region_yaml(
    r: &RegionSpec,
    links: &[LinkSpec],
    broker: &LocalBroker,
    started: &BTreeMap<RegionName, Running>,
) -> String {
    let name = &r.name;
    let dynamic = if broker.has_subscription_log() {
        "mosquitto"
    } else {
        "none"
    };
    let interest: Vec<String> = r
        .static_interest
        .iter()
        .map(|f| format!("\"{f}\""))
        .collect();
    let mut yaml = format!(
        "region: {name}\nnode: {name}-1\nbroker: {{ url: \"mqtt://127.0.0.1:{}\" }}\n\
         listen: {{ quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\", metrics: \"127.0.0.1:0\" }}\n\
         tls: {{ cert: certs/{name}.pem, key: certs/{name}.key, ca: certs/ca.pem }}\n\
         interest: {{ dynamic: {dynamic}, static: [{}] }}\nlinks:\n",
        broker.port(),
        interest.join(", ")
    );
    for l in links.iter().filter(|l| l.a == *name || l.b == *name) {
        let peer = if l.a == *name { &l.b } else { &l.a };
        // Peers that sort after us are already up and we dial them; the
        // others dial us, so the address we write for them is never used.
        let addr = started
            .get(peer)
            .map_or(SocketAddr::from(([127, 0, 0, 1], 9)), |a| a.quic_addr);
        yaml.push_str(&format!(
            "  - region: {peer}\n    endpoints: [\"{addr}\"]\n"
        ));
        if let Some(c) = l.cost {
            yaml.push_str(&format!("    cost: {c}\n"));
        }
        if l.a == *name {
            for line in l.a_extra.lines() {
                yaml.push_str(&format!("    {line}\n"));
            }
        }
    }
    yaml
}
