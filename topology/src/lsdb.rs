//! The link-state database: the latest link-state advertisement (LSA) of
//! every region, as flooded between agents. Newer sequence numbers win;
//! entries that are not refreshed within `max_age` age out (their region is
//! gone or cut off). Time is passed in; nothing here reads a clock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::graph::RegionGraph;
use crate::region::{Cost, RegionName};

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

/// A region's link-state advertisement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lsa {
    /// The region that originated it.
    pub origin: RegionName,
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
}

#[derive(Debug, Clone)]
struct Entry {
    /// The advertisement.
    lsa: Lsa,
    /// When it was last installed or refreshed.
    refreshed: Instant,
}

/// Every region's latest LSA, as this region knows it.
#[derive(Debug, Clone)]
pub struct Lsdb {
    /// This region (its own entry never ages out).
    me: RegionName,
    /// Latest LSA per origin.
    entries: BTreeMap<RegionName, Entry>,
    /// Highest sequence number seen for our own origin, ours or an older incarnation's.
    own_seq: u64,
    /// How long a foreign entry lives without a refresh.
    max_age: Duration,
    /// Bumped on every change that can alter the graph.
    version: u64,
}

impl Lsdb {
    /// An empty database for region `me`.
    pub fn new(me: RegionName, max_age: Duration) -> Self {
        Self {
            me,
            entries: BTreeMap::new(),
            own_seq: 0,
            max_age,
            version: 0,
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

    /// The LSA of `region`, if known.
    pub fn lsa(&self, region: &RegionName) -> Option<&Lsa> {
        self.entries.get(region).map(|e| &e.lsa)
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
        self.own_seq = self.own_seq.max(seq_floor) + 1;
        let lsa = Lsa {
            origin: self.me.clone(),
            seq: self.own_seq,
            links,
        };
        let changed = self
            .entries
            .get(&self.me)
            .is_none_or(|p| p.lsa.links != lsa.links);
        self.entries.insert(
            self.me.clone(),
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
        if lsa.origin == self.me {
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
        if let Some(entry) = self.entries.get_mut(&lsa.origin) {
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
        // A refresh (same links, higher seq) is flooded on but changes no route.
        let changed = self
            .entries
            .get(&lsa.origin)
            .is_none_or(|p| p.lsa.links != lsa.links);
        self.entries.insert(
            lsa.origin.clone(),
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

    /// Drop foreign entries not refreshed within `max_age`; returns their origins.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<RegionName> {
        let max_age = self.max_age;
        let me = self.me.clone();
        let expired: Vec<RegionName> = self
            .entries
            .iter()
            .filter(|(origin, e)| {
                **origin != me && now.saturating_duration_since(e.refreshed) >= max_age
            })
            .map(|(origin, _)| origin.clone())
            .collect();
        for origin in &expired {
            self.entries.remove(origin);
        }
        if !expired.is_empty() {
            self.version += 1;
        }
        expired
    }

    /// When the next foreign entry will age out, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter(|(origin, _)| **origin != self.me)
            .map(|(_, e)| e.refreshed + self.max_age)
            .min()
    }

    /// The region graph the LSAs describe. A link counts only when both ends
    /// advertise it as up (a one-sided claim is ignored, as in OSPF's
    /// two-way check); its cost is the larger of the two advertised costs, so
    /// both directions agree and every agent computes the same trees.
    pub fn graph(&self) -> RegionGraph {
        let mut edges = Vec::new();
        for (origin, entry) in &self.entries {
            for link in entry.lsa.links.iter().filter(|l| l.up && *origin < l.peer) {
                let Some(back) = self.entries.get(&link.peer) else {
                    continue;
                };
                let Some(reverse) = back.lsa.links.iter().find(|l| l.peer == *origin && l.up)
                else {
                    continue;
                };
                edges.push((
                    origin.clone(),
                    link.peer.clone(),
                    link.cost.max(reverse.cost),
                ));
            }
        }
        RegionGraph::new(self.entries.keys().cloned(), edges)
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

    #[test]
    fn newer_wins_and_entries_age_out() {
        let t0 = Instant::now();
        let mut db = Lsdb::new(r("a"), Duration::from_secs(60));
        db.originate(t0, vec![link("b", 10, true)], 0);
        let b1 = Lsa {
            origin: r("b"),
            seq: 5,
            links: vec![link("a", 20, true)],
        };
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
            vec![r("b")]
        );
        assert_eq!(db.graph().edge_count(), 0);
        assert_eq!(db.graph().len(), 1);
    }

    #[test]
    fn refreshes_do_not_change_the_version() {
        let t0 = Instant::now();
        let mut db = Lsdb::new(r("a"), Duration::from_secs(60));
        db.originate(t0, vec![link("b", 1, true)], 0);
        let b1 = Lsa {
            origin: r("b"),
            seq: 1,
            links: vec![link("a", 1, true)],
        };
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
        let mut db = Lsdb::new(r("a"), Duration::from_secs(60));
        db.originate(t0, vec![link("b", 10, true), link("c", 10, true)], 0);
        db.handle_lsa(
            t0,
            Lsa {
                origin: r("b"),
                seq: 1,
                links: vec![link("a", 10, false)],
            },
        );
        db.handle_lsa(
            t0,
            Lsa {
                origin: r("c"),
                seq: 1,
                links: vec![],
            },
        );
        assert_eq!(db.graph().edge_count(), 0);
    }

    #[test]
    fn restart_originates_above_the_previous_incarnation() {
        let t0 = Instant::now();
        let mut db = Lsdb::new(r("a"), Duration::from_secs(60));
        let first = db.originate(t0, vec![], 0);
        assert_eq!(first.seq, 1);
        let old = Lsa {
            origin: r("a"),
            seq: 41,
            links: vec![],
        };
        assert_eq!(db.handle_lsa(t0, old), LsaOutcome::OwnStale);
        assert_eq!(db.originate(t0, vec![], 0).seq, 42);
    }
}
