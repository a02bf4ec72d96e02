//! Duplicate suppression: a bounded sliding window of sequence numbers per
//! message source (origin region, origin node, epoch). Replays after a
//! reroute and copies that slip past the other backstops are dropped here.

use mqlink_topology::{NodeName, RegionName};
use rustc_hash::FxHashMap;

/// Sequence numbers remembered per source, as a bitmap.
const WINDOW: u64 = 8192;
const WORDS: usize = (WINDOW / 64) as usize;

/// What the window says about a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time: deliver.
    New,
    /// Seen before: drop.
    Duplicate,
    /// Older than the window can tell: dropped as a probable duplicate.
    TooOld,
}

#[derive(Debug, Clone)]
struct Window {
    /// The epoch this window is for (a new epoch resets it).
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
            // Clear the bits of the numbers that leave the window.
            let clear_from = self.top + 1;
            let clear_to = seq.min(clear_from + WINDOW - 1);
            if seq - self.top >= WINDOW {
                self.bits.iter_mut().for_each(|w| *w = 0);
            } else {
                for s in clear_from..=clear_to {
                    let (w, b) = Self::bit(s);
                    self.bits[w] &= !b;
                }
            }
            self.top = seq;
            let (w, b) = Self::bit(seq);
            self.bits[w] |= b;
            return Seen::New;
        }
        if self.top - seq >= WINDOW {
            return Seen::TooOld;
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

/// One window per (origin region, origin node).
#[derive(Debug, Default)]
pub struct Dedupe {
    /// Windows by source; only the newest epoch is kept.
    windows: FxHashMap<(RegionName, NodeName), Window>,
}

impl Dedupe {
    /// Record `(origin, node, epoch, seq)` and say whether it is new.
    pub fn check(&mut self, origin: &RegionName, node: &NodeName, epoch: u64, seq: u64) -> Seen {
        let window = self
            .windows
            .entry((origin.clone(), node.clone()))
            .or_insert_with(|| Window::new(epoch));
        if epoch > window.epoch {
            *window = Window::new(epoch);
        } else if epoch < window.epoch {
            return Seen::TooOld; // a previous incarnation's message
        }
        window.check(seq)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn window_tracks_duplicates_reordering_and_epochs() {
        let (r, n) = (RegionName::new("eu").unwrap(), NodeName::new("a").unwrap());
        let mut d = Dedupe::default();
        assert_eq!(d.check(&r, &n, 1, 5), Seen::New);
        assert_eq!(d.check(&r, &n, 1, 3), Seen::New, "out of order but new");
        assert_eq!(d.check(&r, &n, 1, 5), Seen::Duplicate);
        assert_eq!(d.check(&r, &n, 1, 3), Seen::Duplicate);
        assert_eq!(d.check(&r, &n, 1, 5 + WINDOW), Seen::New);
        assert_eq!(d.check(&r, &n, 1, 5), Seen::TooOld);
        assert_eq!(d.check(&r, &n, 1, 6 + WINDOW), Seen::New);
        assert_eq!(
            d.check(&r, &n, 1, 7),
            Seen::New,
            "bit reused after the window moved on"
        );
        assert_eq!(d.check(&r, &n, 2, 1), Seen::New, "new epoch resets");
        assert_eq!(d.check(&r, &n, 1, 99_999), Seen::TooOld, "old epoch");
    }
}
