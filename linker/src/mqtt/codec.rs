//! MQTT 5 wire format, the subset a client needs (OASIS MQTT 5.0 §2–3):
//! it encodes what a client sends (CONNECT, PUBLISH, the four publish
//! acknowledgements, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT) and
//! decodes what a server sends (CONNACK, PUBLISH, the acknowledgements,
//! SUBACK, UNSUBACK, PINGRESP, DISCONNECT). No I/O: bytes in, packets out.
//!
//! Decoding never panics on bad input: a packet that breaks the format
//! is a [`CodecError`] and the caller drops the connection. A PUBLISH's
//! payload and binary properties are slices of the read buffer (no copy).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Why bytes from the broker are not an MQTT 5 packet we accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The remaining-length field has more than four bytes.
    #[error("malformed remaining length")]
    BadLength,
    /// The packet is longer than we accept.
    #[error("packet of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field runs past the end of its packet.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A string is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    /// A packet type a server must not send, or reserved flags set.
    #[error("unexpected packet type {kind} (flags {flags:#x})")]
    Unexpected {
        /// The type nibble.
        kind: u8,
        /// The flags nibble.
        flags: u8,
    },
    /// QoS 3 in a PUBLISH.
    #[error("PUBLISH with QoS 3")]
    BadQos,
    /// A property identifier that MQTT 5 does not define.
    #[error("unknown property {0:#x}")]
    UnknownProperty(u8),
    /// A topic alias, which we never allow (Topic Alias Maximum 0).
    #[error("PUBLISH with a topic alias, which this client does not accept")]
    TopicAlias,
}

/// A PUBLISH, either way.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name (UTF-8, checked), a slice of the read buffer: no copy
    /// or allocation per message.
    pub topic: Utf8Bytes,
    /// Packet identifier (QoS >= 1), else 0.
    pub pkid: u16,
    /// Properties.
    pub props: PublishProps,
    /// Payload.
    pub payload: Bytes,
}

/// Bytes checked to be UTF-8, read as a `str`. Without `unsafe` (which
/// this workspace forbids) each `Deref` checks the bytes again: compare
/// [`Utf8Bytes::as_bytes`] where a byte comparison will do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// `b` if it is UTF-8.
    pub fn new(b: Bytes) -> Option<Self> {
        std::str::from_utf8(&b).is_ok().then_some(Self(b))
    }

    /// The bytes, unchecked again.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        // Checked in `new`; the fallback is never taken.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The PUBLISH properties a message carries end to end.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProps {
    /// Payload format indicator (1: UTF-8).
    pub payload_format: Option<u8>,
    /// Message expiry interval, seconds.
    pub expiry: Option<u32>,
    /// Content type.
    pub content_type: Option<String>,
    /// Response topic.
    pub response_topic: Option<String>,
    /// Correlation data.
    pub correlation: Option<Bytes>,
    /// User properties, in order.
    pub user: Vec<(String, String)>,
    /// Subscription identifiers (from the server only).
    pub sub_ids: Vec<u32>,
}

/// What the server answered to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    /// The server still had our session.
    pub session_present: bool,
    /// Reason code (0: success).
    pub reason: u8,
    /// Most QoS >= 1 publishes it takes in flight from us.
    pub receive_max: Option<u16>,
    /// Largest packet it accepts.
    pub max_packet: Option<u32>,
    /// Highest QoS it supports.
    pub max_qos: Option<u8>,
    /// Reason string.
    pub reason_string: Option<String>,
    /// Keep-alive the server imposes, seconds.
    pub server_keep_alive: Option<u16>,
}

/// A packet from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK (packet id, reason code).
    PubAck(u16, u8),
    /// PUBREC.
    PubRec(u16, u8),
    /// PUBREL.
    PubRel(u16, u8),
    /// PUBCOMP.
    PubComp(u16, u8),
    /// SUBACK (packet id, one reason code per filter).
    SubAck(u16, Vec<u8>),
    /// UNSUBACK.
    UnsubAck(u16, Vec<u8>),
    /// PINGRESP.
    PingResp,
    /// DISCONNECT (reason code).
    Disconnect(u8),
}

/// One subscription in a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The filter (or `$share/group/filter`).
    pub filter: String,
    /// Maximum QoS.
    pub qos: u8,
    /// No Local.
    pub no_local: bool,
    /// Retain As Published.
    pub retain_as_published: bool,
}

