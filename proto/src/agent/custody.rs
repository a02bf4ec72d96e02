//! QoS >= 1 custody: the messages this agent holds until every region it
//! must reach is covered, and whom to acknowledge when they are.
//!
//! A held message has one or more upstreams (the broker message it came
//! from, or the envelope(s) a neighbour sent it in: a replay that arrives
//! while the first copy is still held joins it), an optional local
//! delivery awaiting the broker's ack, copies in flight to neighbours
//! (each covering some destination regions, acknowledged by that
//! neighbour) and destinations still waiting for a path. When nothing is
//! outstanding the upstreams are released. A copy whose connection closes
//! before its ack puts its destinations back to waiting; waiting messages
//! are dispatched again whenever the graph, the interest or the set of
//! connections changes (a reroute, a peer's return).

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::*;

/// Who handed us a message and waits for our acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Upstream {
    /// The local broker: the runtime's token for that message.
    Broker(u64),
    /// A neighbour: the connection, its incarnation (a runtime may reuse
    /// a connection number; an ack must not reach a later connection), and
    /// the link sequence number on it.
    Peer(PeerId, u64, u64),
    /// The spool: the record's key.
    Spool(u64),
}

/// One copy on its way to a neighbour.
#[derive(Debug)]
pub(super) struct SendRec {
    /// Number of this copy within its entry.
    pub(super) no: u64,
    /// The neighbouring region it went to.
    pub(super) region: RegionName,
    /// The regions it covers (handed on as the envelope's `dests`).
    pub(super) dests: Regions,
}

/// A message in custody.
#[derive(Debug)]
pub(super) struct Held {
    /// The envelope as it leaves here (our region in `visited`; `hops` as
    /// it arrived: each copy adds one).
    /// (Shared with [`Event::Deliver`]: a delivery is not a copy.)
    pub(super) env: Arc<Envelope>,
    /// Whom to acknowledge when done.
    /// (Inline: almost every message has one upstream and one or two
    /// copies; a vector each was two allocations per message.)
    upstream: SmallVec<[Upstream; 1]>,
    /// Awaiting the local broker's acknowledgement.
    local: bool,
    /// Copies not yet acknowledged.
    pub(super) sends: SmallVec<[SendRec; 2]>,
    /// Next copy number.
    next_send: u64,
    /// Regions it must still reach, with no copy on the way.
    waiting: Regions,
    /// The destinations are not known yet (published before the peers'
    /// summaries arrived): decided when the warm-up ends.
    unresolved: bool,
    /// When custody began.
    since: Instant,
    /// Regions whose copies were acknowledged (while destinations may
    /// still be added, during the warm-up).
    reached: Vec<RegionName>,
    /// The destinations being written to the spool (awaiting
    /// `handle_spooled`).
    spooling: Option<Regions>,
    /// The broker acknowledged the local delivery; its dedupe mark is
    /// being made durable (awaiting `handle_marked`).
    marking: bool,
}

/// Every message in custody.
#[derive(Debug, Default)]
pub(super) struct Custody {
    /// Entries by number (numbers grow with arrival, so they give the
    /// order to send again in).
    /// (Boxed: an entry moves in and out of the map on every dispatch.)
    pub(super) held: FxHashMap<u64, Box<Held>>,
    /// Entry of each message source key, so a replay joins its original.
    by_key: ByKey,
    /// Next entry number.
    next_id: u64,
    /// Entries with waiting destinations, in arrival order.
    parked: BTreeSet<u64>,
    /// (LSDB version, interests version, connection generation) at the
    /// last dispatch of the parked entries.
    retried: Option<(u64, u64, u64)>,
    /// Bumped whenever a connection comes up or goes away.
    pub(super) generation: u64,
    /// Payload bytes held.
    bytes: u64,
    /// Records in the spool not yet handed back to us.
    pub(super) spool_unread: u64,
    /// Entries taken back from the spool and still held.
    replayed: usize,
    /// A replay request is out (awaiting `handle_replay_done`).
    replay_out: bool,
}

/// Entries by message source key (origin, node, epoch, seq), looked up
/// without allocating: by (epoch, seq), which almost never collide
/// (an epoch is an agent's start time in ms), then by origin and node.
/// The one entry of a key is stored inline (no allocation per message).
#[derive(Debug, Default)]
struct ByKey(FxHashMap<(u64, u64), SmallVec<[SourceEntry; 1]>>);

/// (origin, node, custody entry).
type SourceEntry = (RegionName, NodeName, u64);

