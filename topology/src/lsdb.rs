//! The link-state database: the latest link-state advertisement (LSA) of
//! every agent, as flooded between agents. Newer sequence numbers win;
//! entries that are not refreshed within `max_age` age out (their agent is
//! gone or cut off). Time is passed in; nothing here reads a clock.
//!
//! Replicas: several agents (nodes) may serve one region. Each originates
//! its own LSA, keyed by (region, node); the graph is still one of regions.
//! A region's side of a link is up when any of its agents advertises it up
//! (at the lowest cost any of them advertises), and a link counts only when
//! both regions' sides are up.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::graph::RegionGraph;
use crate::region::{Cost, NodeName, RegionName};

/// One link as its region advertises it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LsaLink {
    /// The region at the other end.
    pub peer: RegionName,
    /// What sending over the link costs (configured, or measured RTT in ms).
    pub cost: Cost,
    /// Whether the link is currently up.
    pub up: bool,
}

/// One agent's link-state advertisement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lsa {
    /// The region that originated it.
    pub origin: RegionName,
    /// The agent of that region that originated it (replicas each advertise
    /// their own links).
    pub node: NodeName,
    /// Higher is newer. Originators keep it increasing across restarts (see
    /// [`Lsdb::originate`]).
    pub seq: u64,
    /// The region's links, sorted by peer.
    pub links: Vec<LsaLink>,
}

/// What [`Lsdb::handle_lsa`] did with an LSA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LsaOutcome {
    /// Newer than what we had: installed; flood it to the other neighbours.
    Installed,
    /// The same sequence number as ours: a refresh; nothing to flood.
    Duplicate,
    /// Older than ours: ignored; the sender is behind, send it ours.
    Older,
    /// An LSA claiming to be ours with a higher seq (from before a restart):
    /// ignored; originate a fresh one, which will be numbered above it.
    OwnStale,
    /// A sequence number above [`MAX_LSA_SEQ`]: refused (the sender is
    /// broken or hostile: accepting it would let it exhaust the space).
    Refused,
}

/// Highest LSA sequence number accepted (OSPF's rule, RFC 2328 §12.1.6: a
/// maximum well inside the space). Agents number from their start time in
/// milliseconds, about 2^41 today, so real LSAs never come near it; an LSA
/// above it is refused, and our own numbering saturates there.
pub const MAX_LSA_SEQ: u64 = 1 << 62;

/// Furthest above our own sequence number an LSA claiming to be ours may be.
const OWN_SEQ_JUMP: u64 = 1 << 32;

#[derive(Debug, Clone)]
struct Entry {
    /// The advertisement.
    lsa: Lsa,
    /// When it was last installed or refreshed.
    refreshed: Instant,
}

/// Every agent's latest LSA, as this agent knows it.
#[derive(Debug, Clone)]
pub struct Lsdb {
    /// This region.
    me: RegionName,
    /// This agent (its own entry never ages out).
    node: NodeName,
    /// Latest LSA per originating agent.
    entries: BTreeMap<(RegionName, NodeName), Entry>,
    /// Highest sequence number seen for our own origin, ours or an older incarnation's.
    own_seq: u64,
    /// How long a foreign entry lives without a refresh.
    max_age: Duration,
    /// Bumped on every change that can alter the graph.
    version: u64,
    /// No foreign entry ages out before this (a lower bound: entries only
    /// get younger, so it is exact after each [`Lsdb::handle_timeout`]).
    next_expiry: Option<Instant>,
}

impl Lsdb {
    /// An empty database for agent `node` of region `me`.
    pub fn new(me: RegionName, node: NodeName, max_age: Duration) -> Self {
        Self {
            me,
            node,
            entries: BTreeMap::new(),
            own_seq: 0,
            max_age,
            version: 0,
            next_expiry: None,
        }
    }

    /// This region.
    pub fn me(&self) -> &RegionName {
        &self.me
    }

    /// Changes whenever the graph the LSAs describe may have changed (a
    /// refresh with the same links, only a higher sequence number, does not
    /// count: it must not invalidate trees and route caches).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// How long a foreign entry lives without a refresh.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// This agent.
    pub fn node(&self) -> &NodeName {
        &self.node
    }

    /// The LSA of agent `node` of `region`, if known.
    pub fn lsa(&self, region: &RegionName, node: &NodeName) -> Option<&Lsa> {
        self.entries
            .get(&(region.clone(), node.clone()))
            .map(|e| &e.lsa)
    }

