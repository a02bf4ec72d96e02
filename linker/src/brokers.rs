//! Local brokers for the demo and the end-to-end tests: an embedded MQTT 5
//! broker (the `mqtt5` crate, which honours No Local and Retain As
//! Published; zero install) or a real Mosquitto 2.x process started from a
//! generated config on a free port and stopped by its PID.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

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

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(port: u16, mut alive: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || !alive() {
            bail!("the broker on 127.0.0.1:{port} did not come up");
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
) -> anyhow::Result<std::process::ExitStatus> {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()?;
    if !status.success() {
        bail!("kill -TERM {} failed", child.id());
    }
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!(
                "process {} did not exit within {within:?} of SIGTERM",
                child.id()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Start `mosquitto -c conf` (log appended to `log`) and wait until it
/// listens on `port`.
fn spawn_mosquitto(conf: &Path, log: &Path, port: u16) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .context("starting mosquitto (install it with: apt-get install -y mosquitto)")?;
    if let Err(e) = wait_listening(port, || matches!(child.try_wait(), Ok(None))) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e.context(format!("see {}", log.display())));
    }
    Ok(child)
}

impl LocalBroker {
    /// Start an embedded broker (in-memory storage) on a free port.
    pub async fn embedded() -> anyhow::Result<Self> {
        use mqtt5::broker::config::{BrokerConfig, StorageBackend, StorageConfig};
        let port = free_port()?;
        let storage = StorageConfig {
            backend: StorageBackend::Memory,
            enable_persistence: false,
            ..StorageConfig::default()
        };
        let config = BrokerConfig::new()
            .with_bind_address(SocketAddr::from(([127, 0, 0, 1], port)))
            .with_storage(storage)
            .with_sys_topics_enabled(false);
        let mut broker = mqtt5::broker::MqttBroker::with_config(config)
            .await
            .context("starting the embedded broker")?;
        let shutdown = broker.shutdown_handle();
        let task = tokio::spawn(async move {
            let _ = broker.run().await;
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
    pub fn mosquitto(dir: &Path, name: &str) -> anyhow::Result<Self> {
        Self::mosquitto_with(dir, name, "")
    }

    /// [`Self::mosquitto`] with `extra` configuration lines (e.g. a bridge).
    pub fn mosquitto_with(dir: &Path, name: &str, extra: &str) -> anyhow::Result<Self> {
        Self::mosquitto_conf(dir, name, false, extra)
    }

    /// [`Self::mosquitto`] with persistence on (its database in `dir`), so
    /// that sessions and queued messages outlive [`Self::restart`].
    pub fn mosquitto_persistent(dir: &Path, name: &str) -> anyhow::Result<Self> {
        Self::mosquitto_conf(dir, name, true, "")
    }

    fn mosquitto_conf(
        dir: &Path,
        name: &str,
        persistence: bool,
        extra: &str,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let conf = dir.join(format!("{name}-mosquitto.conf"));
        let persistence = if persistence {
            let db = dir.join(format!("{name}-mosquitto-db"));
            std::fs::create_dir_all(&db)?;
            // Mosquitto started as root runs as the `mosquitto` user: let
            // it write its database here whoever it runs as.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o777))?;
            format!("persistence true\npersistence_location {}/\n", db.display())
        } else {
            "persistence false\n".to_owned()
        };
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}\
                 log_dest topic\nlog_type subscribe\nlog_type unsubscribe\nlog_type notice\n\
                 max_inflight_messages 1000\nmax_queued_messages 100000\n{extra}"
            ),
        )?;
        let log = dir.join(format!("{name}-mosquitto.log"));
        let child = spawn_mosquitto(&conf, &log, port)?;
        Ok(LocalBroker::Mosquitto {
            port,
            child,
            conf,
            log,
        })
    }

    /// Stop a Mosquitto broker as its service manager would (SIGTERM, by
    /// PID: it saves its persistent state), then start it again on the
    /// same port with the same config once `down` has passed.
    pub async fn restart(&mut self, down: Duration) -> anyhow::Result<()> {
        let LocalBroker::Mosquitto {
            port,
            child,
            conf,
            log,
        } = self
        else {
            bail!("only a Mosquitto broker can be restarted");
        };
        terminate(child, Duration::from_secs(10)).await?;
        tokio::time::sleep(down).await;
        let (conf, log, port) = (conf.clone(), log.clone(), *port);
        let fresh =
            tokio::task::spawn_blocking(move || spawn_mosquitto(&conf, &log, port)).await??;
        *child = fresh;
        Ok(())
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        match self {
            LocalBroker::Embedded { port, .. } | LocalBroker::Mosquitto { port, .. } => *port,
        }
    }

    /// Whether it follows `dynamic: mosquitto` (publishes its log on `$SYS`).
    pub fn has_subscription_log(&self) -> bool {
        matches!(self, LocalBroker::Mosquitto { .. })
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
