//! Dynamic interest from the `mqlink_interest` Mosquitto plugin
//! (`deploy/mosquitto/mqlink_interest.c`): the broker's own subscription
//! table, handed over as a snapshot on request and then as sequenced
//! deltas, so the agent knows every subscription whenever it (re)connects:
//! those made before it started, offline persistent sessions, sessions
//! restored by a broker restart.
//!
//! The session subscribes to [`PLUGIN_TOPIC`] and asks for a snapshot on
//! [`SYNC_TOPIC`] at every connection (and again whenever a delta is
//! missing or the plugin restarted). A snapshot replaces the plugin's
//! share of the interest by difference, one filter at a time, so the
//! region's interest never flaps to empty while it is exchanged. Until
//! the first snapshot arrives the `$SYS` log follower
//! ([`crate::mosquitto`]) stands in; once it does, what the follower
//! contributed is withdrawn and the follower only relays the broker's
//! "Expiring client" lines to the plugin ([`EXPIRED_TOPIC`]), since the
//! 2.0 plugin API does not show a session's expiry interval.
//!
//! Message layout (big-endian; strings are a u16 length and the bytes):
//! `"MQI1" kind:u8 epoch:u64 seq:u64`, then for a snapshot part (kind 1)
//! `last:u8 n:u32 n*string`, for a delta (kind 2) `adds:u32 removes:u32`
//! and the strings. This is a sans-IO parser: payloads in, changes out.

use std::collections::BTreeSet;

use mqlink_topology::TopicFilter;

use crate::mosquitto::Change;

/// Where the plugin publishes snapshots and deltas.
pub const PLUGIN_TOPIC: &str = "$mqlink/interest";
/// Where the agent asks for a snapshot.
pub const SYNC_TOPIC: &str = "$mqlink/interest/sync";
/// Where the agent relays "this offline session expired" (its client id).
pub const EXPIRED_TOPIC: &str = "$mqlink/interest/expired";

/// What one message from the plugin asks of the session.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Feed {
    /// Interest changes, in order.
    pub changes: Vec<Change>,
    /// Ask for a snapshot (a delta is missing, the plugin restarted, or
    /// the message was unreadable).
    pub resync: bool,
    /// The first snapshot was applied: the plugin is the source from now.
    pub activated: bool,
    /// Filters in the message that are not valid filters (skipped).
    pub invalid: usize,
}

/// The plugin's share of the interest, as applied.
#[derive(Debug, Default)]
pub struct PluginFeed {
    /// The plugin start the applied state belongs to, and its seq.
    at: Option<(u64, u64)>,
    /// Filters the plugin reported, as applied.
    filters: BTreeSet<TopicFilter>,
    /// A snapshot being gathered: (epoch, seq, filters so far).
    gathering: Option<(u64, u64, BTreeSet<TopicFilter>)>,
}

/// Reads big-endian fields off a payload; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    }
    /// A string as a filter: `Some(None)` when it is not a valid one.
    fn filter(&mut self) -> Option<Option<TopicFilter>> {
        let n = self.take(2)?;
        let n = usize::from(u16::from_be_bytes([n[0], n[1]]));
        let s = std::str::from_utf8(self.take(n)?).ok();
        Some(s.and_then(|s| TopicFilter::new(s).ok()))
    }
    fn filters(&mut self, n: u32, invalid: &mut usize) -> Option<Vec<TopicFilter>> {
        let mut out = Vec::new();
        for _ in 0..n {
            match self.filter()? {
                Some(f) => out.push(f),
                None => *invalid += 1,
            }
        }
        Some(out)
    }
}

impl PluginFeed {
    /// Whether a snapshot has been applied (the plugin is the source).
    pub fn active(&self) -> bool {
        self.at.is_some()
    }

    /// Take one message from [`PLUGIN_TOPIC`].
    pub fn handle(&mut self, payload: &[u8]) -> Feed {
        let mut feed = Feed::default();
        if self.read(payload, &mut feed).is_none() {
            feed.resync = true;
        }
        feed
    }