    /// All LSAs, by origin.
    pub fn lsas(&self) -> impl Iterator<Item = &Lsa> {
        self.entries.values().map(|e| &e.lsa)
    }

    /// Replace our own LSA with `links`, numbered above anything seen, and
    /// return it for flooding. `seq_floor` lets a restarting agent start
    /// above its previous incarnation (e.g. a timestamp-based floor).
    pub fn originate(&mut self, now: Instant, mut links: Vec<LsaLink>, seq_floor: u64) -> Lsa {
        links.sort_by(|a, b| a.peer.cmp(&b.peer));
        links.dedup_by(|a, b| a.peer == b.peer);
        self.own_seq = self
            .own_seq
            .max(seq_floor.min(MAX_LSA_SEQ))
            .saturating_add(1)
            .min(MAX_LSA_SEQ);
        let lsa = Lsa {
            origin: self.me.clone(),
            node: self.node.clone(),
            seq: self.own_seq,
            links,
        };
        let key = (self.me.clone(), self.node.clone());
        let changed = self
            .entries
            .get(&key)
            .is_none_or(|p| p.lsa.links != lsa.links);
        self.entries.insert(
            key,
            Entry {
                lsa: lsa.clone(),
                refreshed: now,
            },
        );
        if changed {
            self.version += 1;
        }
        lsa
    }

    /// Take in an LSA received from a neighbour.
    pub fn handle_lsa(&mut self, now: Instant, mut lsa: Lsa) -> LsaOutcome {
        if lsa.seq > MAX_LSA_SEQ {
            return LsaOutcome::Refused;
        }
        if lsa.origin == self.me && lsa.node == self.node {
            // A previous incarnation numbered from an earlier start time,
            // so it is never far above us: a huge jump is bogus, and taking
            // it would freeze our numbering at the maximum.
            if lsa.seq > self.own_seq.saturating_add(OWN_SEQ_JUMP) {
                return LsaOutcome::Refused;
            }
            if lsa.seq > self.own_seq {
                self.own_seq = lsa.seq;
                return LsaOutcome::OwnStale;
            }
            return if lsa.seq == self.own_seq {
                LsaOutcome::Duplicate
            } else {
                LsaOutcome::Older
            };
        }
        let key = (lsa.origin.clone(), lsa.node.clone());
        if let Some(entry) = self.entries.get_mut(&key) {
            if lsa.seq < entry.lsa.seq {
                return LsaOutcome::Older;
            }
            if lsa.seq == entry.lsa.seq {
                entry.refreshed = now;
                return LsaOutcome::Duplicate;
            }
        }
        lsa.links.sort_by(|a, b| a.peer.cmp(&b.peer));
        lsa.links.dedup_by(|a, b| a.peer == b.peer);
        if self.next_expiry.is_none() {
            self.next_expiry = Some(now + self.max_age);
        }
        // A refresh (same links, higher seq) is flooded on but changes no route.
        let changed = self
            .entries
            .get(&key)
            .is_none_or(|p| p.lsa.links != lsa.links);
        self.entries.insert(
            key,
            Entry {
                lsa,
                refreshed: now,
            },
        );
        if changed {
            self.version += 1;
        }
        LsaOutcome::Installed
    }

    /// Every LSA with the time since it was last installed or refreshed.
    pub fn lsas_aged(&self, now: Instant) -> impl Iterator<Item = (&Lsa, Duration)> {
        self.entries
            .values()
            .map(move |e| (&e.lsa, now.saturating_duration_since(e.refreshed)))
    }

