//! The agent's MQTT 5 session with its local broker: export subscriptions
//! in, imports out. The core never sees MQTT packets: messages cross as
//! [`mqlink_proto::Message`].
//!
//! # Layout
//!
//! - this file: conversions between MQTT publishes and the core's
//!   messages, the export subscriptions, the session's settings;
//! - [`acks`]: packet-id bookkeeping both ways (pure, unit-tested);
//! - [`session`]: the task that owns the TCP connection (our own MQTT 5
//!   client over [`crate::mqtt::codec`]).
//!
//! # Why not rumqttc here
//!
//! DESIGN.md names rumqttc 0.25. The agent used it until the QoS 1
//! benchmark (`tests/tests/bench_qos1.rs`) showed the broker session as
//! the largest cost in the agent (35 % of its CPU at full load): rumqttc
//! writes and flushes every outgoing packet on its own (one `write`
//! syscall and one TCP segment per PUBACK and per import, each a wake-up
//! for the broker too), moves each event through its channel and our
//! `select!` by value, and leaves ack ordering and packet-id tracking of
//! imports to us anyway (we learnt import ids from its `Outgoing` events).
//! A session of our own writes everything that is due in one `write`,
//! hands the core one batch per read, and keeps packet ids itself. The
//! end-to-end tests' clients and the demo's still use rumqttc.
//!
//! # The boundary (DESIGN.md's "broker behind a trait of ours")
//!
//! The core never sees the broker or an MQTT crate: the session task and
//! the core talk over three channels of our own types ([`crate::core::Input`]
//! up: publishes with their custody tokens, acknowledgements, interest
//! changes; [`crate::core::ExportCmd`] and [`crate::core::ImportCmd`] down:
//! releases, export sets, deliveries). That message interface is the
//! seam a trait would give, without a trait object on the per-message
//! path: a test drives the core by sending `Input`s and reading the
//! commands (the simulator and the in-memory tests drive the sans-IO core
//! directly), and drives the session against a scripted MQTT server on
//! 127.0.0.1 (`session::tests`). Interest sources are sans-IO parsers
//! behind the same `Input`s ([`crate::mosquitto::LogFollower`],
//! [`crate::plugin_feed::PluginFeed`]), so another broker's source (EMQX
//! event topics, a REST poller) plugs in as one more parser.
//!
//! # What it does
//!
//! - Export: the agent subscribes to the filters the core asks for, with
//!   No Local (our own imports are not echoed back) and Retain As Published
//!   (the retain flag crosses the federation unchanged). Every message that
//!   arrives goes to the core, which drops anything carrying the
//!   `mqlink-origin` user property (an import coming back out; No Local
//!   alone is not enough once replicas use shared subscriptions).
//! - Replicas (`broker.shared: true`): export subscriptions are
//!   `$share/mqlink-<region>/<filter>`, so the broker hands each message to
//!   one live agent of the region and moves a dead agent's share to the
//!   others. No Local is not set (MQTT 5 forbids it on shared
//!   subscriptions, [MQTT-3.8.3-4]); the `mqlink-origin` check above is
//!   what stops imports from going out again. Brokers do not send stored
//!   retained messages to a shared subscription when it is made, so with
//!   replicas a retained message crosses when it is published, not when a
//!   remote region starts wanting it.
//! - Import: delivered envelopes are published with their topic, QoS,
//!   retain flag and properties, plus `mqlink-origin: <region>:<epoch>:<seq>`;
//!   message expiry is reduced by the time spent in transit, and a message
//!   that expired in transit is not published. One larger than the broker's
//!   Maximum Packet Size, or refused with a failure reason code, is
//!   dropped and counted `broker_refused`.
//! - On every (re)connect the export subscriptions are made again; a
//!   SUBACK that refuses one is logged and counted
//!   (`mqlink_broker_subscribe_failures_total`).
//!
//! Custody (QoS >= 1), on one persistent session (client id
//! `broker.client_id`: clean start off, session expiry `spool.max_age`,
//! or 0 with replicas, see `run.rs`):
//!
//! - Export: a message is acknowledged (PUBACK / PUBREC) only when the
//!   core releases it, in arrival order (MQTT 5 §4.6), so a crashed or
//!   restarted agent gets every unacknowledged message again, and a slow
//!   federation stops the acknowledgements: the broker holds the messages
//!   and, past [`EXPORT_INFLIGHT`] (our Receive Maximum), stops sending. A
//!   redelivery (DUP set, after a reconnect) of a message the core still
//!   holds is not handed to the core twice, and one whose acknowledgement
//!   was lost with the connection is acknowledged again.
//! - Import: each import's packet id is ours; its PUBACK (PUBCOMP for
//!   QoS 2) is reported to the core, which releases custody upstream only
//!   then. When the session resumes, imports in flight are sent again
//!   (DUP) and PUBRELs due are repeated; if the broker comes back without
//!   our session, whatever was in flight is handed back to the core and
//!   published again (a subscriber may then see a QoS 1 message twice).

