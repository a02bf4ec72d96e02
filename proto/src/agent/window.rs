//! A connection's unacknowledged envelopes, by link sequence number.
//!
//! Link sequence numbers are handed out consecutively, so the window is a
//! ring indexed by `seq - base` rather than an ordered map: sending,
//! acknowledging a range and sliding forward cost no allocation and no
//! tree walk per envelope. Acknowledgements may come in any order (ranges
//! from several data streams); the front slides past acknowledged slots.

use std::collections::VecDeque;

/// What a slot holds: the custody entry and copy an envelope carries
/// (`None` for QoS 0).
pub(super) type Carried = Option<(u64, u64)>;

/// Unacknowledged envelopes of one connection.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// Sequence number of `slots[0]`.
    base: u64,
    /// `Some` while unacknowledged.
    slots: VecDeque<Option<Carried>>,
    /// Slots still `Some`.
    live: usize,
}

impl Window {
    /// Envelopes not yet acknowledged.
    pub(super) fn len(&self) -> usize {
        self.live
    }

    /// Record envelope `seq` (the next number after the last one recorded;
    /// an out-of-order number is ignored, which cannot happen: the agent
    /// numbers them itself).
    pub(super) fn insert(&mut self, seq: u64, carried: Carried) {
        if self.slots.is_empty() && self.live == 0 {
            self.base = seq;
        }
        if seq != self.base.saturating_add(self.slots.len() as u64) {
            return;
        }
        self.slots.push_back(Some(carried));
        self.live += 1;
    }

    /// Acknowledge `first..=last`: what the newly acknowledged envelopes
    /// carried, in order, handed to `out`.
    pub(super) fn ack(&mut self, first: u64, last: u64, out: &mut impl FnMut(Carried)) {
        let end = self.base.saturating_add(self.slots.len() as u64);
        let (from, to) = (first.max(self.base), last.saturating_add(1).min(end));
        for seq in from..to {
            let Ok(i) = usize::try_from(seq - self.base) else {
                break;
            };
            if let Some(c) = self.slots.get_mut(i).and_then(Option::take) {
                self.live -= 1;
                out(c);
            }
        }
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base = self.base.saturating_add(1);
        }
    }

    /// Everything still unacknowledged (the connection is gone).
    pub(super) fn into_values(self) -> impl Iterator<Item = Carried> {
        self.slots.into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn acked(w: &mut Window, first: u64, last: u64) -> Vec<Carried> {
        let mut v = Vec::new();
        w.ack(first, last, &mut |c| v.push(c));
        v
    }

    #[test]
    fn acks_in_any_order_slide_the_window() {
        let mut w = Window::default();
        for seq in 1..=6 {
            w.insert(seq, Some((seq, 1)));
        }
        assert_eq!(w.len(), 6);
        assert_eq!(acked(&mut w, 4, 5), vec![Some((4, 1)), Some((5, 1))]);
        assert_eq!(w.len(), 4);
        assert_eq!(acked(&mut w, 4, 5), vec![], "a repeated ack is nothing");
        assert_eq!(acked(&mut w, 1, 2), vec![Some((1, 1)), Some((2, 1))]);
        assert_eq!(w.base, 3, "the front slid past the acknowledged");
        assert_eq!(acked(&mut w, 0, 100), vec![Some((3, 1)), Some((6, 1))]);
        assert_eq!(w.len(), 0);
        w.insert(7, None);
        w.insert(9, None);
        assert_eq!(w.len(), 1, "numbers come in order; a gap is refused");
        assert_eq!(w.into_values().collect::<Vec<_>>(), vec![None]);
    }

    #[test]
    fn acks_past_the_end_or_near_the_top_are_harmless() {
        let mut w = Window::default();
        w.insert(u64::MAX - 1, Some((1, 1)));
        assert_eq!(acked(&mut w, u64::MAX - 1, u64::MAX), vec![Some((1, 1))]);
        assert_eq!(acked(&mut w, 0, u64::MAX), vec![]);
    }
}
