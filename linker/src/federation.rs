//! A whole federation on this machine: per region a local broker and an
//! agent (in this process), with a development PKI in a scratch directory.
//! Used by `mqlink demo` and by the end-to-end tests, so both exercise the
//! real thing: generated region YAML goes through the config loader, agents
//! talk QUIC with mutual TLS on 127.0.0.1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mqlink_topology::RegionName;

use crate::brokers::LocalBroker;
use crate::core::StatsReport;
use crate::relay::Relay;
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
    /// Static interest filters, on top of what the region's subscribers
    /// ask for (learned from either broker kind).
    pub static_interest: Vec<String>,
    /// Agents serving the region (at least 1); with more, they export
    /// through shared subscriptions (`broker.shared: true`).
    pub replicas: usize,
}

/// Why a local federation could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// A region name is not valid.
    #[error(transparent)]
    Name(#[from] mqlink_topology::NameError),
    /// The development PKI.
    #[error(transparent)]
    Certs(#[from] crate::certs::CertsError),
    /// A broker.
    #[error(transparent)]
    Broker(#[from] crate::brokers::LocalBrokerError),
    /// A relay's socket, or a generated config file.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A generated region config did not load (a bug: it names the file).
    #[error("{0}")]
    Config(String),
    /// An agent did not start.
    #[error("starting {agent}")]
    Agent {
        /// Which agent (`<region>-<k>`).
        agent: String,
        /// Why.
        #[source]
        source: crate::run::StartError,
    },
    /// A link did not come up in time.
    #[error("link {a} <-> {b} did not come up within {limit:?}")]
    LinkDown {
        /// One end.
        a: RegionName,
        /// The other.
        b: RegionName,
        /// How long we waited.
        limit: Duration,
    },
}

impl RegionSpec {
    /// Region `name` with one agent and no static interest.
    pub fn new(name: &str) -> Result<Self, FederationError> {
        Ok(Self {
            name: RegionName::new(name)?,
            static_interest: Vec::new(),
            replicas: 1,
        })
    }
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
    /// Put a [`Relay`] between the agents, so the link can be cut while
    /// both live ([`LocalFederation::relay`]).
    pub relay: bool,
}

impl LinkSpec {
    /// A link between `a` and `b`.
    pub fn new(a: &str, b: &str, cost: Option<u32>) -> Result<Self, FederationError> {
        Ok(Self {
            a: RegionName::new(a)?,
            b: RegionName::new(b)?,
            cost,
            a_extra: String::new(),
            relay: false,
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
    /// Agents by region (replicas in node order: `<region>-1`, `<region>-2`, ...).
    pub agents: BTreeMap<RegionName, Vec<Running>>,
    /// The links.
    pub links: Vec<LinkSpec>,
    /// Relays of the links that asked for one, by (dialling region, dialled region).
    pub relays: BTreeMap<(RegionName, RegionName), Relay>,
}

impl LocalFederation {
    /// Start every region in `dir` (which must exist).
    pub async fn start(
        dir: &Path,
        regions: &[RegionSpec],
        links: &[LinkSpec],
        kind: BrokerKind,
    ) -> Result<Self, FederationError> {
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
        let mut agents: BTreeMap<RegionName, Vec<Running>> = BTreeMap::new();
        let mut relays: BTreeMap<(RegionName, RegionName), Relay> = BTreeMap::new();
        for r in order {
            // Relays for the links this region dials (the dialled side is
            // already up): one relay in front of the peer's first agent.
            for l in links
                .iter()
                .filter(|l| l.relay && (l.a == r.name || l.b == r.name))
            {
                let peer = if l.a == r.name { &l.b } else { &l.a };
                if crate::link::dials(&r.name, peer)
                    && let Some(target) = agents.get(peer).and_then(|v| v.first())
                {
                    let relay = Relay::start(target.quic_addr).await.map_err(|source| {
                        FederationError::Io {
                            what: "starting a relay",
                            source,
                        }
                    })?;
                    relays.insert((r.name.clone(), peer.clone()), relay);
                }
            }
            let mut replicas = Vec::new();
            for k in 1..=r.replicas.max(1) {
                let path = dir.join(format!("{}-{k}.yaml", r.name));
                let yaml = region_yaml(r, k, links, &brokers[&r.name], &agents, &relays);
                std::fs::write(&path, yaml).map_err(|source| FederationError::Io {
                    what: "writing a region config",
                    source,
                })?;
                let cfg = mqlink_config::load(&path)
                    .map_err(|e| FederationError::Config(e.to_string()))?;
                replicas.push(crate::run::start(&cfg).await.map_err(|source| {
                    FederationError::Agent {
                        agent: format!("{}-{k}", r.name),
                        source,
                    }
                })?);
            }
            agents.insert(r.name.clone(), replicas);
        }
        Ok(LocalFederation {
            dir: dir.to_owned(),
            brokers,
            agents,
            links: links.to_vec(),
            relays,
        })
    }

    /// The relay on the link between `a` and `b`, if it has one.
    pub fn relay(&self, a: &RegionName, b: &RegionName) -> Option<&Relay> {
        self.relays
            .get(&(a.clone(), b.clone()))
            .or_else(|| self.relays.get(&(b.clone(), a.clone())))
    }

    /// Counters of `region`'s first agent.
    pub async fn stats(&self, region: &RegionName) -> StatsReport {
        self.replica_stats(region, 0).await
    }

    /// Counters of agent `k` (0-based) of `region`.
    pub async fn replica_stats(&self, region: &RegionName, k: usize) -> StatsReport {
        match self.agents.get(region).and_then(|v| v.get(k)) {
            Some(a) => a.stats().await.unwrap_or_default(),
            None => StatsReport::default(),
        }
    }

    /// Whether every running agent of `region` has `peer` up.
    async fn all_see(&self, region: &RegionName, peer: &RegionName) -> bool {
        for a in self.agents.get(region).into_iter().flatten() {
            if !a.stats().await.is_some_and(|s| s.peers_up.contains(peer)) {
                return false;
            }
        }
        true
    }

    /// Stop agent `k` (0-based) of `region`; the others keep running.
    pub async fn stop_replica(&mut self, region: &RegionName, k: usize) {
        if let Some(v) = self.agents.get_mut(region)
            && k < v.len()
        {
            v.remove(k).shutdown().await;
        }
    }

    /// Wait until every link is up on both sides, for every agent.
    pub async fn wait_links_up(&self, limit: Duration) -> Result<(), FederationError> {
        let deadline = Instant::now() + limit;
        for l in &self.links {
            loop {
                let up = self.all_see(&l.a, &l.b).await && self.all_see(&l.b, &l.a).await;
                if up {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(FederationError::LinkDown {
                        a: l.a.clone(),
                        b: l.b.clone(),
                        limit,
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Stop every agent, then every broker.
    pub async fn stop(self) {
        for a in self.agents.into_values().flatten() {
            a.shutdown().await;
        }
        for (_, b) in self.brokers {
            b.stop().await;
        }
    }
}

/// The YAML of agent `k` (1-based) of a region, as an operator would write it.
fn region_yaml(
    r: &RegionSpec,
    k: usize,
    links: &[LinkSpec],
    broker: &LocalBroker,
    started: &BTreeMap<RegionName, Vec<Running>>,
    relays: &BTreeMap<(RegionName, RegionName), Relay>,
) -> String {
    let name = &r.name;
    let dynamic = broker.dynamic_interest();
    let interest: Vec<String> = r
        .static_interest
        .iter()
        .map(|f| format!("\"{f}\""))
        .collect();
    let shared = r.replicas > 1;
    let mut yaml = format!(
        "region: {name}\nnode: {name}-{k}\nbroker: {{ url: \"mqtt://127.0.0.1:{}\", shared: {shared} }}\n\
         listen: {{ quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\", metrics: \"127.0.0.1:0\" }}\n\
         tls: {{ cert: certs/{name}.pem, key: certs/{name}.key, ca: certs/ca.pem }}\n\
         interest: {{ dynamic: {dynamic}, static: [{}] }}\nspool: {{ dir: spool-{name}-{k} }}\nlinks:\n",
        broker.port(),
        interest.join(", ")
    );
    for l in links.iter().filter(|l| l.a == *name || l.b == *name) {
        let peer = if l.a == *name { &l.b } else { &l.a };
        // Peers that sort after us are already up and we dial them; the
        // others dial us, so the address we write for them is never used.
        // One endpoint per agent of the peer region.
        let addrs: Vec<String> =
            match (relays.get(&(name.clone(), peer.clone())), started.get(peer)) {
                (Some(relay), _) => vec![format!("\"127.0.0.1:{}\"", relay.port)],
                (None, Some(agents)) => agents
                    .iter()
                    .map(|a| format!("\"{}\"", a.quic_addr))
                    .collect(),
                (None, None) => vec![format!("\"{}\"", SocketAddr::from(([127, 0, 0, 1], 9)))],
            };
        yaml.push_str(&format!(
            "  - region: {peer}\n    endpoints: [{}]\n",
            addrs.join(", ")
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