use std::collections::BTreeSet;
use std::time::Duration;

use mqlink_config::BrokerConfig;
use mqlink_proto::{Envelope, Message, ORIGIN_PROPERTY, Properties, Qos};
use mqlink_topology::{RegionName, TopicCache, TopicFilter, TopicName};

use crate::mqtt::codec::{Connect, Publish, PublishOut, Subscription};

pub mod acks;
pub mod linger;
pub mod session;
pub mod stream;

pub use session::{Channels, run as run_session};

fn qos_in(q: u8) -> Qos {
    match q {
        0 => Qos::AtMostOnce,
        1 => Qos::AtLeastOnce,
        _ => Qos::ExactlyOnce,
    }
}

pub(crate) fn qos_out(q: Qos) -> u8 {
    match q {
        Qos::AtMostOnce => 0,
        Qos::AtLeastOnce => 1,
        Qos::ExactlyOnce => 2,
    }
}

/// Payloads up to this size are copied out of the read buffer; larger
/// ones stay slices of it.
const PAYLOAD_COPY_MAX: usize = 4096;

/// Convert a publish from the broker; `None` if the topic is not a valid
/// topic name (counted as a drop by the caller).
///
/// A small payload is copied out of the session's read buffer: as a
/// slice it kept the whole 64 KB block it was read into alive for as long
/// as the message waited anywhere (a window, a queue), and under a flat-out
/// QoS 0 load the few survivors of each block held agent A at 110-157 MB.
/// Copied, what waits costs what it is; the copy of 100 bytes is cheaper
/// than the allocation it replaces in the allocator's high-water mark.
pub fn message_of(p: Publish, topics: &mut TopicCache) -> Option<Message> {
    let topic = topics.name(&p.topic).ok()?;
    let props = p.props;
    let payload = if p.payload.len() <= PAYLOAD_COPY_MAX {
        bytes::Bytes::copy_from_slice(&p.payload)
    } else {
        p.payload
    };
    Some(Message {
        topic,
        payload,
        qos: qos_in(p.qos),
        retain: p.retain,
        properties: Properties {
            user: props.user,
            content_type: props.content_type,
            payload_utf8: props.payload_format.map(|v| v == 1),
            response_topic: props.response_topic.and_then(|t| TopicName::new(&t).ok()),
            correlation_data: props.correlation,
            message_expiry_secs: props.expiry,
        },
    })
}

/// Seconds `env` spent in transit, rounded up.
fn transit_secs(env: &Envelope) -> u32 {
    u32::try_from(env.transit_ms.div_ceil(1000)).unwrap_or(u32::MAX)
}

/// Whether `env`'s message expiry ran out in transit.
pub fn expired(env: &Envelope) -> bool {
    env.message
        .properties
        .message_expiry_secs
        .is_some_and(|e| e <= transit_secs(env))
}

/// The PUBLISH for an import (with `origin` as its `mqlink-origin`
/// property), or `None` if it expired in transit.
pub fn import_out<'a>(env: &'a Envelope, pkid: u16, origin: &'a str) -> Option<PublishOut<'a>> {
    if expired(env) {
        return None;
    }
    let m = &env.message;
    let p = &m.properties;
    Some(PublishOut {
        topic: m.topic.as_str(),
        qos: qos_out(m.qos),
        retain: m.retain,
        pkid,
        payload: &m.payload,
        payload_format: p.payload_utf8.map(u8::from),
        expiry: p.message_expiry_secs.map(|e| e - transit_secs(env)),
        content_type: p.content_type.as_deref(),
        response_topic: p.response_topic.as_ref().map(TopicName::as_str),
        correlation: p.correlation_data.as_deref(),
        user: &p.user,
        extra_user: Some((ORIGIN_PROPERTY, origin)),
    })
}

/// The subscription path for `f`: shared among replicas, or plain.
fn export_path(share: Option<&str>, f: &TopicFilter) -> String {
    match share {
        Some(group) => format!("$share/{group}/{f}"),
        None => f.to_string(),
    }
}

fn export_subscription(share: Option<&str>, f: &TopicFilter) -> Subscription {
    Subscription {
        filter: export_path(share, f),
        qos: 2,
        no_local: share.is_none(),
        retain_as_published: true,
    }
}

/// Most QoS >= 1 messages the broker may have in flight to the export
/// session (our MQTT Receive Maximum): what the agent holds unacknowledged
/// from its broker is bounded by it.
pub const EXPORT_INFLIGHT: u16 = 1000;

/// Most imports published and not yet acknowledged by the broker.
pub const IMPORT_INFLIGHT: usize = 1000;

