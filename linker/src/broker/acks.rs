//! Packet-id bookkeeping of the broker session, both ways, with no I/O.
//!
//! - [`AckQueue`]: QoS >= 1 messages the broker sent us, acknowledged
//!   strictly in arrival order as the core releases them (MQTT 5 §4.6:
//!   the broker may rely on it), and the packet ids already acknowledged,
//!   so a redelivery after a reconnect (DUP set: our ack was lost with the
//!   connection) is acknowledged again instead of entering the federation
//!   twice.
//! - [`Inflight`]: our imports the broker has not acknowledged yet, with
//!   what they carry, so they can be sent again (DUP) when the session
//!   resumes, or handed back to the core when the broker lost the session.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

/// One message from the broker, waiting for the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    token: u64,
    pkid: u16,
    qos: u8,
    released: bool,
    /// From the current broker session (a session the broker lost takes
    /// its packet ids with it: acknowledging one could acknowledge a
    /// newer message that reuses the id).
    current: bool,
}

/// Messages from the broker in arrival order, until acknowledged.
#[derive(Debug, Default)]
pub struct AckQueue {
    queue: VecDeque<Held>,
    /// Next token (tokens are consecutive, so a release is an index).
    next: u64,
    /// Packet ids acknowledged (PUBACK or PUBREC sent, or due while the
    /// connection was down) and not yet reused by the broker, with their
    /// QoS: a DUP redelivery of one is acknowledged again at once.
    acked: FxHashMap<u16, u8>,
}

/// What to do with a QoS >= 1 publish from the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// New: hand it to the core with this token.
    New(u64),
    /// A redelivery of one the core holds: ignore it.
    Held,
    /// A redelivery of one already acknowledged: acknowledge it again.
    AckAgain,
}

impl AckQueue {
    /// A QoS >= 1 publish arrived.
    pub fn arrive(&mut self, pkid: u16, qos: u8, dup: bool) -> Arrival {
        if dup {
            if self.queue.iter().any(|h| h.current && h.pkid == pkid) {
                return Arrival::Held;
            }
            if self.acked.contains_key(&pkid) {
                return Arrival::AckAgain;
            }
        }
        // The broker reuses an id only once our ack reached it.
        self.acked.remove(&pkid);
        self.next += 1;
        self.queue.push_back(Held {
            token: self.next,
            pkid,
            qos,
            released: false,
            current: true,
        });
        Arrival::New(self.next)
    }

    /// The core released `token`.
    pub fn release(&mut self, token: u64) {
        let Some(front) = self.queue.front().map(|h| h.token) else {
            return;
        };
        if let Some(i) = token.checked_sub(front)
            && let Some(h) = usize::try_from(i).ok().and_then(|i| self.queue.get_mut(i))
            && h.token == token
        {
            h.released = true;
        }
    }

    /// The (packet id, QoS) pairs to acknowledge now, in order.
    pub fn ready(&mut self, out: &mut impl FnMut(u16, u8)) {
        while let Some(h) = self.queue.front().copied() {
            if !h.released {
                return;
            }
            self.queue.pop_front();
            if h.current {
                self.acked.insert(h.pkid, h.qos);
                out(h.pkid, h.qos);
            }
        }
    }

    /// A PUBREL for `pkid` arrived: that QoS 2 exchange is over.
    pub fn released_by_broker(&mut self, pkid: u16) {
        self.acked.remove(&pkid);
    }

    /// The QoS of an acknowledged id the broker sent again.
    pub fn acked_qos(&self, pkid: u16) -> Option<u8> {
        self.acked.get(&pkid).copied()
    }

    /// The broker did not keep our session: every packet id is void.
    pub fn session_lost(&mut self) {
        self.acked.clear();
        for h in &mut self.queue {
            h.current = false;
        }
    }

    /// Messages the core holds.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether the core holds none.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// One import the broker has not acknowledged.
#[derive(Debug, Clone)]
struct Out<T> {
    custody: u64,
    /// Order of first transmission (resent in that order).
    order: u64,
    /// What it carries (the session keeps the envelope, to encode it
    /// again only if it must be resent).
    item: T,
    /// QoS 2: PUBREC received, PUBREL sent.
    rel: bool,
}

/// What an acknowledgement of ours means for the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The broker has it (PUBACK, or PUBCOMP for QoS 2).
    Delivered(u64),
    /// The broker refused it (a failure reason code).
    Refused(u64, u8),
    /// QoS 2 half-way: send PUBREL.
    Release,
    /// Not one of ours (a stale or unknown id).
    Unknown,
}

/// Imports in flight to the broker, by packet id, each with its `T`.
#[derive(Debug)]
pub struct Inflight<T> {
    out: FxHashMap<u16, Out<T>>,
    /// Ids of SUBSCRIBE / UNSUBSCRIBE awaiting their ack (same id space).
    other: FxHashMap<u16, Vec<String>>,
    next_pkid: u16,
    order: u64,
}

impl<T> Default for Inflight<T> {
    fn default() -> Self {
        Self {
            out: FxHashMap::default(),
            other: FxHashMap::default(),
            next_pkid: 0,
            order: 0,
        }
    }
}

impl<T> Inflight<T> {
    /// Imports in flight.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// A free packet id; `None` if all 65,535 are taken.
    pub fn pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            let id = self.next_pkid;
            if !self.out.contains_key(&id) && !self.other.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// Record an import sent with `pkid`.
    pub fn sent(&mut self, pkid: u16, custody: u64, item: T) {
        self.order += 1;
        self.out.insert(
            pkid,
            Out {
                custody,
                order: self.order,
                item,
                rel: false,
            },
        );
    }

