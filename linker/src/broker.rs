//! The MQTT 5 client to the local broker (rumqttc): export subscriptions in,
//! imports out. The core never sees rumqttc types: messages cross as
//! [`mqlink_proto::Message`].
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
//!   that expired in transit is not published.
//! - On every (re)connect the export subscriptions are made again.
//!
//! Custody (QoS >= 1), on one persistent session (client id
//! `broker.client_id`: clean start off, session expiry `spool.max_age`,
//! or 0 with replicas, see `run.rs`; manual acks). One session, so No Local
//! keeps our own imports from coming back:
//!
//! - Export: a message is acknowledged (PUBACK / PUBREC) only when the
//!   core releases it, in arrival order (MQTT requires it; rumqttc leaves
//!   it to us), so a crashed or restarted agent gets every unacknowledged
//!   message again, and a slow federation stops the acknowledgements: the
//!   broker holds the messages and, past [`EXPORT_INFLIGHT`] (our Receive
//!   Maximum), stops sending. A redelivery of a message the core still
//!   holds (same packet id, DUP set, after a reconnect) is not handed to
//!   the core twice.
//! - Import: each publish's packet id is learnt from rumqttc's
//!   `Outgoing::Publish` event (requests are processed in order; a
//!   retransmission keeps its id) and its PUBACK (PUBCOMP for QoS 2) is
//!   reported to the core, which releases custody upstream only then. If
//!   the broker comes back without our session, whatever was in flight is
//!   published again (a subscriber may then see a QoS 1 message twice).

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use mqlink_config::BrokerConfig;
use mqlink_proto::{DropReason, Envelope, Message, ORIGIN_PROPERTY, Properties, Qos};
use mqlink_topology::{RegionName, TopicFilter, TopicName};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties, RetainForwardRule};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::core::{ExportCmd, ImportCmd, Input};
use crate::mosquitto::{Change, LOG_TOPICS, LogFollower};

fn qos_in(q: QoS) -> Qos {
    match q {
        QoS::AtMostOnce => Qos::AtMostOnce,
        QoS::AtLeastOnce => Qos::AtLeastOnce,
        QoS::ExactlyOnce => Qos::ExactlyOnce,
    }
}