fn same_source(e: &SourceEntry, env: &Envelope) -> bool {
    e.0 == env.origin && e.1 == env.origin_node
}

impl ByKey {
    fn get(&self, env: &Envelope) -> Option<u64> {
        self.0
            .get(&(env.epoch, env.seq))?
            .iter()
            .find(|e| same_source(e, env))
            .map(|e| e.2)
    }

    fn insert(&mut self, env: &Envelope, id: u64) {
        let v = self.0.entry((env.epoch, env.seq)).or_default();
        match v.iter_mut().find(|e| same_source(e, env)) {
            Some(e) => e.2 = id,
            None => v.push((env.origin.clone(), env.origin_node.clone(), id)),
        }
    }

    /// Remove `env`'s entry if it is `id`.
    fn remove(&mut self, env: &Envelope, id: u64) {
        let k = (env.epoch, env.seq);
        if let Some(v) = self.0.get_mut(&k) {
            v.retain(|e| !(same_source(e, env) && e.2 == id));
            if v.is_empty() {
                self.0.remove(&k);
            }
        }
    }
}

impl Agent {
    /// Take custody of `env` (already stamped with our region in
    /// `visited`): deliver it locally if `local`, send it towards `dests`.
    pub(super) fn take_custody(
        &mut self,
        now: Instant,
        env: Envelope,
        upstream: Option<Upstream>,
        local: bool,
        dests: Regions,
        unresolved: bool,
    ) {
        let id = self.custody.next_id;
        self.custody.next_id += 1;
        self.custody.bytes += env.message.payload.len() as u64;
        let env = Arc::new(env);
        if local {
            self.stats.delivered += 1;
            self.events.push_back(Event::Deliver {
                env: env.clone(),
                custody: Some(id),
            });
        }
        // Our own messages never come back from a peer (refused as
        // `OwnOrigin`), so only another region's are indexed here; ours
        // are indexed when they go to the spool, whose replay may join.
        if env.origin != self.cfg.region {
            self.custody.by_key.insert(&env, id);
        }
        self.custody.held.insert(
            id,
            Box::new(Held {
                env,
                upstream: upstream.into_iter().collect(),
                local,
                sends: SmallVec::new(),
                next_send: 1,
                waiting: dests,
                unresolved,
                since: now,
                reached: Vec::new(),
                spooling: None,
                marking: false,
            }),
        );
        self.dispatch(id);
        self.finish_if_done(id);
    }

    /// A replay of a message we still hold: it joins the entry (one more
    /// upstream to acknowledge), destinations it names that the entry does
    /// not cover yet are added, and with `deliver` it is delivered here
    /// too. Returns false if the message is not held.
    pub(super) fn join_custody(
        &mut self,
        env: &Envelope,
        upstream: Upstream,
        deliver: bool,
    ) -> bool {
        let Some(id) = self.custody.by_key.get(env) else {
            return false;
        };
        let me = self.cfg.region.clone();
        let Some(h) = self.custody.held.get_mut(&id) else {
            return false;
        };
        // A copy coming back from a region we sent this message to (its
        // view changed, and it handed part of its obligation back): joining
        // would make each side wait for the other's ack for ever. It is
        // taken as a custody entry of its own.
        if let Upstream::Peer(from, _, _) = &upstream
            && h.sends.iter().any(|s| s.region == from.region)
        {
            return false;
        }
        h.upstream.push(upstream);
        if deliver && !h.local {
            // Held for transit so far; this copy is meant for us too.
            h.local = true;
            self.stats.delivered += 1;
            self.events.push_back(Event::Deliver {
                env: h.env.clone(),
                custody: Some(id),
            });
        }
        for d in &env.dests {
            let covered =
                *d == me || h.waiting.contains(d) || h.sends.iter().any(|s| s.dests.contains(d));
            if !covered {
                h.waiting.push(d.clone());
            }
        }
        self.dispatch(id);
        true
    }