    /// Record a SUBSCRIBE or UNSUBSCRIBE of `filters` sent with `pkid`.
    pub fn request(&mut self, pkid: u16, filters: Vec<String>) {
        self.other.insert(pkid, filters);
    }

    /// A new connection: (UN)SUBSCRIBEs sent on the old one get no answer.
    pub fn forget_requests(&mut self) {
        self.other.clear();
    }

    /// The filters of the (UN)SUBSCRIBE acknowledged with `pkid`.
    pub fn answered(&mut self, pkid: u16) -> Vec<String> {
        self.other.remove(&pkid).unwrap_or_default()
    }

    /// PUBACK or PUBCOMP for `pkid`.
    pub fn done(&mut self, pkid: u16, reason: u8) -> Outcome {
        match self.out.remove(&pkid) {
            Some(o) if reason >= 0x80 => Outcome::Refused(o.custody, reason),
            Some(o) => Outcome::Delivered(o.custody),
            None => Outcome::Unknown,
        }
    }

    /// PUBREC for `pkid`.
    pub fn received(&mut self, pkid: u16, reason: u8) -> Outcome {
        if reason >= 0x80 {
            return self.done(pkid, reason);
        }
        match self.out.get_mut(&pkid) {
            Some(o) => {
                o.rel = true;
                Outcome::Release
            }
            None => Outcome::Unknown,
        }
    }

    /// The session resumed: what to send again, in the original order:
    /// (packet id, `Some(item)` to resend the PUBLISH, `None` to resend
    /// the PUBREL).
    pub fn resend(&self) -> Vec<(u16, Option<&T>)> {
        let mut v: Vec<(&u16, &Out<T>)> = self.out.iter().collect();
        v.sort_by_key(|(_, o)| o.order);
        v.into_iter()
            .map(|(id, o)| (*id, (!o.rel).then_some(&o.item)))
            .collect()
    }

    /// The broker lost the session: the custody numbers of every import
    /// in flight (to be published again), oldest first.
    pub fn lost(&mut self) -> Vec<u64> {
        let mut v: Vec<Out<T>> = self.out.drain().map(|(_, o)| o).collect();
        v.sort_by_key(|o| o.order);
        self.other.clear();
        v.into_iter().map(|o| o.custody).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ready(q: &mut AckQueue) -> Vec<u16> {
        let mut v = Vec::new();
        q.ready(&mut |id, _| v.push(id));
        v
    }

    #[test]
    fn acks_leave_in_arrival_order_whatever_the_release_order() {
        let mut q = AckQueue::default();
        let t: Vec<u64> = [10, 11, 12]
            .iter()
            .map(|id| match q.arrive(*id, 1, false) {
                Arrival::New(t) => t,
                other => panic!("{other:?}"),
            })
            .collect();
        q.release(t[2]);
        q.release(t[1]);
        assert!(ready(&mut q).is_empty(), "the first is still held");
        q.release(t[0]);
        assert_eq!(ready(&mut q), vec![10, 11, 12]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_redelivery_is_held_or_acknowledged_again_never_new() {
        let mut q = AckQueue::default();
        let Arrival::New(a) = q.arrive(1, 1, false) else {
            panic!()
        };
        assert_eq!(q.arrive(1, 1, true), Arrival::Held);
        q.release(a);
        assert_eq!(ready(&mut q), vec![1]);
        // Our PUBACK was lost with the connection: the broker sends it again.
        assert_eq!(q.arrive(1, 1, true), Arrival::AckAgain);
        assert_eq!(q.acked_qos(1), Some(1));
        // The broker reuses the id for a new message once the ack got there.
        assert!(matches!(q.arrive(1, 1, false), Arrival::New(_)));
        assert_eq!(q.acked_qos(1), None);
    }

    #[test]
    fn a_lost_session_voids_the_ids_it_held() {
        let mut q = AckQueue::default();
        let Arrival::New(a) = q.arrive(5, 1, false) else {
            panic!()
        };
        q.session_lost();
        // The new session's message 5 is another message.
        assert!(matches!(q.arrive(5, 1, true), Arrival::New(_)));
        q.release(a);
        assert!(ready(&mut q).is_empty(), "no ack for a void id");
    }

    #[test]
    fn imports_resend_in_order_and_qos2_resends_pubrel() {
        let mut f = Inflight::default();
        let a = f.pkid().unwrap();
        f.sent(a, 100, "a");
        let b = f.pkid().unwrap();
        f.sent(b, 101, "b");
        assert_ne!(a, b);
        assert_eq!(f.received(b, 0), Outcome::Release);
        let r = f.resend();
        assert_eq!(r, vec![(a, Some(&"a")), (b, None)]);
        assert_eq!(f.done(b, 0), Outcome::Delivered(101));
        assert_eq!(f.done(a, 0x97), Outcome::Refused(100, 0x97));
        assert_eq!(f.done(a, 0), Outcome::Unknown);
    }

    #[test]
    fn packet_ids_skip_the_ones_in_use() {
        let mut f: Inflight<()> = Inflight {
            next_pkid: u16::MAX - 1,
            ..Default::default()
        };
        let a = f.pkid().unwrap();
        assert_eq!(a, u16::MAX);
        f.sent(a, 1, ());
        assert_eq!(f.pkid(), Some(1), "wraps past 65,535 to 1, never 0");
        f.request(1, vec!["x".into()]);
        f.next_pkid = 0;
        assert_eq!(f.pkid(), Some(2), "skips the ids in use");
        assert_eq!(f.lost(), vec![1]);
    }
}