fn qos_out(q: Qos) -> QoS {
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
        Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// Convert a publish from the broker; `None` if the topic is not valid UTF-8
/// or not a valid topic name (counted as a drop by the caller).
pub fn message_of(p: &Publish) -> Option<Message> {
    let topic = std::str::from_utf8(&p.topic)
        .ok()
        .and_then(|t| TopicName::new(t).ok())?;
    let props = p.properties.clone().unwrap_or_default();
    Some(Message {
        topic,
        payload: p.payload.clone(),
        qos: qos_in(p.qos),
        retain: p.retain,
        properties: Properties {
            user: props.user_properties,
            content_type: props.content_type,
            payload_utf8: props.payload_format_indicator.map(|v| v == 1),
            response_topic: props.response_topic.and_then(|t| TopicName::new(&t).ok()),
            correlation_data: props.correlation_data,
            message_expiry_secs: props.message_expiry_interval,
        },
    })
}

/// The publish properties for an import, or `None` if it expired in transit.
fn import_properties(env: &Envelope) -> Option<PublishProperties> {
    let p = &env.message.properties;
    let transit_secs = u32::try_from(env.transit_ms.div_ceil(1000)).unwrap_or(u32::MAX);
    let message_expiry_interval = match p.message_expiry_secs {
        Some(e) if e <= transit_secs => return None,
        Some(e) => Some(e - transit_secs),
        None => None,
    };
    let mut user_properties = p.user.clone();
    user_properties.push((
        ORIGIN_PROPERTY.to_owned(),
        format!("{}:{}:{}", env.origin, env.epoch, env.seq),
    ));
    Some(PublishProperties {
        payload_format_indicator: p.payload_utf8.map(u8::from),
        message_expiry_interval,
        topic_alias: None,
        response_topic: p.response_topic.as_ref().map(|t| t.to_string()),
        correlation_data: p.correlation_data.clone(),
        user_properties,
        subscription_identifiers: Vec::new(),
        content_type: p.content_type.clone(),
    })
}

/// The subscription path for `f`: shared among replicas, or plain.
fn export_path(share: Option<&str>, f: &TopicFilter) -> String {
    match share {
        Some(group) => format!("$share/{group}/{f}"),
        None => f.to_string(),
    }
}

fn export_filter(share: Option<&str>, f: &TopicFilter) -> Filter {
    Filter {
        path: export_path(share, f),
        qos: QoS::ExactlyOnce,
        nolocal: share.is_none(),
        preserve_retain: true,
        retain_forward_rule: RetainForwardRule::OnEverySubscribe,
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
    /// `mqtts://` is not implemented yet.
    #[error("mqtts:// brokers are not supported yet; use mqtt:// on a local or private network")]
    TlsUnsupported,
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

fn options(cfg: &BrokerConfig, client_id: String) -> Result<MqttOptions, BrokerError> {
    if cfg.url.tls {
        return Err(BrokerError::TlsUnsupported);
    }
    let mut opts = MqttOptions::new(
        client_id,
        cfg.url.host.to_string().trim_matches(['[', ']']),
        cfg.url.port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(Some(256 * 1024 * 1024));
    if let Some(user) = &cfg.username {
        let password = match &cfg.password_file {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|source| BrokerError::PasswordFile {
                    path: p.clone(),
                    source,
                })?
                .trim_end()
                .to_owned(),
            None => String::new(),
        };
        opts.set_credentials(user.clone(), password);
    }
    Ok(opts)
}

/// The broker session: persistent for `session_expiry`, manual acks.
pub fn connect(
    cfg: &BrokerConfig,
    session_expiry: Duration,
) -> Result<(AsyncClient, EventLoop), BrokerError> {
    let mut opts = options(cfg, cfg.client_id.clone())?;
    opts.set_clean_start(false);
    opts.set_manual_acks(true);
    opts.set_receive_maximum(Some(EXPORT_INFLIGHT));
    opts.set_session_expiry_interval(Some(
        u32::try_from(session_expiry.as_secs()).unwrap_or(u32::MAX),
    ));
    Ok(AsyncClient::new(
        opts,
        4 * EXPORT_INFLIGHT as usize + IMPORT_INFLIGHT,
    ))
}

/// Broker messages handed to the core and not yet acknowledged, in
/// arrival order: acknowledged from the front as the core releases them.
#[derive(Debug, Default)]
pub struct AckQueue {
    /// (token, the publish to acknowledge, released yet).
    queue: std::collections::VecDeque<(u64, Publish, bool)>,
    /// Next token.
    next: u64,
}

impl AckQueue {
    /// Number a new message; returns its token.
    pub fn push(&mut self, p: Publish) -> u64 {
        self.next += 1;
        self.queue.push_back((self.next, p, false));
        self.next
    }

    /// The token of an outstanding message the broker sent again with the
    /// same packet id (after a reconnect); its stored copy is replaced so
    /// the acknowledgement goes out on the current connection.
    pub fn redelivery(&mut self, p: &Publish) -> Option<u64> {
        if !p.dup {
            return None;
        }
        let e = self
            .queue
            .iter_mut()
            .find(|(_, q, _)| q.pkid == p.pkid && q.topic == p.topic)?;
        e.1 = p.clone();
        Some(e.0)
    }

    /// The core released `token`. Tokens are consecutive from the front,
    /// so this is an index, not a search.
    pub fn release(&mut self, token: u64) {
        let Some(front) = self.queue.front().map(|(t, _, _)| *t) else {
            return;
        };
        if let Some(i) = token.checked_sub(front)
            && let Some(e) = self.queue.get_mut(i as usize)
            && e.0 == token
        {
            e.2 = true;
        }
    }

    /// The publishes that may be acknowledged now, in order.
    pub fn ready(&mut self) -> Vec<Publish> {
        let mut out = Vec::new();
        while self.queue.front().is_some_and(|(_, _, done)| *done) {
            if let Some((_, p, _)) = self.queue.pop_front() {
                out.push(p);
            }
        }
        out
    }

    /// Outstanding messages.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is outstanding.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Custody numbers of imports between rumqttc and the broker.
#[derive(Debug, Default)]
struct Imports {
    /// QoS >= 1 publishes handed to rumqttc, in order, until it assigns
    /// their packet ids (`Outgoing::Publish`).
    queued: std::collections::VecDeque<u64>,
    /// Packet id -> custody number, until the broker acknowledges.
    inflight: std::collections::HashMap<u16, u64>,
    /// Notifications for the core, waiting for room in its channel.
    notify: std::collections::VecDeque<Input>,
}

impl Imports {
    fn room(&self) -> bool {
        self.queued.len() + self.inflight.len() < IMPORT_INFLIGHT
            && self.notify.len() < IMPORT_INFLIGHT
    }

    /// The broker acknowledged packet `pkid` (PUBACK, or PUBCOMP for QoS 2).
    fn acked(&mut self, pkid: u16) {
        if let Some(c) = self.inflight.remove(&pkid) {
            self.notify.push_back(Input::Delivered(c));
        }
    }

    /// A new session forgot everything in flight: publish it again.
    fn lost(&mut self) {
        let lost: Vec<u64> = self
            .queued
            .drain(..)
            .chain(self.inflight.drain().map(|(_, c)| c))
            .collect();
        self.notify
            .extend(lost.into_iter().map(Input::DeliveryLost));
    }
}

/// Drive the broker session: hand export messages to the core (QoS >= 1
/// with a token) and acknowledge them as the core releases them; follow
/// the core's export set; publish imports and report the broker's
/// acknowledgements; resubscribe after each connect; with `follower`,
/// turn the broker's log lines into interest changes. Never blocks on the
/// core while holding imports back: notifications wait in a queue bounded
/// by the in-flight limit. Runs until the core goes away.
pub async fn run_session(
    mut events: EventLoop,
    client: AsyncClient,
    mut export_cmds: mpsc::UnboundedReceiver<ExportCmd>,
    mut import_cmds: mpsc::Receiver<ImportCmd>,
    export: ExportState,
    mut follower: Option<LogFollower>,
    core: mpsc::Sender<Input>,
) {
    let mut acks = AckQueue::default();
    // Acknowledgements due, in order, that rumqttc's request channel has
    // not taken yet. While any wait, no more releases are taken from the
    // core (they wait in its channel) and the event loop gets to drain the
    // requests: retrying every pending ack on every wake-up turned a full
    // channel into a CPU-bound stall.
    let mut unsent: std::collections::VecDeque<Publish> = Default::default();
    let mut imports = Imports::default();
    let mut connected = false;
    let mut draining = false;
    loop {
        // Acknowledgements the request channel could not take last time,
        // in order: stop at the first it still refuses.
        while let Some(p) = unsent.front() {
            if client.try_ack(p).is_err() {
                break;
            }
            unsent.pop_front();
        }
        let room = connected && imports.room();
        tokio::select! {
            permit = core.reserve(), if !imports.notify.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(n) = imports.notify.pop_front() {
                        permit.send(n);
                    }
                }
                Err(_) => return,
            },
            cmd = import_cmds.recv(), if room => match cmd {
                Some(ImportCmd::Deliver { env, custody }) => {
                    let outcome = publish_import(&client, &env);
                    let tracked = env.message.qos != Qos::AtMostOnce;
                    match (outcome, custody) {
                        (Publish_::Sent, Some(c)) if tracked => imports.queued.push_back(c),
                        (Publish_::Sent, Some(c)) => imports.notify.push_back(Input::Delivered(c)),
                        (Publish_::Sent, None) => {}
                        (Publish_::Expired, c) => imports
                            .notify
                            .push_back(Input::Dropped(DropReason::ExpiredInTransit, c)),
                        (Publish_::Failed, Some(c)) => imports.notify.push_back(Input::DeliveryLost(c)),
                        (Publish_::Failed, None) => imports
                            .notify
                            .push_back(Input::Dropped(DropReason::BrokerUnavailable, None)),
                    }
                }
                None => return,
            },
            cmd = export_cmds.recv(), if unsent.is_empty() => match cmd {
                Some(ExportCmd::Release(token)) => {
                    acks.release(token);
                    for p in acks.ready() {
                        if !unsent.is_empty() || client.try_ack(&p).is_err() {
                            unsent.push_back(p);
                        }
                    }
                }
                Some(ExportCmd::SetExport(new)) => set_export(&client, &export, new),
                Some(ExportCmd::Drain) => draining = true,
                None => return,
            },
            ev = events.poll() => match ev {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.starts_with(b"$SYS/broker/log/") => {
                    let Some(follower) = follower.as_mut() else {
                        continue;
                    };
                    let (Ok(topic), Ok(line)) = (
                        std::str::from_utf8(&p.topic),
                        std::str::from_utf8(&p.payload),
                    ) else {
                        continue;
                    };
                    for change in follower.handle_line(topic, line) {
                        let input = match change {
                            Change::Subscribe(f) => Input::Subscribe(f),
                            Change::Unsubscribe(f) => Input::Unsubscribe(f),
                        };
                        if core.send(input).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) if draining => {
                    // Not taken: a QoS >= 1 message stays the broker's
                    // (unacknowledged, redelivered to our next session).
                    if p.qos == QoS::AtMostOnce
                        && core.send(Input::Dropped(DropReason::ShuttingDown, None)).await.is_err()
                    {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if p.qos != QoS::AtMostOnce && acks.redelivery(&p).is_some() {
                        continue; // the core has it already
                    }
                    let Some(m) = message_of(&p) else {
                        if core.send(Input::Dropped(DropReason::BadTopic, None)).await.is_err() {
                            return;
                        }
                        if p.qos != QoS::AtMostOnce {
                            // In order: it waits for its turn like any other.
                            let token = acks.push(p);
                            acks.release(token);
                            unsent.extend(acks.ready());
                        }
                        continue;
                    };
                    let token = (p.qos != QoS::AtMostOnce).then(|| acks.push(p));
                    if core.send(Input::Publish(m, token)).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                    // A retransmission keeps its packet id (already mapped);
                    // a first transmission takes the next queued import.
                    if !imports.inflight.contains_key(&pkid)
                        && let Some(c) = imports.queued.pop_front()
                    {
                        imports.inflight.insert(pkid, c);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => imports.acked(ack.pkid),
                Ok(Event::Incoming(Packet::PubComp(comp))) => imports.acked(comp.pkid),
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    debug!(session_present = connack.session_present, "connected to the local broker");
                    connected = true;
                    if !connack.session_present {
                        // rumqttc dropped what it had pending: publish again.
                        imports.lost();
                    }
                    if follower.is_some() {
                        let logs = LOG_TOPICS.iter().map(|t| Filter::new(*t, QoS::AtMostOnce));
                        let _ = client.try_subscribe_many(logs);
                    }
                    let filters = export.current();
                    if !filters.is_empty() {
                        let share = export.share();
                        if let Err(e) = client
                            .try_subscribe_many(filters.iter().map(|f| export_filter(share, f)))
                        {
                            warn!(error = %e, "export subscriptions not sent");
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if core.is_closed() {
                        return;
                    }
                    connected = false;
                    warn!(error = %e, "local broker connection failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }
}

/// How handing an import to rumqttc went.
enum Publish_ {
    /// Queued for the broker.
    Sent,
    /// Expired in transit: not published.
    Expired,
    /// The request channel refused it.
    Failed,
}

fn publish_import(client: &AsyncClient, env: &Envelope) -> Publish_ {
    let Some(props) = import_properties(env) else {
        return Publish_::Expired;
    };
    let m = &env.message;
    let payload: Bytes = m.payload.clone();
    match client.try_publish_with_properties(
        m.topic.to_string(),
        qos_out(m.qos),
        m.retain,
        payload,
        props,
    ) {
        Ok(()) => Publish_::Sent,
        Err(e) => {
            warn!(error = %e, "publishing an import failed");
            Publish_::Failed
        }
    }
}

/// The export subscriptions, shared between the command and event tasks.
#[derive(Debug, Clone, Default)]
pub struct ExportState {
    filters: std::sync::Arc<std::sync::Mutex<BTreeSet<TopicFilter>>>,
    /// Shared-subscription group, when replicas split the exports.
    share: Option<String>,
}

impl ExportState {
    /// No subscriptions yet; with `shared`, they will be made in the group
    /// `mqlink-<region>`.
    pub fn new(region: &RegionName, shared: bool) -> Self {
        Self {
            filters: Default::default(),
            share: shared.then(|| format!("mqlink-{region}")),
        }
    }

    fn share(&self) -> Option<&str> {
        self.share.as_deref()
    }

    fn current(&self) -> BTreeSet<TopicFilter> {
        self.filters.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn replace(&self, new: BTreeSet<TopicFilter>) -> BTreeSet<TopicFilter> {
        match self.filters.lock() {
            Ok(mut s) => std::mem::replace(&mut *s, new),
            Err(_) => BTreeSet::new(),
        }
    }
}

/// Subscribe to what is new in `new`, unsubscribe from what left.
fn set_export(client: &AsyncClient, export: &ExportState, new: BTreeSet<TopicFilter>) {
    let old = export.replace(new.clone());
    let share = export.share();
    let added: Vec<Filter> = new
        .difference(&old)
        .map(|f| export_filter(share, f))
        .collect();
    if !added.is_empty()
        && let Err(e) = client.try_subscribe_many(added)
    {
        warn!(error = %e, "export subscription not sent");
    }
    for gone in old.difference(&new) {
        if let Err(e) = client.try_unsubscribe(export_path(share, gone)) {
            warn!(error = %e, "export unsubscription not sent");
        }
    }
}
