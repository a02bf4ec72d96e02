//! A federation of agent *processes* (`mqlink run`, the binary an operator
//! runs), for the tests that kill an agent with SIGKILL and start it
//! again: fixed ports picked free at start, one YAML per agent written as
//! an operator would, real Mosquitto brokers. Processes are stopped by
//! their PID (`Child::kill`), never by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use mqlink::brokers::LocalBroker;
pub use mqlink::relay::Relay;

use crate::{Client, scratch};

/// One region of a process federation.
pub struct ProcRegion {
    /// Its broker.
    pub broker: LocalBroker,
    /// Its agent's config file.
    pub config: PathBuf,
    /// The agent process, while it runs.
    pub agent: Option<AgentProc>,
    /// How many times the agent was started (names its log files).
    starts: u32,
    /// Its Prometheus port.
    pub metrics_port: u16,
    /// Its admin API port.
    pub admin_port: u16,
}

/// Regions with a broker and an agent process each.
pub struct ProcFederation {
    /// Scratch directory: certificates, configs, logs, spools.
    pub dir: PathBuf,
    /// Regions by name.
    pub regions: BTreeMap<String, ProcRegion>,
    /// The relays between linked agents, by link (`"a-b"`).
    pub relays: BTreeMap<String, Relay>,
}

/// Options of a process federation.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Put a [`Relay`] on every link, so a test can cut it.
    pub relays: bool,
    /// `spool.max_bytes` of every agent (default: the config's).
    pub spool_max_bytes: Option<u64>,
    /// Brokers with persistence on, so they can be restarted
    /// ([`ProcFederation::restart_broker`]) keeping sessions and queues.
    pub persistent_brokers: bool,
    /// Brokers configured with the project's `deploy/mosquitto/mqlink.conf`
    /// (the `mqlink_interest` plugin) and agents with `dynamic: mosquitto`.
    pub interest_plugin: bool,
    /// Start no agent ([`ProcFederation::start_agent`] starts them).
    pub agents_later: bool,
    /// Regions whose admin API listens on every address (0.0.0.0), so
    /// it takes mutual TLS only.
    pub admin_any: Vec<String>,
    /// Agents follow their broker's log (`dynamic: mosquitto`) on brokers
    /// without the plugin.
    pub follow_log: bool,
    /// Lines appended to every broker's configuration (they override the
    /// test brokers' defaults: Mosquitto takes the last value).
    pub broker_extra: String,
}

