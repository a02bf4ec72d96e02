//! Interest tables: which topic filters one region wants, with a version so
//! that other regions can follow it as a snapshot and then sequenced deltas,
//! and a digest so that drift is noticed.
//!
//! The local side counts references (two clients subscribing to the same
//! filter count twice, and the filter is wanted until both leave); what is
//! advertised is only presence, so deltas carry adds and removes of filters.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::region::{NodeName, RegionName};
use crate::topic::TopicFilter;

/// Who published a table and how far along it is. An agent picks a new
/// `epoch` each time it starts; `seq` counts changes within an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InterestVersion {
    /// The region the interest belongs to.
    pub region: RegionName,
    /// The agent (replica) that publishes it.
    pub node: NodeName,
    /// Chosen anew at each agent start; a new epoch replaces the old table.
    pub epoch: u64,
    /// Number of changes applied within the epoch.
    pub seq: u64,
}

/// An order-independent fingerprint of a set of filters: two tables with the
/// same filters have the same digest whatever order they were built in, and
/// it updates in O(1) per change.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Digest {
    /// Number of filters.
    pub count: u64,
    /// Wrapping sum of a stable 64-bit hash of each filter.
    pub sum: u64,
}

impl Digest {
    fn add(&mut self, filter: &TopicFilter) {
        self.count += 1;
        self.sum = self
            .sum
            .wrapping_add(stable_hash(filter.as_str().as_bytes()));
    }

    fn remove(&mut self, filter: &TopicFilter) {
        self.count -= 1;
        self.sum = self
            .sum
            .wrapping_sub(stable_hash(filter.as_str().as_bytes()));
    }
}

/// FNV-1a followed by a 64-bit finaliser: stable across processes, builds and
/// platforms (unlike `std`'s randomly keyed hasher), which a digest compared
/// between agents needs. Public so every fingerprint exchanged between
/// agents uses the same function.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// One change to the set of filters a region wants.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeltaOp {
    /// The filter is now wanted.
    Add(TopicFilter),
    /// The filter is no longer wanted.
    Remove(TopicFilter),
}

/// The whole table at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The version the snapshot was taken at.
    pub version: InterestVersion,
    /// Every wanted filter, sorted.
    pub filters: Vec<TopicFilter>,
}

/// Changes that move a table from `seq - 1` to `seq` within `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The epoch the delta belongs to.
    pub epoch: u64,
    /// The sequence number the table has after applying it.
    pub seq: u64,
    /// The changes, in order.
    pub ops: Vec<DeltaOp>,
}

/// What applying a delta did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Applied; these filters changed presence (for updating a matcher).
    Changed(Vec<DeltaOp>),
    /// Already seen (seq at or below the table's): ignored.
    Stale,
}

/// Why a delta could not be applied; the remedy is always a fresh snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterestError {
    /// The delta is from another epoch than the table.
    #[error("delta for epoch {got}, but the table is at epoch {have}: a snapshot is needed")]
    EpochMismatch {
        /// Epoch of the table.
        have: u64,
        /// Epoch of the delta.
        got: u64,
    },
    /// One or more deltas were missed.
    #[error("delta {got} does not follow {have}: deltas were missed, a snapshot is needed")]
    SeqGap {
        /// Sequence number of the table.
        have: u64,
        /// Sequence number of the delta.
        got: u64,
    },
}

/// The filters one region wants, each with a reference count.
#[derive(Debug, Clone)]
pub struct InterestTable {
    /// Current version.
    version: InterestVersion,
    /// Filter -> number of local subscriptions holding it (always ≥ 1).
    refs: BTreeMap<TopicFilter, u32>,
    /// Fingerprint of `refs`' keys, kept up to date on every change.
    digest: Digest,
}

