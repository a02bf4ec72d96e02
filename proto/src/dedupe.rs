//! Duplicate suppression: a bounded sliding window of sequence numbers per
//! message source (origin region, origin node, epoch). Replays after a
//! reroute and copies that slip past the other backstops are caught here.
//!
//! The window never calls a message a duplicate unless it has seen that
//! exact (source, epoch, seq) before. Messages of one source arrive out of
//! order (several data streams, replays after a failure), so a sequence
//! number far below the newest one is not evidence of a repeat: anything
//! the window can no longer tell about is [`Seen::Unknown`], and the
//! caller delivers it (counted, so an operator sees how often the window
//! was too small). The two newest epochs of every source keep a window, so
//! a restarted agent's replays of its previous incarnation's messages are
//! still recognised.

use mqlink_topology::{NodeName, RegionName};
use rustc_hash::FxHashMap;

/// Sequence numbers remembered per source and epoch, as a bitmap (8 KiB).
pub const WINDOW: u64 = 65_536;
const WORDS: usize = (WINDOW / 64) as usize;

/// What the window says about a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time: deliver.
    New,
    /// Seen before: do not deliver again.
    Duplicate,
    /// Older than the window can tell (or from an epoch it no longer
    /// tracks): deliver, it may be new.
    Unknown,
}

#[derive(Debug, Clone)]
struct Window {
    /// The epoch this window is for.
    epoch: u64,
    /// Highest sequence number seen.
    top: u64,
    /// Bit `s % WINDOW` is set when `s` (within the window below `top`) was seen.
    bits: Box<[u64; WORDS]>,
}

impl Window {
    fn new(epoch: u64) -> Self {
        Self {
            epoch,
            top: 0,
            bits: Box::new([0; WORDS]),
        }
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn check(&mut self, seq: u64) -> Seen {
        if seq > self.top {
            // Clear the bits of the numbers that leave the window (every
            // bit when the jump is a whole window or more). Saturating: a
            // peer may send any u64.
            if seq - self.top >= WINDOW {
                self.bits.iter_mut().for_each(|w| *w = 0);
            } else {
                let mut s = self.top.saturating_add(1);
                while s <= seq {
                    let (w, b) = Self::bit(s);
                    self.bits[w] &= !b;
                    s = match s.checked_add(1) {
                        Some(n) => n,
                        None => break,
                    };
                }
            }
            self.top = seq;
            let (w, b) = Self::bit(seq);
            self.bits[w] |= b;
            return Seen::New;
        }
        if self.top - seq >= WINDOW {
            return Seen::Unknown;
        }
        let (w, b) = Self::bit(seq);
        if self.bits[w] & b != 0 {
            Seen::Duplicate
        } else {
            self.bits[w] |= b;
            Seen::New
        }
    }
}

/// The windows of one source: its newest epoch and the one before.
#[derive(Debug, Clone)]
struct Source {
    current: Window,
    previous: Option<Window>,
    /// When it was last used (the dedupe's tick), to evict the stalest.
    used: u64,
}

impl Source {
    /// Record `seq` of `epoch` (a newer epoch becomes current, the
    /// current one previous).
    fn check(&mut self, epoch: u64, seq: u64) -> Seen {
        if epoch > self.current.epoch {
            let old = std::mem::replace(&mut self.current, Window::new(epoch));
            self.previous = Some(old);
        }
        if epoch == self.current.epoch {
            return self.current.check(seq);
        }
        match self.previous.as_mut() {
            Some(w) if w.epoch == epoch => w.check(seq),
            Some(w) if w.epoch < epoch => {
                // Between the two tracked epochs: start tracking it instead.
                *w = Window::new(epoch);
                w.check(seq)
            }
            _ => Seen::Unknown,
        }
    }
}

/// Most sources (origin region, origin node) tracked: 16 KiB each at
/// most, so at most 64 MiB whatever origins peers name. Past it the
/// least recently used source is forgotten (its later messages are
/// [`Seen::Unknown`]: delivered and counted, never dropped).
pub const MAX_SOURCES: usize = 4096;

/// One message's dedupe key: its source and sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mark {
    /// Origin region.
    pub origin: RegionName,
    /// Origin node.
    pub node: NodeName,
    /// The origin agent's epoch.
    pub epoch: u64,
    /// Its sequence number there.
    pub seq: u64,
}

/// One window's whole state, for a durable copy of the windows
/// ([`Dedupe::windows`], [`Dedupe::restore`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowState {
    /// Origin region.
    pub origin: RegionName,
    /// Origin node.
    pub node: NodeName,
    /// The epoch.
    pub epoch: u64,
    /// Highest sequence number seen.
    pub top: u64,
    /// The bitmap, [`WINDOW`] / 64 words.
    pub bits: Vec<u64>,
}

