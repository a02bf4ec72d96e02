//! The lean encoding of a data batch (protocol version 4).
//!
//! Protobuf said everything again for every envelope: the origin region,
//! the origin agent's name, its epoch, the visited regions, the
//! destinations and the topic, each as a string with its tag, and decoding
//! allocated each string anew. That cost 150 wire bytes per 100-byte
//! message and about a sixth of both agents' CPU at full load. Here a
//! batch says each of those once, in tables at its head, and every
//! envelope points into them:
//!
//! ```text
//! batch    = 0x00 flags first_seq regions nodes sources routes topics envelopes
//! regions  = n (str)*                          region names
//! nodes    = n (str)*                          agent names
//! sources  = n (region node epoch)*            (origin, agent, epoch)
//! routes   = n (source n region* n region*)*   source, visited, destinations
//! topics   = n (str)*                          topics new on this stream
//! envelope = eflags route seq [hops] transit topic payload [props]
//! ```
//!
//! Every number is a LEB128 varint (the protobuf one); `str` and the
//! payload are a length and the bytes. The leading 0x00 can never open a
//! protobuf `Frame` (field number 0 does not exist), so both encodings
//! share one length-prefixed framing.
//!
//! Topics are aliased per stream ([`TopicAliases`]): a stream is ordered
//! and reliable, so a topic is spelled out the first time it crosses a
//! stream, takes the next alias number on both sides, and costs one or two
//! bytes from then on. The table is bounded: when it holds
//! [`ALIASES_MAX`] topics the sender starts the next batch with the reset
//! flag (bit 0 of `flags`) and both sides start over; a batch without it
//! on a full table is a protocol violation, so a peer cannot grow the
//! receiver's table past one batch's worth beyond the bound. A fresh
//! table for every batch (what [`encode`](super::encode) uses) gives
//! self-contained batches.
//!
//! In an envelope: `eflags` holds the QoS (bits 0-1), retain (bit 2),
//! properties follow (3), the route's visited list holds the regions
//! after the origin (4; the usual case, which saves naming the origin
//! again), `hops` is left out because it equals the number of regions
//! visited (5; the usual case); `route` points at the envelope's source,
//! visited regions and destinations, which most envelopes of a batch
//! share; `seq` is the difference from the previous envelope of the same
//! source in this batch (zigzag), so a run of one source's messages
//! costs a byte each; `transit` is milliseconds; `topic` is an alias. A
//! 100-byte message costs 108-109 bytes on a stream in batches of 20, 106 in
//! batches of 500 (`a_stream_costs_under_110_bytes_per_100_byte_message`).
//!
//! Decoding checks everything (indices in range, names and topics valid,
//! counts no larger than the bytes left, so a forged count cannot make us
//! allocate) and slices payloads out of the frame without copying them.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use mqlink_topology::{NodeName, RegionName, TopicName};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::{
    DataBatch, Envelope, FrameError, Message, Properties, Qos, Regions, node, region, topic,
};

/// First byte of a lean data batch's body.
pub(super) const MARKER: u8 = 0x00;

/// Batch flag: the stream's topic aliases start over with this batch.
const RESET: u8 = 1 << 0;

/// Most topic aliases a stream keeps before starting over.
pub const ALIASES_MAX: usize = 4096;

/// The topic aliases of one direction of one data stream: the sender's
/// map from topic to alias, the receiver's list by alias. Each side keeps
/// its own for each stream, for the stream's life.
#[derive(Debug, Default)]
pub struct TopicAliases {
    /// Sender: alias of each topic sent on the stream.
    ids: FxHashMap<TopicName, u32>,
    /// Receiver: topic of each alias, in order.
    names: Vec<TopicName>,
}

const QOS_MASK: u8 = 0b11;
const RETAIN: u8 = 1 << 2;
const PROPS: u8 = 1 << 3;
const AFTER_ORIGIN: u8 = 1 << 4;
const HOPS_IMPLIED: u8 = 1 << 5;

const P_CONTENT_TYPE: u8 = 1 << 0;
const P_UTF8: u8 = 1 << 1;
const P_UTF8_TRUE: u8 = 1 << 2;
const P_RESPONSE: u8 = 1 << 3;
const P_CORRELATION: u8 = 1 << 4;
const P_EXPIRY: u8 = 1 << 5;

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    put_varint(out, s.len() as u64);
    out.put_slice(s);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Index of `item` in `table`, appended if new. Tables are short (a
/// batch names few regions, agents and region lists), so a scan beats
/// hashing.
fn index_of<T: PartialEq>(table: &mut Vec<T>, item: T) -> u32 {
    match table.iter().position(|t| *t == item) {
        Some(i) => i as u32,
        None => {
            table.push(item);
            (table.len() - 1) as u32
        }
    }
}

/// The indices of `list` in the region table.
fn indices<'a>(regions: &mut Vec<&'a str>, list: &'a [RegionName]) -> SmallVec<[u32; 4]> {
    list.iter().map(|r| index_of(regions, r.as_str())).collect()
}

