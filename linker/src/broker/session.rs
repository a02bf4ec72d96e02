//! The broker session's task: one TCP connection to the local broker,
//! reconnected with the same persistent session, carrying export
//! messages in and imports out (see the module docs of [`super`] for the
//! custody rules).
//!
//! Everything that happens between two wake-ups is written in one go: the
//! acknowledgements the core released, the imports it handed over, the
//! PUBRELs due. That is the point of this task over a general-purpose
//! client, which writes and flushes each packet on its own (one syscall
//! and one TCP segment per acknowledgement, and one read on the broker's
//! side for each).
//!
//! Bounds: the broker sends at most our Receive Maximum of unacknowledged
//! QoS >= 1 messages; notifications for the core wait in one queue, and
//! while it holds [`NOTIFY_MAX`] the socket is not read (backpressure on
//! the broker, also for QoS 0); imports are taken from the core only while
//! fewer than [`IMPORT_INFLIGHT`](super::IMPORT_INFLIGHT) (and the broker's
//! Receive Maximum) are in flight and the write buffer is below
//! [`OUT_MAX`].

use std::time::Duration;

use bytes::BytesMut;
use mqlink_proto::{DropReason, Envelope};
use mqlink_topology::TopicCache;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::acks::{AckQueue, Arrival, Inflight, Outcome};
use super::linger::{Gathered, ReadLinger};
use super::stream::{BrokerStream, Connected};
use super::{ExportState, Session, import_out, message_of};
use crate::core::{ExportCmd, ImportCmd, Input};
use crate::mosquitto::{Change, LOG_TOPICS, LogFollower, dropping_client};
use crate::mqtt::codec::{self, AckKind, CodecError, Incoming, Publish, Subscription};
use crate::plugin_feed::{EXPIRED_TOPIC, PLUGIN_TOPIC, PluginFeed, SYNC_TOPIC, expired_client};

/// Most notifications waiting for the core before the socket is no
/// longer read.
pub const NOTIFY_MAX: usize = 4096;

/// Most bytes waiting to be written before no more imports are taken.
pub const OUT_MAX: usize = 1 << 20;

/// Wait between connection attempts.
const RETRY: Duration = Duration::from_secs(1);

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed packet from the broker: {0}")]
    Codec(#[from] CodecError),
    #[error("the broker closed the connection")]
    Closed,
    #[error("the broker refused the connection (reason {reason:#x}{})", text.as_deref().map(|t| format!(": {t}")).unwrap_or_default())]
    Refused { reason: u8, text: Option<String> },
    #[error("the broker sent DISCONNECT (reason {0:#x})")]
    Disconnected(u8),
    #[error("the broker answered CONNECT with something other than CONNACK")]
    NoConnAck,
    #[error("no answer from the broker within the keep-alive")]
    Timeout,
    #[error("the core is gone")]
    CoreGone,
}

/// The channels between the session and the core.
pub struct Channels {
    /// From the core: releases, export changes, drain.
    pub export: mpsc::UnboundedReceiver<ExportCmd>,
    /// From the core: imports to publish.
    pub import: mpsc::Receiver<ImportCmd>,
    /// To the core.
    pub core: mpsc::Sender<Input>,
}

/// State that outlives a connection.
struct State {
    acks: AckQueue,
    inflight: Inflight<std::sync::Arc<Envelope>>,
    /// Scratch for the `mqlink-origin` value of each import.
    origin: String,
    /// Notifications for the core, sent as one batch.
    notify: Vec<Input>,
    export: ExportState,
    follower: Option<LogFollower>,
    /// Whether interest comes from the mqlink interest protocol
    /// (`dynamic: mosquitto` or `plugin`).
    dynamic: bool,
    /// The interest plugin's share.
    plugin: PluginFeed,
    draining: bool,
    /// The topics of exported messages, checked once each.
    topics: TopicCache,
    /// Messages handed to the core and not handled yet.
    queue: std::sync::Arc<crate::core::CoreQueue>,
}

/// Most topic names the session keeps checked (see [`TopicCache`]).
const TOPICS_CACHED: usize = 4096;

