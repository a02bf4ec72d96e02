//! Local brokers for the demo and the end-to-end tests: an embedded MQTT 5
//! broker (the `mqtt5` crate, which honours No Local and Retain As
//! Published; zero install) or a real Mosquitto 2.x process started from a
//! generated config on a free port and stopped by its PID.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A broker this process started.
pub enum LocalBroker {
    /// In-process `mqtt5` broker.
    Embedded {
        /// Its port on 127.0.0.1.
        port: u16,
        /// Stops it.
        shutdown: mqtt5::broker::BrokerShutdownHandle,
        /// Its task.
        task: tokio::task::JoinHandle<()>,
    },
    /// A `mosquitto` child process.
    Mosquitto {
        /// Its port on 127.0.0.1.
        port: u16,
        /// The process, killed by PID on stop or drop.
        child: Child,
        /// Its config file (to start it again).
        conf: PathBuf,
        /// Its log file.
        log: PathBuf,
    },
}

impl std::fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocalBroker::Embedded { port, .. } => write!(f, "embedded broker on 127.0.0.1:{port}"),
            LocalBroker::Mosquitto { port, child, .. } => {
                write!(f, "mosquitto (pid {}) on 127.0.0.1:{port}", child.id())
            }
        }
    }
}

/// Why a local broker could not be started, stopped or restarted.
#[derive(Debug, thiserror::Error)]
pub enum LocalBrokerError {
    /// A file, socket or process operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The `mosquitto` binary could not be started.
    #[error("starting mosquitto (install it with: apt-get install -y mosquitto)")]
    NoMosquitto(#[source] std::io::Error),
    /// It never listened on its port.
    #[error("the broker on 127.0.0.1:{port} did not come up{log}")]
    NotUp {
        /// Its port.
        port: u16,
        /// " (see FILE)" for a Mosquitto log, else "".
        log: String,
    },
    /// The embedded broker refused to start.
    #[error("starting the embedded broker: {0}")]
    Embedded(String),
    /// The interest plugin is not built.
    #[error(
        "{0} is missing: build it with `make -C deploy/mosquitto` (needs: apt-get install -y mosquitto-dev gcc make)"
    )]
    NoPlugin(String),
    /// SIGTERM could not be sent, or was not obeyed in time.
    #[error("process {pid}: {what}")]
    Stop {
        /// The process.
        pid: u32,
        /// What went wrong.
        what: String,
    },
    /// Only a Mosquitto process can be restarted.
    #[error("only a Mosquitto broker can be restarted")]
    NotRestartable,
    /// A blocking helper task failed.
    #[error("a helper task failed")]
    Task(#[from] tokio::task::JoinError),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> LocalBrokerError {
    move |source| LocalBrokerError::Io { what, source }
}

/// A TCP port free on 127.0.0.1 (for a broker, a metrics endpoint).
pub fn free_port() -> Result<u16, LocalBrokerError> {
    pick_port(|port| TcpListener::bind(("127.0.0.1", port))?.local_addr())
        .map_err(io("finding a free port"))
}

/// A UDP port free on 127.0.0.1 (for an agent's QUIC endpoint).
pub fn free_udp_port() -> Result<u16, LocalBrokerError> {
    pick_port(|port| std::net::UdpSocket::bind(("127.0.0.1", port))?.local_addr())
        .map_err(io("finding a free UDP port"))
}

/// A port that `bind` (given a port, 0 for any, it returns the address
/// it bound) can take now, chosen below the kernel's ephemeral range
/// where there is room for it: a broker or an agent restarted on the port
/// it had finds it free again, where a port from the ephemeral range may
/// meanwhile have become the local end of some other connection
/// (`Address already in use`). Where the range leaves no room, the kernel
/// picks (port 0).
fn pick_port(bind: impl Fn(u16) -> std::io::Result<std::net::SocketAddr>) -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u16 = 10_000;
    /// Step through the range (prime: it shares no factor with the span).
    const STEP: u32 = 7_919;
    let high = ephemeral_low().unwrap_or(LOW);
    if high > LOW + 1_000 {
        // A different start in every process (tests run side by side),
        // then on through the range, call after call.
        static NEXT: std::sync::OnceLock<AtomicU32> = std::sync::OnceLock::new();
        let next = NEXT.get_or_init(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            AtomicU32::new(std::process::id().wrapping_mul(2_654_435_761) ^ nanos)
        });
        let span = u32::from(high - LOW);
        for _ in 0..64 {
            let n = next.fetch_add(STEP, Ordering::Relaxed);
            let port = LOW + u16::try_from(n % span).unwrap_or(0);
            if bind(port).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(bind(0)?.port())
}