/// Where one envelope points into the batch's tables.
struct Refs {
    flags: u8,
    route: u32,
    source: u32,
    topic: u32,
}

/// A source with the regions visited (after the origin when the
/// envelope's flag says so) and the destinations, by region index.
#[derive(PartialEq)]
struct Route {
    source: u32,
    visited: SmallVec<[u32; 4]>,
    dests: SmallVec<[u32; 4]>,
}

/// Append `batch` to `out`, length-prefixed.
pub(super) fn encode(batch: &DataBatch, aliases: &mut TopicAliases, out: &mut BytesMut) {
    let mut batch_flags = 0;
    if aliases.ids.len() >= ALIASES_MAX {
        aliases.ids.clear();
        batch_flags |= RESET;
    }
    let mut regions: Vec<&str> = Vec::new();
    let mut nodes: Vec<&str> = Vec::new();
    let mut sources: Vec<(u32, u32, u64)> = Vec::new();
    let mut routes: Vec<Route> = Vec::new();
    let mut fresh: Vec<&str> = Vec::new();
    let mut refs = Vec::with_capacity(batch.envelopes.len());
    for e in &batch.envelopes {
        let origin = index_of(&mut regions, e.origin.as_str());
        let agent = index_of(&mut nodes, e.origin_node.as_str());
        let source = index_of(&mut sources, (origin, agent, e.epoch));
        let mut flags = (e.message.qos as u8) | if e.message.retain { RETAIN } else { 0 };
        let mut visited = &e.visited[..];
        if visited.first() == Some(&e.origin) {
            flags |= AFTER_ORIGIN;
            visited = &visited[1..];
        }
        if e.hops as usize == e.visited.len() {
            flags |= HOPS_IMPLIED;
        }
        if e.message.properties != Properties::default() {
            flags |= PROPS;
        }
        let route = Route {
            source,
            visited: indices(&mut regions, visited),
            dests: indices(&mut regions, &e.dests),
        };
        let route = index_of(&mut routes, route);
        // Looked up first: most topics have an alias, and an entry() would
        // clone the name (an atomic increment) for every envelope.
        let topic = match aliases.ids.get(&e.message.topic) {
            Some(&alias) => alias,
            None => {
                let alias = aliases.ids.len() as u32;
                aliases.ids.insert(e.message.topic.clone(), alias);
                fresh.push(e.message.topic.as_str());
                alias
            }
        };
        refs.push(Refs {
            flags,
            route,
            source,
            topic,
        });
    }

    out.reserve(
        64 + batch
            .envelopes
            .iter()
            .map(|e| 16 + e.message.payload.len())
            .sum::<usize>(),
    );
    // The body goes straight into `out` behind a length prefix of a fixed
    // [`PREFIX`] bytes, filled in at the end (no second buffer, no copy).
    let start = out.len();
    out.put_bytes(0, PREFIX);
    let body = out;
    body.put_u8(MARKER);
    body.put_u8(batch_flags);
    put_varint(body, batch.first_seq);
    for table in [&regions, &nodes] {
        put_varint(body, table.len() as u64);
        for s in table {
            put_str(body, s.as_bytes());
        }
    }
    put_varint(body, sources.len() as u64);
    for &(r, n, epoch) in &sources {
        put_varint(body, r.into());
        put_varint(body, n.into());
        put_varint(body, epoch);
    }
    put_varint(body, routes.len() as u64);
    for route in &routes {
        put_varint(body, route.source.into());
        for list in [&route.visited, &route.dests] {
            put_varint(body, list.len() as u64);
            for &r in list {
                put_varint(body, r.into());
            }
        }
    }
    put_varint(body, fresh.len() as u64);
    for t in &fresh {
        put_str(body, t.as_bytes());
    }
    put_varint(body, batch.envelopes.len() as u64);
    let mut last_seq = vec![0u64; sources.len()];
    for (e, r) in batch.envelopes.iter().zip(&refs) {
        body.put_u8(r.flags);
        put_varint(body, r.route.into());
        let last = &mut last_seq[r.source as usize];
        put_varint(body, zigzag(e.seq.wrapping_sub(*last) as i64));
        *last = e.seq;
        if r.flags & HOPS_IMPLIED == 0 {
            put_varint(body, e.hops.into());
        }
        put_varint(body, e.transit_ms);
        put_varint(body, r.topic.into());
        put_str(body, &e.message.payload);
        if r.flags & PROPS != 0 {
            put_properties(body, &e.message.properties);
        }
    }
    let len = body.len() - start - PREFIX;
    body[start..start + PREFIX].copy_from_slice(&padded_varint(len));
}

