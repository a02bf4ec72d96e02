//! The load generator's MQTT 5 clients, on the agent's own packet codec
//! ([`crate::mqtt::codec`]) over plain TCP: a publisher writes many
//! PUBLISH packets per system call and keeps at most the broker's Receive
//! Maximum in flight at QoS 1 and 2; a subscriber decodes a whole read
//! buffer at a time, acknowledges in the same write, and counts into a
//! [`Tally`]. Lean on purpose: the generator must not be what limits a
//! run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tally::{Stamp, Tally, topic_of};
use crate::mqtt::codec::{self, AckKind, Connect, Incoming, PublishOut, Subscription};
use crate::timer::PreciseTimer;

/// Largest packet the bench accepts.
const MAX_PACKET: usize = 16 << 20;
/// Bytes a publisher encodes before it writes.
const WRITE_BATCH: usize = 64 << 10;

/// A paced publisher wakes at most this often (20,000 times a second: at
/// 38,000 msgs/s two messages per write, at 3,800 one).
const PACE_MIN: Duration = Duration::from_micros(50);

/// What can go wrong with a bench client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The broker sent something that is not MQTT 5.
    #[error("malformed packet from the broker: {0}")]
    Codec(#[from] codec::CodecError),
    /// The broker refused the connection or a subscription.
    #[error("{0}")]
    Refused(String),
    /// The broker closed the connection.
    #[error("the broker closed the connection ({0})")]
    Closed(&'static str),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ClientError {
    move |source| ClientError::Io { what, source }
}

/// The bench's clock: nanoseconds since it started (shared by publishers
/// and subscribers, which run in one process).
#[derive(Debug, Clone, Copy)]
pub struct Clock(pub Instant);

impl Clock {
    /// Nanoseconds since the anchor.
    pub fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// Live counters for the progress line.
#[derive(Debug, Default)]
pub struct Progress {
    /// Messages published.
    pub sent: AtomicU64,
    /// Messages received (all subscribers).
    pub received: AtomicU64,
    /// Subscribers that saw a warm-up message on every wanted topic.
    pub warm: AtomicU64,
}

/// One connection: the stream and its read buffer.
struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Conn {
    async fn open(addr: &str, id: &str) -> Result<(Self, u16), ClientError> {
        let stream = TcpStream::connect(addr).await.map_err(io("connect"))?;
        stream.set_nodelay(true).map_err(io("set TCP_NODELAY"))?;
        let mut c = Conn {
            stream,
            rbuf: BytesMut::with_capacity(256 << 10),
            wbuf: BytesMut::with_capacity(WRITE_BATCH + 4096),
        };
        codec::connect(
            &mut c.wbuf,
            &Connect {
                client_id: id.to_owned(),
                clean_start: true,
                keep_alive: 0,
                receive_max: u16::MAX,
                max_packet: MAX_PACKET as u32,
                ..Connect::default()
            },
        );
        c.flush().await?;
        match c.next().await? {
            Incoming::ConnAck(a) if a.reason == 0 => Ok((c, a.receive_max.unwrap_or(u16::MAX))),
            Incoming::ConnAck(a) => Err(ClientError::Refused(format!(
                "CONNECT refused with reason {:#x}{}",
                a.reason,
                a.reason_string
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default()
            ))),
            _ => Err(ClientError::Refused("no CONNACK".into())),
        }
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        self.stream
            .write_all(&self.wbuf)
            .await
            .map_err(io("write"))?;
        self.wbuf.clear();
        Ok(())
    }

    /// The next whole packet (reading as needed).
    async fn next(&mut self) -> Result<Incoming, ClientError> {
        loop {
            if let Some(p) = codec::decode(&mut self.rbuf, MAX_PACKET)? {
                return Ok(p);
            }
            if self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(io("read"))?
                == 0
            {
                return Err(ClientError::Closed("read"));
            }
        }
    }
}

/// What a publisher sends.
#[derive(Debug, Clone)]
pub struct PubPlan {
    /// Its id (in every payload).
    pub id: u32,
    /// Topic names, by index.
    pub topics: Arc<[String]>,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// Payload bytes (at least the stamp's header).
    pub payload: usize,
    /// Messages per second (`None`: as fast as the broker takes them).
    pub rate: Option<f64>,
    /// Most messages to send.
    pub messages: u64,
    /// Stop sending after this long.
    pub duration: Option<Duration>,
}

/// Free packet ids, one bit each.
struct Ids {
    used: Vec<u64>,
    next: u16,
}

impl Ids {
    fn new() -> Self {
        Self {
            used: vec![0; 1024],
            next: 1,
        }
    }
    fn take(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next;
            self.next = self.next.checked_add(1).unwrap_or(1);
            let (w, b) = (usize::from(id / 64), id % 64);
            if self.used[w] & (1 << b) == 0 {
                self.used[w] |= 1 << b;
                return Some(id);
            }
        }
        None
    }
    /// `true` if the id was in use.
    fn free(&mut self, id: u16) -> bool {
        let (w, b) = (usize::from(id / 64), id % 64);
        let was = self.used[w] & (1 << b) != 0;
        self.used[w] &= !(1 << b);
        was
    }
}

/// Publish per `plan` on `addr`; returns how many messages were sent
/// (and, at QoS >= 1, acknowledged).
pub async fn publish(
    addr: &str,
    client_id: &str,
    plan: PubPlan,
    clock: Clock,
    progress: Arc<Progress>,
) -> Result<u64, ClientError> {
    let (conn, window) = Conn::open(addr, client_id).await?;
    let Conn {
        stream,
        mut rbuf,
        mut wbuf,
    } = conn;
    let (mut rd, mut wr) = stream.into_split();
    let mut payload = vec![b'x'; plan.payload.max(super::tally::HEADER)];
    let topics = plan.topics.len() as u32;
    let start = Instant::now();
    let mut ids = Ids::new();
    let mut inflight: u32 = 0;
    let mut sent: u64 = 0;
    let mut reported: u64 = 0;
    let mut limit = plan.messages;
    let mut pace = PreciseTimer::new();
    loop {
        let now = Instant::now();
        if plan.duration.is_some_and(|d| now - start >= d) {
            limit = limit.min(sent);
        }
        let due = plan
            .rate
            .map_or(u64::MAX, |r| ((now - start).as_secs_f64() * r) as u64 + 1);
        // Encode what is due, within the window and one write's worth.
        while sent < limit.min(due)
            && wbuf.len() < WRITE_BATCH
            && (plan.qos == 0 || inflight < u32::from(window))
        {
            let pkid = if plan.qos > 0 {
                match ids.take() {
                    Some(id) => id,
                    None => break,
                }
            } else {
                0
            };
            let topic = topic_of(plan.id, sent, topics);
            Stamp {
                publisher: plan.id,
                topic,
                seq: sent,
                sent_ns: clock.now_ns(),
            }
            .write(&mut payload);
            PublishOut {
                topic: &plan.topics[topic as usize],
                qos: plan.qos,
                pkid,
                payload: &payload,
                ..PublishOut::default()
            }
            .encode(&mut wbuf);
            sent += 1;
            if plan.qos > 0 {
                inflight += 1;
            }
        }
        progress.sent.fetch_add(sent - reported, Ordering::Relaxed);
        reported = sent;
        if sent >= limit && inflight == 0 && wbuf.is_empty() {
            return Ok(sent);
        }
        let waiting_for_schedule = wbuf.is_empty() && sent < limit && sent >= due;
        if waiting_for_schedule && !pace.armed() {
            // Precisely, not at tokio's millisecond ticks (which sent a
            // rate as bursts of a millisecond's worth), but at most every
            // PACE_MIN: the load generator shares the CPU it measures.
            // Armed once per wait (a read in between, a PUBACK, leaves
            // it be: a timer that fires early only turns the loop).
            let next_due = plan.rate.map_or(start, |r| {
                start + Duration::from_secs_f64((sent as f64) / r)
            });
            pace.arm(next_due.saturating_duration_since(now).max(PACE_MIN));
        }
        let deadline = plan.duration.map(|d| start + d);
        tokio::select! {
            r = rd.read_buf(&mut rbuf) => {
                if r.map_err(io("read"))? == 0 {
                    return Err(ClientError::Closed("publisher read"));
                }
                while let Some(p) = codec::decode(&mut rbuf, MAX_PACKET)? {
                    match p {
                        Incoming::PubRec(id, reason) if reason < 0x80 => {
                            codec::ack(&mut wbuf, AckKind::PubRel, id);
                        }
                        // Done with: acknowledged, completed, or refused.
                        Incoming::PubAck(id, _) | Incoming::PubComp(id, _) | Incoming::PubRec(id, _)
                            if ids.free(id) =>
                        {
                            inflight -= 1;
                        }
                        Incoming::Disconnect(r) => {
                            return Err(ClientError::Refused(format!("DISCONNECT with reason {r:#x}")));
                        }
                        _ => {}
                    }
                }
            }
            w = wr.write(&wbuf), if !wbuf.is_empty() => {
                let n = w.map_err(io("write"))?;
                wbuf.advance(n);
            }
            () = pace.fired(), if waiting_for_schedule => {}
            () = tokio::time::sleep_until(deadline.unwrap_or(start).into()),
                if waiting_for_schedule && deadline.is_some() => {}
        }
    }
}

/// A subscriber: subscribes to `filters` and counts into a [`Tally`]
/// until `stop` is set (checked whenever a read returns or every 50 ms).
pub async fn subscribe(
    addr: String,
    client_id: String,
    (filters, qos): (Vec<String>, u8),
    mut tally: Tally,
    (clock, progress, stop): (Clock, Arc<Progress>, Arc<AtomicBool>),
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<Tally, ClientError> {
    let (mut c, _) = Conn::open(&addr, &client_id).await?;
    for (i, chunk) in filters.chunks(100).enumerate() {
        let subs: Vec<Subscription> = chunk
            .iter()
            .map(|f| Subscription {
                filter: f.clone(),
                qos,
                no_local: false,
                retain_as_published: false,
            })
            .collect();
        codec::subscribe(&mut c.wbuf, (i + 1) as u16, &subs);
    }
    c.flush().await?;
    let mut acked = 0;
    while acked < filters.chunks(100).count() {
        match c.next().await? {
            Incoming::SubAck(_, codes) => {
                if let Some(bad) = codes.iter().find(|r| **r >= 0x80) {
                    return Err(ClientError::Refused(format!(
                        "SUBSCRIBE refused with reason {bad:#x}"
                    )));
                }
                acked += 1;
            }
            Incoming::Publish(p) => {
                tally.handle(clock.now_ns(), &p.payload);
            }
            _ => {}
        }
    }
    let _ = ready.send(());
    let wanted_warm = filters.len() as u64;
    let mut warm_done = false;
    while !stop.load(Ordering::Relaxed) {
        let read =
            tokio::time::timeout(Duration::from_millis(50), c.stream.read_buf(&mut c.rbuf)).await;
        let Ok(read) = read else { continue };
        if read.map_err(io("read"))? == 0 {
            return Err(ClientError::Closed("subscriber read"));
        }
        let now = clock.now_ns();
        let before = tally.received;
        while let Some(p) = codec::decode(&mut c.rbuf, MAX_PACKET)? {
            match p {
                Incoming::Publish(p) => {
                    if tally.handle(now, &p.payload)
                        && !warm_done
                        && tally.warm_topics() >= wanted_warm
                    {
                        warm_done = true;
                        progress.warm.fetch_add(1, Ordering::Relaxed);
                    }
                    match p.qos {
                        1 => codec::ack(&mut c.wbuf, AckKind::PubAck, p.pkid),
                        2 => codec::ack(&mut c.wbuf, AckKind::PubRec, p.pkid),
                        _ => {}
                    }
                }
                Incoming::PubRel(id, _) => codec::ack(&mut c.wbuf, AckKind::PubComp, id),
                Incoming::Disconnect(r) => {
                    return Err(ClientError::Refused(format!(
                        "DISCONNECT with reason {r:#x}"
                    )));
                }
                _ => {}
            }
        }
        progress
            .received
            .fetch_add(tally.received - before, Ordering::Relaxed);
        if !c.wbuf.is_empty() {
            c.flush().await?;
        }
    }
    codec::disconnect(&mut c.wbuf);
    let _ = c.flush().await;
    Ok(tally)
}

/// Publish one warm-up message to each topic in `topics` on `addr`, at
/// QoS 0 from a short-lived client.
pub async fn warm(addr: &str, client_id: &str, topics: &[String]) -> Result<(), ClientError> {
    let (mut c, _) = Conn::open(addr, client_id).await?;
    let mut payload = vec![b'w'; super::tally::HEADER];
    for (i, t) in topics.iter().enumerate() {
        Stamp {
            publisher: super::tally::WARM_PUBLISHER,
            topic: i as u32,
            seq: 0,
            sent_ns: 0,
        }
        .write(&mut payload);
        PublishOut {
            topic: t,
            payload: &payload,
            ..PublishOut::default()
        }
        .encode(&mut c.wbuf);
    }
    codec::disconnect(&mut c.wbuf);
    c.flush().await
}