/// Drive the broker session until the core goes away.
pub async fn run(
    session: Session,
    mut ch: Channels,
    export: ExportState,
    follower: Option<LogFollower>,
    plugin: bool,
) {
    let mut st = State {
        dynamic: plugin || follower.is_some(),
        acks: AckQueue::default(),
        inflight: Inflight::default(),
        origin: String::new(),
        notify: Vec::new(),
        export,
        follower,
        plugin: PluginFeed::default(),
        draining: false,
        topics: TopicCache::new(TOPICS_CACHED),
        queue: std::sync::Arc::default(),
    };
    // 1 while the session with the local broker is up.
    let up = metrics::gauge!("mqlink_broker_connected");
    up.set(0.0);
    loop {
        let err = match connect(&session).await {
            Ok((stream, connack, rest)) => {
                debug!(
                    session_present = connack.session_present,
                    "connected to the local broker"
                );
                up.set(1.0);
                let err = connected(&session, &mut st, &mut ch, stream, connack, rest).await;
                up.set(0.0);
                err
            }
            Err(e) => e,
        };
        if matches!(err, ConnError::CoreGone) || ch.core.is_closed() {
            return;
        }
        warn!(error = %err, "local broker connection failed; retrying in 1 s");
        // While down: keep the core's releases (their acks are due on the
        // next connection's redeliveries) and pass notifications on.
        let until = Instant::now() + RETRY;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => break,
                cmd = ch.export.recv() => match cmd {
                    Some(cmd) => export_cmd(&mut st, None, cmd),
                    None => return,
                },
                permit = ch.core.reserve(), if !st.notify.is_empty() => match permit {
                    Ok(p) => p.send(exports(&mut st)),
                    Err(_) => return,
                },
            }
        }
    }
}