/// Bytes of a data batch's length prefix: a varint padded to four bytes
/// (continuation bits on the leading ones), which any varint reader
/// takes, and which holds every length up to 2^28 - 1, past
/// [`MAX_FRAME_LEN`](super::MAX_FRAME_LEN).
const PREFIX: usize = 4;

fn padded_varint(v: usize) -> [u8; PREFIX] {
    let mut b = [0u8; PREFIX];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = ((v >> (7 * i)) & 0x7f) as u8;
        if i + 1 < PREFIX {
            *byte |= 0x80;
        }
    }
    b
}

fn put_properties(out: &mut BytesMut, p: &Properties) {
    put_varint(out, p.user.len() as u64);
    for (k, v) in &p.user {
        put_str(out, k.as_bytes());
        put_str(out, v.as_bytes());
    }
    let mut present = 0;
    if p.content_type.is_some() {
        present |= P_CONTENT_TYPE;
    }
    match p.payload_utf8 {
        Some(true) => present |= P_UTF8 | P_UTF8_TRUE,
        Some(false) => present |= P_UTF8,
        None => {}
    }
    if p.response_topic.is_some() {
        present |= P_RESPONSE;
    }
    if p.correlation_data.is_some() {
        present |= P_CORRELATION;
    }
    if p.message_expiry_secs.is_some() {
        present |= P_EXPIRY;
    }
    out.put_u8(present);
    if let Some(c) = &p.content_type {
        put_str(out, c.as_bytes());
    }
    if let Some(t) = &p.response_topic {
        put_str(out, t.as_str().as_bytes());
    }
    if let Some(c) = &p.correlation_data {
        put_str(out, c);
    }
    if let Some(x) = p.message_expiry_secs {
        put_varint(out, x.into());
    }
}

/// A reader over one batch body; every read checks the bytes left.
struct Reader {
    buf: Bytes,
}

fn bad(what: &'static str) -> FrameError {
    FrameError::Data(what)
}

impl Reader {
    fn u8(&mut self) -> Result<u8, FrameError> {
        if self.buf.has_remaining() {
            Ok(self.buf.get_u8())
        } else {
            Err(bad("truncated"))
        }
    }

    fn varint(&mut self) -> Result<u64, FrameError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        u32::try_from(self.varint()?).map_err(|_| bad("number out of range"))
    }

    /// A count of items that take at least one byte each: never more
    /// than the bytes left, so a forged count cannot make us allocate.
    fn count(&mut self) -> Result<usize, FrameError> {
        let n = self.varint()?;
        if n > self.buf.remaining() as u64 {
            return Err(bad("count exceeds the bytes left"));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Result<Bytes, FrameError> {
        let n = self.count()?;
        Ok(self.buf.split_to(n))
    }

    fn str(&mut self) -> Result<String, FrameError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| bad("string is not UTF-8"))
    }

    fn index(&mut self, len: usize) -> Result<usize, FrameError> {
        let i = self.varint()?;
        if i >= len as u64 {
            return Err(bad("table index out of range"));
        }
        Ok(i as usize)
    }

    fn table<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, FrameError>,
    ) -> Result<Vec<T>, FrameError> {
        let n = self.count()?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(item(self)?);
        }
        Ok(v)
    }
}