/// The CONNECT we send.
#[derive(Debug, Clone, Default)]
pub struct Connect {
    /// Client identifier.
    pub client_id: String,
    /// Clean Start.
    pub clean_start: bool,
    /// Keep-alive, seconds.
    pub keep_alive: u16,
    /// Session expiry interval, seconds.
    pub session_expiry: u32,
    /// Our Receive Maximum.
    pub receive_max: u16,
    /// Largest packet we accept.
    pub max_packet: u32,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
}

// ---------------------------------------------------------------- encoding

fn put_varint(buf: &mut BytesMut, mut v: usize) {
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        buf.put_u8(b);
        if v == 0 {
            return;
        }
    }
}

fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    // MQTT strings and binaries are at most 65,535 bytes; longer ones are
    // cut by the caller's size checks (topics and properties come from
    // MQTT packets, which had the same limit).
    let n = s.len().min(usize::from(u16::MAX));
    buf.put_u16(n as u16);
    buf.put_slice(&s[..n]);
}

fn str_len(s: &[u8]) -> usize {
    2 + s.len().min(usize::from(u16::MAX))
}

/// Write the fixed header, then let `body` fill exactly `len` bytes.
fn packet(buf: &mut BytesMut, first: u8, len: usize, body: impl FnOnce(&mut BytesMut)) {
    buf.reserve(1 + varint_len(len) + len);
    buf.put_u8(first);
    put_varint(buf, len);
    let start = buf.len();
    body(buf);
    debug_assert_eq!(buf.len() - start, len, "packet body length");
}

/// Properties of an outgoing PUBLISH, borrowed from the message, plus one
/// extra user property (the agent's `mqlink-origin`).
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishOut<'a> {
    /// Topic.
    pub topic: &'a str,
    /// QoS.
    pub qos: u8,
    /// RETAIN.
    pub retain: bool,
    /// Packet id (QoS >= 1).
    pub pkid: u16,
    /// Payload.
    pub payload: &'a [u8],
    /// Payload format indicator.
    pub payload_format: Option<u8>,
    /// Message expiry, seconds.
    pub expiry: Option<u32>,
    /// Content type.
    pub content_type: Option<&'a str>,
    /// Response topic.
    pub response_topic: Option<&'a str>,
    /// Correlation data.
    pub correlation: Option<&'a [u8]>,
    /// User properties.
    pub user: &'a [(String, String)],
    /// One more user property, after the others.
    pub extra_user: Option<(&'a str, &'a str)>,
}

impl PublishOut<'_> {
    fn props_len(&self) -> usize {
        let mut n = 0;
        n += self.payload_format.map_or(0, |_| 2);
        n += self.expiry.map_or(0, |_| 5);
        n += self.content_type.map_or(0, |s| 1 + str_len(s.as_bytes()));
        n += self.response_topic.map_or(0, |s| 1 + str_len(s.as_bytes()));
        n += self.correlation.map_or(0, |s| 1 + str_len(s));
        for (k, v) in self.user {
            n += 1 + str_len(k.as_bytes()) + str_len(v.as_bytes());
        }
        if let Some((k, v)) = self.extra_user {
            n += 1 + str_len(k.as_bytes()) + str_len(v.as_bytes());
        }
        n
    }

    /// Bytes the encoded packet takes.
    pub fn encoded_len(&self) -> usize {
        let body = self.body_len();
        1 + varint_len(body) + body
    }

    fn body_len(&self) -> usize {
        let props = self.props_len();
        str_len(self.topic.as_bytes())
            + if self.qos > 0 { 2 } else { 0 }
            + varint_len(props)
            + props
            + self.payload.len()
    }

    /// Append the packet to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let first = 0x30 | (self.qos.min(2) << 1) | u8::from(self.retain);
        let props = self.props_len();
        packet(buf, first, self.body_len(), |b| {
            put_str(b, self.topic.as_bytes());
            if self.qos > 0 {
                b.put_u16(self.pkid);
            }
            put_varint(b, props);
            if let Some(v) = self.payload_format {
                b.put_u8(0x01);
                b.put_u8(v);
            }
            if let Some(v) = self.expiry {
                b.put_u8(0x02);
                b.put_u32(v);
            }
            if let Some(s) = self.content_type {
                b.put_u8(0x03);
                put_str(b, s.as_bytes());
            }
            if let Some(s) = self.response_topic {
                b.put_u8(0x08);
                put_str(b, s.as_bytes());
            }
            if let Some(s) = self.correlation {
                b.put_u8(0x09);
                put_str(b, s);
            }
            for (k, v) in self
                .user
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .chain(self.extra_user)
            {
                b.put_u8(0x26);
                put_str(b, k.as_bytes());
                put_str(b, v.as_bytes());
            }
            b.put_slice(self.payload);
        });
    }
}