/// TCP connect, CONNECT, CONNACK; also what arrived after the CONNACK in
/// the same read (the broker may send queued messages right behind it).
async fn connect(s: &Session) -> Result<(Connected, codec::ConnAck, BytesMut), ConnError> {
    let mut conn = super::stream::connect(&s.host, s.port, s.tls.as_ref()).await?;
    let stream = &mut conn.stream;
    let mut buf = BytesMut::new();
    codec::connect(&mut buf, &s.connect);
    stream.write_all(&buf).await?;
    buf.clear();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = codec::decode(&mut buf, MAX_PACKET)? {
            return match p {
                Incoming::ConnAck(a) if a.reason < 0x80 => Ok((conn, a, buf)),
                Incoming::ConnAck(a) => Err(ConnError::Refused {
                    reason: a.reason,
                    text: a.reason_string,
                }),
                Incoming::Disconnect(r) => Err(ConnError::Disconnected(r)),
                _ => Err(ConnError::NoConnAck),
            };
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => return Err(ConnError::Timeout),
            Ok(Ok(0)) => return Err(ConnError::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// Largest packet taken from the broker (what we announce in CONNECT).
pub const MAX_PACKET: usize = 256 * 1024 * 1024;

/// One connection's life.
struct Conn {
    out: BytesMut,
    /// Most imports in flight on this connection.
    import_max: usize,
    /// Largest packet the broker takes.
    broker_max: usize,
    /// Highest QoS the broker accepts (CONNACK Maximum QoS): imports are
    /// published at most at it (MQTT 5 §3.2.2.3.4).
    max_qos: u8,
    last_write: Instant,
    ping_since: Option<Instant>,
    /// Bytes written that TLS may still hold (flushed when nothing else
    /// is to be written).
    unflushed: bool,
    /// Whether the connection is TLS (a plain socket holds nothing back:
    /// no flush, no extra turn of the loop after each write).
    tls: bool,
}

async fn connected(
    s: &Session,
    st: &mut State,
    ch: &mut Channels,
    conn: Connected,
    connack: codec::ConnAck,
    mut rbuf: BytesMut,
) -> ConnError {
    let sock = conn.sock;
    let tls = matches!(conn.stream, BrokerStream::Tls(_));
    let (mut rd, mut wr) = tokio::io::split(conn.stream);
    // Subscriptions in flight died with the last connection; they are
    // all made again below.
    st.inflight.forget_requests();
    let mut c = Conn {
        out: BytesMut::with_capacity(64 * 1024),
        import_max: super::IMPORT_INFLIGHT
            .min(usize::from(connack.receive_max.unwrap_or(u16::MAX))),
        broker_max: connack.max_packet.map_or(MAX_PACKET, |m| m as usize),
        max_qos: connack.max_qos.unwrap_or(2),
        last_write: Instant::now(),
        ping_since: None,
        unflushed: false,
        tls,
    };
    if connack.session_present {
        // Whatever the broker has not acknowledged goes again, in order.
        for (pkid, env) in st.inflight.resend() {
            match env {
                Some(env) => {
                    let start = c.out.len();
                    let qos = super::qos_out(env.message.qos).min(c.max_qos);
                    if encode_import(env, pkid, qos, c.broker_max, &mut st.origin, &mut c.out) {
                        codec::set_dup(&mut c.out[start..]);
                    }
                }
                None => codec::ack(&mut c.out, AckKind::PubRel, pkid),
            }
        }
    } else {
        // The broker forgot us: imports in flight are published anew,
        // and the ids of messages we hold from it are void.
        for custody in st.inflight.lost() {
            st.notify.push(Input::DeliveryLost(custody));
        }
        st.acks.session_lost();
    }
    subscribe_all(st, &mut c);
    let keep_alive = Duration::from_secs(u64::from(
        connack
            .server_keep_alive
            .unwrap_or(s.connect.keep_alive)
            .max(1),
    ));
    if let Err(e) = incoming(st, &mut c, &mut rbuf) {
        return e;
    }
    let mut linger = ReadLinger::new(s.linger);
    loop {
        let import_room = c.inflight_room(st) && c.out.len() < OUT_MAX;
        // A full core queue stops reading, except while the broker owes
        // us an answer: an import's acknowledgement (the core may be
        // waiting for import room, which only those free: waiting for
        // the core then would deadlock), a SUBACK, a PINGRESP.
        let core_full = st.queue.full();
        let owed = !st.inflight.is_empty() || c.ping_since.is_some();
        let read_room = st.notify.len() < NOTIFY_MAX && (!core_full || owed);
        let tick = c.last_write.max(c.ping_since.unwrap_or(c.last_write)) + keep_alive;
        tokio::select! {
            biased;
            w = write_or_flush(&mut wr, &c.out), if !c.out.is_empty() || c.unflushed => match w {
                Ok(Some(0)) => return ConnError::Closed,
                Ok(Some(n)) => {
                    let _ = c.out.split_to(n);
                    c.last_write = Instant::now();
                    c.unflushed = c.tls;
                }
                Ok(None) => c.unflushed = false,
                Err(e) => return e.into(),
            },
            r = read(&mut rd, &sock, &mut rbuf), if read_room => match r {
                Ok(()) => {
                    if let Err(e) = took(st, &mut c, &mut rbuf, (&mut linger, &sock)) {
                        return e;
                    }
                }
                Err(e) => return e,
            },
            permit = ch.core.reserve(), if !st.notify.is_empty() => match permit {
                Ok(p) => p.send(exports(st)),
                Err(_) => return ConnError::CoreGone,
            },
            cmd = ch.export.recv() => match cmd {
                Some(cmd) => {
                    export_cmd(st, Some(&mut c), cmd);
                    while let Ok(cmd) = ch.export.try_recv() {
                        export_cmd(st, Some(&mut c), cmd);
                    }
                }
                None => return ConnError::CoreGone,
            },
            cmd = ch.import.recv(), if import_room => match cmd {
                Some(cmd) => {
                    import(st, &mut c, cmd);
                    while c.inflight_room(st) && c.out.len() < OUT_MAX {
                        let Ok(cmd) = ch.import.try_recv() else { break };
                        import(st, &mut c, cmd);
                    }
                }
                None => return ConnError::CoreGone,
            },
            () = st.queue.room(), if core_full && !owed => {}
            () = linger.expired(), if linger.lingering() => {
                // TLS bytes go through the stream; with the core full,
                // nothing is read: the mark goes down, reads resume later.
                let take = if c.tls || !read_room {
                    linger.expire(&sock);
                    Ok(Gathered::Nothing)
                } else {
                    linger.take(&sock, &mut rbuf)
                };
                match take {
                    Ok(Gathered::Bytes(_)) => {
                        let _ = sock.set_tcp_quickack(true);
                        if let Err(e) = took(st, &mut c, &mut rbuf, (&mut linger, &sock)) {
                            return e;
                        }
                    }
                    Ok(Gathered::Nothing) => {}
                    Ok(Gathered::Closed) => return ConnError::Closed,
                    Err(e) => return e.into(),
                }
            }
            () = tokio::time::sleep_until(tick) => {
                if c.ping_since.is_some() {
                    return ConnError::Timeout;
                }
                codec::pingreq(&mut c.out);
                c.ping_since = Some(Instant::now());
            },
        }
    }
}

impl Conn {
    fn inflight_room(&self, st: &State) -> bool {
        st.inflight.len() < self.import_max && st.notify.len() < NOTIFY_MAX
    }
}

/// Write from `out`, or when it is empty flush what TLS still holds (the
/// socket did not take it; a plain socket has nothing to flush). Both are
/// cancel-safe: what a write took is reported, a flush takes nothing.
async fn write_or_flush(
    wr: &mut tokio::io::WriteHalf<BrokerStream>,
    out: &[u8],
) -> std::io::Result<Option<usize>> {
    if out.is_empty() {
        wr.flush().await.map(|()| None)
    } else {
        wr.write(out).await.map(Some)
    }
}

/// Read what the broker sent and acknowledge it at once (`TCP_QUICKACK`).
/// Mosquitto leaves Nagle's algorithm on for its clients unless
/// `set_tcp_nodelay true`: it then holds back a small segment until the
/// previous one is acknowledged, and Linux delays the acknowledgement of a
/// connection that only receives (exports at QoS 0 are just that).
/// Together they held messages for 15-17 ms until a full 64 KB segment had
/// gathered (`strace` of the agent: 16 ms between reads, the second one
/// exactly 65,483 bytes); p99 latency at 38,000 msgs/s was 18 ms. The flag
/// lasts until the kernel's own heuristics change it, hence once per read
/// (one cheap setsockopt).
async fn read(
    rd: &mut ReadHalf<BrokerStream>,
    sock: &socket2::Socket,
    buf: &mut BytesMut,
) -> Result<(), ConnError> {
    buf.reserve(64 * 1024);
    match rd.read_buf(buf).await {
        Ok(0) => Err(ConnError::Closed),
        Ok(_) => {
            let _ = sock.set_tcp_quickack(true);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// What a read brought: its packets handled, and the linger told how
/// many (whether the read came through the stream or straight from the
/// socket when a linger ran out).
fn took(
    st: &mut State,
    c: &mut Conn,
    buf: &mut BytesMut,
    (linger, sock): (&mut ReadLinger, &socket2::Socket),
) -> Result<(), ConnError> {
    let packets = incoming(st, c, buf)?;
    linger.read(sock, packets);
    Ok(())
}

/// Every whole packet in `buf`; how many there were.
fn incoming(st: &mut State, c: &mut Conn, buf: &mut BytesMut) -> Result<usize, ConnError> {
    let mut packets = 0;
    while let Some(p) = codec::decode(buf, MAX_PACKET)? {
        packets += 1;
        let is_suback = matches!(p, Incoming::SubAck(..));
        c.ping_since = None;
        match p {
            Incoming::Publish(p) => publish(st, c, p),
            Incoming::PubAck(id, r) | Incoming::PubComp(id, r) => {
                let o = st.inflight.done(id, r);
                outcome(st, o, id);
            }
            Incoming::PubRec(id, r) => match st.inflight.received(id, r) {
                Outcome::Release => codec::ack(&mut c.out, AckKind::PubRel, id),
                Outcome::Unknown => {
                    // Not ours (any more): end the exchange on its side.
                    codec::ack(&mut c.out, AckKind::PubRel, id);
                }
                o => outcome(st, o, id),
            },
            Incoming::PubRel(id, _) => {
                st.acks.released_by_broker(id);
                codec::ack(&mut c.out, AckKind::PubComp, id);
            }
            Incoming::SubAck(id, codes) | Incoming::UnsubAck(id, codes) => {
                let subscribe = is_suback;
                let filters = st.inflight.answered(id);
                st.export.answered(subscribe, &filters, &codes);
                for (i, code) in codes.iter().enumerate() {
                    if *code >= 0x80 {
                        let f = filters.get(i).map_or("?", String::as_str);
                        warn!(
                            filter = f,
                            reason = format!("{code:#x}"),
                            "the local broker refused a (un)subscription"
                        );
                        metrics::counter!("mqlink_broker_subscribe_failures_total").increment(1);
                    }
                }
            }
            Incoming::PingResp | Incoming::ConnAck(_) => {}
            Incoming::Disconnect(r) => return Err(ConnError::Disconnected(r)),
        }
    }
    Ok(packets)
}

fn outcome(st: &mut State, o: Outcome, pkid: u16) {
    match o {
        Outcome::Delivered(c) => st.notify.push(Input::Delivered(c)),
        Outcome::Refused(c, reason) => {
            warn!(
                pkid,
                reason = format!("{reason:#x}"),
                "the local broker refused an import"
            );
            st.notify
                .push(Input::Dropped(DropReason::BrokerRefused, Some(c)));
        }
        Outcome::Release | Outcome::Unknown => {}
    }
}

fn notify_changes(st: &mut State, changes: Vec<Change>) {
    st.notify
        .extend(changes.into_iter().map(|change| match change {
            Change::Subscribe(f) => Input::Subscribe(f),
            Change::Unsubscribe(f) => Input::Unsubscribe(f),
        }));
}

/// What the session gathered for the core, counted as queued for it.
fn exports(st: &mut State) -> Input {
    let inputs = std::mem::take(&mut st.notify);
    let guard = st.queue.guard(inputs.len());
    Input::Exports(inputs, guard)
}

/// A QoS 0 message of ours to the broker (the plugin's requests).
fn publish0(c: &mut Conn, topic: &str, payload: &[u8]) {
    codec::PublishOut {
        topic,
        payload,
        ..Default::default()
    }
    .encode(&mut c.out);
}

/// A message from the interest plugin: its changes to the core; a
/// snapshot asked for again when one is needed. The first snapshot makes
/// the plugin the source: what the log follower contributed is withdrawn
/// (after the plugin's own changes, so no filter drops out meanwhile).
fn plugin_message(st: &mut State, c: &mut Conn, payload: &[u8]) {
    let feed = st.plugin.handle(payload);
    if feed.invalid > 0 {
        warn!(
            filters = feed.invalid,
            "the interest plugin reported filters that are not valid topic filters; skipped"
        );
        metrics::counter!("mqlink_interest_invalid_filters_total").increment(feed.invalid as u64);
    }
    notify_changes(st, feed.changes);
    if feed.activated {
        info!("dynamic interest: the mqlink_interest plugin is the source");
        if let Some(f) = st.follower.as_mut() {
            let withdrawn = f.withdraw_all();
            notify_changes(st, withdrawn);
        }
    }
    if feed.resync {
        publish0(c, SYNC_TOPIC, b"");
    }
}

fn publish(st: &mut State, c: &mut Conn, p: Publish) {
    // Byte comparisons: the topic is checked as text once, in `message_of`.
    let topic = p.topic.as_bytes();
    if topic == PLUGIN_TOPIC.as_bytes() {
        if st.dynamic {
            plugin_message(st, c, &p.payload);
        }
        return;
    }
    if topic.starts_with(b"$SYS/broker/log/") {
        let Ok(line) = std::str::from_utf8(&p.payload) else {
            return;
        };
        if let Some(f) = st.follower.as_ref()
            && dropping_client(line) == Some(f.own_client())
        {
            // Lost before we could take it: counted here, since nobody
            // else will (the broker's own counter is global).
            metrics::counter!("mqlink_broker_dropping_total").increment(1);
            warn!(
                client = f.own_client(),
                "the broker is dropping messages queued for this agent (its \
                 max_queued_messages / max_queued_bytes): publishers outrun the federation"
            );
        }
        if st.plugin.active() {
            // The plugin holds the table; the log only says when an
            // offline session expired, which the plugin cannot see.
            if let Some(client) = expired_client(line) {
                publish0(c, EXPIRED_TOPIC, client.as_bytes());
            }
            return;
        }
        if let Some(f) = st.follower.as_mut() {
            let changes = f.handle_line(&p.topic, line);
            notify_changes(st, changes);
        }
        return;
    }
    if st.draining {
        // Not taken: a QoS >= 1 message stays the broker's
        // (unacknowledged, redelivered to our next session).
        if p.qos == 0 {
            st.notify
                .push(Input::Dropped(DropReason::ShuttingDown, None));
        }
        return;
    }
    let token = if p.qos == 0 {
        None
    } else {
        match st.acks.arrive(p.pkid, p.qos, p.dup) {
            Arrival::New(t) => Some(t),
            Arrival::Held => return,
            Arrival::AckAgain => {
                send_ack(&mut c.out, p.pkid, p.qos);
                return;
            }
        }
    };
    match message_of(p, &mut st.topics) {
        Some(m) => st.notify.push(Input::Publish(m, token)),
        None => {
            st.notify.push(Input::Dropped(DropReason::BadTopic, None));
            if let Some(t) = token {
                // In order: it waits for its turn like any other.
                st.acks.release(t);
                ready_acks(st, Some(c));
            }
        }
    }
}

fn send_ack(out: &mut BytesMut, pkid: u16, qos: u8) {
    let kind = if qos == 2 {
        AckKind::PubRec
    } else {
        AckKind::PubAck
    };
    codec::ack(out, kind, pkid);
}

/// Write the acknowledgements that are due (or, with no connection,
/// record them as made: the broker redelivers those messages with DUP
/// and they are acknowledged then).
fn ready_acks(st: &mut State, c: Option<&mut Conn>) {
    match c {
        Some(c) => st.acks.ready(&mut |id, q| send_ack(&mut c.out, id, q)),
        None => st.acks.ready(&mut |_, _| {}),
    }
}

fn export_cmd(st: &mut State, c: Option<&mut Conn>, cmd: ExportCmd) {
    match cmd {
        ExportCmd::Release(tokens) => {
            for t in tokens {
                st.acks.release(t);
            }
            ready_acks(st, c);
        }
        ExportCmd::SetExport(new) => {
            let old = st.export.replace(new.clone());
            let Some(c) = c else { return };
            let share = st.export.share().map(str::to_owned);
            let share = share.as_deref();
            let added: Vec<Subscription> = new
                .difference(&old)
                .map(|f| super::export_subscription(share, f))
                .collect();
            subscribe(st, c, added);
            let gone: Vec<String> = old
                .difference(&new)
                .map(|f| super::export_path(share, f))
                .collect();
            if !gone.is_empty()
                && let Some(id) = st.inflight.pkid()
            {
                codec::unsubscribe(&mut c.out, id, &gone);
                st.inflight.request(id, gone);
            }
        }
        ExportCmd::Drain => st.draining = true,
    }
}

fn subscribe(st: &mut State, c: &mut Conn, subs: Vec<Subscription>) {
    // Many filters go in several packets, none near the broker's limit.
    for chunk in subs.chunks(256) {
        let Some(id) = st.inflight.pkid() else {
            warn!("no packet id free for a subscription");
            return;
        };
        codec::subscribe(&mut c.out, id, chunk);
        st.inflight
            .request(id, chunk.iter().map(|s| s.filter.clone()).collect());
    }
}

/// After a connect: the log topics (dynamic interest) and every export
/// subscription.
fn subscribe_all(st: &mut State, c: &mut Conn) {
    st.export.reconnected();
    let mut subs: Vec<Subscription> = Vec::new();
    let dynamic = st.dynamic;
    if dynamic {
        // The plugin topic first: the embedded broker knows the agent by it.
        let log: &[&str] = if st.follower.is_some() {
            &LOG_TOPICS
        } else {
            &[]
        };
        subs.extend([PLUGIN_TOPIC].iter().chain(log).map(|t| Subscription {
            filter: (*t).to_owned(),
            qos: 0,
            no_local: false,
            retain_as_published: false,
        }));
    }
    let share = st.export.share().map(str::to_owned);
    let share = share.as_deref();
    subs.extend(
        st.export
            .current()
            .iter()
            .map(|f| super::export_subscription(share, f)),
    );
    subscribe(st, c, subs);
    if dynamic {
        // After the SUBSCRIBE on the same connection: the answer finds
        // the subscription in place. Asked at every connection, since the
        // plugin may have restarted with the broker.
        publish0(c, SYNC_TOPIC, b"");
    }
}

fn import(st: &mut State, c: &mut Conn, cmd: ImportCmd) {
    let ImportCmd::Deliver { env, custody } = cmd;
    let qos = super::qos_out(env.message.qos).min(c.max_qos);
    let tracked = qos > 0;
    let pkid = if tracked { st.inflight.pkid() } else { Some(0) };
    let Some(pkid) = pkid else {
        // 65,535 ids in use cannot happen below IMPORT_INFLIGHT; publish
        // it again later rather than lose it.
        if let Some(c) = custody {
            st.notify.push(Input::DeliveryLost(c));
        }
        return;
    };
    if !encode_import(&env, pkid, qos, c.broker_max, &mut st.origin, &mut c.out) {
        return drop_import(st, &env, custody);
    }
    match (tracked, custody) {
        (true, Some(cu)) => st.inflight.sent(pkid, cu, env),
        (false, Some(cu)) => st.notify.push(Input::Delivered(cu)),
        (_, None) => {}
    }
}

/// Why an import is not published: expired in transit, or too large for
/// the broker.
fn drop_import(st: &mut State, env: &Envelope, custody: Option<u64>) {
    let reason = if super::expired(env) {
        DropReason::ExpiredInTransit
    } else {
        warn!(topic = %env.message.topic, bytes = env.message.payload.len(), "an import exceeds the local broker's maximum packet size");
        DropReason::BrokerRefused
    };
    st.notify.push(Input::Dropped(reason, custody));
}

/// Append the PUBLISH for `env` to `out` (with `origin` as scratch for
/// its `mqlink-origin` value); false, and nothing appended, if it expired
/// in transit or exceeds `max` bytes.
fn encode_import(
    env: &Envelope,
    pkid: u16,
    qos: u8,
    max: usize,
    origin: &mut String,
    out: &mut BytesMut,
) -> bool {
    use std::fmt::Write as _;
    origin.clear();
    let _ = write!(origin, "{}:{}:{}", env.origin, env.epoch, env.seq);
    let Some(mut p) = import_out(env, pkid, origin) else {
        return false;
    };
    p.qos = qos;
    if p.encoded_len() > max {
        return false;
    }
    p.encode(out);
    true
}

#[cfg(test)]
mod tests {
    //! The session against a scripted broker on 127.0.0.1: acks in
    //! order, imports resent with DUP when the session resumes, a lost
    //! acknowledgement made good, a lost session handing imports back.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use bytes::{Buf, Bytes};
    use mqlink_proto::{Message, Properties, Qos};
    use mqlink_topology::{NodeName, RegionName, TopicName};
    use tokio::net::TcpListener;
    use tokio::net::TcpStream;

    const WAIT: Duration = Duration::from_secs(10);

    /// A packet from the client: (type, flags, body).
    async fn packet(s: &mut TcpStream, buf: &mut BytesMut) -> (u8, u8, Bytes) {
        loop {
            if buf.len() >= 2 {
                let (mut len, mut i) = (0usize, 1);
                while let Some(&b) = buf.get(i) {
                    len |= usize::from(b & 0x7F) << (7 * (i - 1));
                    i += 1;
                    if b & 0x80 == 0 {
                        break;
                    }
                }
                if buf.len() >= i + len && buf[i - 1] & 0x80 == 0 {
                    let first = buf[0];
                    buf.advance(i);
                    return (first >> 4, first & 0xF, buf.split_to(len).freeze());
                }
            }
            let n = tokio::time::timeout(WAIT, s.read_buf(buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "client closed");
        }
    }

    /// Accept the session's connection; answer CONNECT.
    async fn accept(l: &TcpListener, session_present: bool) -> (TcpStream, BytesMut) {
        let (mut s, _) = tokio::time::timeout(WAIT, l.accept())
            .await
            .unwrap()
            .unwrap();
        let mut buf = BytesMut::new();
        let (kind, _, body) = packet(&mut s, &mut buf).await;
        assert_eq!(kind, 1, "CONNECT first");
        assert_eq!(body[7] & 0x02, 0, "clean start off: a persistent session");
        // CONNACK: receive maximum 10, maximum QoS 1.
        s.write_all(&[
            0x20,
            8,
            u8::from(session_present),
            0,
            5,
            0x21,
            0,
            10,
            0x24,
            1,
        ])
        .await
        .unwrap();
        (s, buf)
    }

    async fn publish(s: &mut TcpStream, topic: &str, pkid: u16, dup: bool) {
        let mut b = BytesMut::new();
        codec::PublishOut {
            topic,
            qos: 1,
            pkid,
            payload: b"x",
            ..Default::default()
        }
        .encode(&mut b);
        if dup {
            codec::set_dup(&mut b);
        }
        s.write_all(&b).await.unwrap();
    }

    /// Inputs to the core, gathered until `done` holds for all of them.
    async fn inputs_until(
        rx: &mut mpsc::Receiver<Input>,
        done: impl Fn(&[Input]) -> bool,
    ) -> Vec<Input> {
        let mut seen = Vec::new();
        while !done(&seen) {
            match tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap()
            {
                Input::Batch(v) | Input::Exports(v, _) => seen.extend(v),
                other => seen.push(other),
            }
        }
        seen
    }

    fn is_publish(i: &Input) -> bool {
        matches!(i, Input::Publish(..))
    }

    fn env(seq: u64) -> std::sync::Arc<Envelope> {
        std::sync::Arc::new(Envelope {
            origin: RegionName::new("eu").unwrap(),
            origin_node: NodeName::new("eu-1").unwrap(),
            epoch: 1,
            seq,
            hops: 1,
            visited: Default::default(),
            transit_ms: 0,
            dests: Default::default(),
            message: Message {
                topic: TopicName::new("imp/1").unwrap(),
                payload: Bytes::from_static(b"i"),
                qos: Qos::ExactlyOnce,
                retain: false,
                properties: Properties::default(),
            },
        })
    }

    #[tokio::test]
    async fn a_session_keeps_order_resends_and_recovers_across_reconnects() {
        session_scenario(Duration::ZERO).await;
    }

    /// The same with reads lingering: what stays below the low-water
    /// mark is still read once the delay is out, in order.
    #[tokio::test]
    async fn a_lingering_session_reads_what_stays_below_the_mark() {
        session_scenario(Duration::from_millis(20)).await;
    }

    async fn session_scenario(linger: Duration) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let session = Session {
            host: "127.0.0.1".into(),
            port,
            tls: None,
            connect: codec::Connect {
                client_id: "t".into(),
                keep_alive: 30,
                session_expiry: 60,
                receive_max: 100,
                max_packet: 1 << 20,
                ..Default::default()
            },
            linger,
        };
        let (export_tx, export_rx) = mpsc::unbounded_channel();
        let (import_tx, import_rx) = mpsc::channel(16);
        let (core_tx, mut core_rx) = mpsc::channel(64);
        let region = RegionName::new("eu").unwrap();
        tokio::spawn(run(
            session,
            Channels {
                export: export_rx,
                import: import_rx,
                core: core_tx,
            },
            ExportState::new(&region, false),
            None,
            false,
        ));

        // 1. Two messages released out of order are acknowledged in order.
        let (mut s, mut buf) = accept(&l, false).await;
        publish(&mut s, "a/1", 1, false).await;
        publish(&mut s, "a/2", 2, false).await;
        let seen = inputs_until(&mut core_rx, |v| {
            v.iter().filter(|i| is_publish(i)).count() >= 2
        })
        .await;
        let tokens: Vec<(String, u64)> = seen
            .into_iter()
            .filter_map(|i| match i {
                Input::Publish(m, Some(t)) => Some((m.topic.to_string(), t)),
                _ => None,
            })
            .collect();
        assert_eq!(tokens[0].0, "a/1");
        export_tx
            .send(ExportCmd::Release(vec![tokens[1].1]))
            .unwrap();
        export_tx
            .send(ExportCmd::Release(vec![tokens[0].1]))
            .unwrap();
        let acks: Vec<(u8, Bytes)> = [
            packet(&mut s, &mut buf).await,
            packet(&mut s, &mut buf).await,
        ]
        .into_iter()
        .map(|(k, _, b)| (k, b))
        .collect();
        assert_eq!(
            acks,
            vec![
                (4, Bytes::from_static(&[0, 1])),
                (4, Bytes::from_static(&[0, 2]))
            ]
        );

        // 2. An import at QoS 2 goes out at the broker's maximum, QoS 1.
        import_tx
            .send(ImportCmd::Deliver {
                env: env(1),
                custody: Some(7),
            })
            .await
            .unwrap();
        let (kind, flags, first) = packet(&mut s, &mut buf).await;
        assert_eq!((kind, flags), (3, 0x02), "PUBLISH, QoS 1, no DUP");
        // A message whose acknowledgement will be lost with the connection.
        publish(&mut s, "a/3", 3, false).await;
        let t3 = inputs_until(&mut core_rx, |v| v.iter().any(is_publish))
            .await
            .into_iter()
            .find_map(|i| match i {
                Input::Publish(_, t) => t,
                _ => None,
            })
            .unwrap();
        drop(s);
        export_tx.send(ExportCmd::Release(vec![t3])).unwrap();

        // 3. The session resumes: the import comes again with DUP; the
        // broker's redelivery of a/3 is acknowledged, not taken again.
        let (mut s, mut buf) = accept(&l, true).await;
        let (kind, flags, again) = packet(&mut s, &mut buf).await;
        assert_eq!((kind, flags), (3, 0x0A), "PUBLISH, QoS 1, DUP");
        assert_eq!(again, first);
        let topic_len = usize::from(u16::from_be_bytes([again[0], again[1]]));
        let pkid = u16::from_be_bytes([again[2 + topic_len], again[3 + topic_len]]);
        publish(&mut s, "a/3", 3, true).await;
        let (kind, _, body) = packet(&mut s, &mut buf).await;
        assert_eq!(
            (kind, &body[..]),
            (4, &[0u8, 3][..]),
            "a/3 acknowledged again"
        );
        s.write_all(&[0x40, 2, (pkid >> 8) as u8, pkid as u8])
            .await
            .unwrap();
        publish(&mut s, "a/4", 4, false).await;
        let seen = inputs_until(&mut core_rx, |v| {
            v.iter().any(is_publish) && v.iter().any(|i| matches!(i, Input::Delivered(7)))
        })
        .await;
        let topics: Vec<String> = seen
            .iter()
            .filter_map(|i| match i {
                Input::Publish(m, _) => Some(m.topic.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(
            topics,
            vec!["a/4"],
            "the redelivered a/3 never reached the core"
        );

        // 4. The broker loses the session: an import in flight is handed back.
        import_tx
            .send(ImportCmd::Deliver {
                env: env(2),
                custody: Some(8),
            })
            .await
            .unwrap();
        let (kind, _, _) = packet(&mut s, &mut buf).await;
        assert_eq!(kind, 3);
        drop(s);
        let (_s, _buf) = accept(&l, false).await;
        inputs_until(&mut core_rx, |v| {
            v.iter().any(|i| matches!(i, Input::DeliveryLost(8)))
        })
        .await;
    }
}
