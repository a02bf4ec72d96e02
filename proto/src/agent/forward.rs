//! The data path: envelopes in from peers and the local broker, the
//! forwarding decision, batches out within each connection's window.
//!
//! QoS 0 is routed by interest at every hop (the routing core's tree) and
//! never waits: what cannot be queued is dropped and counted where it
//! happens. QoS >= 1 goes through custody (`custody`): the origin names
//! the regions that want the message (`dests`), each hop hands on the part
//! of that obligation below each next hop, and nothing is acknowledged
//! upstream before it is covered.

use super::*;
use crate::frame::LARGE_PAYLOAD;

impl Agent {
    pub(super) fn drop(&mut self, reason: DropReason) {
        self.count(reason, 1);
    }

    pub(super) fn count(&mut self, reason: DropReason, n: u64) {
        if n > 0 {
            *self.stats.drops.entry(reason).or_insert(0) += n;
        }
    }

    /// Whether the link to `region` may carry `topic`.
    pub(super) fn exports(&self, region: &RegionName, topic: &TopicName) -> bool {
        self.policy(region)
            .is_some_and(|p| p.export.iter().any(|f| f.matches(topic)))
    }

    /// The connection that carries data to `region` (see [`Agent::carrier`]).
    pub(super) fn carrier_id(&self, region: &RegionName) -> Option<PeerId> {
        self.peers
            .range(PeerId::range(region))
            .find(|(_, p)| p.hello.is_some())
            .map(|(id, _)| id.clone())
    }

    pub(super) fn on_data(&mut self, from: &PeerId, batch: DataBatch) {
        let import = self
            .policy(&from.region)
            .map(|p| p.import.clone())
            .unwrap_or_default();
        *self.stats.received.entry(from.region.clone()).or_insert(0) +=
            batch.envelopes.len() as u64;
        let incarnation = self.peers.get(from).map_or(0, |p| p.incarnation);
        for (i, env) in batch.envelopes.into_iter().enumerate() {
            let link_seq = batch.first_seq.saturating_add(i as u64);
            let custody = env.message.qos != crate::frame::Qos::AtMostOnce;
            let up = custody.then(|| Upstream::Peer(from.clone(), incarnation, link_seq));
            let refused = if !import.iter().any(|f| f.matches(&env.message.topic)) {
                Some(DropReason::ImportPolicy)
            } else if env.origin == self.cfg.region {
                Some(DropReason::OwnOrigin)
            } else {
                None
            };
            if let Some(reason) = refused {
                self.drop(reason);
                self.ack_later(from, link_seq);
                continue;
            }
            let Some(up) = up else {
                // QoS 0: routed by interest here; the window catches the
                // copies that slip past the other backstops.
                match self.check_seen(&env) {
                    Seen::Duplicate => self.drop(DropReason::Duplicate),
                    _ => self.route(env),
                }
                self.ack_later(from, link_seq);
                continue;
            };
            // QoS >= 1: the window records deliveries only. A copy that
            // merely passed through here (on its way to other regions)
            // must not make a later copy meant for this region look like
            // a repeat.
            let deliver = env.dests.contains(&self.cfg.region)
                && match self.check_seen(&env) {
                    Seen::Duplicate => {
                        self.drop(DropReason::Duplicate);
                        false
                    }
                    _ => true,
                };
            // A replay may also carry destinations that still need it from
            // here: it joins the copy still held, or is taken on anew.
            if !self.join_custody(&env, up.clone(), deliver) {
                self.forward_custody(env, up, deliver);
            }
        }
    }

    /// The dedupe window's verdict on `env` (recording it).
    fn check_seen(&mut self, env: &Envelope) -> Seen {
        let seen = self
            .dedupe
            .check(&env.origin, &env.origin_node, env.epoch, env.seq);
        if seen == Seen::Unknown {
            self.stats.dedupe_unknown += 1;
        }
        seen
    }

    /// Acknowledge QoS 0 (or refused) `seq` on `peer`: within
    /// [`AgentConfig::ack_delay`](super::AgentConfig::ack_delay), sooner
    /// with others.
    fn ack_later(&mut self, peer: &PeerId, seq: u64) {
        let due = self.last_now + self.cfg.ack_delay;
        if let Some(p) = self.peers.get_mut(peer) {
            p.acks.push(seq);
            p.acks_due.get_or_insert(due);
        }
    }

