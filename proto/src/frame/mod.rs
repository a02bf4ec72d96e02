//! Domain frames: what the protocol core reads and writes. The generated
//! protobuf types (`crate::wire`) never leave this file: every frame from a
//! peer is converted here, and every string is checked into its domain type
//! (region and node names, topics, filters), so the core only ever sees
//! valid values. A frame that fails conversion is a protocol violation by
//! the peer: the core closes that peer's connection with the error as reason.

use bytes::{Buf, Bytes, BytesMut};
use mqlink_topology::{
    Cost, Digest, Lsa, LsaLink, NameError, NodeName, RegionName, TopicError, TopicFilter, TopicName,
};
use prost::Message as _;

use crate::wire as pb;

mod data;

pub use data::{ALIASES_MAX, TopicAliases};

/// Protocol version spoken by this build (2: LSAs are per agent, for
/// replicas; 3: acks by ranges; 4: the lean data batch of [`data`]).
pub const PROTOCOL_VERSION: u32 = 4;

/// Data streams per connection: envelopes are batched per stream by a
/// hash of their topic ([`shard_of`]), so one topic keeps its order while a
/// stalled topic does not hold up the others.
pub const DATA_SHARDS: usize = 4;

/// The data stream (0..[`DATA_SHARDS`]) that carries `topic`.
pub fn shard_of(topic: &TopicName) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    topic.as_str().hash(&mut h);
    (h.finish() as usize) % DATA_SHARDS
}

/// Payloads above this many bytes travel in a batch of their own (on
/// their topic's stream, so the topic's order holds).
pub const LARGE_PAYLOAD: usize = 64 * 1024;

/// Most ranges one [`Frame::Ack`] may carry.
pub const MAX_ACK_RANGES: usize = 1 << 16;

/// Largest frame accepted from a peer (length prefix excluded). Data batches
/// are cut well below this; a larger frame is a protocol violation.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Why bytes from a peer are not a valid frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Not decodable as protobuf.
    #[error("undecodable frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// Longer than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge {
        /// Announced length.
        len: usize,
    },
    /// A required field is absent.
    #[error("frame lacks `{0}`")]
    Missing(&'static str),
    /// A region or node name is invalid.
    #[error("field `{field}`: {source}")]
    Name {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        source: NameError,
    },
    /// A topic or filter is invalid.
    #[error("field `{field}`: topic `{text}` {source}")]
    Topic {
        /// Which field.
        field: &'static str,
        /// The text received (cut to 100 characters).
        text: String,
        /// What is wrong.
        source: TopicError,
    },
    /// QoS other than 0, 1 or 2.
    #[error("invalid QoS {0}")]
    Qos(u32),
    /// An ack whose ranges are not (first, last) pairs with first <= last,
    /// or too many of them.
    #[error("malformed ack ranges ({0} values)")]
    AckRanges(usize),
    /// A data batch that does not follow its encoding (see `frame/data.rs`).
    #[error("malformed data batch: {0}")]
    Data(&'static str),
}

/// MQTT quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Qos {
    /// At most once.
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

/// One interest table: a region's agent in one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    /// The region whose interest it is.
    pub region: RegionName,
    /// The agent that publishes it.
    pub node: NodeName,
    /// That agent's epoch.
    pub epoch: u64,
}

/// The greeting each side sends first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's region (must match its certificate and our config).
    pub region: RegionName,
    /// The sender's node.
    pub node: NodeName,
    /// The sender's epoch.
    pub epoch: u64,
    /// The sender's protocol version.
    pub version: u32,
}

/// MQTT 5 properties carried across the federation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// User properties, in order.
    pub user: Vec<(String, String)>,
    /// Content type.
    pub content_type: Option<String>,
    /// Payload format indicator (true: UTF-8).
    pub payload_utf8: Option<bool>,
    /// Response topic.
    pub response_topic: Option<TopicName>,
    /// Correlation data.
    pub correlation_data: Option<Bytes>,
    /// Remaining message expiry, in seconds.
    pub message_expiry_secs: Option<u32>,
}