/// Decode a batch body (after the length prefix, marker included).
pub(super) fn decode(body: Bytes, aliases: &mut TopicAliases) -> Result<DataBatch, FrameError> {
    let mut r = Reader { buf: body };
    if r.u8()? != MARKER {
        return Err(bad("not a data batch"));
    }
    if r.u8()? & RESET != 0 {
        aliases.names.clear();
    } else if aliases.names.len() >= ALIASES_MAX {
        return Err(bad("topic aliases past the bound without a reset"));
    }
    let first_seq = r.varint()?;
    let regions: Vec<RegionName> = r.table(|r| region("data.regions", r.str()?))?;
    let nodes: Vec<NodeName> = r.table(|r| node("data.nodes", r.str()?))?;
    let sources: Vec<(usize, usize, u64)> =
        r.table(|r| Ok((r.index(regions.len())?, r.index(nodes.len())?, r.varint()?)))?;
    let list = |r: &mut Reader| -> Result<Regions, FrameError> {
        let n = r.count()?;
        (0..n)
            .map(|_| Ok(regions[r.index(regions.len())?].clone()))
            .collect()
    };
    let routes: Vec<(usize, Regions, Regions)> =
        r.table(|r| Ok((r.index(sources.len())?, list(r)?, list(r)?)))?;
    let fresh = r.count()?;
    for _ in 0..fresh {
        let t = topic("data.topics", r.str()?)?;
        aliases.names.push(t);
    }
    let topics = &aliases.names;
    let mut last_seq = vec![0u64; sources.len()];
    let envelopes = r.table(|r| {
        let flags = r.u8()?;
        let qos = match flags & QOS_MASK {
            0 => Qos::AtMostOnce,
            1 => Qos::AtLeastOnce,
            2 => Qos::ExactlyOnce,
            q => return Err(FrameError::Qos(q.into())),
        };
        let (s, after, dests) = &routes[r.index(routes.len())?];
        let (origin, agent, epoch) = sources[*s];
        let seq = last_seq[*s].wrapping_add(unzigzag(r.varint()?) as u64);
        last_seq[*s] = seq;
        let origin = regions[origin].clone();
        let mut visited = Regions::with_capacity(after.len() + 1);
        if flags & AFTER_ORIGIN != 0 {
            visited.push(origin.clone());
        }
        visited.extend(after.iter().cloned());
        let hops = if flags & HOPS_IMPLIED == 0 {
            r.u32()?
        } else {
            u32::try_from(visited.len()).map_err(|_| bad("too many visited regions"))?
        };
        let dests = dests.clone();
        let transit_ms = r.varint()?;
        let topic = topics[r.index(topics.len())?].clone();
        let payload = r.bytes()?;
        let properties = if flags & PROPS != 0 {
            read_properties(r)?
        } else {
            Properties::default()
        };
        Ok(Envelope {
            origin,
            origin_node: nodes[agent].clone(),
            epoch,
            seq,
            hops,
            visited,
            transit_ms,
            dests,
            message: Message {
                topic,
                payload,
                qos,
                retain: flags & RETAIN != 0,
                properties,
            },
        })
    })?;
    if r.buf.has_remaining() {
        return Err(bad("bytes after the last envelope"));
    }
    Ok(DataBatch {
        first_seq,
        envelopes,
    })
}

