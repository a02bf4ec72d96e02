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

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use mqlink_config::BrokerConfig;
use mqlink_proto::{Envelope, Message, ORIGIN_PROPERTY, Properties, Qos};
use mqlink_topology::{RegionName, TopicFilter, TopicName};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties, RetainForwardRule};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::core::{BrokerCmd, Input};
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

/// Connect to the local broker; returns the client and its event loop.
pub fn connect(cfg: &BrokerConfig) -> anyhow::Result<(AsyncClient, EventLoop)> {
    if cfg.url.tls {
        anyhow::bail!(
            "mqtts:// brokers are not supported yet; use mqtt:// on a local or private network"
        );
    }
    let mut opts = MqttOptions::new(
        cfg.client_id.clone(),
        cfg.url.host.to_string().trim_matches(['[', ']']),
        cfg.url.port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_start(true);
    opts.set_max_packet_size(Some(256 * 1024 * 1024));
    if let Some(user) = &cfg.username {
        let password = match &cfg.password_file {
            Some(p) => std::fs::read_to_string(p)?.trim_end().to_owned(),
            None => String::new(),
        };
        opts.set_credentials(user.clone(), password);
    }
    Ok(AsyncClient::new(opts, 4096))
}

/// Drive the MQTT event loop: hand export messages to the core; resubscribe
/// after each connect; with `follower`, turn the broker's log lines into
/// interest changes. Runs until the core goes away.
pub async fn run_events(
    mut events: EventLoop,
    client: AsyncClient,
    export: ExportState,
    mut follower: Option<LogFollower>,
    core: mpsc::Sender<Input>,
) {
    loop {
        match events.poll().await {
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
            Ok(Event::Incoming(Packet::Publish(p))) => match message_of(&p) {
                Some(m) => {
                    if core.send(Input::Publish(m)).await.is_err() {
                        return;
                    }
                }
                None => {
                    metrics::counter!("mqlink_drops_total", "reason" => "bad_topic_from_broker")
                        .increment(1)
                }
            },
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                debug!("connected to the local broker");
                if follower.is_some() {
                    let logs = LOG_TOPICS.iter().map(|t| Filter::new(*t, QoS::AtMostOnce));
                    let _ = client.subscribe_many(logs).await;
                }
                let filters = export.current();
                if !filters.is_empty() {
                    let share = export.share();
                    let _ = client
                        .subscribe_many(filters.iter().map(|f| export_filter(share, f)))
                        .await;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if core.is_closed() {
                    return;
                }
                warn!(error = %e, "local broker connection failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
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

/// Carry out the core's commands on the broker.
pub async fn run_commands(
    client: AsyncClient,
    export: ExportState,
    mut cmds: mpsc::Receiver<BrokerCmd>,
) {
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            BrokerCmd::Deliver(env) => {
                let Some(props) = import_properties(&env) else {
                    metrics::counter!("mqlink_drops_total", "reason" => "expired_in_transit")
                        .increment(1);
                    continue;
                };
                let m = &env.message;
                let payload: Bytes = m.payload.clone();
                if let Err(e) = client
                    .publish_with_properties(
                        m.topic.to_string(),
                        qos_out(m.qos),
                        m.retain,
                        payload,
                        props,
                    )
                    .await
                {
                    warn!(error = %e, "publishing an import failed");
                }
            }
            BrokerCmd::SetExport(new) => {
                let old = export.replace(new.clone());
                let share = export.share();
                let added: Vec<Filter> = new
                    .difference(&old)
                    .map(|f| export_filter(share, f))
                    .collect();
                if !added.is_empty() {
                    let _ = client.subscribe_many(added).await;
                }
                for gone in old.difference(&new) {
                    let _ = client.unsubscribe(export_path(share, gone)).await;
                }
            }
        }
    }
}