/// Set the DUP flag of an encoded PUBLISH (for a retransmission).
pub fn set_dup(encoded: &mut [u8]) {
    if let Some(b) = encoded.first_mut() {
        *b |= 0x08;
    }
}

/// Append a CONNECT.
pub fn connect(buf: &mut BytesMut, c: &Connect) {
    // Properties: session expiry (5), receive maximum (3), maximum packet size (5).
    let props = 5 + 3 + 5;
    let mut len = str_len(b"MQTT") + 1 + 1 + 2 + varint_len(props) + props;
    len += str_len(c.client_id.as_bytes());
    len += c.username.as_ref().map_or(0, |u| str_len(u.as_bytes()));
    len += c.password.as_ref().map_or(0, |p| str_len(p.as_bytes()));
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    packet(buf, 0x10, len, |b| {
        put_str(b, b"MQTT");
        b.put_u8(5);
        b.put_u8(flags);
        b.put_u16(c.keep_alive);
        put_varint(b, props);
        b.put_u8(0x11);
        b.put_u32(c.session_expiry);
        b.put_u8(0x21);
        b.put_u16(c.receive_max.max(1));
        b.put_u8(0x27);
        b.put_u32(c.max_packet.max(1));
        put_str(b, c.client_id.as_bytes());
        if let Some(u) = &c.username {
            put_str(b, u.as_bytes());
        }
        if let Some(p) = &c.password {
            put_str(b, p.as_bytes());
        }
    });
}

/// Which publish acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// PUBACK (QoS 1).
    PubAck,
    /// PUBREC (QoS 2, first half).
    PubRec,
    /// PUBREL (QoS 2, from the sender).
    PubRel,
    /// PUBCOMP (QoS 2, second half).
    PubComp,
}

/// Append a publish acknowledgement with reason Success (the short form:
/// packet id only, MQTT 5 §3.4.2.1).
pub fn ack(buf: &mut BytesMut, kind: AckKind, pkid: u16) {
    let first = match kind {
        AckKind::PubAck => 0x40,
        AckKind::PubRec => 0x50,
        AckKind::PubRel => 0x62,
        AckKind::PubComp => 0x70,
    };
    buf.reserve(4);
    buf.put_u8(first);
    buf.put_u8(2);
    buf.put_u16(pkid);
}

/// Append a SUBSCRIBE.
pub fn subscribe(buf: &mut BytesMut, pkid: u16, subs: &[Subscription]) {
    let len = 2
        + 1
        + subs
            .iter()
            .map(|s| str_len(s.filter.as_bytes()) + 1)
            .sum::<usize>();
    packet(buf, 0x82, len, |b| {
        b.put_u16(pkid);
        put_varint(b, 0);
        for s in subs {
            put_str(b, s.filter.as_bytes());
            // Retain Handling 0: send retained messages at subscribe.
            let opts = s.qos.min(2)
                | if s.no_local { 0x04 } else { 0 }
                | if s.retain_as_published { 0x08 } else { 0 };
            b.put_u8(opts);
        }
    });
}

/// Append an UNSUBSCRIBE.
pub fn unsubscribe(buf: &mut BytesMut, pkid: u16, filters: &[String]) {
    let len = 2 + 1 + filters.iter().map(|f| str_len(f.as_bytes())).sum::<usize>();
    packet(buf, 0xA2, len, |b| {
        b.put_u16(pkid);
        put_varint(b, 0);
        for f in filters {
            put_str(b, f.as_bytes());
        }
    });
}

/// Append a PINGREQ.
pub fn pingreq(buf: &mut BytesMut) {
    buf.put_slice(&[0xC0, 0]);
}

/// Append a DISCONNECT with reason Normal (session kept per its expiry).
pub fn disconnect(buf: &mut BytesMut) {
    buf.put_slice(&[0xE0, 0]);
}

// ---------------------------------------------------------------- decoding

/// Cursor over one packet's bytes.
struct Cur(Bytes);