/// One window per (origin region, origin node) and epoch (the two newest).
#[derive(Debug, Default, Clone)]
pub struct Dedupe {
    /// Windows by origin region, then node.
    sources: FxHashMap<RegionName, FxHashMap<NodeName, Source>>,
    /// Sources tracked.
    count: usize,
    /// Bumped on every check (recency for eviction).
    tick: u64,
}

impl Dedupe {
    /// Start tracking (origin, node) at `epoch` (evicting the stalest
    /// source if [`MAX_SOURCES`] are tracked).
    fn insert_source(&mut self, origin: &RegionName, node: &NodeName, epoch: u64) {
        if self.count >= MAX_SOURCES {
            self.evict_stalest();
        }
        self.count += 1;
        self.sources.entry(origin.clone()).or_default().insert(
            node.clone(),
            Source {
                current: Window::new(epoch),
                previous: None,
                used: self.tick,
            },
        );
    }

    fn evict_stalest(&mut self) {
        let stalest = self
            .sources
            .iter()
            .flat_map(|(r, nodes)| nodes.iter().map(move |(n, s)| (s.used, r, n)))
            .min_by_key(|(used, _, _)| *used)
            .map(|(_, r, n)| (r.clone(), n.clone()));
        if let Some((r, n)) = stalest
            && let Some(nodes) = self.sources.get_mut(&r)
        {
            nodes.remove(&n);
            self.count -= 1;
            if nodes.is_empty() {
                self.sources.remove(&r);
            }
        }
    }

    /// Record `(origin, node, epoch, seq)` and say whether it is new.
    pub fn check(&mut self, origin: &RegionName, node: &NodeName, epoch: u64, seq: u64) -> Seen {
        self.tick += 1;
        let tick = self.tick;
        // Known source: one lookup, no allocation.
        if let Some(source) = self.sources.get_mut(origin).and_then(|n| n.get_mut(node)) {
            source.used = tick;
            return source.check(epoch, seq);
        }
        self.insert_source(origin, node, epoch);
        self.sources
            .get_mut(origin)
            .and_then(|n| n.get_mut(node))
            .map_or(Seen::Unknown, |s| s.check(epoch, seq))
    }

    /// Record `mark` (see [`Self::check`]).
    pub fn check_mark(&mut self, mark: &Mark) -> Seen {
        self.check(&mark.origin, &mark.node, mark.epoch, mark.seq)
    }

    /// Every window, for a durable copy.
    pub fn windows(&self) -> Vec<WindowState> {
        let mut out = Vec::new();
        for (origin, node, s) in self
            .sources
            .iter()
            .flat_map(|(r, nodes)| nodes.iter().map(move |(n, s)| (r, n, s)))
        {
            for w in std::iter::once(&s.current).chain(s.previous.as_ref()) {
                out.push(WindowState {
                    origin: origin.clone(),
                    node: node.clone(),
                    epoch: w.epoch,
                    top: w.top,
                    bits: w.bits.to_vec(),
                });
            }
        }
        out
    }

    /// Put back a window saved by [`Self::windows`]; false (and nothing
    /// changed) if its bitmap has the wrong size. Of three or more epochs
    /// of one source, the two newest are kept.
    pub fn restore(&mut self, w: WindowState) -> bool {
        let Ok(bits) = <[u64; WORDS]>::try_from(w.bits.as_slice()) else {
            return false;
        };
        let window = Window {
            epoch: w.epoch,
            top: w.top,
            bits: Box::new(bits),
        };
        let tracked = self
            .sources
            .get(&w.origin)
            .is_some_and(|n| n.contains_key(&w.node));
        if !tracked {
            self.tick += 1;
            self.insert_source(&w.origin, &w.node, window.epoch);
        }
        match self
            .sources
            .get_mut(&w.origin)
            .and_then(|n| n.get_mut(&w.node))
        {
            None => return false,
            Some(s) if !tracked => s.current = window,
            Some(s) => {
                if window.epoch > s.current.epoch {
                    s.previous = Some(std::mem::replace(&mut s.current, window));
                } else if window.epoch < s.current.epoch
                    && s.previous.as_ref().is_none_or(|p| p.epoch <= window.epoch)
                {
                    s.previous = Some(window);
                }
            }
        }
        true
    }

    /// Forget every source of `origin` (a region that left the federation).
    pub fn forget_region(&mut self, origin: &RegionName) {
        if let Some(nodes) = self.sources.remove(origin) {
            self.count -= nodes.len();
        }
    }