fn read_properties(r: &mut Reader) -> Result<Properties, FrameError> {
    let user = r.table(|r| Ok((r.str()?, r.str()?)))?;
    let present = r.u8()?;
    let has = |bit: u8| present & bit != 0;
    Ok(Properties {
        user,
        content_type: has(P_CONTENT_TYPE).then(|| r.str()).transpose()?,
        payload_utf8: has(P_UTF8).then_some(has(P_UTF8_TRUE)),
        response_topic: has(P_RESPONSE)
            .then(|| topic("response_topic", r.str()?))
            .transpose()?,
        correlation_data: has(P_CORRELATION).then(|| r.bytes()).transpose()?,
        message_expiry_secs: has(P_EXPIRY).then(|| r.u32()).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use proptest::prelude::*;

    use super::*;
    use crate::frame::{
        Frame, decode as decode_frame, decode_with, encode as encode_frame, encode_with,
    };

    fn r(s: &str) -> RegionName {
        RegionName::new(s).unwrap()
    }

    fn env(origin: &str, agent: &str, epoch: u64, seq: u64, topic: &str) -> Envelope {
        Envelope {
            origin: r(origin),
            origin_node: NodeName::new(agent).unwrap(),
            epoch,
            seq,
            hops: 1,
            visited: [r(origin)].into_iter().collect(),
            transit_ms: 3,
            dests: Regions::new(),
            message: Message {
                topic: TopicName::new(topic).unwrap(),
                payload: Bytes::from(vec![7u8; 100]),
                qos: Qos::AtMostOnce,
                retain: false,
                properties: Properties::default(),
            },
        }
    }

    fn round_trip(batch: &DataBatch) -> (DataBatch, usize) {
        let mut buf = BytesMut::new();
        encode_frame(Frame::Data(batch.clone()), &mut buf);
        let len = buf.len();
        let Some(Frame::Data(back)) = decode_frame(&mut buf).unwrap() else {
            panic!("not a data batch");
        };
        assert!(buf.is_empty());
        (back, len)
    }

    #[test]
    fn a_mixed_batch_round_trips() {
        let mut a = env("eu", "eu-1", 9, 1000, "t/1");
        a.message.qos = Qos::AtLeastOnce;
        a.message.retain = true;
        a.dests = [r("ap"), r("us")].into_iter().collect();
        a.visited = [r("eu"), r("us")].into_iter().collect();
        a.hops = 2;
        let mut b = env("us", "us-2", u64::MAX, 3, "t/2");
        b.visited = [r("ap")].into_iter().collect(); // not starting with its origin
        b.message.qos = Qos::ExactlyOnce;
        b.message.properties = Properties {
            user: vec![("k".into(), "v".into()), ("k".into(), "".into())],
            content_type: Some("text/plain".into()),
            payload_utf8: Some(false),
            response_topic: Some(TopicName::new("reply/1").unwrap()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            message_expiry_secs: Some(u32::MAX),
        };
        let mut c = env("eu", "eu-1", 9, 999, "t/1"); // seq goes back
        c.message.payload = Bytes::new();
        c.visited = Regions::new();
        let mut d = env("eu", "eu-1", 10, u64::MAX, "t/3"); // another epoch
        d.message.properties.payload_utf8 = Some(true);
        let batch = DataBatch {
            first_seq: 1 << 40,
            envelopes: vec![a, b, c, d],
        };
        assert_eq!(round_trip(&batch).0, batch);
        let empty = DataBatch {
            first_seq: 0,
            envelopes: Vec::new(),
        };
        assert_eq!(round_trip(&empty).0, empty);
    }

    /// Batches of `size` sent on one stream (aliases kept both sides),
    /// decoded in order; the bytes per message.
    fn stream_cost(batches: &[DataBatch]) -> f64 {
        let (mut tx, mut rx) = (TopicAliases::default(), TopicAliases::default());
        let (mut bytes, mut messages) = (0, 0);
        for batch in batches {
            let mut buf = BytesMut::new();
            encode_with(Frame::Data(batch.clone()), &mut tx, &mut buf);
            bytes += buf.len();
            messages += batch.envelopes.len();
            let Some(Frame::Data(back)) = decode_with(&mut buf, &mut rx).unwrap() else {
                panic!("not a data batch");
            };
            assert_eq!(&back, batch);
        }
        bytes as f64 / messages as f64
    }

    fn bench_batches(qos: Qos, size: u64, topics: u64) -> Vec<DataBatch> {
        (0..10_000 / size)
            .map(|b| DataBatch {
                first_seq: b * size,
                envelopes: (b * size..(b + 1) * size)
                    .map(|i| {
                        let topic = format!("bench/topic/{}", i % topics);
                        let mut e = env(
                            "eu-west",
                            "eu-west-1",
                            0x1234_5678_9abc,
                            100_000 + i,
                            &topic,
                        );
                        e.message.qos = qos;
                        if qos != Qos::AtMostOnce {
                            e.dests = [r("us-east")].into_iter().collect();
                        }
                        e
                    })
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn a_stream_costs_under_110_bytes_per_100_byte_message() {
        for qos in [Qos::AtMostOnce, Qos::AtLeastOnce] {
            for size in [20, 500] {
                let per = stream_cost(&bench_batches(qos, size, 100));
                eprintln!("{qos:?}, batches of {size}: {per:.2} bytes per message");
                assert!(
                    per <= 110.0,
                    "{qos:?}, batches of {size}: {per} bytes per message"
                );
            }
        }
    }

    #[test]
    fn topic_aliases_start_over_at_the_bound_on_both_sides() {
        // More distinct topics than the table holds: both sides reset in
        // step and every batch still decodes to what was sent.
        let topics = 3 * ALIASES_MAX as u64 + 7;
        let batches: Vec<DataBatch> = (0..topics / 250 + 1)
            .map(|b| DataBatch {
                first_seq: b,
                envelopes: (b * 250..(b + 1) * 250)
                    .map(|i| env("eu", "eu-1", 1, i, &format!("t/{i}")))
                    .collect(),
            })
            .collect();
        stream_cost(&batches);
        let mut tx = TopicAliases::default();
        for b in &batches {
            encode(b, &mut tx, &mut BytesMut::new());
            assert!(tx.ids.len() < ALIASES_MAX + 250);
        }
        // A peer that keeps adding past the bound without a reset is cut off.
        let mut rx = TopicAliases {
            names: vec![TopicName::new("x").unwrap(); ALIASES_MAX],
            ..TopicAliases::default()
        };
        let mut buf = BytesMut::new();
        encode(&batches[0], &mut TopicAliases::default(), &mut buf);
        let len = prost::decode_length_delimiter(&buf[..]).unwrap();
        let body = buf.split_off(buf.len() - len).freeze();
        assert_eq!(body[1], 0, "no reset flag from a fresh sender");
        assert!(matches!(
            decode(body, &mut rx),
            Err(FrameError::Data(
                "topic aliases past the bound without a reset"
            ))
        ));
    }

    #[test]
    fn every_truncation_and_bad_index_is_an_error() {
        let mut e = env("eu", "eu-1", 9, 5, "t/1");
        e.dests = [r("us")].into_iter().collect();
        e.message.properties.content_type = Some("x".into());
        e.message.payload = Bytes::from_static(b"21.5");
        let mut buf = BytesMut::new();
        encode(
            &DataBatch {
                first_seq: 1,
                envelopes: vec![e],
            },
            &mut TopicAliases::default(),
            &mut buf,
        );
        let body = buf.split_off(PREFIX).freeze();
        let fresh = |b: Bytes| decode(b, &mut TopicAliases::default());
        for cut in 1..body.len() {
            assert!(fresh(body.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(fresh(body.clone()).is_ok());
        let mut longer = body.to_vec();
        longer.push(0);
        assert!(matches!(
            fresh(Bytes::from(longer)),
            Err(FrameError::Data("bytes after the last envelope"))
        ));
        // A source pointing at a region that is not in the table.
        let forged = [MARKER, 0, 1, 1, 2, b'e', b'u', 1, 1, b'n', 1, 5, 0, 1];
        assert!(matches!(
            fresh(Bytes::copy_from_slice(&forged)),
            Err(FrameError::Data("table index out of range"))
        ));
        // A count far beyond the bytes left allocates nothing.
        let forged = [MARKER, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(
            fresh(Bytes::copy_from_slice(&forged)),
            Err(FrameError::Data("count exceeds the bytes left"))
        ));
        // A bad region name is a name error.
        let forged = [MARKER, 0, 1, 1, 3, b'E', b'U', b'!'];
        assert!(matches!(
            fresh(Bytes::copy_from_slice(&forged)),
            Err(FrameError::Name { .. })
        ));
    }

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        let region = prop::sample::select(vec!["eu", "us", "ap", "sa"]);
        (
            (region.clone(), 0u64..3, any::<u64>(), 0u32..8),
            prop::collection::vec(region.clone(), 0..4),
            prop::collection::vec(region, 0..3),
            (
                "[a-c]{1,2}(/[a-c]{1,2}){0,2}",
                prop::collection::vec(any::<u8>(), 0..40),
            ),
            (0u8..3, any::<bool>(), any::<u64>()),
            (
                prop::collection::vec(("[a-z]{0,3}", "[a-z]{0,3}"), 0..3),
                prop::option::of(any::<bool>()),
                prop::option::of(any::<u32>()),
            ),
        )
            .prop_map(
                |(
                    (o, node, seq, hops),
                    visited,
                    dests,
                    (topic, payload),
                    (q, retain, transit),
                    (user, utf8, expiry),
                )| {
                    Envelope {
                        origin: r(o),
                        origin_node: NodeName::new(&format!("n{node}")).unwrap(),
                        epoch: node * 1000,
                        seq,
                        hops,
                        visited: visited.into_iter().map(r).collect(),
                        transit_ms: transit,
                        dests: dests.into_iter().map(r).collect(),
                        message: Message {
                            topic: TopicName::new(&topic).unwrap(),
                            payload: Bytes::from(payload),
                            qos: [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce][q as usize],
                            retain,
                            properties: Properties {
                                user,
                                payload_utf8: utf8,
                                message_expiry_secs: expiry,
                                ..Properties::default()
                            },
                        },
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn random_batches_round_trip(
            first_seq in any::<u64>(),
            envelopes in prop::collection::vec(arb_envelope(), 0..20),
        ) {
            let batch = DataBatch { first_seq, envelopes };
            prop_assert_eq!(round_trip(&batch).0, batch);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut body = vec![MARKER];
            body.extend(bytes);
            let _ = decode(Bytes::from(body), &mut TopicAliases::default());
        }
    }
}