impl InterestTable {
    /// An empty table for `region`/`node` in `epoch`, at seq 0.
    pub fn new(region: RegionName, node: NodeName, epoch: u64) -> Self {
        Self {
            version: InterestVersion {
                region,
                node,
                epoch,
                seq: 0,
            },
            refs: BTreeMap::new(),
            digest: Digest::default(),
        }
    }

    /// A table holding exactly the filters of `snapshot`, at its version.
    pub fn from_snapshot(snapshot: Snapshot) -> Self {
        let mut table = Self::new(
            snapshot.version.region.clone(),
            snapshot.version.node.clone(),
            0,
        );
        table.version = snapshot.version;
        for filter in snapshot.filters {
            table.insert_presence(filter);
        }
        table
    }

    /// The current version.
    pub fn version(&self) -> &InterestVersion {
        &self.version
    }

    /// The digest of the current filter set.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Number of distinct filters.
    pub fn len(&self) -> usize {
        self.refs.len()
    }

    /// Whether no filter is wanted.
    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// The wanted filters, sorted.
    pub fn filters(&self) -> impl Iterator<Item = &TopicFilter> {
        self.refs.keys()
    }

    /// Whether `filter` is wanted.
    pub fn contains(&self, filter: &TopicFilter) -> bool {
        self.refs.contains_key(filter)
    }

    /// One more local subscription holds `filter`. Returns the delta to
    /// advertise when the filter became wanted (and bumps the sequence).
    pub fn subscribe(&mut self, filter: TopicFilter) -> Option<Delta> {
        if let Some(count) = self.refs.get_mut(&filter) {
            *count += 1;
            return None;
        }
        self.insert_presence(filter.clone());
        Some(self.next_delta(vec![DeltaOp::Add(filter)]))
    }

    /// One local subscription to `filter` went away. Returns the delta to
    /// advertise when nothing holds the filter any more.
    pub fn unsubscribe(&mut self, filter: &TopicFilter) -> Option<Delta> {
        let count = self.refs.get_mut(filter)?;
        *count -= 1;
        if *count > 0 {
            return None;
        }
        self.refs.remove(filter);
        self.digest.remove(filter);
        Some(self.next_delta(vec![DeltaOp::Remove(filter.clone())]))
    }

    fn next_delta(&mut self, ops: Vec<DeltaOp>) -> Delta {
        self.version.seq += 1;
        Delta {
            epoch: self.version.epoch,
            seq: self.version.seq,
            ops,
        }
    }

    fn insert_presence(&mut self, filter: TopicFilter) -> bool {
        if self.refs.contains_key(&filter) {
            return false;
        }
        self.digest.add(&filter);
        self.refs.insert(filter, 1);
        true
    }

