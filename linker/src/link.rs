//! QUIC links to neighbours (quinn): accepting, dialling with backoff, and
//! the per-connection stream tasks.
//!
//! - One connection per neighbouring agent. The region whose name sorts
//!   first dials; the other accepts (so two agents never race to open two
//!   connections). Each configured endpoint of a neighbour is one of its
//!   agents (replicas): the dialler keeps a connection to every endpoint,
//!   so every replica on either side can reach the other region. A DNS
//!   name that resolves to several addresses is one agent reachable at
//!   any of them (tried in order).
//! - A bidirectional control stream (opened by the dialler) carries every
//!   frame but data.
//! - Data batches go on [`DATA_SHARDS`] long-lived unidirectional streams,
//!   chosen by a hash of the topic, so one topic's messages stay in order
//!   while a stalled topic does not block the others (one writer task per
//!   stream, so QUIC flow control on one does not hold up the rest). A
//!   message whose payload exceeds [`LARGE_PAYLOAD`](mqlink_proto::frame::LARGE_PAYLOAD) travels in a batch
//!   of its own on its topic's stream: it keeps its place in the topic's
//!   order (on a stream of its own it overtook, and was overtaken by, the
//!   small messages around it), at the price of delaying the other topics
//!   of that shard while it crosses.
//! - Batches use the lean encoding of `mqlink_proto::frame` (names once
//!   per batch, topics aliased per stream): the data writer keeps one
//!   alias table per stream and each stream's reader rebuilds it, both for
//!   the stream's life.
//! - Bytes that do not decode as a frame close the connection with the
//!   decode error as reason (and a metric, counted by the core).
//! - Peer endpoints are resolved with hickory-resolver ([`crate::dns`])
//!   at every dial attempt, every address tried in turn, and again when
//!   the answer's TTL runs out while the connection is up: a connection
//!   whose address is no longer among the answers is closed and dialled
//!   anew (the name moved).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use mqlink_config::Endpoint;
use mqlink_proto::{Frame, PeerId, TopicAliases, decode_with, encode, encode_with, shard_of};
use mqlink_topology::RegionName;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::core::{Input, PeerOut};
use crate::dns::{Dns, Resolved};
use crate::tls::peer_regions;

pub use mqlink_proto::DATA_SHARDS;

/// The configured links, shared by the tasks that read them (accepting,
/// the admin API) and replaced by a reload.
#[derive(Debug, Clone, Default)]
pub struct Neighbours(std::sync::Arc<std::sync::RwLock<Vec<mqlink_config::LinkConfig>>>);

impl Neighbours {
    /// Shared links, starting with `links`.
    pub fn new(links: Vec<mqlink_config::LinkConfig>) -> Self {
        Self(std::sync::Arc::new(std::sync::RwLock::new(links)))
    }

    /// Replace the links (a reload).
    pub fn set(&self, links: Vec<mqlink_config::LinkConfig>) {
        if let Ok(mut l) = self.0.write() {
            *l = links;
        }
    }

    /// The neighbouring regions.
    pub fn regions(&self) -> Vec<RegionName> {
        self.0
            .read()
            .map(|l| l.iter().map(|l| l.region.clone()).collect())
            .unwrap_or_default()
    }

    /// The endpoints configured for `region`.
    pub fn endpoints(&self, region: &RegionName) -> Vec<String> {
        self.0
            .read()
            .ok()
            .and_then(|l| {
                l.iter()
                    .find(|l| l.region == *region)
                    .map(|l| l.endpoints.iter().map(ToString::to_string).collect())
            })
            .unwrap_or_default()
    }
}

static CONN_IDS: AtomicU64 = AtomicU64::new(1);

/// First wait between dial attempts.
pub const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between dial attempts.
pub const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// `d` less up to a quarter of it, so agents that lost the same peer do not
/// retry in lockstep. Not security-relevant: the clock's nanoseconds are
/// random enough.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let quarter = d / 4;
    d - quarter.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

/// Whether `me` dials `peer` (the first name in sort order dials).
pub fn dials(me: &RegionName, peer: &RegionName) -> bool {
    me < peer
}

