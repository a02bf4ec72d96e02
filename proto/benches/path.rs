//! The data path's sans-IO costs, per message (criterion):
//!
//! - `codec/encode_batch_64` and `codec/decode_batch_64`: a data batch of
//!   64 envelopes (100-byte payloads over 100 topics) through the lean
//!   batch encoding with per-stream topic aliases, as a link stream
//!   carries them;
//! - `forward/decide`: the forwarding decision at the origin for one
//!   message (`handle_publish` with a warm route cache, then the batch
//!   taken with `poll_transmit`);
//! - `path/qos0_64` and `path/qos1_64`: 64 messages from one core to
//!   another through the wire format: origin decision, encode, decode,
//!   delivery at the destination, and at QoS 1 the custody acks back and
//!   the broker's acknowledgements.
//!
//! Run: `cargo bench -p mqlink-proto --bench path`. Throughput is in
//! messages (elements), so criterion prints messages per second.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark code

#[path = "../tests/net/mod.rs"]
mod net;

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mqlink_proto::{Event, Frame, Qos, TopicAliases, decode_with, encode_with};
use mqlink_topology::TopicName;
use net::Net;

const BATCH: usize = 64;

/// Two warm regions, b wanting every `bench/<i>`.
fn pair() -> Net {
    let mut net = Net::new(&["a", "b"], &[("a", "b", 10)]);
    net.subscribe("b", "bench/+");
    net.warm();
    net
}

fn message(i: usize, qos: Qos) -> mqlink_proto::Message {
    let mut m = net::msg(&format!("bench/{}", i % 100));
    m.payload = Bytes::from(vec![b'x'; 100]);
    m.qos = qos;
    m
}

/// A data batch of `BATCH` envelopes as the origin sends it.
fn batch() -> Frame {
    let mut net = pair();
    let now = net.now;
    for i in 0..BATCH {
        net.agent("a")
            .handle_publish(now, message(i, Qos::AtMostOnce), None);
    }
    loop {
        match net.agent("a").poll_transmit() {
            Some((_, f @ Frame::Data(_))) => return f,
            Some(_) => {}
            None => panic!("no data batch"),
        }
    }
}

fn codec(c: &mut Criterion) {
    let frame = batch();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(BATCH as u64));
    // Steady state: the stream's aliases already hold the topics.
    let mut aliases = TopicAliases::default();
    let mut buf = BytesMut::new();
    encode_with(frame.clone(), &mut aliases, &mut buf);
    buf.clear();
    g.bench_function("encode_batch_64", |b| {
        b.iter_batched(
            || frame.clone(),
            |f| {
                encode_with(f, &mut aliases, &mut buf);
                black_box(buf.len());
                buf.clear();
            },
            BatchSize::SmallInput,
        )
    });
    let mut enc_aliases = TopicAliases::default();
    let mut first = BytesMut::new();
    encode_with(frame.clone(), &mut enc_aliases, &mut first);
    let mut wire = BytesMut::new();
    encode_with(frame.clone(), &mut enc_aliases, &mut wire);
    let mut dec_aliases = TopicAliases::default();
    decode_with(&mut first, &mut dec_aliases).unwrap().unwrap();
    let wire = wire.freeze();
    g.bench_function("decode_batch_64", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            black_box(decode_with(&mut buf, &mut dec_aliases).unwrap().unwrap());
        })
    });
    g.finish();
}

fn forward(c: &mut Criterion) {
    let mut net = pair();
    let now = net.now;
    let topics: Vec<_> = (0..100).map(|i| message(i, Qos::AtMostOnce)).collect();
    let mut g = c.benchmark_group("forward");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("decide", |b| {
        b.iter(|| {
            i += 1;
            let agent = net.agent("a");
            black_box(agent.handle_publish(now, topics[i % 100].clone(), None));
            while let Some(t) = agent.poll_transmit() {
                black_box(t);
            }
        })
    });
    g.finish();
}

/// Move every frame between the two cores through the wire format, and
/// answer every event as a broker that acknowledges at once would.
fn exchange(net: &mut Net, aliases: &mut [TopicAliases; 4], buf: &mut BytesMut) -> usize {
    let now = net.now;
    let mut delivered = 0;
    loop {
        let mut moved = false;
        for (from, to, k) in [("a", "b", 0), ("b", "a", 2)] {
            while let Some((_, frame)) = net.agent(from).poll_transmit() {
                moved = true;
                let back = net.id(to, from).unwrap();
                let (enc, dec) = aliases.split_at_mut(k + 1);
                encode_with(frame, &mut enc[k], buf);
                let frame = decode_with(buf, &mut dec[0]).unwrap().unwrap();
                net.agent(to).handle_frame(now, &back, frame);
            }
            while let Some(ev) = net.agent(from).poll_event() {
                moved = true;
                match ev {
                    Event::Deliver { custody, .. } => {
                        delivered += 1;
                        if let Some(c) = custody {
                            net.agent(from).handle_delivered(now, c);
                        }
                    }
                    Event::Mark { custody, .. } => net.agent(from).handle_marked(now, custody),
                    _ => {}
                }
            }
        }
        if !moved {
            return delivered;
        }
    }
}

fn path(c: &mut Criterion) {
    let mut g = c.benchmark_group("path");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, qos) in [("qos0_64", Qos::AtMostOnce), ("qos1_64", Qos::AtLeastOnce)] {
        let mut net = pair();
        let mut aliases: [TopicAliases; 4] = Default::default();
        let mut buf = BytesMut::new();
        let msgs: Vec<_> = (0..BATCH).map(|i| message(i, qos)).collect();
        let mut token = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                let now = net.now;
                for m in &msgs {
                    token += 1;
                    let t = (qos != Qos::AtMostOnce).then_some(token);
                    net.agent("a").handle_publish(now, m.clone(), t);
                }
                let n = exchange(&mut net, &mut aliases, &mut buf);
                assert_eq!(n, BATCH);
                // The origin's broker releases (acks) what it was told to.
                while net.agent("a").poll_event().is_some() {}
            })
        });
    }
    g.finish();
    let _ = TopicName::new("bench/0");
}

criterion_group!(benches, codec, forward, path);
criterion_main!(benches);