    /// Sources tracked (for memory accounting and tests).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn src() -> (RegionName, NodeName) {
        (RegionName::new("eu").unwrap(), NodeName::new("a").unwrap())
    }

    #[test]
    fn window_tracks_duplicates_reordering_and_epochs() {
        let (r, n) = src();
        let mut d = Dedupe::default();
        assert_eq!(d.check(&r, &n, 1, 5), Seen::New);
        assert_eq!(d.check(&r, &n, 1, 3), Seen::New, "out of order but new");
        assert_eq!(d.check(&r, &n, 1, 5), Seen::Duplicate);
        assert_eq!(d.check(&r, &n, 1, 3), Seen::Duplicate);
        assert_eq!(d.check(&r, &n, 1, 5 + WINDOW), Seen::New);
        assert_eq!(d.check(&r, &n, 1, 5), Seen::Unknown, "beyond the window");
        assert_eq!(d.check(&r, &n, 1, 6 + WINDOW), Seen::New);
        assert_eq!(
            d.check(&r, &n, 1, 7),
            Seen::New,
            "bit reused after the window moved on"
        );
        assert_eq!(d.check(&r, &n, 2, 1), Seen::New, "new epoch");
        assert_eq!(
            d.check(&r, &n, 1, 7),
            Seen::Duplicate,
            "the previous epoch is still tracked"
        );
        assert_eq!(d.check(&r, &n, 1, 8), Seen::New);
        assert_eq!(d.check(&r, &n, 3, 1), Seen::New);
        assert_eq!(d.check(&r, &n, 1, 9), Seen::Unknown, "two epochs back");
    }

    #[test]
    fn reordering_within_the_window_is_never_a_duplicate() {
        // Four streams drifting apart by thousands of messages: every
        // number arrives once and is new.
        let (r, n) = src();
        let mut d = Dedupe::default();
        let per_shard = 10_000u64;
        let mut order: Vec<u64> = Vec::new();
        // Shard k runs k * 3000 messages behind shard 0; its last ones
        // arrive after everything else.
        for i in 0..per_shard + 3 * 3000 {
            for shard in 0..4u64 {
                if let Some(s) = i.checked_sub(shard * 3000).filter(|s| *s < per_shard) {
                    order.push(s * 4 + shard + 1);
                }
            }
        }
        assert_eq!(order.len() as u64, per_shard * 4);
        for s in &order {
            assert_eq!(d.check(&r, &n, 1, *s), Seen::New, "seq {s}");
        }
        for s in order.iter().rev().take(1000) {
            assert_eq!(d.check(&r, &n, 1, *s), Seen::Duplicate, "seq {s}");
        }
    }

    /// A peer naming ever new origin nodes cannot grow the windows
    /// without bound: past MAX_SOURCES the stalest source goes, and its
    /// messages are then Unknown (delivered), never called duplicates.
    #[test]
    fn sources_are_bounded_and_the_stalest_goes_first() {
        let r = RegionName::new("eu").unwrap();
        let mut d = Dedupe::default();
        let busy = NodeName::new("busy").unwrap();
        assert_eq!(d.check(&r, &busy, 1, 1), Seen::New);
        for i in 0..MAX_SOURCES + 100 {
            let n = NodeName::new(&format!("n{i}")).unwrap();
            assert_eq!(d.check(&r, &n, 1, 1), Seen::New);
            // The busy source stays in use, so it is never the stalest.
            d.check(&r, &busy, 1, 2 + i as u64);
        }
        assert_eq!(d.len(), MAX_SOURCES);
        assert_eq!(d.check(&r, &busy, 1, 5), Seen::Duplicate, "kept");
        let first = NodeName::new("n0").unwrap();
        assert_ne!(
            d.check(&r, &first, 1, 1),
            Seen::Duplicate,
            "evicted: not a duplicate"
        );
    }

    #[test]
    fn restored_windows_remember_what_was_seen_and_only_that() {
        let (r, n) = src();
        let mut d = Dedupe::default();
        for s in [5, 7, 9] {
            d.check(&r, &n, 1, s);
        }
        d.check(&r, &n, 2, 3);
        let mut back = Dedupe::default();
        for w in d.windows() {
            assert!(back.restore(w));
        }
        assert_eq!(back.check(&r, &n, 1, 7), Seen::Duplicate);
        assert_eq!(back.check(&r, &n, 2, 3), Seen::Duplicate);
        assert_eq!(back.check(&r, &n, 1, 6), Seen::New);
        assert_eq!(back.check(&r, &n, 2, 4), Seen::New);
        let mut bad = d.windows().remove(0);
        bad.bits.pop();
        assert!(!Dedupe::default().restore(bad));
    }

    #[test]
    fn sequence_numbers_near_the_top_of_u64_do_not_overflow() {
        let (r, n) = src();
        let mut d = Dedupe::default();
        assert_eq!(d.check(&r, &n, 1, u64::MAX - 3), Seen::New);
        assert_eq!(d.check(&r, &n, 1, u64::MAX), Seen::New);
        assert_eq!(d.check(&r, &n, 1, u64::MAX), Seen::Duplicate);
        assert_eq!(d.check(&r, &n, 1, u64::MAX - 1), Seen::New);
        assert_eq!(d.check(&r, &n, u64::MAX, u64::MAX), Seen::New);
    }
}