/// An MQTT message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic.
    pub topic: TopicName,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: Qos,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 properties.
    pub properties: Properties,
}

/// A short list of regions (an envelope's visited regions, its
/// destinations): two inline, since most messages cross one or two
/// links and a vector each was two allocations per message at every hop.
pub type Regions = smallvec::SmallVec<[RegionName; 2]>;

/// A message in flight between regions, with its loop-prevention fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Region where it was published.
    pub origin: RegionName,
    /// Agent that exported it.
    pub origin_node: NodeName,
    /// That agent's epoch.
    pub epoch: u64,
    /// Sequence number per (origin, origin_node, epoch), from 1.
    pub seq: u64,
    /// Links crossed so far.
    pub hops: u32,
    /// Regions visited so far, origin first.
    pub visited: Regions,
    /// Milliseconds spent in the federation so far.
    pub transit_ms: u64,
    /// QoS >= 1: the regions this copy must reach (its sender's custody
    /// obligation, handed on). Empty for QoS 0, which is routed by interest
    /// at every hop.
    pub dests: Regions,
    /// The message.
    pub message: Message,
}

/// Envelopes sent together, numbered per link for acks: the i-th
/// envelope has link sequence number `first_seq + i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataBatch {
    /// Link sequence number of the first envelope.
    pub first_seq: u64,
    /// The envelopes.
    pub envelopes: Vec<Envelope>,
}

/// One frame between neighbours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Greeting.
    Hello(Hello),
    /// A link-state advertisement.
    Lsa(Lsa),
    /// Start of a snapshot of `table` at `seq`, with `count` filters to follow.
    SummaryStart {
        /// The table.
        table: TableId,
        /// Its sequence number.
        seq: u64,
        /// Number of filters in the snapshot.
        count: u64,
    },
    /// Some filters of the snapshot in progress.
    SummaryEntries {
        /// The table.
        table: TableId,
        /// Filters.
        filters: Vec<TopicFilter>,
    },
    /// End of the snapshot, with the digest to verify it.
    SummaryEnd {
        /// The table.
        table: TableId,
        /// Digest of the whole snapshot.
        digest: Digest,
    },
    /// Changes to a table.
    SummaryDelta {
        /// The table.
        table: TableId,
        /// Sequence number after the change.
        seq: u64,
        /// Filters now wanted.
        add: Vec<TopicFilter>,
        /// Filters no longer wanted.
        remove: Vec<TopicFilter>,
    },
    /// Periodic fingerprint of a table.
    Digest {
        /// The table.
        table: TableId,
        /// Its sequence number.
        seq: u64,
        /// Its digest.
        digest: Digest,
    },
    /// Fingerprint of every table the sender holds.
    DigestSum {
        /// Number of tables.
        tables: u64,
        /// Combined fingerprint.
        sum: u64,
    },
    /// Per-table digests (table, seq, digest), sent when sums disagree.
    DigestBatch(Vec<(TableId, u64, Digest)>),
    /// Request for a fresh snapshot.
    ResyncRequest {
        /// The table.
        table: TableId,
    },
    /// Acknowledgement of envelopes by link sequence number: QoS 0 once
    /// processed, QoS >= 1 once the receiver took custody.
    Ack {
        /// Inclusive (first, last) ranges of link sequence numbers.
        ranges: Vec<(u64, u64)>,
    },
    /// Data.
    Data(DataBatch),
}

/// Names seen on the wire, checked once: every envelope repeats its
/// origin, node, visited regions and destinations, and checking and
/// allocating each again was a measurable share of the receiving agent's
/// time. Per thread (the decoders run on the runtime's threads), and
/// bounded: past [`NAMES_MAX`] names a new one is checked and not kept,
/// so a peer that invents names cannot grow it.
struct Names {
    regions: rustc_hash::FxHashMap<String, RegionName>,
    nodes: rustc_hash::FxHashMap<String, NodeName>,
}