    /// Drop foreign entries not refreshed within `max_age`; returns their
    /// (region, node) keys.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<(RegionName, NodeName)> {
        if self.next_expiry.is_none_or(|t| now < t) {
            return Vec::new(); // nothing can have aged out yet
        }
        let max_age = self.max_age;
        let expired: Vec<(RegionName, NodeName)> = self
            .entries
            .iter()
            .filter(|(key, e)| {
                !self.is_me(key) && now.saturating_duration_since(e.refreshed) >= max_age
            })
            .map(|(key, _)| key.clone())
            .collect();
        for origin in &expired {
            self.entries.remove(origin);
        }
        self.next_expiry = self
            .entries
            .iter()
            .filter(|(key, _)| !self.is_me(key))
            .map(|(_, e)| e.refreshed + max_age)
            .min();
        if !expired.is_empty() {
            self.version += 1;
        }
        expired
    }

    fn is_me(&self, (region, node): &(RegionName, NodeName)) -> bool {
        *region == self.me && *node == self.node
    }

    /// When the next foreign entry may age out, if any (O(1): it may be
    /// early, never late; [`Lsdb::handle_timeout`] then looks again).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_expiry
    }

    /// The region graph the LSAs describe. A link counts only when both ends
    /// advertise it as up (a one-sided claim is ignored, as in OSPF's
    /// two-way check); its cost is the larger of the two advertised costs, so
    /// both directions agree and every agent computes the same trees. With
    /// replicas, a region's side is up when any of its agents says so, at the
    /// lowest cost any of them advertises.
    pub fn graph(&self) -> RegionGraph {
        // (from, to) -> cheapest up advertisement by any agent of `from`.
        let mut sides: FxHashMap<(&RegionName, &RegionName), Cost> = FxHashMap::default();
        for ((origin, _), entry) in &self.entries {
            for link in entry.lsa.links.iter().filter(|l| l.up) {
                sides
                    .entry((origin, &link.peer))
                    .and_modify(|c| *c = (*c).min(link.cost))
                    .or_insert(link.cost);
            }
        }
        let edges = sides
            .iter()
            .filter(|((a, b), _)| a < b)
            .filter_map(|((a, b), cost)| {
                let reverse = sides.get(&(*b, *a))?;
                Some(((*a).clone(), (*b).clone(), (*cost).max(*reverse)))
            })
            .collect::<Vec<_>>();
        let mut regions: Vec<RegionName> = self.entries.keys().map(|(r, _)| r.clone()).collect();
        regions.dedup();
        RegionGraph::new(regions, edges)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn r(s: &str) -> RegionName {
        RegionName::new(s).unwrap()
    }
    fn link(peer: &str, cost: u64, up: bool) -> LsaLink {
        LsaLink {
            peer: r(peer),
            cost: Cost::new(cost).unwrap(),
            up,
        }
    }
    /// The LSA of region `origin`'s only agent (node named like the region).
    fn lsa(origin: &str, seq: u64, links: Vec<LsaLink>) -> Lsa {
        Lsa {
            origin: r(origin),
            node: NodeName::from(&r(origin)),
            seq,
            links,
        }
    }

    #[test]
    fn sequence_numbers_a_peer_sends_cannot_overflow_ours() {
        let t0 = Instant::now();
        let mut db = Lsdb::new(r("a"), NodeName::from(&r("a")), Duration::from_secs(60));
        db.originate(t0, vec![], 5);
        // A broken peer claims our LSA at the very top of the space.
        assert_eq!(
            db.handle_lsa(t0, lsa("a", u64::MAX, vec![])),
            LsaOutcome::Refused
        );
        assert_eq!(
            db.handle_lsa(t0, lsa("b", u64::MAX, vec![])),
            LsaOutcome::Refused
        );
        assert!(db.lsa(&r("b"), &NodeName::from(&r("b"))).is_none());
        assert_eq!(
            db.handle_lsa(t0, lsa("a", MAX_LSA_SEQ, vec![])),
            LsaOutcome::Refused,
            "a jump to the maximum would freeze our numbering"
        );
        assert_eq!(
            db.handle_lsa(t0, lsa("a", 1000, vec![])),
            LsaOutcome::OwnStale
        );
        assert_eq!(db.originate(t0, vec![], 0).seq, 1001);
        // At the maximum itself, ours saturates instead of wrapping.
        let own = db.originate(t0, vec![], u64::MAX);
        assert_eq!(own.seq, MAX_LSA_SEQ);
        let again = db.originate(t0, vec![], 0);
        assert_eq!(again.seq, MAX_LSA_SEQ);
    }

    #[test]
    fn newer_wins_and_entries_age_out() {
        let t0 = Instant::now();
        let mut db = Lsdb::new(r("a"), NodeName::from(&r("a")), Duration::from_secs(60));
        db.originate(t0, vec![link("b", 10, true)], 0);
        let b1 = lsa("b", 5, vec![link("a", 20, true)]);
        assert_eq!(db.handle_lsa(t0, b1.clone()), LsaOutcome::Installed);
        assert_eq!(db.handle_lsa(t0, b1.clone()), LsaOutcome::Duplicate);
        assert_eq!(
            db.handle_lsa(
                t0,
                Lsa {
                    seq: 4,
                    ..b1.clone()
                }
            ),
            LsaOutcome::Older
        );
        let g = db.graph();
        assert_eq!(g.edge_count(), 1);
        assert_eq!(g.cost(&r("a"), &r("b")), Some(20));
        assert_eq!(db.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        assert!(db.handle_timeout(t0 + Duration::from_secs(59)).is_empty());
        assert_eq!(
            db.handle_timeout(t0 + Duration::from_secs(60)),
            vec![(r("b"), NodeName::from(&r("b")))]
        );
        assert_eq!(db.graph().edge_count(), 0);
        assert_eq!(db.graph().len(), 1);
    }

    #[test]
    fn refreshes_do_not_change_the_version() {
        let t0 = Instant::now();
        let mut db = Lsdb::new(r("a"), NodeName::from(&r("a")), Duration::from_secs(60));
        db.originate(t0, vec![link("b", 1, true)], 0);
        let b1 = lsa("b", 1, vec![link("a", 1, true)]);
        db.handle_lsa(t0, b1.clone());
        let v = db.version();
        assert_eq!(
            db.handle_lsa(
                t0,
                Lsa {
                    seq: 2,
                    ..b1.clone()
                }
            ),
            LsaOutcome::Installed,
            "still flooded"
        );
        db.originate(t0, vec![link("b", 1, true)], 0);
        assert_eq!(db.version(), v);
        db.handle_lsa(
            t0,
            Lsa {
                seq: 3,
                links: vec![link("a", 1, false)],
                ..b1
            },
        );
        assert!(db.version() > v);
    }

    #[test]
    fn one_sided_or_down_links_do_not_count() {
        let t0 = Instant::now();
        let mut db = Lsdb::new(r("a"), NodeName::from(&r("a")), Duration::from_secs(60));
        db.originate(t0, vec![link("b", 10, true), link("c", 10, true)], 0);
        db.handle_lsa(t0, lsa("b", 1, vec![link("a", 10, false)]));
        db.handle_lsa(t0, lsa("c", 1, vec![]));
        assert_eq!(db.graph().edge_count(), 0);
    }

    #[test]
    fn restart_originates_above_the_previous_incarnation() {
        let t0 = Instant::now();
        let mut db = Lsdb::new(r("a"), NodeName::from(&r("a")), Duration::from_secs(60));
        let first = db.originate(t0, vec![], 0);
        assert_eq!(first.seq, 1);
        let old = lsa("a", 41, vec![]);
        assert_eq!(db.handle_lsa(t0, old), LsaOutcome::OwnStale);
        assert_eq!(db.originate(t0, vec![], 0).seq, 42);
    }

    #[test]
    fn replicas_advertise_their_own_links_and_either_keeps_a_side_up() {
        let t0 = Instant::now();
        let a2 = NodeName::new("a2").unwrap();
        let mut db = Lsdb::new(
            r("a"),
            NodeName::new("a1").unwrap(),
            Duration::from_secs(60),
        );
        db.originate(t0, vec![link("b", 30, false)], 0);
        let sibling = Lsa {
            origin: r("a"),
            node: a2.clone(),
            seq: 7,
            links: vec![link("b", 20, true)],
        };
        assert_eq!(
            db.handle_lsa(t0, sibling.clone()),
            LsaOutcome::Installed,
            "not ours"
        );
        db.handle_lsa(t0, lsa("b", 1, vec![link("a", 10, true)]));
        let g = db.graph();
        assert_eq!(g.len(), 2, "one node per region, not per agent");
        assert_eq!(g.cost(&r("a"), &r("b")), Some(20), "a2 keeps a's side up");
        db.originate(t0, vec![link("b", 5, true)], 0);
        assert_eq!(
            db.graph().cost(&r("a"), &r("b")),
            Some(10),
            "cheapest side, then max"
        );
        db.originate(t0, vec![link("b", 5, false)], 0);
        db.handle_lsa(
            t0,
            Lsa {
                seq: 8,
                links: vec![link("b", 20, false)],
                ..sibling
            },
        );
        assert_eq!(db.graph().edge_count(), 0, "no agent of a has the link up");
        assert_eq!(db.lsa(&r("a"), &a2).map(|l| l.seq), Some(8));
    }
}
