//! `mqlink run`: one agent, wired together: the QUIC endpoint and links,
//! the MQTT client to the local broker, and the core task around the
//! protocol state machine. [`start`] returns a handle so the demo and the
//! end-to-end tests can run several agents in one process.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::BTreeMap;

use mqlink_config::{DynamicInterest, Endpoint, RegionConfig};
use mqlink_proto::{Agent, AgentConfig};
use mqlink_topology::RegionName;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::info;

use crate::core::{Input, StatsReport};
use crate::{broker, core, link, reload, tls};

/// How long a silent link lives before it is declared down.
pub const LINK_IDLE: Duration = Duration::from_millis(1500);

/// How long a shutdown waits for messages in custody to be passed on.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its certificate, key or CA.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The QUIC socket.
    #[error("binding QUIC on {addr}: {source}")]
    Bind {
        /// The address in `listen.quic`.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The spool or its dedupe marks.
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    /// The local broker session.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// The spool thread.
    #[error("starting the spool thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The resolver.
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
    /// The admin API's listener.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
}

/// A running agent.
#[derive(Debug)]
pub struct Running {
    /// The region.
    pub region: RegionName,
    /// The bound QUIC address (useful when configured with port 0).
    pub quic_addr: SocketAddr,
    /// The bound admin API address (`listen.admin`).
    pub admin_addr: SocketAddr,
    /// Inputs to the core (for stats queries).
    inputs: mpsc::Sender<Input>,
    /// To the export session (to drain it at shutdown).
    export: mpsc::UnboundedSender<core::ExportCmd>,
    /// The QUIC endpoint, closed at shutdown.
    endpoint: quinn::Endpoint,
    /// Every task of the agent but the dial tasks.
    tasks: Vec<JoinHandle<()>>,
    /// The configuration running now.
    cfg: RegionConfig,
    /// The resolver the dial tasks share.
    dns: crate::dns::Dns,
    /// The configured links, as accepting and the admin API see them.
    neighbours: link::Neighbours,
    /// One dial task per endpoint of a neighbour we dial.
    dials: BTreeMap<(RegionName, Endpoint), JoinHandle<()>>,
    /// Reloads asked for through the admin API.
    reloads: mpsc::Receiver<crate::admin::ReloadRequest>,
    /// The export subscriptions, as the broker granted them.
    exports: broker::ExportState,
    /// Fires (or its sender drops) when the core task ends: the agent
    /// routes nothing any more.
    core_done: Option<oneshot::Receiver<()>>,
}

impl Running {
    /// Ask the core for its counters.
    pub async fn stats(&self) -> Option<StatsReport> {
        let (tx, rx) = oneshot::channel();
        self.inputs.send(Input::Stats(tx)).await.ok()?;
        rx.await.ok()
    }

    /// The export filters the local broker has granted (SUBACK) on the
    /// current connection: what actually leaves the broker for the agent.
    pub fn exports_granted(&self) -> std::collections::BTreeSet<mqlink_topology::TopicFilter> {
        self.exports.granted()
    }

    /// Re-read the config file and apply it ([`crate::reload`]); on any
    /// refusal nothing changes.
    pub async fn reload_file(&mut self) -> Result<reload::Plan, reload::ReloadError> {
        let new = mqlink_config::load(&self.cfg.file)
            .map_err(|e| reload::ReloadError::Invalid(e.to_string()))?;
        self.reload(new).await
    }

    /// Apply `new`: links, costs, policies and static interest in place;
    /// refused (nothing changed) when it changes what needs a restart.
    pub async fn reload(&mut self, new: RegionConfig) -> Result<reload::Plan, reload::ReloadError> {
        let keys = reload::restart_needed(&self.cfg, &new);
        if !keys.is_empty() {
            return Err(reload::ReloadError::NeedsRestart {
                file: new.file.display().to_string(),
                keys,
            });
        }
        let plan = reload::plan(&self.cfg, &new);
        if plan.is_empty() {
            self.cfg = new;
            return Ok(plan);
        }
        self.neighbours.set(new.links.clone());
        self.inputs
            .send(Input::Reconfigure {
                links: reload::link_policies(&new),
                subscribe: plan.subscribe.clone(),
                unsubscribe: plan.unsubscribe.clone(),
            })
            .await
            .map_err(|_| reload::ReloadError::Stopping)?;
        for key in &plan.stop_dialling {
            if let Some(t) = self.dials.remove(key) {
                t.abort();
            }
        }
        for (region, target) in &plan.start_dialling {
            self.dial(region, target);
        }
        self.cfg = new;
        Ok(plan)
    }