/// Most names of each kind kept per thread.
const NAMES_MAX: usize = 4096;

thread_local! {
    static NAMES: std::cell::RefCell<Names> = std::cell::RefCell::new(Names {
        regions: Default::default(),
        nodes: Default::default(),
    });
}

/// `s` checked by `make`, from `cache` when seen before (kept if the
/// cache has room).
fn cached<T: Clone>(
    cache: &mut rustc_hash::FxHashMap<String, T>,
    field: &'static str,
    s: String,
    make: impl FnOnce(&str) -> Result<T, NameError>,
) -> Result<T, FrameError> {
    if let Some(v) = cache.get(&s) {
        return Ok(v.clone());
    }
    let v = make(&s).map_err(|source| FrameError::Name { field, source })?;
    if cache.len() < NAMES_MAX {
        cache.insert(s, v.clone());
    }
    Ok(v)
}

fn region(field: &'static str, s: String) -> Result<RegionName, FrameError> {
    NAMES.with(|n| cached(&mut n.borrow_mut().regions, field, s, RegionName::new))
}

fn node(field: &'static str, s: String) -> Result<NodeName, FrameError> {
    NAMES.with(|n| cached(&mut n.borrow_mut().nodes, field, s, NodeName::new))
}

fn cut(s: &str) -> String {
    s.chars().take(100).collect()
}

fn topic(field: &'static str, s: String) -> Result<TopicName, FrameError> {
    TopicName::new(&s).map_err(|source| FrameError::Topic {
        field,
        text: cut(&s),
        source,
    })
}

fn filter(field: &'static str, s: String) -> Result<TopicFilter, FrameError> {
    TopicFilter::new(&s).map_err(|source| FrameError::Topic {
        field,
        text: cut(&s),
        source,
    })
}

fn filters(field: &'static str, v: Vec<String>) -> Result<Vec<TopicFilter>, FrameError> {
    v.into_iter().map(|s| filter(field, s)).collect()
}

fn table(t: Option<pb::TableId>) -> Result<TableId, FrameError> {
    let t = t.ok_or(FrameError::Missing("table"))?;
    Ok(TableId {
        region: region("table.region", t.region)?,
        node: node("table.node", t.node)?,
        epoch: t.epoch,
    })
}

fn table_pb(t: TableId) -> Option<pb::TableId> {
    Some(pb::TableId {
        region: t.region.into(),
        node: t.node.into(),
        epoch: t.epoch,
    })
}

impl TryFrom<pb::Envelope> for Envelope {
    type Error = FrameError;
    fn try_from(e: pb::Envelope) -> Result<Self, FrameError> {
        let qos = match e.qos {
            0 => Qos::AtMostOnce,
            1 => Qos::AtLeastOnce,
            2 => Qos::ExactlyOnce,
            q => return Err(FrameError::Qos(q)),
        };
        Ok(Envelope {
            origin: region("origin", e.origin)?,
            origin_node: node("origin_node", e.origin_node)?,
            epoch: e.epoch,
            seq: e.seq,
            hops: e.hops,
            visited: e
                .visited
                .into_iter()
                .map(|v| region("visited", v))
                .collect::<Result<_, _>>()?,
            transit_ms: e.transit_ms,
            dests: e
                .dests
                .into_iter()
                .map(|v| region("dests", v))
                .collect::<Result<_, _>>()?,
            message: Message {
                topic: topic("topic", e.topic)?,
                payload: e.payload,
                qos,
                retain: e.retain,
                properties: Properties {
                    user: e
                        .user_properties
                        .into_iter()
                        .map(|p| (p.key, p.value))
                        .collect(),
                    content_type: e.content_type,
                    payload_utf8: e.payload_utf8,
                    response_topic: e
                        .response_topic
                        .map(|t| topic("response_topic", t))
                        .transpose()?,
                    correlation_data: e.correlation_data,
                    message_expiry_secs: e.message_expiry_secs,
                },
            },
        })
    }
}