    /// Send the entry's waiting destinations to the next hops that are
    /// connected; what has no path stays waiting (parked).
    fn dispatch(&mut self, id: u64) {
        let Some(mut h) = self.custody.held.remove(&id) else {
            return;
        };
        let waiting = std::mem::take(&mut h.waiting);
        let mut groups: SmallVec<[(PeerId, Regions); 2]> = SmallVec::new();
        let mut hop_limited = false;
        for dest in waiting {
            if dest == self.cfg.region {
                continue;
            }
            if h.env.hops >= self.cfg.hop_limit {
                hop_limited = true;
                continue;
            }
            let Some(hop) = self.router.next_hop(&h.env.origin, &dest, &h.env.visited) else {
                h.waiting.push(dest);
                continue;
            };
            if !self.exports(&hop, &h.env.message.topic) {
                self.drop(DropReason::ExportPolicy);
                continue;
            }
            let Some(peer) = self.carrier_id(&hop) else {
                h.waiting.push(dest);
                continue;
            };
            match groups.iter_mut().find(|(p, _)| *p == peer) {
                Some((_, ds)) => ds.push(dest),
                None => groups.push((peer, smallvec::smallvec![dest])),
            }
        }
        if hop_limited {
            self.drop(DropReason::HopLimit);
        }
        let shard = shard_of(&h.env.message.topic);
        for (peer, dests) in groups {
            let no = h.next_send;
            h.next_send += 1;
            if let Some(p) = self.peers.get_mut(&peer) {
                p.pending[shard].push_back(Out::Held { id, send: no });
            }
            h.sends.push(SendRec {
                no,
                region: peer.region.clone(),
                dests,
            });
        }
        if h.waiting.is_empty() && !h.unresolved {
            self.custody.parked.remove(&id);
        } else {
            self.custody.parked.insert(id);
        }
        self.custody.held.insert(id, h);
    }

    /// Release the entry's upstreams if nothing is outstanding.
    fn finish_if_done(&mut self, id: u64) {
        let done = self.custody.held.get(&id).is_some_and(|h| {
            !h.local && h.sends.is_empty() && h.waiting.is_empty() && !h.unresolved
        });
        if done {
            self.discard(id);
        }
    }

    /// Remove entry `id` and acknowledge its upstreams.
    fn discard(&mut self, id: u64) {
        let Some(h) = self.custody.held.remove(&id) else {
            return;
        };
        self.custody.by_key.remove(&h.env, id);
        self.custody.parked.remove(&id);
        self.custody.bytes = self
            .custody
            .bytes
            .saturating_sub(h.env.message.payload.len() as u64);
        for up in h.upstream {
            self.release(up);
        }
    }

    /// Tell an upstream we are done with its message.
    pub(super) fn release(&mut self, up: Upstream) {
        self.stats.released += 1;
        match up {
            Upstream::Broker(token) => self.events.push_back(Event::Release(token)),
            Upstream::Spool(key) => {
                self.custody.replayed = self.custody.replayed.saturating_sub(1);
                self.events.push_back(Event::SpoolAck(key));
            }
            Upstream::Peer(peer, incarnation, seq) => {
                // A connection that is gone gets nothing: its agent sends
                // the message again (on a new connection or another path)
                // and the replay is acknowledged then.
                if let Some(p) = self.peers.get_mut(&peer)
                    && p.incarnation == incarnation
                {
                    p.acks.push(seq);
                    p.acks_urgent = true;
                }
            }
        }
    }

    /// The local broker acknowledged the delivery numbered `custody`.
    /// With durable marks, its mark is written first ([`Event::Mark`]).
    pub fn handle_delivered(&mut self, now: Instant, custody: u64) {
        if !self.cfg.durable_marks {
            return self.handle_marked(now, custody);
        }
        if let Some(h) = self.custody.held.get_mut(&custody)
            && h.local
            && !h.marking
        {
            h.marking = true;
            let mark = Mark {
                origin: h.env.origin.clone(),
                node: h.env.origin_node.clone(),
                epoch: h.env.epoch,
                seq: h.env.seq,
            };
            self.events.push_back(Event::Mark { custody, mark });
        }
    }

    /// The dedupe mark of delivery `custody` is durable (or, without
    /// durable marks, the broker acknowledged it): the delivery is done.
    pub fn handle_marked(&mut self, _now: Instant, custody: u64) {
        if let Some(h) = self.custody.held.get_mut(&custody) {
            h.local = false;
            h.marking = false;
        }
        self.finish_if_done(custody);
    }

    /// The runtime dropped a message for `reason` (counted here, so every
    /// drop is in [`Stats`]); with `custody`, that delivery is over.
    pub fn handle_dropped(&mut self, now: Instant, reason: DropReason, custody: Option<u64>) {
        self.drop(reason);
        if let Some(c) = custody {
            self.handle_marked(now, c);
        }
    }

    /// The dedupe marks the runtime kept durably (deliveries its broker
    /// acknowledged before we stopped), to call before any data arrives:
    /// replays of those messages are then recognised as duplicates.
    pub fn restore_marks(&mut self, marks: Dedupe) {
        self.dedupe = marks;
    }