/// The `mqlink` binary next to the test binary (`target/<profile>/mqlink`;
/// cargo builds it with the workspace's tests).
pub fn mqlink_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no parent directory")?;
    let bin = dir.join("mqlink");
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build -p mqlink`",
            bin.display()
        );
    }
    Ok(bin)
}

impl ProcFederation {
    /// Start `regions` linked by `links` (a, b, cost); `interest` gives
    /// each region's static interest (the agents follow nothing else, so
    /// a restarted agent knows it at once).
    pub fn start(
        name: &str,
        regions: &[&str],
        links: &[(&str, &str, u32)],
        interest: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_with(name, regions, links, interest, &Options::default())
    }

    /// [`Self::start`] with options. Relays need a tokio runtime.
    pub fn start_with(
        name: &str,
        regions: &[&str],
        links: &[(&str, &str, u32)],
        interest: &[(&str, &str)],
        opts: &Options,
    ) -> anyhow::Result<Self> {
        let dir = scratch(name);
        crate::pki(&dir, regions)?;
        let mut quic = BTreeMap::new();
        for r in regions {
            quic.insert(*r, mqlink::brokers::free_udp_port()?);
        }
        let mut relays = BTreeMap::new();
        if opts.relays {
            for (a, b, _) in links {
                // The first name dials: its endpoint is the relay.
                let (dialled, key) = if a < b {
                    (b, format!("{a}-{b}"))
                } else {
                    (a, format!("{b}-{a}"))
                };
                let relay = tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(Relay::start(
                        std::net::SocketAddr::from(([127, 0, 0, 1], quic[dialled])),
                    ))
                })?;
                relays.insert(key, relay);
            }
        }
        let spool = match opts.spool_max_bytes {
            Some(n) => format!("{{ dir: spool-{{r}}, max_bytes: {n} }}"),
            None => "{ dir: spool-{r} }".to_owned(),
        };
        let mut out = BTreeMap::new();
        for r in regions {
            let broker = if opts.interest_plugin {
                LocalBroker::mosquitto_with_plugin(&dir, r, opts.persistent_brokers)?
            } else if opts.persistent_brokers {
                LocalBroker::mosquitto_persistent(&dir, r)?
            } else {
                LocalBroker::mosquitto_with(&dir, r, &opts.broker_extra)?
            };
            let statics: Vec<String> = interest
                .iter()
                .filter(|(x, _)| x == r)
                .map(|(_, f)| format!("\"{f}\""))
                .collect();
            let metrics_port = mqlink::brokers::free_port()?;
            let admin_port = mqlink::brokers::free_port()?;
            let admin_ip = if opts.admin_any.iter().any(|a| a == r) {
                "0.0.0.0"
            } else {
                "127.0.0.1"
            };
            let mut yaml = format!(
                "region: {r}\nnode: {r}-1\nbroker: {{ url: \"mqtt://127.0.0.1:{}\" }}\n\
                 listen: {{ quic: \"127.0.0.1:{}\", admin: \"{admin_ip}:{admin_port}\", metrics: \"127.0.0.1:{}\" }}\n\
                 tls: {{ cert: certs/{r}.pem, key: certs/{r}.key, ca: certs/ca.pem }}\n\
                 interest: {{ dynamic: {}, static: [{}] }}\n\
                 spool: {}\nlinks:\n",
                broker.port(),
                quic[r],
                metrics_port,
                if opts.interest_plugin || opts.follow_log {
                    "mosquitto"
                } else {
                    "none"
                },
                statics.join(", "),
                spool.replace("{r}", r)
            );
            for (a, b, cost) in links.iter().filter(|(a, b, _)| a == r || b == r) {
                let peer = if a == r { b } else { a };
                let key = if r < peer {
                    format!("{r}-{peer}")
                } else {
                    format!("{peer}-{r}")
                };
                let port = match relays.get(&key) {
                    Some(relay) if r < peer => relay.port,
                    _ => quic[peer],
                };
                yaml.push_str(&format!(
                    "  - region: {peer}\n    endpoints: [\"127.0.0.1:{port}\"]\n    cost: {cost}\n"
                ));
            }
            let config = dir.join(format!("{r}.yaml"));
            std::fs::write(&config, yaml)?;
            out.insert(
                (*r).to_owned(),
                ProcRegion {
                    broker,
                    config,
                    agent: None,
                    starts: 0,
                    metrics_port,
                    admin_port,
                },
            );
        }
        let mut fed = ProcFederation {
            dir,
            regions: out,
            relays,
        };
        if !opts.agents_later {
            for r in regions {
                fed.start_agent(r)?;
            }
        }
        Ok(fed)
    }

    /// Start (or start again) `region`'s agent process.
    pub fn start_agent(&mut self, region: &str) -> anyhow::Result<()> {
        let bin = mqlink_bin()?;
        let dir = self.dir.clone();
        let r = self.regions.get_mut(region).context("no such region")?;
        r.starts += 1;
        let log = std::fs::File::create(dir.join(format!("{region}-agent-{}.log", r.starts)))?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&r.config)
            .current_dir(&dir)
            .env("RUST_LOG", "info,quinn=warn,rumqttc=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting mqlink run")?;
        r.agent = Some(AgentProc(child));
        Ok(())
    }

    /// SIGKILL `region`'s agent (by its PID) and reap it.
    pub fn kill_agent(&mut self, region: &str) {
        // Dropping the guard kills and reaps the process.
        drop(self.regions.get_mut(region).and_then(|r| r.agent.take()));
    }

    /// Stop `region`'s broker (SIGTERM) and start it again after `down`.
    pub async fn restart_broker(&mut self, region: &str, down: Duration) -> anyhow::Result<()> {
        let r = self.regions.get_mut(region).context("no such region")?;
        Ok(r.broker.restart(down).await?)
    }

    /// Stop `region`'s agent as a service manager does (SIGTERM, by PID)
    /// and wait for it to exit; its exit status.
    pub async fn terminate_agent(
        &mut self,
        region: &str,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let r = self.regions.get_mut(region).context("no such region")?;
        let Some(mut agent) = r.agent.take() else {
            bail!("{region}'s agent is not running");
        };
        Ok(mqlink::brokers::terminate(&mut agent.0, Duration::from_secs(15)).await?)
    }

    /// The value of metric `name` (first sample, any labels) on
    /// `region`'s agent, if it answers and has it.
    pub async fn metric(&self, region: &str, name: &str) -> Option<f64> {
        self.samples(region, name).await?.first().copied()
    }

    /// The sum of every sample of metric `name` (over its labels) on
    /// `region`'s agent; 0 if it has none or does not answer.
    pub async fn metric_sum(&self, region: &str, name: &str) -> f64 {
        self.samples(region, name)
            .await
            .unwrap_or_default()
            .iter()
            .sum()
    }

    async fn samples(&self, region: &str, name: &str) -> Option<Vec<f64>> {
        let port = self.regions.get(region)?.metrics_port;
        mqlink::bench::setups::scrape(port, name).await
    }

    /// Peak resident memory (VmHWM) of `region`'s agent process, in bytes.
    pub fn agent_peak_rss(&self, region: &str) -> Option<u64> {
        let pid = self.regions.get(region)?.agent.as_ref()?.id();
        mqlink::bench::run::proc_usage(pid).map(|u| u.peak_rss)
    }

    /// A test client on `region`'s broker.
    pub async fn client(&self, region: &str, id: &str) -> anyhow::Result<Client> {
        Client::connect(self.regions[region].broker.port(), id).await
    }

    /// A test client with a persistent session that reconnects (see
    /// [`Client::connect_with`]).
    pub async fn persistent_client(&self, region: &str, id: &str) -> anyhow::Result<Client> {
        Client::connect_with(self.regions[region].broker.port(), id, true).await
    }

    /// Stop every agent, then every broker.
    pub async fn stop(mut self) {
        let names: Vec<String> = self.regions.keys().cloned().collect();
        for n in &names {
            self.kill_agent(n);
        }
        for (_, r) in self.regions {
            r.broker.stop().await;
        }
    }
}

/// An agent process, killed (SIGKILL, by PID) and reaped when dropped, so
/// a failing test leaves no agent behind.
pub struct AgentProc(Child);

impl AgentProc {
    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// CPU time it has used (user + system), from `/proc/PID/stat`;
    /// `None` where that cannot be read. Linux reports it in clock ticks of
    /// `USER_HZ`, which is 100 on every mainstream kernel configuration.
    pub fn cpu_time(&self) -> Option<Duration> {
        mqlink::bench::run::proc_usage(self.id()).map(|u| u.cpu)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