    /// Start dialling `target`, an agent of `region`.
    fn dial(&mut self, region: &RegionName, target: &Endpoint) {
        let task = tokio::spawn(link::dial(
            self.endpoint.clone(),
            self.dns.clone(),
            region.clone(),
            target.clone(),
            self.inputs.clone(),
        ));
        if let Some(old) = self.dials.insert((region.clone(), target.clone()), task) {
            old.abort();
        }
    }

    /// The reloads asked for through the admin API (`mqlink ctl
    /// reload`), for the caller to apply with [`Self::reload_file`] and
    /// answer; empty after the first call.
    pub fn take_reload_requests(&mut self) -> mpsc::Receiver<crate::admin::ReloadRequest> {
        std::mem::replace(&mut self.reloads, mpsc::channel(1).1)
    }

    /// Resolves when the core task ends on its own (it must not: it owns
    /// every decision). `mqlink run` exits non-zero then, so a supervisor
    /// (systemd) restarts it; custody upstream makes that safe. Pending
    /// for ever after the first call.
    pub fn take_failed(&mut self) -> impl std::future::Future<Output = ()> + use<> {
        let rx = self.core_done.take();
        async move {
            match rx {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending().await,
            }
        }
    }

    /// Stop: take nothing more from the broker, give the messages in
    /// custody up to [`DRAIN`] to be passed on and acknowledged, then close
    /// the links and stop every task. What is still held then stays with
    /// its upstream (the broker redelivers it to the next start; a
    /// neighbour sends it again), so nothing is lost either way.
    pub async fn shutdown(self) {
        let _ = self.export.send(core::ExportCmd::Drain);
        let deadline = tokio::time::Instant::now() + DRAIN;
        while tokio::time::Instant::now() < deadline {
            match self.stats().await {
                Some(r) if r.stats.held > r.stats.parked => {}
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The last acknowledgements reach the broker.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.endpoint.close(0u32.into(), b"shutting down");
        let tasks: Vec<JoinHandle<()>> = self
            .tasks
            .into_iter()
            .chain(self.dials.into_values())
            .collect();
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Install the ring provider as the process default (idempotent).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The broker side of an agent started by [`start_detached`]: what its
/// broker session would be given, for a harness that stands in for the
/// brokers (`mqlink bench --pair`).
#[derive(Debug)]
pub struct BrokerSide {
    /// Into the core: `Input::Publish` as the export session sends it,
    /// `Input::Delivered` for each import the stand-in broker took.
    pub core: mpsc::Sender<Input>,
    /// The imports the core asks to publish.
    pub import: mpsc::Receiver<core::ImportCmd>,
    /// Export subscriptions and acknowledgements (`ExportCmd::Release`).
    pub export: mpsc::UnboundedReceiver<core::ExportCmd>,
}

/// Start an agent for `cfg`.
pub async fn start(cfg: &RegionConfig) -> Result<Running, StartError> {
    start_with(cfg, true).await.map(|(r, _)| r)
}

/// Start an agent for `cfg` without a session with its broker: the
/// caller gets the session's channels instead. Everything else (core,
/// links, spool, durable marks) runs as in production.
pub async fn start_detached(cfg: &RegionConfig) -> Result<(Running, BrokerSide), StartError> {
    match start_with(cfg, false).await? {
        (r, Some(side)) => Ok((r, side)),
        (_, None) => unreachable!("a start without a session returns its broker side"),
    }
}

async fn start_with(
    cfg: &RegionConfig,
    with_session: bool,
) -> Result<(Running, Option<BrokerSide>), StartError> {
    install_crypto();
    let identity = tls::Identity::load(&cfg.tls, &cfg.region)?;
    let transport = tls::transport(LINK_IDLE);
    let endpoint = link::endpoint(
        cfg.listen.quic,
        identity.server_config(transport.clone())?,
        identity.client_config(transport)?,
    )
    .map_err(|source| StartError::Bind {
        addr: cfg.listen.quic,
        source,
    })?;
    let quic_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
        addr: cfg.listen.quic,
        source,
    })?;

    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64);
    let links = reload::link_policies(cfg);
    let (spool, recovered) = crate::spool::Spool::open(&cfg.spool.dir, cfg.spool.max_bytes.0)?;
    if recovered.records + recovered.corrupt + recovered.truncated > 0 {
        info!(
            messages = recovered.records,
            corrupt = recovered.corrupt,
            torn_bytes = recovered.truncated,
            dir = %cfg.spool.dir.display(),
            "spool recovered"
        );
    }
    let (marks, windows, marks_rec) = crate::spool::Marks::open(&cfg.spool.dir.join("marks"))?;
    if marks_rec.corrupt > 0 {
        tracing::warn!(
            corrupt = marks_rec.corrupt,
            "dedupe marks: records skipped (replays of those messages may be delivered twice)"
        );
    }
    metrics::counter!("mqlink_spool_corrupt_records_total")
        .increment(recovered.corrupt + marks_rec.corrupt);
    let now = std::time::Instant::now();
    let mut agent_cfg = AgentConfig::new(cfg.region.clone(), cfg.node.clone(), epoch, links);
    agent_cfg.spool = true;
    agent_cfg.max_age = cfg.spool.max_age;
    agent_cfg.durable_marks = true;
    agent_cfg.interest_budget = cfg.interest.budget;
    let mut agent = Agent::new(now, agent_cfg);
    agent.restore_marks(windows);
    agent.handle_spool_recovered(recovered.records);
    for f in &cfg.interest.static_filters {
        agent.handle_subscribe(now, f.clone());
    }

    let (input_tx, input_rx) = mpsc::channel(8192);
    let (export_tx, export_rx) = mpsc::unbounded_channel();
    let (import_tx, import_rx) = mpsc::channel(broker::IMPORT_INFLIGHT);
    // Replicas share their export subscriptions: a session that outlived
    // its agent would keep taking its share of new messages (Mosquitto
    // queues for offline members of a shared group), so their sessions end
    // with the connection and the broker moves the share at once. The
    // price (README): what the dying replica had in flight is not handed
    // to its siblings (MQTT 5 §4.8.2 forbids it).
    let session = if cfg.broker.shared {
        Duration::ZERO
    } else {
        cfg.spool.max_age
    };
    let session = broker::session(&cfg.broker, session)?;
    let export = broker::ExportState::new(&cfg.region, cfg.broker.shared);
    let exports = export.clone();
    let follower = (cfg.interest.dynamic == DynamicInterest::Mosquitto)
        .then(|| crate::mosquitto::LogFollower::new(&cfg.broker.client_id));
    let (spool_tx, spool_rx) = mpsc::unbounded_channel();
    let spool_core = input_tx.clone();
    let policy = crate::spool::Policy {
        max_age: cfg.spool.max_age,
        drop_oldest: cfg.spool.full == mqlink_config::SpoolFull::DropOldest,
    };
    let (spool_view_tx, spool_view) =
        tokio::sync::watch::channel(crate::spool::SpoolView::default());
    std::thread::Builder::new()
        .name("mqlink-spool".into())
        .spawn(move || crate::spool::run(spool, marks, policy, spool_rx, spool_core, spool_view_tx))
        .map_err(StartError::Thread)?;
    let broker_tx = core::BrokerTx {
        export: export_tx.clone(),
        import: import_tx,
        spool: spool_tx,
    };
    let (core_tx, core_done) = oneshot::channel();
    let mut tasks = vec![tokio::spawn(async move {
        core::run(agent, input_rx, broker_tx).await;
        let _ = core_tx.send(());
    })];
    let side = if with_session {
        tasks.push(tokio::spawn(broker::run_session(
            session,
            broker::Channels {
                export: export_rx,
                import: import_rx,
                core: input_tx.clone(),
            },
            export,
            follower,
            cfg.interest.dynamic == DynamicInterest::Plugin,
        )));
        None
    } else {
        Some(BrokerSide {
            core: input_tx.clone(),
            import: import_rx,
            export: export_rx,
        })
    };
    tasks.push(tokio::spawn(crate::metrics::sample(input_tx.clone())));
    let neighbours = link::Neighbours::new(cfg.links.clone());
    let (reload_tx, reloads) = mpsc::channel(4);
    let admin = crate::admin::AdminService::new(
        input_tx.clone(),
        spool_view,
        neighbours.clone(),
        reload_tx,
        cfg.spool.max_bytes.0,
    );
    let (admin_addr, serve_admin) = crate::admin::bind(cfg.listen.admin, &cfg.tls, admin).await?;
    tasks.push(tokio::spawn(serve_admin));
    let dns = crate::dns::Dns::new(&cfg.dns)?;
    tasks.push(tokio::spawn(link::accept(
        endpoint.clone(),
        neighbours.clone(),
        input_tx.clone(),
    )));
    tasks.push(tokio::spawn(crate::certs::watch_expiry(
        cfg.tls.cert.clone(),
        cfg.region.to_string(),
    )));
    info!(region = %cfg.region, node = %cfg.node, quic = %quic_addr, "agent started");
    let mut running = Running {
        region: cfg.region.clone(),
        quic_addr,
        admin_addr,
        inputs: input_tx,
        export: export_tx,
        endpoint,
        tasks,
        cfg: cfg.clone(),
        dns,
        neighbours,
        dials: BTreeMap::new(),
        reloads,
        exports,
        core_done: Some(core_done),
    };
    for l in cfg
        .links
        .iter()
        .filter(|l| link::dials(&cfg.region, &l.region))
    {
        // One connection per endpoint: each is an agent (replica) of the peer region.
        for target in &l.endpoints {
            running.dial(&l.region, target);
        }
    }
    Ok((running, side))
}
