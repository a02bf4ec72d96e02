//! The setups `mqlink bench --compare` starts on loopback, each from
//! generated configuration files in a scratch directory, every process
//! stopped by its PID:
//!
//! - **one broker**: publishers and subscribers on one Mosquitto (the
//!   limit of the brokers themselves);
//! - **bridge**: Mosquitto A bridged to Mosquitto B (`topic bench/# out
//!   <qos>`, as operators configure it today), publishers on A,
//!   subscribers on B;
//! - **mqlink**: Mosquitto A and B, an agent beside each (`mqlink run`,
//!   this very binary), linked by QUIC + mutual TLS with a throw-away CA;
//!   B's agent learns the subscribers' filters from its broker (`dynamic:
//!   mosquitto`), so only wanted topics cross.
//!
//! Every broker allows 1,000 messages in flight and 100,000 queued per
//! client (what the baseline measurements used), and turns Nagle's
//! algorithm off on its client sockets (`set_tcp_nodelay true`, the
//! setting the README asks of brokers beside an agent; without it a
//! broker holds small writes to a subscriber for up to a 64 KB segment's
//! worth, 15-17 ms at 38,000 msgs/s). A bridge's own outgoing connection
//! keeps Nagle on whatever the setting: Mosquitto has no option for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mqlink_topology::RegionName;

use super::run::{Endpoints, Watched};
use super::{BenchError, failed};
use crate::brokers::{LocalBroker, free_port, free_udp_port, terminate};

/// What every bench broker adds to the test brokers' configuration.
const BROKER_CONF: &str = "set_tcp_nodelay true\n";

/// Which setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum SetupKind {
    /// One Mosquitto broker.
    Broker,
    /// A Mosquitto bridge between two brokers.
    Bridge,
    /// Two mqlink agents between two Mosquitto brokers.
    Mqlink,
}

impl SetupKind {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            SetupKind::Broker => "one broker",
            SetupKind::Bridge => "bridge",
            SetupKind::Mqlink => "mqlink",
        }
    }
}

/// A running setup.
pub struct Setup {
    /// Which one.
    pub kind: SetupKind,
    /// Where the clients connect.
    pub at: Endpoints,
    /// Processes whose CPU the runs report (brokers and agents).
    pub watched: Vec<Watched>,
    /// The agents' Prometheus ports (their drop counters).
    pub metrics: Vec<u16>,
    brokers: Vec<LocalBroker>,
    agents: Vec<Child>,
}

/// The brokers as watched processes: `broker` alone, else `broker a`,
/// `broker b` (publishers' first).
fn brokers_watched<'a>(brokers: impl ExactSizeIterator<Item = &'a LocalBroker>) -> Vec<Watched> {
    let one = brokers.len() == 1;
    brokers
        .zip(["a", "b", "c", "d"])
        .filter_map(|(b, tag)| {
            Some(Watched {
                name: if one {
                    "broker".into()
                } else {
                    format!("broker {tag}")
                },
                pid: b.pid()?,
            })
        })
        .collect()
}