impl From<Envelope> for pb::Envelope {
    fn from(e: Envelope) -> Self {
        let m = e.message;
        let p = m.properties;
        pb::Envelope {
            origin: e.origin.into(),
            origin_node: e.origin_node.into(),
            epoch: e.epoch,
            seq: e.seq,
            hops: e.hops,
            visited: e.visited.into_iter().map(Into::into).collect(),
            topic: m.topic.into(),
            payload: m.payload,
            qos: m.qos as u32,
            retain: m.retain,
            user_properties: p
                .user
                .into_iter()
                .map(|(key, value)| pb::UserProperty { key, value })
                .collect(),
            content_type: p.content_type,
            payload_utf8: p.payload_utf8,
            response_topic: p.response_topic.map(Into::into),
            correlation_data: p.correlation_data,
            message_expiry_secs: p.message_expiry_secs,
            transit_ms: e.transit_ms,
            dests: e.dests.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::Frame> for Frame {
    type Error = FrameError;
    fn try_from(f: pb::Frame) -> Result<Self, FrameError> {
        use pb::frame::Kind;
        Ok(match f.kind.ok_or(FrameError::Missing("kind"))? {
            Kind::Hello(h) => Frame::Hello(Hello {
                region: region("hello.region", h.region)?,
                node: node("hello.node", h.node)?,
                epoch: h.epoch,
                version: h.version,
            }),
            Kind::Lsa(l) => Frame::Lsa(Lsa {
                origin: region("lsa.origin", l.origin)?,
                node: node("lsa.node", l.node)?,
                seq: l.seq,
                links: l
                    .links
                    .into_iter()
                    .map(|k| {
                        Ok(LsaLink {
                            peer: region("lsa.links.peer", k.peer)?,
                            cost: Cost::new(u64::from(k.cost)).map_err(|source| {
                                FrameError::Name {
                                    field: "lsa.links.cost",
                                    source,
                                }
                            })?,
                            up: k.up,
                        })
                    })
                    .collect::<Result<_, FrameError>>()?,
            }),
            Kind::SummaryStart(s) => Frame::SummaryStart {
                table: table(s.table)?,
                seq: s.seq,
                count: s.count,
            },
            Kind::SummaryEntries(s) => Frame::SummaryEntries {
                table: table(s.table)?,
                filters: filters("summary.filters", s.filters)?,
            },
            Kind::SummaryEnd(s) => Frame::SummaryEnd {
                table: table(s.table)?,
                digest: Digest {
                    count: s.digest_count,
                    sum: s.digest_sum,
                },
            },
            Kind::SummaryDelta(d) => Frame::SummaryDelta {
                table: table(d.table)?,
                seq: d.seq,
                add: filters("delta.add", d.add)?,
                remove: filters("delta.remove", d.remove)?,
            },
            Kind::Digest(d) => Frame::Digest {
                table: table(d.table)?,
                seq: d.seq,
                digest: Digest {
                    count: d.count,
                    sum: d.sum,
                },
            },
            Kind::ResyncRequest(r) => Frame::ResyncRequest {
                table: table(r.table)?,
            },
            Kind::DigestSum(d) => Frame::DigestSum {
                tables: d.tables,
                sum: d.sum,
            },
            Kind::DigestBatch(b) => Frame::DigestBatch(
                b.digests
                    .into_iter()
                    .map(|d| {
                        Ok((
                            table(d.table)?,
                            d.seq,
                            Digest {
                                count: d.count,
                                sum: d.sum,
                            },
                        ))
                    })
                    .collect::<Result<_, FrameError>>()?,
            ),
            Kind::Ack(a) => {
                let n = a.ranges.len();
                if n % 2 != 0 || n / 2 > MAX_ACK_RANGES {
                    return Err(FrameError::AckRanges(n));
                }
                let ranges: Vec<(u64, u64)> =
                    a.ranges.chunks_exact(2).map(|c| (c[0], c[1])).collect();
                if ranges.iter().any(|(a, b)| a > b) {
                    return Err(FrameError::AckRanges(n));
                }
                Frame::Ack { ranges }
            }
        })
    }
}

/// A control frame in its protobuf form; a data batch back as `Err` (it
/// has an encoding of its own, [`data`]).
fn control_pb(f: Frame) -> Result<pb::Frame, DataBatch> {
    use pb::frame::Kind;
    let strings = |v: Vec<TopicFilter>| v.into_iter().map(String::from).collect();
    let kind = match f {
        Frame::Hello(h) => Kind::Hello(pb::Hello {
            region: h.region.into(),
            node: h.node.into(),
            epoch: h.epoch,
            version: h.version,
        }),
        Frame::Lsa(l) => Kind::Lsa(pb::Lsa {
            origin: l.origin.into(),
            node: l.node.into(),
            seq: l.seq,
            links: l
                .links
                .into_iter()
                .map(|k| pb::LsaLink {
                    peer: k.peer.into(),
                    cost: k.cost.get(),
                    up: k.up,
                })
                .collect(),
        }),
        Frame::SummaryStart { table, seq, count } => Kind::SummaryStart(pb::SummaryStart {
            table: table_pb(table),
            seq,
            count,
        }),
        Frame::SummaryEntries { table, filters } => Kind::SummaryEntries(pb::SummaryEntries {
            table: table_pb(table),
            filters: strings(filters),
        }),
        Frame::SummaryEnd { table, digest } => Kind::SummaryEnd(pb::SummaryEnd {
            table: table_pb(table),
            digest_count: digest.count,
            digest_sum: digest.sum,
        }),
        Frame::SummaryDelta {
            table,
            seq,
            add,
            remove,
        } => Kind::SummaryDelta(pb::SummaryDelta {
            table: table_pb(table),
            seq,
            add: strings(add),
            remove: strings(remove),
        }),
        Frame::Digest { table, seq, digest } => Kind::Digest(pb::Digest {
            table: table_pb(table),
            seq,
            count: digest.count,
            sum: digest.sum,
        }),
        Frame::ResyncRequest { table } => Kind::ResyncRequest(pb::ResyncRequest {
            table: table_pb(table),
        }),
        Frame::DigestSum { tables, sum } => Kind::DigestSum(pb::DigestSum { tables, sum }),
        Frame::DigestBatch(entries) => Kind::DigestBatch(pb::DigestBatch {
            digests: entries
                .into_iter()
                .map(|(t, seq, d)| pb::Digest {
                    table: table_pb(t),
                    seq,
                    count: d.count,
                    sum: d.sum,
                })
                .collect(),
        }),
        Frame::Ack { ranges } => Kind::Ack(pb::Ack {
            up_to: 0,
            ranges: ranges.into_iter().flat_map(|(a, b)| [a, b]).collect(),
        }),
        Frame::Data(d) => return Err(d),
    };
    Ok(pb::Frame { kind: Some(kind) })
}

/// One envelope in the wire encoding, for storage (the spool).
pub fn encode_envelope(env: Envelope) -> Vec<u8> {
    pb::Envelope::from(env).encode_to_vec()
}

/// An envelope stored with [`encode_envelope`]; bad bytes are an error.
pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, FrameError> {
    Envelope::try_from(pb::Envelope::decode(bytes)?)
}

/// Size of `frame` on the wire, length prefix included (for the simulator's
/// byte accounting).
pub fn encoded_len(frame: &Frame) -> usize {
    match control_pb(frame.clone()) {
        Ok(msg) => {
            let len = msg.encoded_len();
            len + prost::length_delimiter_len(len)
        }
        Err(batch) => {
            let mut buf = BytesMut::new();
            data::encode(&batch, &mut TopicAliases::default(), &mut buf);
            buf.len()
        }
    }
}

/// Append `frame` to `out`, prefixed by its length: a data batch in its
/// lean encoding ([`data`]), self-contained (topics spelled out), every
/// other frame as a protobuf `Frame`.
pub fn encode(frame: Frame, out: &mut BytesMut) {
    encode_with(frame, &mut TopicAliases::default(), out);
}

/// [`encode`] on a stream whose topic aliases the sender keeps in
/// `aliases`: a topic already sent on it costs its alias only.
pub fn encode_with(frame: Frame, aliases: &mut TopicAliases, out: &mut BytesMut) {
    match control_pb(frame) {
        Ok(msg) => {
            let len = msg.encoded_len();
            out.reserve(len + prost::length_delimiter_len(len));
            // Encoding into a BytesMut with enough reserved space cannot fail.
            let _ = msg.encode_length_delimited(out);
        }
        Err(batch) => data::encode(&batch, aliases, out),
    }
}

/// Take one whole frame off the front of `buf`, if one is there.
/// `Ok(None)`: more bytes are needed. Data batches must be self-contained
/// (as [`encode`] writes them).
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    decode_with(buf, &mut TopicAliases::default())
}

/// [`decode`] on a stream whose topic aliases the receiver keeps in
/// `aliases` (one per stream, for its life).
pub fn decode_with(
    buf: &mut BytesMut,
    aliases: &mut TopicAliases,
) -> Result<Option<Frame>, FrameError> {
    let mut peek = &buf[..];
    let len = match prost::decode_length_delimiter(&mut peek) {
        Ok(len) => len,
        // An incomplete varint: wait for more bytes (a varint is at most 10 bytes).
        Err(_) if buf.len() < 10 => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    let prefix = buf.len() - peek.len();
    if buf.len() < prefix + len {
        return Ok(None);
    }
    buf.advance(prefix);
    let body = buf.split_to(len).freeze();
    if body.first() == Some(&data::MARKER) {
        return data::decode(body, aliases).map(|b| Some(Frame::Data(b)));
    }
    let msg = pb::Frame::decode(body)?;
    Frame::try_from(msg).map(Some)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn r(s: &str) -> RegionName {
        RegionName::new(s).unwrap()
    }

    #[test]
    fn wire_names_are_checked_once_and_the_cache_is_bounded() {
        let a = region("f", "eu-west".into()).unwrap();
        let b = region("f", "eu-west".into()).unwrap();
        assert_eq!(a, b);
        assert!(
            region("f", "EU!".into()).is_err(),
            "a bad name is never cached"
        );
        assert!(region("f", "EU!".into()).is_err());
        for i in 0..NAMES_MAX + 100 {
            region("f", format!("r{i}")).unwrap();
            node("f", format!("n{i}")).unwrap();
        }
        NAMES.with(|n| {
            let n = n.borrow();
            assert_eq!(n.regions.len(), NAMES_MAX);
            assert_eq!(n.nodes.len(), NAMES_MAX);
        });
        // Past the bound, names still decode (checked, not kept).
        assert_eq!(region("f", "late".into()).unwrap(), r("late"));
    }

    fn envelope() -> Envelope {
        Envelope {
            origin: r("eu"),
            origin_node: NodeName::new("eu-a").unwrap(),
            epoch: 7,
            seq: 42,
            hops: 1,
            visited: [r("eu"), r("us")].into_iter().collect(),
            transit_ms: 15,
            dests: [r("ap")].into_iter().collect(),
            message: Message {
                topic: TopicName::new("factory/1/temp").unwrap(),
                payload: Bytes::from_static(b"21.5"),
                qos: Qos::AtLeastOnce,
                retain: true,
                properties: Properties {
                    user: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
                    content_type: Some("text/plain".into()),
                    payload_utf8: Some(true),
                    response_topic: Some(TopicName::new("reply/1").unwrap()),
                    correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                    message_expiry_secs: Some(30),
                },
            },
        }
    }

    #[test]
    fn frames_round_trip_through_the_wire_format() {
        let table = TableId {
            region: r("eu"),
            node: NodeName::new("eu-a").unwrap(),
            epoch: 3,
        };
        let f = |s: &str| TopicFilter::new(s).unwrap();
        let frames = vec![
            Frame::Hello(Hello {
                region: r("eu"),
                node: NodeName::new("eu-a").unwrap(),
                epoch: 9,
                version: 1,
            }),
            Frame::Lsa(Lsa {
                origin: r("eu"),
                node: NodeName::new("eu-b").unwrap(),
                seq: 5,
                links: vec![LsaLink {
                    peer: r("us"),
                    cost: Cost::new(80).unwrap(),
                    up: true,
                }],
            }),
            Frame::SummaryStart {
                table: table.clone(),
                seq: 4,
                count: 2,
            },
            Frame::SummaryEntries {
                table: table.clone(),
                filters: vec![f("a/#"), f("b/+")],
            },
            Frame::SummaryEnd {
                table: table.clone(),
                digest: Digest { count: 2, sum: 99 },
            },
            Frame::SummaryDelta {
                table: table.clone(),
                seq: 5,
                add: vec![f("c")],
                remove: vec![f("a/#")],
            },
            Frame::Digest {
                table: table.clone(),
                seq: 5,
                digest: Digest { count: 2, sum: 7 },
            },
            Frame::ResyncRequest {
                table: table.clone(),
            },
            Frame::DigestSum { tables: 3, sum: 77 },
            Frame::DigestBatch(vec![(table, 5, Digest { count: 2, sum: 7 })]),
            Frame::Ack {
                ranges: vec![(1, 4), (9, 9)],
            },
            Frame::Data(DataBatch {
                first_seq: 12,
                envelopes: vec![envelope(), envelope()],
            }),
        ];
        let mut buf = BytesMut::new();
        for frame in &frames {
            encode(frame.clone(), &mut buf);
        }
        // Feed the bytes one at a time: frames come out whole, in order.
        let mut partial = BytesMut::new();
        let mut out = Vec::new();
        for b in buf.iter() {
            partial.extend_from_slice(&[*b]);
            while let Some(frame) = decode(&mut partial).unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out, frames);
        assert!(partial.is_empty());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut bad_topic = pb::Envelope::from(envelope());
        bad_topic.topic = "a/+/b".into();
        assert!(matches!(
            decode_envelope(&bad_topic.encode_to_vec()),
            Err(FrameError::Topic { field: "topic", .. })
        ));

        let mut buf = BytesMut::from(&[0x05, 0xff, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(decode(&mut buf), Err(FrameError::Decode(_))));

        let mut buf = BytesMut::new();
        let _ = prost::encode_length_delimiter(MAX_FRAME_LEN + 1, &mut buf);
        assert!(matches!(decode(&mut buf), Err(FrameError::TooLarge { .. })));

        let mut buf = BytesMut::new();
        let _ = pb::Frame { kind: None }.encode_length_delimited(&mut buf);
        assert!(matches!(decode(&mut buf), Err(FrameError::Missing("kind"))));

        let hello = pb::Frame {
            kind: Some(pb::frame::Kind::Hello(pb::Hello {
                region: "EU!".into(),
                node: "n".into(),
                epoch: 1,
                version: 1,
            })),
        };
        let mut buf = BytesMut::new();
        let _ = hello.encode_length_delimited(&mut buf);
        assert!(matches!(
            decode(&mut buf),
            Err(FrameError::Name {
                field: "hello.region",
                ..
            })
        ));
    }
}