impl Cur {
    fn need(&self, n: usize, what: &'static str) -> Result<(), CodecError> {
        if self.0.remaining() < n {
            Err(CodecError::Truncated(what))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        self.need(1, what)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, CodecError> {
        self.need(2, what)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        self.need(4, what)?;
        Ok(self.0.get_u32())
    }
    fn varint(&mut self, what: &'static str) -> Result<u32, CodecError> {
        let mut v: u32 = 0;
        for i in 0..4 {
            let b = self.u8(what)?;
            v |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::BadLength)
    }
    fn bin(&mut self, what: &'static str) -> Result<Bytes, CodecError> {
        let n = usize::from(self.u16(what)?);
        self.need(n, what)?;
        Ok(self.0.split_to(n))
    }
    fn utf8(&mut self, what: &'static str) -> Result<Utf8Bytes, CodecError> {
        Utf8Bytes::new(self.bin(what)?).ok_or(CodecError::Utf8(what))
    }
    fn string(&mut self, what: &'static str) -> Result<String, CodecError> {
        let b = self.bin(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| CodecError::Utf8(what))
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<Cur, CodecError> {
        self.need(n, what)?;
        Ok(Cur(self.0.split_to(n)))
    }
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.0)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One property as read.
enum Prop {
    Byte(u8, u8),
    Short(u8, u16),
    Int(u8, u32),
    Str(u8, String),
    Bin(u8, Bytes),
    Pair(String, String),
}

/// Read a property block (length, then properties) and hand each to `f`.
fn props(c: &mut Cur, mut f: impl FnMut(Prop)) -> Result<(), CodecError> {
    let n = c.varint("property length")? as usize;
    let mut p = c.take(n, "properties")?;
    while !p.is_empty() {
        let id = p.u8("property id")?;
        let prop = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                Prop::Byte(id, p.u8("property")?)
            }
            0x13 | 0x21 | 0x22 | 0x23 => Prop::Short(id, p.u16("property")?),
            0x02 | 0x11 | 0x18 | 0x27 => Prop::Int(id, p.u32("property")?),
            0x0B => Prop::Int(id, p.varint("subscription identifier")?),
            0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => Prop::Str(id, p.string("property")?),
            0x09 | 0x16 => Prop::Bin(id, p.bin("property")?),
            0x26 => Prop::Pair(p.string("user property")?, p.string("user property")?),
            other => return Err(CodecError::UnknownProperty(other)),
        };
        f(prop);
    }
    Ok(())
}

/// Decode one packet from the front of `buf`: `Ok(None)` until a whole
/// packet is there; packets over `max` bytes are refused.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Incoming>, CodecError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len = 0usize;
    let mut header = 1;
    loop {
        let Some(&b) = buf.get(header) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7F) << (7 * (header - 1));
        header += 1;
        if b & 0x80 == 0 {
            break;
        }
        if header > 4 {
            return Err(CodecError::BadLength);
        }
    }
    if header + len > max {
        return Err(CodecError::TooLarge {
            len: header + len,
            max,
        });
    }
    if buf.len() < header + len {
        buf.reserve(header + len - buf.len());
        return Ok(None);
    }
    let first = buf[0];
    buf.advance(header);
    let mut c = Cur(buf.split_to(len).freeze());
    let (kind, flags) = (first >> 4, first & 0x0F);
    let unexpected = CodecError::Unexpected { kind, flags };
    let packet = match (kind, flags) {
        (2, 0) => Incoming::ConnAck(connack(&mut c)?),
        (3, _) => Incoming::Publish(publish(&mut c, flags)?),
        (4, 0) | (5, 0) | (6, 2) | (7, 0) => {
            let id = c.u16("packet id")?;
            let r = if c.is_empty() { 0 } else { c.u8("reason")? };
            match kind {
                4 => Incoming::PubAck(id, r),
                5 => Incoming::PubRec(id, r),
                6 => Incoming::PubRel(id, r),
                _ => Incoming::PubComp(id, r),
            }
        }
        (9, 0) | (11, 0) => {
            let id = c.u16("packet id")?;
            props(&mut c, |_| {})?;
            let codes = c.rest().to_vec();
            if kind == 9 {
                Incoming::SubAck(id, codes)
            } else {
                Incoming::UnsubAck(id, codes)
            }
        }
        (13, 0) => Incoming::PingResp,
        (14, 0) => Incoming::Disconnect(if c.is_empty() { 0 } else { c.u8("reason")? }),
        _ => return Err(unexpected),
    };
    Ok(Some(packet))
}