    /// A QoS >= 1 envelope from a neighbour: deliver here if `deliver`
    /// (we are one of its destinations and it is not a repeat), and take
    /// custody of the rest of its destinations.
    fn forward_custody(&mut self, mut env: Envelope, up: Upstream, deliver: bool) {
        let me = self.cfg.region.clone();
        let local = deliver;
        let dests: Regions = env.dests.iter().filter(|d| **d != me).cloned().collect();
        if !local && dests.is_empty() {
            self.release(up);
            return;
        }
        if !env.visited.contains(&me) {
            env.visited.push(me);
        }
        let now = self.last_now;
        self.take_custody(now, env, Some(up), local, dests, false);
    }

    /// Deliver and forward a QoS 0 envelope that arrived here (or
    /// originated here), by the routing core's decision.
    fn route(&mut self, mut env: Envelope) {
        let origin = env.origin.clone();
        let d = self
            .router
            .decide(&origin, &env.message.topic, &env.visited, env.hops);
        if d.hop_limited {
            self.drop(DropReason::HopLimit);
        }
        self.count(DropReason::Visited, d.skipped_visited as u64);
        if !env.visited.contains(&self.cfg.region) {
            env.visited.push(self.cfg.region.clone());
        }
        let shard = shard_of(&env.message.topic);
        let queue_max = self.cfg.qos0_queue;
        for next in &d.forward {
            if !self.exports(next, &env.message.topic) {
                self.drop(DropReason::ExportPolicy);
                continue;
            }
            let Some(peer) = self.carrier(next) else {
                self.drop(DropReason::NoPeer);
                continue;
            };
            if peer.pending_qos0 >= queue_max {
                self.drop(DropReason::PeerQueueFull);
                continue;
            }
            let mut copy = env.clone();
            copy.hops += 1;
            peer.pending_qos0 += 1;
            peer.pending[shard].push_back(Out::Qos0(Box::new(copy)));
        }
        if d.deliver_local && origin != self.cfg.region {
            self.stats.delivered += 1;
            self.events.push_back(Event::Deliver {
                env: Arc::new(env),
                custody: None,
            });
        }
    }

    /// A message published on the local broker matched our export
    /// subscriptions. For QoS >= 1, `token` is the runtime's number for
    /// the broker's copy: [`Event::Release`] with it says the broker may be
    /// acknowledged. Returns false if it was dropped (an import coming
    /// back; released at once).
    pub fn handle_publish(&mut self, now: Instant, message: Message, token: Option<u64>) -> bool {
        self.last_now = now;
        self.stats.published += 1;
        if message
            .properties
            .user
            .iter()
            .any(|(k, _)| k == ORIGIN_PROPERTY)
        {
            self.drop(DropReason::Reimport);
            if let Some(t) = token {
                self.release(Upstream::Broker(t));
            }
            return false;
        }
        let me = self.cfg.region.clone();
        let qos = message.qos;
        let env = Envelope {
            origin: me.clone(),
            origin_node: self.cfg.node.clone(),
            epoch: self.cfg.epoch,
            seq: self.next_seq,
            hops: 0,
            visited: smallvec::smallvec![me.clone()],
            transit_ms: 0,
            dests: Regions::new(),
            message,
        };
        self.next_seq += 1;
        if qos == crate::frame::Qos::AtMostOnce {
            self.route(env);
            if let Some(t) = token {
                self.release(Upstream::Broker(t));
            }
            return true;
        }
        let dests: Regions = self
            .router
            .wanting(&env.message.topic)
            .into_iter()
            .filter(|r| *r != me)
            .collect();
        // During the warm-up the peers' summaries are still arriving: the
        // destinations known now may not be all of them.
        let unresolved = now < self.warm_until;
        self.take_custody(
            now,
            env,
            token.map(Upstream::Broker),
            false,
            dests,
            unresolved,
        );
        self.retry_parked(now);
        true
    }