/// Whether a Mosquitto can be started here.
pub fn mosquitto_available() -> bool {
    Command::new("mosquitto")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Every sample of metric `name` (over its labels) from the Prometheus
/// endpoint on 127.0.0.1:`port`; `None` when it does not answer.
pub async fn scrape(port: u16, name: &str) -> Option<Vec<f64>> {
    let body = metrics_text(port).await?;
    Some(samples(&body, name).map(|(_, v)| v).collect())
}

/// The Prometheus text of the endpoint on 127.0.0.1:`port`.
async fn metrics_text(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    Some(body)
}

/// The agents' counters `--compare` reports where losses went, summed
/// over the agents (one scrape of each).
#[derive(Debug, Default)]
pub struct AgentCounters {
    /// `mqlink_drops_total`, by reason.
    pub drops: std::collections::BTreeMap<String, f64>,
    /// `mqlink_broker_dropping_total`: episodes of a broker dropping what
    /// it had queued for its agent.
    pub broker_dropping: f64,
}

/// The [`AgentCounters`] of the agents whose metrics are on `ports`.
pub async fn agent_counters(ports: &[u16]) -> AgentCounters {
    let mut out = AgentCounters::default();
    for port in ports {
        let Some(body) = metrics_text(*port).await else {
            continue;
        };
        for (labels, v) in samples(&body, "mqlink_drops_total") {
            let reason = labels
                .split_once("reason=\"")
                .and_then(|(_, r)| r.split_once('"'))
                .map_or(labels, |(r, _)| r);
            *out.drops.entry(reason.to_owned()).or_insert(0.0) += v;
        }
        out.broker_dropping += samples(&body, "mqlink_broker_dropping_total")
            .map(|(_, v)| v)
            .sum::<f64>();
    }
    out
}

/// Every sample of metric `name` in a Prometheus text, with its labels
/// (`{...}`, or empty).
fn samples<'a>(body: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(move |l| l.split([' ', '{']).next() == Some(name))
        .filter_map(move |l| {
            let (head, v) = l.rsplit_once(' ')?;
            Some((&head[name.len()..], v.parse().ok()?))
        })
}

/// A region's agent YAML for the bench.
fn agent_yaml(
    region: &str,
    peer: &str,
    (quic, peer_quic, metrics): (u16, u16, u16),
    (broker, batch_delay): (u16, Duration),
) -> String {
    let delay = batch_delay.as_micros();
    format!(
        "region: {region}\nnode: {region}-1\n\
         broker: {{ url: \"mqtt://127.0.0.1:{broker}\", client_id: mqlink-bench-{region}, batch_delay: {delay}us }}\n\
         listen: {{ quic: \"127.0.0.1:{quic}\", admin: \"127.0.0.1:0\", metrics: \"127.0.0.1:{metrics}\" }}\n\
         tls: {{ cert: certs/{region}.pem, key: certs/{region}.key, ca: certs/ca.pem }}\n\
         interest: {{ dynamic: mosquitto }}\n\
         spool: {{ dir: spool-{region} }}\n\
         links:\n  - region: {peer}\n    endpoints: [\"127.0.0.1:{peer_quic}\"]\n    cost: 10\n"
    )
}

impl Setup {
    /// Start `kind` in `dir` (created); `agent_bin` is the `mqlink`
    /// binary the agents run; `qos` is the bridge's QoS; `batch_delay`
    /// the agents' `broker.batch_delay`.
    pub async fn start(
        kind: SetupKind,
        dir: &Path,
        agent_bin: &Path,
        qos: u8,
        batch_delay: Duration,
    ) -> Result<Self, BenchError> {
        std::fs::create_dir_all(dir).map_err(failed("scratch directory"))?;
        let broker = |name: &str, extra: &str| {
            LocalBroker::mosquitto_with(dir, name, &format!("{BROKER_CONF}{extra}"))
                .map_err(failed("starting Mosquitto"))
        };
        // Brokers only: publishers on the first, subscribers on the last.
        let brokers_only = |brokers: Vec<LocalBroker>| {
            let addr = |b: Option<&LocalBroker>| {
                b.map(|b| format!("127.0.0.1:{}", b.port()))
                    .unwrap_or_default()
            };
            Self {
                kind,
                at: Endpoints {
                    publish: addr(brokers.first()),
                    subscribe: addr(brokers.last()),
                },
                watched: brokers_watched(brokers.iter()),
                metrics: Vec::new(),
                brokers,
                agents: Vec::new(),
            }
        };
        match kind {
            SetupKind::Broker => Ok(brokers_only(vec![broker("single", "")?])),
            SetupKind::Bridge => {
                let b = broker("bridge-b", "")?;
                let a = broker(
                    "bridge-a",
                    &format!(
                        "connection bench\naddress 127.0.0.1:{}\ntopic bench/# out {qos}\n",
                        b.port()
                    ),
                )?;
                Ok(brokers_only(vec![a, b]))
            }
            SetupKind::Mqlink => Self::mqlink(dir, agent_bin, batch_delay).await,
        }
    }

    async fn mqlink(
        dir: &Path,
        agent_bin: &Path,
        batch_delay: Duration,
    ) -> Result<Self, BenchError> {
        let certs = dir.join("certs");
        crate::certs::init(&certs).map_err(failed("making a CA"))?;
        let a = LocalBroker::mosquitto_with(dir, "mqlink-a", BROKER_CONF)
            .map_err(failed("starting Mosquitto"))?;
        let b = LocalBroker::mosquitto_with(dir, "mqlink-b", BROKER_CONF)
            .map_err(failed("starting Mosquitto"))?;
        let (qa, qb) = (
            free_udp_port().map_err(failed("free port"))?,
            free_udp_port().map_err(failed("free port"))?,
        );
        let mut agents = Vec::new();
        let mut watched = brokers_watched([&a, &b].into_iter());
        let mut metrics_ports = Vec::new();
        for (region, peer, quic, peer_quic, broker) in
            [("a", "b", qa, qb, a.port()), ("b", "a", qb, qa, b.port())]
        {
            let name = RegionName::new(region).map_err(failed("region"))?;
            crate::certs::issue(&name, &certs).map_err(failed("issuing a certificate"))?;
            let conf = dir.join(format!("{region}.yaml"));
            let metrics = free_port().map_err(failed("free port"))?;
            metrics_ports.push(metrics);
            std::fs::write(
                &conf,
                agent_yaml(
                    region,
                    peer,
                    (quic, peer_quic, metrics),
                    (broker, batch_delay),
                ),
            )
            .map_err(failed("writing an agent config"))?;
            let log = std::fs::File::create(dir.join(format!("agent-{region}.log")))
                .map_err(failed("agent log"))?;
            let err = log.try_clone().map_err(failed("agent log"))?;
            let mut cmd = Command::new(agent_bin);
            if std::env::var_os("MQLINK_BENCH_AGENT_LOG").is_some() {
                cmd.env("RUST_LOG", "info");
            } else {
                cmd.env("RUST_LOG", "warn");
            }
            let child = cmd
                .args(["run", "--config"])
                .arg(&conf)
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .map_err(|e| {
                    failed("starting an agent")(format!("{}: {e}", agent_bin.display()))
                })?;
            watched.push(Watched {
                name: format!("agent {region}"),
                pid: child.id(),
            });
            agents.push(child);
        }
        let setup = Self {
            kind: SetupKind::Mqlink,
            at: Endpoints {
                publish: format!("127.0.0.1:{}", a.port()),
                subscribe: format!("127.0.0.1:{}", b.port()),
            },
            watched,
            metrics: metrics_ports.clone(),
            brokers: vec![a, b],
            agents,
        };
        // Subscriptions count once the agents follow their brokers (with
        // the $SYS log, only what happens after they connect), and the
        // link is up.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for port in metrics_ports {
            loop {
                let ready = |v: Option<Vec<f64>>| v.is_some_and(|v| v.first() == Some(&1.0));
                if ready(scrape(port, "mqlink_broker_connected").await)
                    && ready(scrape(port, "mqlink_peers_up").await)
                {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    setup.stop().await;
                    return Err(BenchError::Setup(
                        "the agents did not connect to their brokers and each other within 30 s"
                            .into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(setup)
    }

    /// Stop it: agents (SIGTERM, then SIGKILL), then brokers.
    pub async fn stop(mut self) {
        for mut a in self.agents.drain(..) {
            if terminate(&mut a, Duration::from_secs(5)).await.is_err() {
                let _ = a.kill();
                let _ = a.wait();
            }
        }
        for b in self.brokers.drain(..) {
            b.stop().await;
        }
    }

    /// The scratch directory's log files, for a failed setup's message.
    pub fn logs(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "log"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}
