//! Every region's interest in one place: the tables followed from each
//! (region, node), and the [`Matcher`] kept in step with them so that
//! "who wants topic T" is one trie walk.
//!
//! A region may run several agents (replicas) that each advertise a table;
//! the region wants a filter while any of its tables holds it.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use crate::interest::{Applied, Delta, DeltaOp, Digest, InterestError, InterestTable, Snapshot};
use crate::matcher::Matcher;
use crate::region::{NodeName, RegionId, RegionIds, RegionName, RegionSet};
use crate::topic::{TopicFilter, TopicName};

/// All regions' interest, and the matcher over it.
#[derive(Debug, Default)]
pub struct Interests {
    /// The latest table of each (region, node).
    tables: BTreeMap<(RegionName, NodeName), InterestTable>,
    /// For each (region, filter): how many of the region's tables hold it.
    holders: FxHashMap<(RegionId, TopicFilter), u32>,
    /// (filter, region) pairs with at least one holder.
    matcher: Matcher,
    /// Bumped whenever the matcher changes.
    version: u64,
    /// Bumped whenever any table changes (its filters or only its seq).
    revision: u64,
}

/// Why a delta was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// No snapshot has been received from that (region, node) yet.
    #[error("no snapshot from {region}/{node} yet: a snapshot is needed")]
    NoSnapshot {
        /// The region.
        region: RegionName,
        /// The node.
        node: NodeName,
    },
    /// The table refused the delta.
    #[error(transparent)]
    Table(#[from] InterestError),
}

impl Interests {
    /// Empty: no region wants anything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bumped whenever the answer to "who wants T" may have changed.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Bumped whenever any table changes at all, even when no region's
    /// interest does (a new seq with the same filters).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The table of (region, node), if one was received.
    pub fn table(&self, region: &RegionName, node: &NodeName) -> Option<&InterestTable> {
        self.tables.get(&(region.clone(), node.clone()))
    }

    /// Whether a table of any node of `region` was received (its interest
    /// is known, even if empty).
    pub fn knows(&self, region: &RegionName) -> bool {
        self.tables.keys().any(|(r, _)| r == region)
    }

    /// All tables.
    pub fn tables(&self) -> impl Iterator<Item = &InterestTable> {
        self.tables.values()
    }

    /// Digest of the table of (region, node).
    pub fn digest(&self, region: &RegionName, node: &NodeName) -> Option<Digest> {
        self.table(region, node).map(InterestTable::digest)
    }

    /// Install (or replace) a table from a snapshot. Only the difference to
    /// the previous table touches the matcher.
    pub fn handle_snapshot(&mut self, ids: &mut RegionIds, snapshot: Snapshot) {
        let key = (
            snapshot.version.region.clone(),
            snapshot.version.node.clone(),
        );
        let region = ids.intern(&key.0);
        let new = InterestTable::from_snapshot(snapshot);
        let ops = match self.tables.get(&key) {
            Some(old) => new.diff(old.filters()),
            None => new.filters().cloned().map(DeltaOp::Add).collect(),
        };
        self.tables.insert(key, new);
        self.revision += 1;
        self.apply_ops(region, &ops);
    }

    /// Apply a delta from (region, node).
    pub fn handle_delta(
        &mut self,
        ids: &mut RegionIds,
        region: &RegionName,
        node: &NodeName,
        delta: &Delta,
    ) -> Result<Applied, DeltaError> {
        let Some(table) = self.tables.get_mut(&(region.clone(), node.clone())) else {
            return Err(DeltaError::NoSnapshot {
                region: region.clone(),
                node: node.clone(),
            });
        };
        let applied = table.apply(delta)?;
        if let Applied::Changed(ops) = &applied {
            self.revision += 1;
            let id = ids.intern(region);
            self.apply_ops(id, ops);
        }
        Ok(applied)
    }

    /// Forget the table of (region, node) altogether (a replica removed for
    /// good, not a link going down: interest outlives links).
    pub fn remove(&mut self, ids: &mut RegionIds, region: &RegionName, node: &NodeName) {
        if let Some(old) = self.tables.remove(&(region.clone(), node.clone())) {
            self.revision += 1;
            let id = ids.intern(region);
            let ops: Vec<DeltaOp> = old.filters().cloned().map(DeltaOp::Remove).collect();
            self.apply_ops(id, &ops);
        }
    }

    fn apply_ops(&mut self, region: RegionId, ops: &[DeltaOp]) {
        let mut changed = false;
        for op in ops {
            match op {
                DeltaOp::Add(filter) => {
                    let count = self.holders.entry((region, filter.clone())).or_insert(0);
                    *count += 1;
                    if *count == 1 {
                        changed |= self.matcher.insert(filter, region);
                    }
                }
                DeltaOp::Remove(filter) => {
                    let key = (region, filter.clone());
                    let Some(count) = self.holders.get_mut(&key) else {
                        continue;
                    };
                    *count -= 1;
                    if *count == 0 {
                        self.holders.remove(&key);
                        changed |= self.matcher.remove(filter, region);
                    }
                }
            }
        }
        if changed {
            self.version += 1;
        }
    }

    /// Add to `out` every region that wants `topic`.
    pub fn wanting_into(&self, topic: &TopicName, out: &mut RegionSet) {
        self.matcher.matches_into(topic, out);
    }

    /// The matcher, for read-only use.
    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::interest::InterestVersion;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }
    fn snap(region: &str, node: &str, epoch: u64, filters: &[&str]) -> Snapshot {
        Snapshot {
            version: InterestVersion {
                region: RegionName::new(region).unwrap(),
                node: NodeName::new(node).unwrap(),
                epoch,
                seq: 0,
            },
            filters: filters.iter().map(|s| f(s)).collect(),
        }
    }

    #[test]
    fn replicas_hold_a_filter_until_the_last_lets_go() {
        let mut ids = RegionIds::default();
        let mut all = Interests::new();
        let eu = RegionName::new("eu").unwrap();
        all.handle_snapshot(&mut ids, snap("eu", "eu-a", 1, &["a/+", "b"]));
        all.handle_snapshot(&mut ids, snap("eu", "eu-b", 1, &["a/+"]));
        let topic = TopicName::new("a/x").unwrap();
        let eu_id = ids.get("eu").unwrap();
        let wants = |all: &Interests| {
            let mut out = RegionSet::new();
            all.wanting_into(&topic, &mut out);
            out.contains(eu_id)
        };
        assert!(wants(&all));
        all.handle_snapshot(&mut ids, snap("eu", "eu-a", 2, &["b"]));
        assert!(wants(&all), "eu-b still holds a/+");
        let v = all.version();
        let delta = Delta {
            epoch: 1,
            seq: 1,
            ops: vec![DeltaOp::Remove(f("a/+"))],
        };
        let node_b = NodeName::new("eu-b").unwrap();
        assert!(matches!(
            all.handle_delta(&mut ids, &eu, &node_b, &delta),
            Ok(Applied::Changed(_))
        ));
        assert!(!wants(&all));
        assert!(all.version() > v);
        let unknown = NodeName::new("eu-c").unwrap();
        assert!(matches!(
            all.handle_delta(&mut ids, &eu, &unknown, &delta),
            Err(DeltaError::NoSnapshot { .. })
        ));
        all.remove(&mut ids, &eu, &NodeName::new("eu-a").unwrap());
        assert!(all.matcher().is_empty());
    }
}