/// Accept connections until the endpoint closes. Peers must present a
/// certificate from our CA (checked by TLS) naming one of `neighbours`
/// (as configured now: a reload changes them).
pub async fn accept(endpoint: quinn::Endpoint, neighbours: Neighbours, core: mpsc::Sender<Input>) {
    while let Some(incoming) = endpoint.accept().await {
        let (neighbours, core) = (neighbours.regions(), core.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    warn!(%remote, error = %e, "refused a link: TLS handshake failed");
                    metrics::counter!("mqlink_handshake_failures_total").increment(1);
                    return;
                }
            };
            let regions = match peer_regions(&conn) {
                Ok(r) => r,
                Err(e) => {
                    warn!(%remote, reason = %e, "refused a link");
                    conn.close(2u32.into(), e.as_bytes());
                    return;
                }
            };
            let Some(region) = regions.into_iter().find(|r| neighbours.contains(r)) else {
                let reason = "certificate names no configured neighbour region";
                warn!(%remote, reason, "refused a link");
                metrics::counter!("mqlink_handshake_failures_total").increment(1);
                conn.close(2u32.into(), reason.as_bytes());
                return;
            };
            let control = match conn.accept_bi().await {
                Ok(s) => s,
                Err(e) => {
                    debug!(peer = %region, error = %e, "connection ended before the control stream");
                    return;
                }
            };
            serve(conn, region, control, core).await;
        });
    }
}