    /// The whole table, for a peer that has nothing or has drifted.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: self.version.clone(),
            filters: self.refs.keys().cloned().collect(),
        }
    }

    /// Apply a peer's delta to this (remote) table. Presence only: an `Add`
    /// of a present filter or a `Remove` of an absent one changes nothing.
    pub fn apply(&mut self, delta: &Delta) -> Result<Applied, InterestError> {
        if delta.epoch != self.version.epoch {
            return Err(InterestError::EpochMismatch {
                have: self.version.epoch,
                got: delta.epoch,
            });
        }
        if delta.seq <= self.version.seq {
            return Ok(Applied::Stale);
        }
        if delta.seq != self.version.seq + 1 {
            return Err(InterestError::SeqGap {
                have: self.version.seq,
                got: delta.seq,
            });
        }
        let mut changed = Vec::new();
        for op in &delta.ops {
            match op {
                DeltaOp::Add(filter) => {
                    if self.insert_presence(filter.clone()) {
                        changed.push(op.clone());
                    }
                }
                DeltaOp::Remove(filter) => {
                    if self.refs.remove(filter).is_some() {
                        self.digest.remove(filter);
                        changed.push(op.clone());
                    }
                }
            }
        }
        self.version.seq = delta.seq;
        Ok(Applied::Changed(changed))
    }

    /// The operations that turn `old`'s filter set into this table's (for
    /// an incremental resync, or for updating a matcher after a snapshot).
    pub fn diff<'a>(&'a self, old: impl IntoIterator<Item = &'a TopicFilter>) -> Vec<DeltaOp> {
        let mut ops = Vec::new();
        let mut old: Vec<&TopicFilter> = old.into_iter().collect();
        old.sort_unstable();
        old.dedup();
        let mut old = old.into_iter().peekable();
        let mut new = self.refs.keys().peekable();
        loop {
            match (old.peek(), new.peek()) {
                (Some(o), Some(n)) if o == n => {
                    old.next();
                    new.next();
                }
                (Some(o), Some(n)) if o < n => {
                    ops.push(DeltaOp::Remove((*o).clone()));
                    old.next();
                }
                (_, Some(n)) => {
                    ops.push(DeltaOp::Add((*n).clone()));
                    new.next();
                }
                (Some(o), None) => {
                    ops.push(DeltaOp::Remove((*o).clone()));
                    old.next();
                }
                (None, None) => return ops,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }
    fn table(epoch: u64) -> InterestTable {
        InterestTable::new(
            RegionName::new("eu").unwrap(),
            NodeName::new("eu-a").unwrap(),
            epoch,
        )
    }

    #[test]
    fn refcounts_emit_deltas_only_on_presence_changes() {
        let mut t = table(7);
        let d1 = t.subscribe(f("a/+")).unwrap();
        assert_eq!(
            d1,
            Delta {
                epoch: 7,
                seq: 1,
                ops: vec![DeltaOp::Add(f("a/+"))]
            }
        );
        assert_eq!(t.subscribe(f("a/+")), None);
        assert_eq!(t.unsubscribe(&f("a/+")), None);
        let d2 = t.unsubscribe(&f("a/+")).unwrap();
        assert_eq!(d2.ops, vec![DeltaOp::Remove(f("a/+"))]);
        assert_eq!(d2.seq, 2);
        assert_eq!(t.unsubscribe(&f("a/+")), None);
        assert!(t.is_empty());
        assert_eq!(t.digest(), Digest::default());
    }

    #[test]
    fn remote_follows_snapshot_then_deltas() {
        let mut local = table(3);
        local.subscribe(f("x/#"));
        let mut remote = InterestTable::from_snapshot(local.snapshot());
        assert_eq!(remote.digest(), local.digest());
        let d = local.subscribe(f("y")).unwrap();
        assert_eq!(
            remote.apply(&d),
            Ok(Applied::Changed(vec![DeltaOp::Add(f("y"))]))
        );
        assert_eq!(remote.apply(&d), Ok(Applied::Stale));
        assert_eq!(remote.digest(), local.digest());
        local.subscribe(f("z"));
        let d4 = local.unsubscribe(&f("y")).unwrap();
        assert_eq!(
            remote.apply(&d4),
            Err(InterestError::SeqGap { have: 2, got: 4 })
        );
        let other_epoch = Delta { epoch: 9, ..d4 };
        assert!(matches!(
            remote.apply(&other_epoch),
            Err(InterestError::EpochMismatch { .. })
        ));
        assert_ne!(remote.digest(), local.digest());
    }

    #[test]
    fn digest_is_order_independent_and_diff_round_trips() {
        let mut a = table(1);
        let mut b = table(1);
        for s in ["a", "b/+", "c/#"] {
            a.subscribe(f(s));
        }
        for s in ["c/#", "a", "b/+"] {
            b.subscribe(f(s));
        }
        assert_eq!(a.digest(), b.digest());
        let old = [f("a"), f("zz"), f("b/+"), f("0")];
        let ops = a.diff(old.iter());
        assert_eq!(
            ops,
            vec![
                DeltaOp::Remove(f("0")),
                DeltaOp::Add(f("c/#")),
                DeltaOp::Remove(f("zz"))
            ]
        );
    }
}