/// Why the broker session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// TLS to the broker could not be set up (`mqtts://`).
    #[error("broker TLS: {0}")]
    Tls(#[from] stream::TlsSetupError),
    /// The password file could not be read.
    #[error("reading the broker password file {path}: {source}")]
    PasswordFile {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a password file is exposed (readable or writable by others than
/// its owner), if it is.
pub fn password_file_exposed(path: &std::path::Path) -> Option<&'static str> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    if mode & 0o044 != 0 {
        Some("is readable by other users")
    } else if mode & 0o022 != 0 {
        Some("is writable by other users")
    } else {
        None
    }
}

/// Where and how to connect: the broker's address and our CONNECT.
#[derive(Debug, Clone)]
pub struct Session {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// The CONNECT sent on every connection.
    pub connect: Connect,
    /// TLS (`mqtts://`).
    pub tls: Option<stream::BrokerTls>,
    /// How long reads from the broker may linger to gather a batch
    /// ([`linger`]); zero: none.
    pub linger: Duration,
}

/// The broker session: persistent for `session_expiry` (clean start off),
/// our Receive Maximum [`EXPORT_INFLIGHT`].
pub fn session(cfg: &BrokerConfig, session_expiry: Duration) -> Result<Session, BrokerError> {
    let host = cfg.url.host.to_string().trim_matches(['[', ']']).to_owned();
    let tls = if cfg.url.tls {
        let client = cfg
            .client_cert
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        Some(stream::BrokerTls::new(&host, cfg.ca.as_deref(), client)?)
    } else {
        None
    };
    if let Some(p) = &cfg.password_file
        && let Some(why) = password_file_exposed(p)
    {
        tracing::warn!(file = %p.display(), "broker password file {why}: chmod 600 it");
    }
    let password = match &cfg.password_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|source| BrokerError::PasswordFile {
                    path: p.clone(),
                    source,
                })?
                .trim_end()
                .to_owned(),
        ),
        None => cfg.username.as_ref().map(|_| String::new()),
    };
    Ok(Session {
        host,
        port: cfg.url.port,
        tls,
        connect: Connect {
            client_id: cfg.client_id.clone(),
            clean_start: false,
            keep_alive: 30,
            session_expiry: u32::try_from(session_expiry.as_secs()).unwrap_or(u32::MAX),
            receive_max: EXPORT_INFLIGHT,
            max_packet: u32::try_from(session::MAX_PACKET).unwrap_or(u32::MAX),
            username: cfg.username.clone(),
            password,
        },
        linger: cfg.batch_delay,
    })
}

/// The export subscriptions, shared between the command and event tasks.
#[derive(Debug, Clone, Default)]
pub struct ExportState {
    filters: std::sync::Arc<std::sync::Mutex<BTreeSet<TopicFilter>>>,
    /// Export filters the broker has granted on the current connection
    /// (SUBACK), for whoever waits until exports are really in place.
    granted: std::sync::Arc<std::sync::Mutex<BTreeSet<TopicFilter>>>,
    /// Shared-subscription group, when replicas split the exports.
    share: Option<String>,
}

impl ExportState {
    /// No subscriptions yet; with `shared`, they will be made in the group
    /// `mqlink-<region>`.
    pub fn new(region: &RegionName, shared: bool) -> Self {
        Self {
            filters: Default::default(),
            granted: Default::default(),
            share: shared.then(|| format!("mqlink-{region}")),
        }
    }

    /// The export filters the broker has granted on this connection.
    pub fn granted(&self) -> BTreeSet<TopicFilter> {
        self.granted.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The broker answered a (un)subscription of `paths` with `codes`
    /// (only export filters count: not the plugin's or the log's topics).
    pub(crate) fn answered(&self, subscribe: bool, paths: &[String], codes: &[u8]) {
        let wanted = self.current();
        let Ok(mut granted) = self.granted.lock() else {
            return;
        };
        for (path, code) in paths.iter().zip(codes) {
            // `$share/<group>/<filter>` or the filter itself.
            let filter = match path.strip_prefix("$share/") {
                Some(rest) => rest.split_once('/').map_or(rest, |(_, f)| f),
                None => path.as_str(),
            };
            let Ok(f) = TopicFilter::new(filter) else {
                continue;
            };
            if subscribe && *code < 0x80 && wanted.contains(&f) {
                granted.insert(f);
            } else if !subscribe {
                granted.remove(&f);
            }
        }
    }

    /// A new connection: nothing is granted until its SUBACKs.
    pub(crate) fn reconnected(&self) {
        if let Ok(mut g) = self.granted.lock() {
            g.clear();
        }
    }

    pub(crate) fn share(&self) -> Option<&str> {
        self.share.as_deref()
    }

    pub(crate) fn current(&self) -> BTreeSet<TopicFilter> {
        self.filters.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub(crate) fn replace(&self, new: BTreeSet<TopicFilter>) -> BTreeSet<TopicFilter> {
        match self.filters.lock() {
            Ok(mut s) => std::mem::replace(&mut *s, new),
            Err(_) => BTreeSet::new(),
        }
    }
}