    /// The local broker connection was lost with deliveries unacknowledged:
    /// publish them again (the runtime's new session has forgotten them).
    pub fn handle_delivery_lost(&mut self, _now: Instant, custody: u64) {
        if let Some(h) = self.custody.held.get(&custody)
            && h.local
            && !h.marking
        {
            self.events.push_back(Event::Deliver {
                env: h.env.clone(),
                custody: Some(custody),
            });
        }
    }

    /// `from` acknowledged link sequence numbers `ranges`.
    pub(super) fn on_ack(&mut self, from: &PeerId, ranges: &[(u64, u64)]) {
        let Some(peer) = self.peers.get_mut(from) else {
            return;
        };
        let mut done: Vec<(u64, u64)> = Vec::new();
        for &(first, last) in ranges {
            peer.unacked.ack(first, last, &mut |c| done.extend(c));
        }
        for (id, no) in done {
            if let Some(h) = self.custody.held.get_mut(&id)
                && let Some(i) = h.sends.iter().position(|s| s.no == no)
            {
                let s = h.sends.remove(i);
                if h.unresolved {
                    h.reached.extend(s.dests);
                }
            }
            self.finish_if_done(id);
        }
    }

    /// Connection `peer` is gone (closed, or replaced by `successor`):
    /// its queued QoS 0 envelopes move to the successor or are dropped;
    /// every custody copy on it, queued or unacknowledged, goes back to
    /// waiting and is dispatched again.
    pub(super) fn connection_lost(&mut self, peer: Peer, successor: Option<&PeerId>) {
        self.custody.generation += 1;
        let mut requeue: Vec<(u64, u64)> = Vec::new();
        let mut orphans: Vec<Out> = Vec::new();
        for queue in peer.pending {
            for out in queue {
                match out {
                    Out::Held { id, send } => requeue.push((id, send)),
                    q0 => orphans.push(q0),
                }
            }
        }
        let mut closed = 0u64;
        for entry in peer.unacked.into_values() {
            match entry {
                Some(e) => requeue.push(e),
                None => closed += 1,
            }
        }
        self.count(DropReason::LinkClosed, closed);
        match successor.and_then(|s| self.peers.get_mut(s)) {
            Some(next) => {
                for out in orphans {
                    if let Out::Qos0(env) = &out {
                        let shard = shard_of(&env.message.topic);
                        next.pending_qos0 += 1;
                        next.pending[shard].push_back(out);
                    }
                }
            }
            None => self.count(DropReason::NoPeer, orphans.len() as u64),
        }
        for (id, no) in requeue {
            if let Some(h) = self.custody.held.get_mut(&id)
                && let Some(i) = h.sends.iter().position(|s| s.no == no)
            {
                let s = h.sends.remove(i);
                h.waiting.extend(s.dests);
                self.custody.parked.insert(id);
            }
        }
    }

    /// Dispatch the parked entries again if the graph, the interest or
    /// the connections changed since the last time; resolve the
    /// destinations of messages published during the warm-up once it is
    /// over; drop (counted) what waited longer than `max_age`.
    pub(super) fn retry_parked(&mut self, now: Instant) {
        if self.custody.parked.is_empty() {
            return;
        }
        self.expire(now);
        let state = (
            self.router.lsdb().version(),
            self.router.interests().version(),
            self.custody.generation,
        );
        let warm = now >= self.warm_until;
        if self.custody.retried == Some(state) && !(warm && self.unresolved_pending(now)) {
            return;
        }
        self.custody.retried = Some(state);
        let ids: Vec<u64> = self.custody.parked.iter().copied().collect();
        for id in ids {
            let Some(h) = self.custody.held.get(&id) else {
                continue;
            };
            let topic = h.env.message.topic.clone();
            let was_unresolved = h.unresolved;
            let wanting = self.router.wanting(&topic);
            let Some(h) = self.custody.held.get_mut(&id) else {
                continue;
            };
            if was_unresolved {
                // Published during the warm-up: whoever is known to want it
                // now is owed it too (summaries arrive one by one); once
                // the warm-up is over, the destinations are final.
                for w in &wanting {
                    let owed = *w != self.cfg.region
                        && !h.waiting.contains(w)
                        && !h.reached.contains(w)
                        && !h.sends.iter().any(|s| s.dests.contains(w));
                    if owed {
                        h.waiting.push(w.clone());
                    }
                }
                if warm {
                    h.unresolved = false;
                }
            }
            // A region that no longer wants the topic is no longer owed it;
            // one whose interest we do not know yet (we restarted, or it
            // never reached us) still is: nothing is released on a guess.
            if warm {
                let interests = self.router.interests();
                h.waiting
                    .retain(|d| wanting.contains(d) || !interests.knows(d));
            }
            self.dispatch(id);
            self.finish_if_done(id);
        }
    }