    fn read(&mut self, payload: &[u8], feed: &mut Feed) -> Option<()> {
        let mut r = Reader(payload);
        if r.take(4)? != b"MQI1" {
            return None;
        }
        let kind = r.u8()?;
        let epoch = r.u64()?;
        let seq = r.u64()?;
        match kind {
            1 => {
                let last = r.u8()? != 0;
                let n = r.u32()?;
                let part = r.filters(n, &mut feed.invalid)?;
                let g = match self.gathering.take() {
                    Some(g) if g.0 == epoch && g.1 == seq => g,
                    _ => (epoch, seq, BTreeSet::new()),
                };
                let (_, _, mut set) = g;
                set.extend(part);
                if !last {
                    self.gathering = Some((epoch, seq, set));
                    return Some(());
                }
                feed.activated = self.at.is_none();
                for f in set.difference(&self.filters) {
                    feed.changes.push(Change::Subscribe(f.clone()));
                }
                for f in self.filters.difference(&set) {
                    feed.changes.push(Change::Unsubscribe(f.clone()));
                }
                self.filters = set;
                self.at = Some((epoch, seq));
            }
            2 => {
                let adds = r.u32()?;
                let removes = r.u32()?;
                let add = r.filters(adds, &mut feed.invalid)?;
                let remove = r.filters(removes, &mut feed.invalid)?;
                match self.at {
                    Some((e, s)) if e == epoch && seq <= s => {} // already applied
                    Some((e, s)) if e == epoch && seq == s + 1 => {
                        for f in add {
                            if self.filters.insert(f.clone()) {
                                feed.changes.push(Change::Subscribe(f));
                            }
                        }
                        for f in remove {
                            if self.filters.remove(&f) {
                                feed.changes.push(Change::Unsubscribe(f));
                            }
                        }
                        self.at = Some((epoch, seq));
                    }
                    // Before the first snapshot deltas wait for it (it was
                    // asked for); after it, a gap or a new plugin start
                    // needs a fresh one.
                    None => {}
                    Some(_) => feed.resync = true,
                }
            }
            _ => return None,
        }
        Some(())
    }
}

/// The header shared by every message: magic, kind, epoch, seq.
fn header(kind: u8, epoch: u64, seq: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    b.extend_from_slice(b"MQI1");
    b.push(kind);
    b.extend_from_slice(&epoch.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b
}

/// Append a length-prefixed string; `false` (nothing written) when it is
/// longer than a u16 says, which no MQTT topic filter is.
fn put_str(b: &mut Vec<u8>, s: &str) -> bool {
    let Ok(n) = u16::try_from(s.len()) else {
        return false;
    };
    b.extend_from_slice(&n.to_be_bytes());
    b.extend_from_slice(s.as_bytes());
    true
}

/// A snapshot of `filters` at (`epoch`, `seq`), in parts of about
/// `part_bytes` each (the last one marked); the encoder's side of
/// [`PluginFeed::handle`], for brokers that speak the protocol in Rust.
pub fn encode_snapshot<'a>(
    epoch: u64,
    seq: u64,
    filters: impl IntoIterator<Item = &'a str>,
    part_bytes: usize,
) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut filters = filters.into_iter().peekable();
    loop {
        let mut body = Vec::new();
        let mut n: u32 = 0;
        while body.len() < part_bytes && n < u32::MAX {
            let Some(f) = filters.next() else { break };
            n += u32::from(put_str(&mut body, f));
        }
        let last = filters.peek().is_none();
        let mut b = header(1, epoch, seq);
        b.push(u8::from(last));
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&body);
        parts.push(b);
        if last {
            return parts;
        }
    }
}

/// The delta at (`epoch`, `seq`): filters added, filters removed.
pub fn encode_delta(epoch: u64, seq: u64, add: &[&str], remove: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    let adds = add.iter().filter(|f| put_str(&mut body, f)).count();
    let removes = remove.iter().filter(|f| put_str(&mut body, f)).count();
    let mut b = header(2, epoch, seq);
    for n in [adds, removes] {
        b.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
    }
    b.extend_from_slice(&body);
    b
}