    /// The next frame to send: control frames first, in order; then
    /// acknowledgements; then one data batch (one stream's envelopes for
    /// one connection, up to `batch_max`, within the window).
    pub fn poll_transmit(&mut self) -> Option<(PeerId, Frame)> {
        if let Some(t) = self.outbox.pop_front() {
            return Some(t);
        }
        let (now, batch) = (self.last_now, self.cfg.ack_batch.max(1));
        if let Some((id, p)) = self.peers.iter_mut().find(|(_, p)| {
            !p.acks.is_empty()
                && (p.acks_urgent || p.acks.len() >= batch || p.acks_due.is_some_and(|t| t <= now))
        }) {
            p.acks_urgent = false;
            p.acks_due = None;
            let ranges = ranges_of(&mut p.acks);
            return Some((id.clone(), Frame::Ack { ranges }));
        }
        let batch_max = self.cfg.batch_max.max(1);
        let window = self.cfg.window.max(1);
        let ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.hello.is_some() && p.unacked.len() < window)
            .filter(|(_, p)| p.pending.iter().any(|q| !q.is_empty()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            for shard in 0..DATA_SHARDS {
                if let Some(batch) = self.take_batch(&id, shard, batch_max, window) {
                    *self.stats.sent.entry(id.region.clone()).or_insert(0) +=
                        batch.envelopes.len() as u64;
                    return Some((id, Frame::Data(batch)));
                }
            }
        }
        None
    }

    /// Up to `max` envelopes of one stream of `id`, numbered, recorded as
    /// unacknowledged. A large payload travels in a batch of its own.
    fn take_batch(
        &mut self,
        id: &PeerId,
        shard: usize,
        max: usize,
        window: usize,
    ) -> Option<DataBatch> {
        let mut envelopes: Vec<Envelope> = Vec::new();
        let mut carried: Vec<Option<(u64, u64)>> = Vec::new();
        loop {
            let p = self.peers.get_mut(id)?;
            if envelopes.len() >= max || p.unacked.len() + envelopes.len() >= window {
                break;
            }
            let Some(out) = p.pending[shard].pop_front() else {
                break;
            };
            let (env, entry) = match out {
                Out::Qos0(env) => {
                    p.pending_qos0 = p.pending_qos0.saturating_sub(1);
                    (*env, None)
                }
                Out::Held { id: hid, send } => match self.custody_copy(hid, send) {
                    Some(env) => (env, Some((hid, send))),
                    None => continue,
                },
            };
            let large = env.message.payload.len() > LARGE_PAYLOAD;
            if large && !envelopes.is_empty() {
                // Put it back: it goes alone in the next batch.
                if let Some(p) = self.peers.get_mut(id) {
                    let out = match entry {
                        Some((hid, send)) => Out::Held { id: hid, send },
                        None => {
                            p.pending_qos0 += 1;
                            Out::Qos0(Box::new(env))
                        }
                    };
                    p.pending[shard].push_front(out);
                }
                break;
            }
            envelopes.push(env);
            carried.push(entry);
            if large {
                break;
            }
        }
        if envelopes.is_empty() {
            return None;
        }
        let p = self.peers.get_mut(id)?;
        let first_seq = p.next_seq;
        p.next_seq += envelopes.len() as u64;
        for (i, entry) in carried.into_iter().enumerate() {
            p.unacked.insert(first_seq + i as u64, entry);
        }
        Some(DataBatch {
            first_seq,
            envelopes,
        })
    }

    /// Whether a topic is wanted by some other region (for tests and `ctl`).
    pub fn wanted_elsewhere(&mut self, topic: &TopicName) -> bool {
        let me = self.cfg.region.clone();
        !self
            .router
            .decide(&me, topic, std::slice::from_ref(&me), 0)
            .forward
            .is_empty()
    }
}

/// Sorted, merged inclusive ranges of `seqs` (emptied).
fn ranges_of(seqs: &mut Vec<u64>) -> Vec<(u64, u64)> {
    seqs.sort_unstable();
    seqs.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for s in seqs.drain(..) {
        match out.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(s) => *last = s,
            _ => out.push((s, s)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn acks_coalesce_into_ranges() {
        let mut v = vec![5, 3, 4, 9, 1, 4, 10, u64::MAX];
        assert_eq!(
            ranges_of(&mut v),
            vec![(1, 1), (3, 5), (9, 10), (u64::MAX, u64::MAX)]
        );
        assert!(v.is_empty());
    }
}