    /// Whether some entry still waits for the warm-up to end.
    fn unresolved_pending(&self, now: Instant) -> bool {
        now >= self.warm_until
            && self
                .custody
                .parked
                .iter()
                .any(|id| self.custody.held.get(id).is_some_and(|h| h.unresolved))
    }

    /// Drop parked entries older than `max_age` (counted as expired; their
    /// upstreams are released, so the loss is this counter's).
    fn expire(&mut self, now: Instant) {
        let max_age = self.cfg.max_age;
        let old: Vec<u64> = self
            .custody
            .parked
            .iter()
            .take_while(|id| {
                self.custody
                    .held
                    .get(id)
                    .is_some_and(|h| now.saturating_duration_since(h.since) >= max_age)
            })
            .copied()
            .collect();
        for id in old {
            self.drop(DropReason::Expired);
            if let Some(h) = self.custody.held.get_mut(&id) {
                h.waiting.clear();
                h.unresolved = false;
            }
            self.custody.parked.remove(&id);
            self.finish_if_done(id);
        }
    }

    /// The envelope for copy `send` of entry `id`, as it goes on the wire.
    pub(super) fn custody_copy(&self, id: u64, send: u64) -> Option<Envelope> {
        let h = self.custody.held.get(&id)?;
        let s = h.sends.iter().find(|s| s.no == send)?;
        // Time in the federation grows by the time spent here (the link's
        // share is added by the runtime, which knows the path's RTT).
        let here = self.last_now.saturating_duration_since(h.since).as_millis();
        let e = &h.env;
        // Field by field: cloning the whole envelope cloned its `dests`
        // only to replace them.
        Some(Envelope {
            origin: e.origin.clone(),
            origin_node: e.origin_node.clone(),
            epoch: e.epoch,
            seq: e.seq,
            hops: e.hops + 1,
            visited: e.visited.clone(),
            transit_ms: e
                .transit_ms
                .saturating_add(u64::try_from(here).unwrap_or(u64::MAX)),
            dests: s.dests.clone(),
            message: e.message.clone(),
        })
    }

    /// Hand the parked entries to the spool (once each): what no path can
    /// take now is made durable, and its upstream released, instead of
    /// being held in memory. Entries that came from the spool stay here.
    pub(super) fn spool_parked(&mut self) {
        if !self.cfg.spool {
            return;
        }
        let ids: Vec<u64> = self.custody.parked.iter().copied().collect();
        for id in ids {
            let Some(h) = self.custody.held.get_mut(&id) else {
                continue;
            };
            let from_spool = h.upstream.iter().any(|u| matches!(u, Upstream::Spool(_)));
            if from_spool || h.spooling.is_some() || h.unresolved || h.waiting.is_empty() {
                continue;
            }
            let mut env = Envelope::clone(&h.env);
            env.dests = h.waiting.clone();
            h.spooling = Some(h.waiting.clone());
            self.custody.by_key.insert(&h.env, id);
            self.events.push_back(Event::Spool {
                custody: id,
                env: Box::new(env),
            });
        }
    }

    /// The spool wrote entry `custody`'s message durably (`ok`), or
    /// refused it (full: it stays here, and its upstream waits).
    pub fn handle_spooled(&mut self, _now: Instant, custody: u64, ok: bool) {
        let Some(h) = self.custody.held.get_mut(&custody) else {
            return;
        };
        let Some(dests) = h.spooling.take() else {
            return;
        };
        if !ok {
            return;
        }
        // The spool owes these now. Any of them dispatched meanwhile (a
        // path appeared) arrive twice; the destination's dedupe drops one.
        h.waiting.retain(|d| !dests.contains(d));
        self.custody.spool_unread += 1;
        if h.waiting.is_empty() {
            self.custody.parked.remove(&custody);
        }
        self.finish_if_done(custody);
    }

    /// The runtime has a spool (normally set in [`AgentConfig::spool`]).
    pub fn enable_spool(&mut self) {
        self.cfg.spool = true;
    }

    /// The spool held `records` messages at start (recovered from disk).
    pub fn handle_spool_recovered(&mut self, records: u64) {
        self.custody.spool_unread = records;
    }