/// The client id in a broker log line saying an offline session expired
/// (`Expiring client <id> due to timeout.`), if it is one.
pub fn expired_client(line: &str) -> Option<&str> {
    let rest = line.split_once("Expiring client ")?.1;
    rest.trim_end().strip_suffix(" due to timeout.")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use proptest::prelude::*;

    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    fn msg(kind: u8, epoch: u64, seq: u64, head: &[u8], strings: &[&str]) -> Vec<u8> {
        let mut b = b"MQI1".to_vec();
        b.push(kind);
        b.extend(epoch.to_be_bytes());
        b.extend(seq.to_be_bytes());
        b.extend(head);
        for s in strings {
            b.extend((s.len() as u16).to_be_bytes());
            b.extend(s.as_bytes());
        }
        b
    }

    fn snapshot(epoch: u64, seq: u64, last: bool, filters: &[&str]) -> Vec<u8> {
        let mut head = vec![u8::from(last)];
        head.extend((filters.len() as u32).to_be_bytes());
        msg(1, epoch, seq, &head, filters)
    }

    fn delta(epoch: u64, seq: u64, add: &[&str], remove: &[&str]) -> Vec<u8> {
        let mut head = (add.len() as u32).to_be_bytes().to_vec();
        head.extend((remove.len() as u32).to_be_bytes());
        let all: Vec<&str> = add.iter().chain(remove).copied().collect();
        msg(2, epoch, seq, &head, &all)
    }

    #[test]
    fn snapshots_and_deltas_become_changes_without_a_flap() {
        let mut p = PluginFeed::default();
        assert!(p.handle(&delta(7, 1, &["early"], &[])).changes.is_empty());
        assert!(
            p.handle(&snapshot(7, 3, false, &["a/+"]))
                .changes
                .is_empty()
        );
        let feed = p.handle(&snapshot(7, 3, true, &["b/#"]));
        assert!(feed.activated && !feed.resync);
        assert_eq!(
            feed.changes,
            [Change::Subscribe(f("a/+")), Change::Subscribe(f("b/#"))]
        );
        assert!(p.handle(&delta(7, 3, &["stale"], &[])).changes.is_empty());
        let feed = p.handle(&delta(7, 4, &["c"], &["a/+"]));
        assert_eq!(
            feed.changes,
            [Change::Subscribe(f("c")), Change::Unsubscribe(f("a/+"))]
        );
        // A gap asks for a snapshot; the snapshot moves by difference.
        assert!(p.handle(&delta(7, 6, &["d"], &[])).resync);
        let feed = p.handle(&snapshot(9, 0, true, &["b/#", "d"]));
        assert!(!feed.activated);
        assert_eq!(
            feed.changes,
            [Change::Subscribe(f("d")), Change::Unsubscribe(f("c"))]
        );
        assert!(p.active());
    }

    #[test]
    fn bad_messages_ask_for_a_snapshot_and_bad_filters_are_counted() {
        let mut p = PluginFeed::default();
        assert!(p.handle(b"junk").resync);
        let mut cut = snapshot(1, 1, true, &["a"]);
        cut.pop();
        assert!(p.handle(&cut).resync);
        let feed = p.handle(&snapshot(1, 1, true, &["a", "a/#/b", "ok"]));
        assert_eq!(feed.invalid, 1);
        assert_eq!(feed.changes.len(), 2);
    }

    #[test]
    fn expiry_lines_name_the_client() {
        assert_eq!(
            expired_client("1796232190: Expiring client dev one due to timeout."),
            Some("dev one")
        );
        assert_eq!(expired_client("1: Client x disconnected."), None);
    }

    #[test]
    fn the_encoder_speaks_what_the_feed_reads() {
        let mut p = PluginFeed::default();
        let many: Vec<String> = (0..500).map(|i| format!("dev/{i}/cmd")).collect();
        let parts = encode_snapshot(3, 9, many.iter().map(String::as_str), 1000);
        assert!(parts.len() > 5, "{} parts", parts.len());
        assert_eq!(
            parts[0],
            snapshot(
                3,
                9,
                false,
                &many[..parts_len(&parts[0])]
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
            )
        );
        let mut learned = 0;
        for part in &parts {
            learned += p.handle(part).changes.len();
        }
        assert_eq!(learned, 500);
        let feed = p.handle(&encode_delta(3, 10, &["x"], &["dev/7/cmd"]));
        assert_eq!(
            feed.changes,
            [
                Change::Subscribe(f("x")),
                Change::Unsubscribe(f("dev/7/cmd"))
            ]
        );
        assert_eq!(
            encode_delta(3, 10, &["x"], &["dev/7/cmd"]),
            delta(3, 10, &["x"], &["dev/7/cmd"])
        );
        let empty = encode_snapshot(4, 0, [], 1000);
        assert_eq!(empty, [snapshot(4, 0, true, &[])]);
    }

    /// How many filters a snapshot part holds.
    fn parts_len(part: &[u8]) -> usize {
        u32::from_be_bytes(part[22..26].try_into().unwrap()) as usize
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
            let mut p = PluginFeed::default();
            let mut b = b"MQI1".to_vec();
            b.extend(&bytes);
            let _ = p.handle(&b);
            let _ = p.handle(&bytes);
        }
    }
}
