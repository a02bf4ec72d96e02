//! What one subscriber received, sans IO: which messages (a bitset per
//! publisher), duplicates, reordering within a (publisher, topic) stream,
//! and latency from the timestamp in each payload (an HDR histogram).
//!
//! Payload layout (big-endian): `publisher:u32 topic:u32 seq:u64
//! sent_ns:u64`, then filler up to the payload size. Publisher
//! [`WARM_PUBLISHER`] marks warm-up messages, which count for nothing.

use hdrhistogram::Histogram;

/// Bytes of the header every bench payload starts with.
pub const HEADER: usize = 24;
/// The publisher id of warm-up messages.
pub const WARM_PUBLISHER: u32 = u32::MAX;
/// Largest latency kept in the histogram, in microseconds (a minute).
const MAX_LATENCY_US: u64 = 60_000_000;

/// A bench payload's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Which publisher sent it.
    pub publisher: u32,
    /// Its topic's index.
    pub topic: u32,
    /// The publisher's sequence number.
    pub seq: u64,
    /// When it was sent, in ns on the bench's clock.
    pub sent_ns: u64,
}

impl Stamp {
    /// Write the header into the front of `payload` (at least [`HEADER`] bytes).
    pub fn write(&self, payload: &mut [u8]) {
        payload[0..4].copy_from_slice(&self.publisher.to_be_bytes());
        payload[4..8].copy_from_slice(&self.topic.to_be_bytes());
        payload[8..16].copy_from_slice(&self.seq.to_be_bytes());
        payload[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Read the header; `None` when the payload is not a bench payload.
    pub fn read(payload: &[u8]) -> Option<Self> {
        let h = payload.get(..HEADER)?;
        let u32_at = |i: usize| h[i..i + 4].try_into().ok().map(u32::from_be_bytes);
        let u64_at = |i: usize| h[i..i + 8].try_into().ok().map(u64::from_be_bytes);
        Some(Self {
            publisher: u32_at(0)?,
            topic: u32_at(4)?,
            seq: u64_at(8)?,
            sent_ns: u64_at(16)?,
        })
    }
}

/// Which topic a publisher's message `seq` goes to: publishers start at
/// different topics and go round them all.
pub fn topic_of(publisher: u32, seq: u64, topics: u32) -> u32 {
    ((seq + u64::from(publisher)) % u64::from(topics.max(1))) as u32
}

/// How many of a publisher's first `sent` messages go to topics
/// `0..matched` (the ones every subscriber wants).
pub fn expected(publisher: u32, sent: u64, topics: u32, matched: u32) -> u64 {
    let t = u64::from(topics.max(1));
    let m = u64::from(matched.min(topics));
    let offset = u64::from(publisher) % t;
    // Message `s` goes to (s + offset) % t: count s in [0, sent) with that below m.
    let shifted = |n: u64| -> u64 {
        // count of x in [offset, offset + n) with x % t < m
        let upto = |x: u64| (x / t) * m + (x % t).min(m);
        upto(offset + n) - upto(offset)
    };
    shifted(sent)
}

/// One subscriber's accounting.
#[derive(Debug)]
pub struct Tally {
    /// Per publisher: a bit per sequence number seen.
    seen: Vec<Vec<u64>>,
    /// Per publisher and topic: the highest sequence seen + 1.
    last: Vec<Vec<u64>>,
    /// Warm-up topics seen (a bit each).
    warm: Vec<u64>,
    topics: u32,
    /// Messages received (with duplicates).
    pub received: u64,
    /// Messages received more than once.
    pub duplicates: u64,
    /// Messages that arrived after a later one of the same stream.
    pub reordered: u64,
    /// Payloads that are not the bench's (counted, ignored).
    pub foreign: u64,
    /// Latency in µs of first receipts.
    pub latency: Histogram<u64>,
    /// Receive time of the first and last counted message (ns).
    pub first_ns: Option<u64>,
    /// See `first_ns`.
    pub last_ns: u64,
}

fn bit(set: &mut Vec<u64>, i: u64) -> bool {
    let (w, b) = ((i / 64) as usize, i % 64);
    if set.len() <= w {
        set.resize(w + 1, 0);
    }
    let was = set[w] & (1 << b) != 0;
    set[w] |= 1 << b;
    was
}

impl Tally {
    /// An empty tally for `publishers` publishers over `topics` topics.
    pub fn new(publishers: u32, topics: u32) -> Self {
        // 3 significant figures from 1 µs to a minute: ~100 KB.
        let latency = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .unwrap_or_else(|_| unreachable!("constant bounds are valid"));
        Self {
            seen: vec![Vec::new(); publishers as usize],
            last: vec![vec![0; topics as usize]; publishers as usize],
            warm: Vec::new(),
            topics,
            received: 0,
            duplicates: 0,
            reordered: 0,
            foreign: 0,
            latency,
            first_ns: None,
            last_ns: 0,
        }
    }

    /// Count one message received at `now_ns`; `true` if it was a warm-up
    /// message seen on a new topic.
    pub fn handle(&mut self, now_ns: u64, payload: &[u8]) -> bool {
        let Some(s) = Stamp::read(payload) else {
            self.foreign += 1;
            return false;
        };
        if s.publisher == WARM_PUBLISHER {
            return s.topic < self.topics && !bit(&mut self.warm, u64::from(s.topic));
        }
        let (Some(seen), Some(last)) = (
            self.seen.get_mut(s.publisher as usize),
            self.last
                .get_mut(s.publisher as usize)
                .and_then(|l| l.get_mut(s.topic as usize)),
        ) else {
            self.foreign += 1;
            return false;
        };
        self.received += 1;
        if bit(seen, s.seq) {
            self.duplicates += 1;
            return false;
        }
        if s.seq < *last {
            self.reordered += 1;
        } else {
            *last = s.seq + 1;
        }
        let us = now_ns.saturating_sub(s.sent_ns) / 1000;
        self.latency.saturating_record(us.clamp(1, MAX_LATENCY_US));
        self.first_ns.get_or_insert(now_ns);
        self.last_ns = now_ns;
        false
    }

    /// Distinct messages received.
    pub fn unique(&self) -> u64 {
        self.received - self.duplicates
    }

    /// Warm-up topics seen so far.
    pub fn warm_topics(&self) -> u64 {
        self.warm.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Add another subscriber's tally to this one.
    pub fn merge(&mut self, other: &Tally) {
        self.received += other.received;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.foreign += other.foreign;
        let _ = self.latency.add(&other.latency);
        self.first_ns = match (self.first_ns, other.first_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_ns = self.last_ns.max(other.last_ns);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use proptest::prelude::*;

    use super::*;

    fn payload(publisher: u32, topic: u32, seq: u64, sent_ns: u64) -> Vec<u8> {
        let mut p = vec![b'x'; 100];
        Stamp {
            publisher,
            topic,
            seq,
            sent_ns,
        }
        .write(&mut p);
        p
    }

    #[test]
    fn duplicates_reordering_and_latency_are_counted() {
        let mut t = Tally::new(2, 4);
        t.handle(5_000, &payload(0, 1, 0, 1_000));
        t.handle(9_000, &payload(0, 1, 4, 1_000));
        t.handle(9_500, &payload(0, 1, 3, 1_000)); // late
        t.handle(9_600, &payload(0, 1, 4, 1_000)); // again
        t.handle(9_700, &payload(1, 2, 4, 1_000)); // another publisher
        t.handle(9_800, b"not ours");
        assert_eq!(
            (t.received, t.duplicates, t.reordered, t.foreign),
            (5, 1, 1, 1)
        );
        assert_eq!(t.unique(), 4);
        assert_eq!(t.latency.len(), 4);
        assert_eq!(t.latency.min(), 4);
        assert!(t.handle(1, &payload(WARM_PUBLISHER, 3, 0, 0)));
        assert!(!t.handle(1, &payload(WARM_PUBLISHER, 3, 0, 0)));
        assert_eq!(t.warm_topics(), 1);
        assert_eq!(t.received, 5, "warm-up messages count for nothing");
    }

    proptest! {
        #[test]
        fn expected_counts_what_goes_to_the_matched_topics(
            publisher in 0u32..7, sent in 0u64..500, topics in 1u32..20, matched in 0u32..25,
        ) {
            let naive = (0..sent)
                .filter(|s| topic_of(publisher, *s, topics) < matched)
                .count() as u64;
            prop_assert_eq!(expected(publisher, sent, topics, matched), naive);
        }

        #[test]
        fn stamps_round_trip(p in any::<u32>(), t in any::<u32>(), s in any::<u64>(), n in any::<u64>()) {
            let b = payload(p, t, s, n);
            prop_assert_eq!(Stamp::read(&b), Some(Stamp { publisher: p, topic: t, seq: s, sent_ns: n }));
        }
    }
}