    /// A message back from the spool (record `key`): sent on towards its
    /// destinations; [`Event::SpoolAck`] once they have it.
    pub fn handle_unspooled(&mut self, now: Instant, key: u64, mut env: Envelope) {
        self.last_now = now;
        self.custody.spool_unread = self.custody.spool_unread.saturating_sub(1);
        self.custody.replayed += 1;
        let me = self.cfg.region.clone();
        if !env.visited.contains(&me) {
            env.visited.push(me.clone());
        }
        let dests: Regions = env.dests.iter().filter(|d| **d != me).cloned().collect();
        // Still held from before it was spooled (its other destinations
        // are not done): the spool's destinations join that entry, which
        // acknowledges the record once they are covered too.
        if self.join_custody(&env, Upstream::Spool(key), false) {
            return;
        }
        self.take_custody(now, env, Some(Upstream::Spool(key)), false, dests, false);
    }

    /// The spool answered the last [`Event::SpoolReplay`]; `exhausted`
    /// when it had nothing more to give.
    pub fn handle_replay_done(&mut self, _now: Instant, exhausted: bool) {
        self.custody.replay_out = false;
        if exhausted {
            self.custody.spool_unread = 0;
        }
        self.request_replay();
    }

    /// Ask the spool for more when it holds messages, there is room, and
    /// a path may have appeared.
    pub(super) fn request_replay(&mut self) {
        if !self.cfg.spool || self.custody.replay_out || self.custody.spool_unread == 0 {
            return;
        }
        let room = self.cfg.spool_replay.saturating_sub(self.custody.replayed);
        if room == 0 || self.peers_up().is_empty() {
            return;
        }
        self.custody.replay_out = true;
        self.events.push_back(Event::SpoolReplay(room));
    }

    /// When parked entries need a look without any input: the end of the
    /// warm-up, and once a second for `max_age`.
    pub(super) fn custody_timeout(&self) -> Option<Instant> {
        if self.custody.parked.is_empty() && self.custody.spool_unread == 0 {
            return None;
        }
        // An absolute schedule: a deadline relative to the latest input
        // would slide forever on a busy agent.
        let tick = self.next_spool_tick.unwrap_or(self.last_now);
        Some(if self.warm_until > self.last_now {
            tick.min(self.warm_until)
        } else {
            tick
        })
    }

    /// Custody figures for [`Stats`].
    pub(super) fn custody_stats(&self, stats: &mut Stats) {
        stats.held = self.custody.held.len() as u64;
        stats.parked = self.custody.parked.len() as u64;
        stats.held_bytes = self.custody.bytes;
        stats.spool_unread = self.custody.spool_unread;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn env(origin: &str, node: &str, epoch: u64, seq: u64) -> Envelope {
        Envelope {
            origin: RegionName::new(origin).unwrap(),
            origin_node: NodeName::new(node).unwrap(),
            epoch,
            seq,
            hops: 0,
            visited: Regions::new(),
            transit_ms: 0,
            dests: Regions::new(),
            message: Message {
                topic: TopicName::new("t").unwrap(),
                payload: bytes::Bytes::new(),
                qos: crate::frame::Qos::AtLeastOnce,
                retain: false,
                properties: crate::frame::Properties::default(),
            },
        }
    }

    #[test]
    fn source_keys_that_share_epoch_and_seq_stay_apart() {
        let mut k = ByKey::default();
        let (a, b, c) = (
            env("a", "n", 1, 7),
            env("b", "n", 1, 7),
            env("a", "m", 1, 7),
        );
        k.insert(&a, 1);
        k.insert(&b, 2);
        k.insert(&c, 3);
        assert_eq!(
            (k.get(&a), k.get(&b), k.get(&c)),
            (Some(1), Some(2), Some(3))
        );
        k.insert(&b, 4);
        assert_eq!(
            k.get(&b),
            Some(4),
            "a later entry of the same source replaces"
        );
        k.remove(&a, 99);
        assert_eq!(k.get(&a), Some(1), "removed only if it is that entry");
        k.remove(&a, 1);
        k.remove(&b, 4);
        assert_eq!((k.get(&a), k.get(&b), k.get(&c)), (None, None, Some(3)));
        k.remove(&c, 3);
        assert!(k.0.is_empty());
        k.insert(&a, 5);
        k.remove(&a, 5);
        assert!(k.0.is_empty(), "an inline slot goes with its entry");
    }
}