fn connack(c: &mut Cur) -> Result<ConnAck, CodecError> {
    let mut a = ConnAck {
        session_present: c.u8("connack flags")? & 1 == 1,
        reason: c.u8("connack reason")?,
        ..ConnAck::default()
    };
    if c.is_empty() {
        return Ok(a);
    }
    props(c, |p| match p {
        Prop::Short(0x21, v) => a.receive_max = Some(v),
        Prop::Int(0x27, v) => a.max_packet = Some(v),
        Prop::Byte(0x24, v) => a.max_qos = Some(v),
        Prop::Str(0x1F, s) => a.reason_string = Some(s),
        Prop::Short(0x13, v) => a.server_keep_alive = Some(v),
        _ => {}
    })?;
    Ok(a)
}

fn publish(c: &mut Cur, flags: u8) -> Result<Publish, CodecError> {
    let qos = (flags >> 1) & 3;
    if qos == 3 {
        return Err(CodecError::BadQos);
    }
    let mut p = Publish {
        dup: flags & 0x08 != 0,
        qos,
        retain: flags & 1 != 0,
        topic: c.utf8("topic")?,
        ..Publish::default()
    };
    if qos > 0 {
        p.pkid = c.u16("packet id")?;
    }
    let mut alias = false;
    let pr = &mut p.props;
    props(c, |prop| match prop {
        Prop::Byte(0x01, v) => pr.payload_format = Some(v),
        Prop::Int(0x02, v) => pr.expiry = Some(v),
        Prop::Str(0x03, s) => pr.content_type = Some(s),
        Prop::Str(0x08, s) => pr.response_topic = Some(s),
        Prop::Bin(0x09, b) => pr.correlation = Some(b),
        Prop::Pair(k, v) => pr.user.push((k, v)),
        Prop::Int(0x0B, v) => pr.sub_ids.push(v),
        Prop::Short(0x23, _) => alias = true,
        _ => {}
    })?;
    if alias {
        return Err(CodecError::TopicAlias);
    }
    p.payload = c.rest();
    Ok(p)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    fn one(bytes: &[u8]) -> Result<Option<Incoming>, CodecError> {
        let mut b = BytesMut::from(bytes);
        decode(&mut b, 1 << 20)
    }

    #[test]
    fn a_publish_round_trips_with_every_property() {
        let user = vec![("k".to_owned(), "v".to_owned())];
        let out = PublishOut {
            topic: "a/b",
            qos: 1,
            retain: true,
            pkid: 7,
            payload: b"hello",
            payload_format: Some(1),
            expiry: Some(30),
            content_type: Some("text/plain"),
            response_topic: Some("r/t"),
            correlation: Some(b"\x00\x01"),
            user: &user,
            extra_user: Some(("mqlink-origin", "eu:1:2")),
        };
        let mut buf = BytesMut::new();
        out.encode(&mut buf);
        assert_eq!(buf.len(), out.encoded_len());
        let Some(Incoming::Publish(p)) = decode(&mut buf, 1 << 20).unwrap() else {
            panic!("not a publish");
        };
        assert!(buf.is_empty());
        assert_eq!((p.qos, p.retain, p.dup, p.pkid), (1, true, false, 7));
        assert_eq!(&*p.topic, "a/b");
        assert_eq!(&p.payload[..], b"hello");
        assert_eq!(p.props.payload_format, Some(1));
        assert_eq!(p.props.expiry, Some(30));
        assert_eq!(p.props.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.props.response_topic.as_deref(), Some("r/t"));
        assert_eq!(p.props.correlation.as_deref(), Some(&b"\x00\x01"[..]));
        assert_eq!(
            p.props.user,
            vec![
                ("k".to_owned(), "v".to_owned()),
                ("mqlink-origin".to_owned(), "eu:1:2".to_owned())
            ]
        );
    }

    #[test]
    fn dup_is_set_on_a_retransmission() {
        let mut buf = BytesMut::new();
        PublishOut {
            topic: "t",
            qos: 2,
            pkid: 1,
            ..Default::default()
        }
        .encode(&mut buf);
        set_dup(&mut buf);
        let Some(Incoming::Publish(p)) = decode(&mut buf, 1 << 20).unwrap() else {
            panic!()
        };
        assert!(p.dup);
        assert_eq!(p.qos, 2);
    }

    #[test]
    fn partial_packets_wait_for_the_rest() {
        let mut whole = BytesMut::new();
        PublishOut {
            topic: "x/y",
            qos: 0,
            payload: &[7; 300],
            ..Default::default()
        }
        .encode(&mut whole);
        let mut buf = BytesMut::new();
        for (i, b) in whole.iter().enumerate() {
            buf.put_u8(*b);
            let got = decode(&mut buf, 1 << 20).unwrap();
            assert_eq!(got.is_some(), i == whole.len() - 1, "at byte {i}");
        }
    }

    #[test]
    fn connack_with_properties() {
        // session present, success, props: receive max 20, max qos 1, reason string "ok"
        let bytes = [
            0x20, 13, 1, 0, 10, 0x21, 0, 20, 0x24, 1, 0x1F, 0, 2, b'o', b'k',
        ];
        let got = one(&bytes[..]).unwrap().unwrap();
        let Incoming::ConnAck(a) = got else { panic!() };
        assert!(a.session_present);
        assert_eq!(a.receive_max, Some(20));
        assert_eq!(a.max_qos, Some(1));
        assert_eq!(a.reason_string.as_deref(), Some("ok"));
        // MQTT 3-style short CONNACK (no properties) also decodes.
        assert!(matches!(
            one(&[0x20, 2, 0, 0]),
            Ok(Some(Incoming::ConnAck(_)))
        ));
    }

    #[test]
    fn acks_short_and_long_forms() {
        assert_eq!(one(&[0x40, 2, 0, 5]).unwrap(), Some(Incoming::PubAck(5, 0)));
        assert_eq!(
            one(&[0x40, 4, 0, 5, 0x87, 0]).unwrap(),
            Some(Incoming::PubAck(5, 0x87))
        );
        assert_eq!(
            one(&[0x62, 2, 1, 0]).unwrap(),
            Some(Incoming::PubRel(256, 0))
        );
        assert_eq!(
            one(&[0x90, 5, 0, 9, 0, 1, 0x80]).unwrap(),
            Some(Incoming::SubAck(9, vec![1, 0x80]))
        );
        assert_eq!(one(&[0xD0, 0]).unwrap(), Some(Incoming::PingResp));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(one(&[0x36, 2, 0, 0]), Err(CodecError::BadQos));
        assert_eq!(
            one(&[0x10, 0]),
            Err(CodecError::Unexpected { kind: 1, flags: 0 })
        );
        assert_eq!(
            one(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 1]),
            Err(CodecError::BadLength)
        );
        assert!(matches!(
            one(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]),
            Err(CodecError::TooLarge { .. })
        ));
        // Topic length runs past the packet.
        assert_eq!(one(&[0x30, 2, 0, 9]), Err(CodecError::Truncated("topic")));
        // Topic alias (0x23) refused.
        assert_eq!(
            one(&[0x30, 6, 0, 1, b't', 3, 0x23, 0]),
            Err(CodecError::Truncated("properties"))
        );
        assert_eq!(
            one(&[0x30, 7, 0, 1, b't', 3, 0x23, 0, 1]),
            Err(CodecError::TopicAlias)
        );
    }

    #[test]
    fn connect_and_subscribe_encode_as_the_spec_lays_out() {
        let mut buf = BytesMut::new();
        connect(
            &mut buf,
            &Connect {
                client_id: "c".into(),
                clean_start: false,
                keep_alive: 30,
                session_expiry: 60,
                receive_max: 1000,
                max_packet: 1 << 20,
                username: Some("u".into()),
                password: Some("p".into()),
            },
        );
        assert_eq!(buf[0], 0x10);
        assert_eq!(usize::from(buf[1]), buf.len() - 2);
        assert_eq!(&buf[2..8], b"\x00\x04MQTT");
        assert_eq!(buf[8], 5);
        assert_eq!(buf[9], 0xC0, "username + password, no clean start");
        let mut buf = BytesMut::new();
        subscribe(
            &mut buf,
            3,
            &[Subscription {
                filter: "a/#".into(),
                qos: 2,
                no_local: true,
                retain_as_published: true,
            }],
        );
        assert_eq!(&buf[..], &[0x82, 9, 0, 3, 0, 0, 3, b'a', b'/', b'#', 0x0E]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..300 {
                match decode(&mut buf, 4096) {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn publishes_round_trip(topic in "[a-z/]{1,20}", qos in 0u8..3, pkid in 1u16.., payload in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut buf = BytesMut::new();
            PublishOut { topic: &topic, qos, pkid, payload: &payload, ..Default::default() }.encode(&mut buf);
            let Some(Incoming::Publish(p)) = decode(&mut buf, 1 << 20).unwrap() else { panic!() };
            prop_assert_eq!(&*p.topic, topic.as_str());
            prop_assert_eq!(p.qos, qos);
            prop_assert_eq!(p.pkid, if qos > 0 { pkid } else { 0 });
            prop_assert_eq!(&p.payload[..], &payload[..]);
        }
    }
}