/// The low end of the kernel's ephemeral port range (Linux).
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn wait_listening(port: u16, mut alive: impl FnMut() -> bool) -> Result<(), LocalBrokerError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || !alive() {
            return Err(LocalBrokerError::NotUp {
                port,
                log: String::new(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Stop `child` as a service manager does (SIGTERM, by its PID) and wait
/// up to `within` for it to exit; its exit status.
pub async fn terminate(
    child: &mut Child,
    within: Duration,
) -> Result<std::process::ExitStatus, LocalBrokerError> {
    let pid = child.id();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .map_err(io("running kill"))?;
    if !status.success() {
        return Err(LocalBrokerError::Stop {
            pid,
            what: "kill -TERM failed".into(),
        });
    }
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().map_err(io("waiting for a process"))? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            return Err(LocalBrokerError::Stop {
                pid,
                what: format!("did not exit within {within:?} of SIGTERM"),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Start `mosquitto -c conf` (log appended to `log`) and wait until it
/// listens on `port`.
fn spawn_mosquitto(conf: &Path, log: &Path, port: u16) -> Result<Child, LocalBrokerError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io("opening the broker log"))?;
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .map_err(LocalBrokerError::NoMosquitto)?;
    if wait_listening(port, || matches!(child.try_wait(), Ok(None))).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(LocalBrokerError::NotUp {
            port,
            log: format!(" (see {})", log.display()),
        });
    }
    Ok(child)
}

/// The project's `deploy/mosquitto/mqlink.conf` as an operator installs
/// it: `@DEPLOY@` replaced by that folder (whose plugin must be built),
/// and the plugin's state file in `state_dir` (made writable for the
/// `mosquitto` user a root-started broker becomes). Options after the
/// shipped ones win (the plugin reads the last).
pub fn plugin_conf(state_dir: &Path) -> Result<String, LocalBrokerError> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto");
    let deploy = deploy.canonicalize().unwrap_or(deploy);
    let plugin = deploy.join("mqlink_interest.so");
    if !plugin.exists() {
        return Err(LocalBrokerError::NoPlugin(plugin.display().to_string()));
    }
    let conf = std::fs::read_to_string(deploy.join("mqlink.conf"))
        .map_err(io("reading deploy/mosquitto/mqlink.conf"))?
        .replace("@DEPLOY@", &deploy.display().to_string());
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o777))
        .map_err(io("opening the plugin state directory"))?;
    Ok(format!(
        "{conf}\nplugin_opt_state_file {}/mqlink_interest.state\n",
        state_dir.display()
    ))
}

impl LocalBroker {
    /// Start an embedded broker on a free port, its sessions kept in memory
    /// (persistent sessions and their queues last as long as the process); it
    /// tells agents its subscriptions on `$mqlink/interest`
    /// ([`crate::embedded_interest`], `interest.dynamic: plugin`).
    pub async fn embedded() -> Result<Self, LocalBrokerError> {
        use mqtt5::broker::config::{BrokerConfig, StorageBackend, StorageConfig};
        let port = free_port()?;
        let storage = StorageConfig {
            backend: StorageBackend::Memory,
            enable_persistence: true,
            ..StorageConfig::default()
        };
        let config = BrokerConfig::new()
            .with_bind_address(SocketAddr::from(([127, 0, 0, 1], port)))
            .with_storage(storage)
            .with_sys_topics_enabled(false);
        let interest = crate::embedded_interest::EmbeddedInterest::new();
        let config = config.with_event_handler(interest.clone());
        let mut broker = mqtt5::broker::MqttBroker::with_config(config)
            .await
            .map_err(|e| LocalBrokerError::Embedded(e.to_string()))?;
        let shutdown = broker.shutdown_handle();
        let router = broker.router();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = broker.run() => {}
                () = interest.serve(router) => {}
            }
        });
        tokio::task::spawn_blocking(move || wait_listening(port, || true)).await??;
        Ok(LocalBroker::Embedded {
            port,
            shutdown,
            task,
        })
    }

    /// Start `mosquitto` with a config written to `dir`, publishing its
    /// subscribe/unsubscribe/connection log on `$SYS` for `dynamic: mosquitto`.
    pub fn mosquitto(dir: &Path, name: &str) -> Result<Self, LocalBrokerError> {
        Self::mosquitto_with(dir, name, "")
    }

    /// [`Self::mosquitto`] with `extra` configuration lines (e.g. a bridge).
    pub fn mosquitto_with(dir: &Path, name: &str, extra: &str) -> Result<Self, LocalBrokerError> {
        Self::mosquitto_conf(dir, name, false, extra)
    }

    /// [`Self::mosquitto`] with persistence on (its database in `dir`), so
    /// that sessions and queued messages outlive [`Self::restart`].
    pub fn mosquitto_persistent(dir: &Path, name: &str) -> Result<Self, LocalBrokerError> {
        Self::mosquitto_conf(dir, name, true, "")
    }

    /// [`Self::mosquitto`] configured the way an operator installs
    /// mqlink: the project's `deploy/mosquitto/mqlink.conf` appended with
    /// `@DEPLOY@` replaced by that folder (it loads the `mqlink_interest`
    /// plugin, which must be built), the plugin's state file in `dir`,
    /// persistence on if asked.
    pub fn mosquitto_with_plugin(
        dir: &Path,
        name: &str,
        persistence: bool,
    ) -> Result<Self, LocalBrokerError> {
        let state = dir.join(format!("{name}-state"));
        std::fs::create_dir_all(&state).map_err(io("creating the plugin state directory"))?;
        let extra = plugin_conf(&state)?;
        Self::mosquitto_conf(dir, name, persistence, &extra)
    }

    /// A Mosquitto broker from a whole configuration of the caller's
    /// (`body`), whose listener on 127.0.0.1:`port` says it is up (TLS
    /// listeners, password files, several listeners).
    pub fn mosquitto_custom(
        dir: &Path,
        name: &str,
        port: u16,
        body: &str,
    ) -> Result<Self, LocalBrokerError> {
        let conf = dir.join(format!("{name}-mosquitto.conf"));
        std::fs::write(&conf, body).map_err(io("writing the broker configuration"))?;
        let log = dir.join(format!("{name}-mosquitto.log"));
        let child = spawn_mosquitto(&conf, &log, port)?;
        Ok(LocalBroker::Mosquitto {
            port,
            child,
            conf,
            log,
        })
    }

    fn mosquitto_conf(
        dir: &Path,
        name: &str,
        persistence: bool,
        extra: &str,
    ) -> Result<Self, LocalBrokerError> {
        let port = free_port()?;
        let persistence = if persistence {
            let db = dir.join(format!("{name}-mosquitto-db"));
            std::fs::create_dir_all(&db).map_err(io("creating the broker database directory"))?;
            // Mosquitto started as root runs as the `mosquitto` user: let
            // it write its database here whoever it runs as.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o777))
                .map_err(io("opening the broker database directory"))?;
            format!("persistence true\npersistence_location {}/\n", db.display())
        } else {
            "persistence false\n".to_owned()
        };
        let body = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}\
                 log_dest topic\nlog_type subscribe\nlog_type unsubscribe\nlog_type notice\n\
                 max_inflight_messages 1000\nmax_queued_messages 100000\n{extra}"
        );
        Self::mosquitto_custom(dir, name, port, &body)
    }

    /// Stop a Mosquitto broker as its service manager would (SIGTERM, by
    /// PID: it saves its persistent state), then start it again on the
    /// same port with the same config once `down` has passed.
    pub async fn restart(&mut self, down: Duration) -> Result<(), LocalBrokerError> {
        let LocalBroker::Mosquitto {
            port,
            child,
            conf,
            log,
        } = self
        else {
            return Err(LocalBrokerError::NotRestartable);
        };
        terminate(child, Duration::from_secs(10)).await?;
        tokio::time::sleep(down).await;
        let (conf, log, port) = (conf.clone(), log.clone(), *port);
        let fresh =
            tokio::task::spawn_blocking(move || spawn_mosquitto(&conf, &log, port)).await??;
        *child = fresh;
        Ok(())
    }

    /// The broker's process, if it is one (a Mosquitto).
    pub fn pid(&self) -> Option<u32> {
        match self {
            LocalBroker::Mosquitto { child, .. } => Some(child.id()),
            LocalBroker::Embedded { .. } => None,
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        match self {
            LocalBroker::Embedded { port, .. } | LocalBroker::Mosquitto { port, .. } => *port,
        }
    }

    /// The `interest.dynamic` source an agent beside it uses: the
    /// embedded broker speaks the plugin's protocol itself; Mosquitto
    /// follows `dynamic: mosquitto` (the plugin when loaded, else its log).
    pub fn dynamic_interest(&self) -> &'static str {
        match self {
            LocalBroker::Embedded { .. } => "plugin",
            LocalBroker::Mosquitto { .. } => "mosquitto",
        }
    }

    /// Stop it.
    pub async fn stop(mut self) {
        match &mut self {
            LocalBroker::Embedded { shutdown, task, .. } => {
                shutdown.shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
            }
            LocalBroker::Mosquitto { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        match self {
            LocalBroker::Embedded { task, .. } => task.abort(),
            LocalBroker::Mosquitto { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn free_ports_lie_below_the_ephemeral_range_and_can_be_bound() {
        let (a, b) = (free_port().unwrap(), free_port().unwrap());
        assert_ne!(
            a, b,
            "one process does not get the same port twice in a row"
        );
        if let Some(low) = ephemeral_low().filter(|l| *l > 11_000) {
            assert!((10_000..low).contains(&a) && (10_000..low).contains(&b));
        }
        TcpListener::bind(("127.0.0.1", a)).unwrap();
        let u = free_udp_port().unwrap();
        std::net::UdpSocket::bind(("127.0.0.1", u)).unwrap();
        // Where the range leaves no room, the kernel picks.
        let any = pick_port(|_| Err(std::io::ErrorKind::AddrInUse.into()));
        assert!(any.is_err(), "nothing bindable is an error, not a port");
    }
}