/// Keep a connection to the agent of `region` at `target` open: resolve
/// it, connect, serve, and on failure retry with exponential backoff from
/// 0.1 s to [`DIAL_BACKOFF_MAX`], each wait jittered by up to a quarter.
///
/// The cap is short on purpose: a restarted neighbour must be reconnected
/// within about a second of being reachable (held QoS >= 1 traffic waits
/// for it), and a failed attempt costs one QUIC Initial. It used to be
/// 10 s, which is why a destination restarted after a few seconds of
/// outage stayed unreachable for up to ten more.
pub async fn dial(
    endpoint: quinn::Endpoint,
    dns: Dns,
    region: RegionName,
    target: Endpoint,
    core: mpsc::Sender<Input>,
) {
    let mut backoff = DIAL_BACKOFF_MIN;
    loop {
        match connect_once(&endpoint, &dns, &region, &target).await {
            Ok((conn, control, resolved)) => {
                backoff = DIAL_BACKOFF_MIN;
                let resolved_input = |addrs: &[SocketAddr]| Input::Resolved {
                    region: region.clone(),
                    endpoint: target.to_string(),
                    addrs: addrs.to_vec(),
                };
                // A literal address resolves to itself: nothing to show.
                if matches!(target.host, mqlink_config::Host::Dns(_)) {
                    let _ = core.try_send(resolved_input(&resolved.addrs));
                }
                let watcher = tokio::spawn(follow_name(
                    dns.clone(),
                    target.clone(),
                    conn.clone(),
                    resolved.valid_until,
                    (core.clone(), region.clone()),
                ));
                serve(conn, region.clone(), control, core.clone()).await;
                watcher.abort();
            }
            Err(e) => {
                debug!(peer = %region, error = %e, "dial failed");
                let reason = format!("dialling {target}: {e}");
                let _ = core.try_send(Input::DialFailed {
                    region: region.clone(),
                    reason,
                });
            }
        }
        if core.is_closed() {
            return;
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(DIAL_BACKOFF_MAX);
    }
}

/// Shortest wait between two resolutions of a live connection's name
/// (a TTL of 0 would otherwise ask without pause).
const MIN_RESOLVE: Duration = Duration::from_secs(1);

/// While `conn` is up, resolve `target` again each time the answer's TTL
/// runs out; close `conn` when its address is no longer among the
/// answers (the dial loop then connects to the new one). A failed lookup
/// keeps the connection and tries again later.
async fn follow_name(
    dns: Dns,
    target: Endpoint,
    conn: quinn::Connection,
    mut valid_until: Option<std::time::Instant>,
    (core, region): (mpsc::Sender<Input>, RegionName),
) {
    while let Some(until) = valid_until {
        let at = until.max(std::time::Instant::now() + MIN_RESOLVE);
        tokio::time::sleep_until(at.into()).await;
        match dns.resolve(&target).await {
            Ok(r) if !r.addrs.contains(&conn.remote_address()) => {
                let now: Vec<String> = r.addrs.iter().map(ToString::to_string).collect();
                info!(endpoint = %target, was = %conn.remote_address(), now = %now.join(", "), "endpoint moved: reconnecting");
                conn.close(0u32.into(), b"endpoint moved");
                return;
            }
            Ok(r) => {
                let _ = core.try_send(Input::Resolved {
                    region: region.clone(),
                    endpoint: target.to_string(),
                    addrs: r.addrs.clone(),
                });
                valid_until = r.valid_until;
            }
            Err(e) => {
                warn!(endpoint = %target, error = %e, "re-resolving a live link's endpoint failed; keeping the connection");
                valid_until = Some(std::time::Instant::now() + DIAL_BACKOFF_MAX * 5);
            }
        }
    }
}

/// Why a dial attempt failed (the last address's error).
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The endpoint's name resolved to nothing.
    #[error("no address for {0}")]
    NoAddress(RegionName),
    /// The lookup failed.
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
    /// The connection could not be started.
    #[error(transparent)]
    Connect(#[from] quinn::ConnectError),
    /// The handshake or the connection failed.
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
}

type Dialled = (
    quinn::Connection,
    (quinn::SendStream, quinn::RecvStream),
    Resolved,
);

async fn connect_once(
    endpoint: &quinn::Endpoint,
    dns: &Dns,
    region: &RegionName,
    target: &Endpoint,
) -> Result<Dialled, DialError> {
    let resolved = dns.resolve(target).await?;
    let mut last = DialError::NoAddress(region.clone());
    for &addr in &resolved.addrs {
        match endpoint.connect(addr, region.as_str()) {
            Ok(connecting) => match connecting.await {
                Ok(conn) => {
                    let control = conn.open_bi().await?;
                    return Ok((conn, control, resolved));
                }
                Err(e) => last = e.into(),
            },
            Err(e) => last = e.into(),
        }
    }
    Err(last)
}

/// Run one established connection until it closes.
async fn serve(
    conn: quinn::Connection,
    region: RegionName,
    (send, recv): (quinn::SendStream, quinn::RecvStream),
    core: mpsc::Sender<Input>,
) {
    let peer = PeerId::new(region.clone(), CONN_IDS.fetch_add(1, Ordering::Relaxed));
    info!(peer = %region, remote = %conn.remote_address(), "connected");
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (data_tx, data_rx) = mpsc::unbounded_channel();
    let out = PeerOut {
        control: control_tx,
        data: data_tx,
    };
    if core
        .send(Input::PeerConnected {
            peer: peer.clone(),
            out,
            conn: conn.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    let tasks = [
        tokio::spawn(write_control(send, control_rx, region.clone())),
        tokio::spawn(write_data(conn.clone(), data_rx, region.clone())),
        tokio::spawn(read_stream(recv, peer.clone(), core.clone())),
        tokio::spawn(accept_data(conn.clone(), peer.clone(), core.clone())),
    ];
    let reason = conn.closed().await;
    debug!(peer = %region, %reason, "connection closed");
    for t in tasks {
        t.abort();
    }
    let _ = core
        .send(Input::PeerGone {
            peer,
            reason: reason.to_string(),
        })
        .await;
}

async fn write_control(
    mut send: quinn::SendStream,
    mut frames: mpsc::UnboundedReceiver<Frame>,
    region: RegionName,
) {
    let bytes_out = metrics::counter!("mqlink_bytes_out_total", "peer" => region.to_string());
    let mut buf = BytesMut::new();
    while let Some(frame) = frames.recv().await {
        encode(frame, &mut buf);
        while let Ok(more) = frames.try_recv() {
            encode(more, &mut buf);
        }
        if send.write_all(&buf).await.is_err() {
            return;
        }
        bytes_out.increment(buf.len() as u64);
        buf.clear();
    }
}

/// Hand each data batch to the writer of its stream. One task per stream,
/// so a stream held up by QUIC flow control does not stall the others
/// (each writer's queue is bounded by the core's window). A write that
/// fails closes the connection: the core takes its unacknowledged
/// envelopes back (QoS >= 1 is sent again, QoS 0 counted `link_closed`).
async fn write_data(
    conn: quinn::Connection,
    mut frames: mpsc::UnboundedReceiver<Frame>,
    region: RegionName,
) {
    let bytes_out = metrics::counter!("mqlink_bytes_out_total", "peer" => region.to_string());
    let mut writers = Vec::with_capacity(DATA_SHARDS);
    let mut tasks = Vec::with_capacity(DATA_SHARDS);
    for _ in 0..DATA_SHARDS {
        let (tx, rx) = mpsc::unbounded_channel::<bytes::Bytes>();
        writers.push(tx);
        tasks.push(tokio::spawn(write_stream(
            conn.clone(),
            rx,
            bytes_out.clone(),
        )));
    }
    // Each stream's topic aliases, as its reader will rebuild them.
    let mut aliases: [TopicAliases; DATA_SHARDS] = Default::default();
    let mut buf = BytesMut::new();
    while let Some(frame) = frames.recv().await {
        let Frame::Data(mut batch) = frame else {
            continue;
        };
        // Time in transit grows by the link's one-way delay, estimated as
        // half of QUIC's smoothed RTT (the core adds the time spent in it).
        let half_rtt = u64::try_from(conn.rtt().as_millis() / 2).unwrap_or(u64::MAX);
        for env in &mut batch.envelopes {
            env.transit_ms = env.transit_ms.saturating_add(half_rtt);
        }
        // Every batch goes on its topic's shard stream, large payloads
        // too (the core sends one in a batch of its own): one topic, one
        // stream, one order.
        let Some(first) = batch.envelopes.first() else {
            continue;
        };
        let i = shard_of(&first.message.topic);
        encode_with(Frame::Data(batch), &mut aliases[i], &mut buf);
        let bytes = buf.split().freeze();
        if writers[i].send(bytes).is_err() {
            break;
        }
    }
    drop(writers);
    for t in tasks {
        let _ = t.await;
    }
}

/// Write one data stream's batches, in order.
async fn write_stream(
    conn: quinn::Connection,
    mut batches: mpsc::UnboundedReceiver<bytes::Bytes>,
    bytes_out: metrics::Counter,
) {
    let mut stream: Option<quinn::SendStream> = None;
    while let Some(bytes) = batches.recv().await {
        if stream.is_none() {
            match conn.open_uni().await {
                Ok(s) => stream = Some(s),
                Err(_) => return,
            }
        }
        let Some(s) = stream.as_mut() else { return };
        if s.write_all(&bytes).await.is_err() {
            conn.close(3u32.into(), b"data stream write failed");
            return;
        }
        bytes_out.increment(bytes.len() as u64);
    }
}

async fn accept_data(conn: quinn::Connection, peer: PeerId, core: mpsc::Sender<Input>) {
    while let Ok(recv) = conn.accept_uni().await {
        tokio::spawn(read_stream(recv, peer.clone(), core.clone()));
    }
}

/// Read frames off a stream and hand them to the core; a decode error
/// closes the connection (via the core, which counts it).
async fn read_stream(mut recv: quinn::RecvStream, peer: PeerId, core: mpsc::Sender<Input>) {
    let bytes_in = metrics::counter!("mqlink_bytes_in_total", "peer" => peer.region.to_string());
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut aliases = TopicAliases::default();
    loop {
        match recv.read_chunk(256 * 1024, true).await {
            Ok(Some(chunk)) => {
                bytes_in.increment(chunk.bytes.len() as u64);
                buf.extend_from_slice(&chunk.bytes);
            }
            Ok(None) | Err(_) => return,
        }
        loop {
            match decode_with(&mut buf, &mut aliases) {
                Ok(Some(frame)) => {
                    if core
                        .send(Input::Frame {
                            peer: peer.clone(),
                            frame,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = core
                        .send(Input::PeerError {
                            peer: peer.clone(),
                            reason: e.to_string(),
                        })
                        .await;
                    return;
                }
            }
        }
    }
}

/// Make the QUIC endpoint: server (for accepting) and default client config.
pub fn endpoint(
    listen: SocketAddr,
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
) -> std::io::Result<quinn::Endpoint> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if listen.is_ipv6() {
        // Both families on an IPv6 wildcard, as the system default has it.
        let _ = socket.set_only_v6(false);
    }
    // The kernel caps these at net.core.{r,w}mem_max; a smaller buffer
    // only means more of what it does now.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&listen.into())?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for the QUIC endpoint"))?;
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket.into(),
        runtime,
    )?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// UDP socket buffers asked for (each way). The default receive buffer
/// (208 KB here) overflowed under a flat-out load: the kernel counted
/// `RcvbufErrors` (384 in one `mqlink bench --compare --messages 1000000`
/// run) and QUIC resent what it dropped, at a cost. 4 MB is Debian's
/// `net.core.rmem_max`; raise that sysctl for more.
pub const UDP_BUFFER: usize = 4 << 20;
