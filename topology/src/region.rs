//! Region and node names, link costs, and the compact region ids and sets
//! the hot paths use instead of strings.

use std::fmt;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// Why a name or cost was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A region name must be a DNS label: it appears in certificates (SAN) and share names.
    #[error(
        "invalid region name `{0}`: expected 1 to 63 characters of lowercase letters, digits and `-`, starting and ending with a letter or digit"
    )]
    Region(String),
    /// A node name identifies one replica of a region.
    #[error(
        "invalid node name `{0}`: expected 1 to 64 characters of letters, digits, `.`, `_` and `-`"
    )]
    Node(String),
    /// Costs are positive so shortest paths are well defined.
    #[error("invalid cost {0}: expected a whole number from 1 to {max}", max = Cost::MAX)]
    Cost(u64),
}

/// The name of a region: a DNS label (`eu-west`, `us-east-1`). Names are
/// ordered bytewise, and that order breaks ties between equal-cost routes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RegionName(Arc<str>);

impl RegionName {
    /// Check `s` and wrap it.
    pub fn new(s: &str) -> Result<Self, NameError> {
        let bytes = s.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let ok = (1..=63).contains(&bytes.len())
            && bytes.iter().all(|b| alnum(b) || *b == b'-')
            && bytes.first().is_some_and(alnum)
            && bytes.last().is_some_and(alnum);
        if ok {
            Ok(Self(Arc::from(s)))
        } else {
            Err(NameError::Region(s.to_owned()))
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of one agent (replica) inside a region.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(Arc<str>);

impl NodeName {
    /// Check `s` and wrap it.
    pub fn new(s: &str) -> Result<Self, NameError> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(Arc::from(s)))
        } else {
            Err(NameError::Node(s.to_owned()))
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&RegionName> for NodeName {
    /// Every region name is a valid node name (a subset of its characters and length).
    fn from(r: &RegionName) -> Self {
        NodeName(r.0.clone())
    }
}

/// The cost of a link: positive, at most [`Cost::MAX`]. By convention, the
/// round-trip time in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Cost(u32);

impl Cost {
    /// Largest cost: large enough for any RTT in ms, small enough that path sums never overflow.
    pub const MAX: u32 = 1_000_000;

    /// Check `v` and wrap it.
    pub fn new(v: u64) -> Result<Self, NameError> {
        if (1..=u64::from(Self::MAX)).contains(&v) {
            Ok(Self(v as u32))
        } else {
            Err(NameError::Cost(v))
        }
    }

    /// The cost as a number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for Cost {
    /// 100: what a link costs until its round-trip time has been measured
    /// (as if 100 ms).
    fn default() -> Self {
        Cost(100)
    }
}

impl TryFrom<u64> for Cost {
    type Error = NameError;
    fn try_from(v: u64) -> Result<Self, Self::Error> {
        Self::new(v)
    }
}
impl From<Cost> for u32 {
    fn from(c: Cost) -> u32 {
        c.0
    }
}
impl From<Cost> for u64 {
    fn from(c: Cost) -> u64 {
        u64::from(c.0)
    }
}

macro_rules! name_impls {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }
        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(&s)
            }
        }
        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.0.to_string()
            }
        }
        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}
name_impls!(RegionName);
name_impls!(NodeName);

/// A compact handle for a region, valid within one [`RegionIds`] table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(u32);

impl RegionId {
    /// The id as an index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Interns region names into [`RegionId`]s. Ids are handed out in order of
/// first sight and never reused, so they stay valid for the table's life.
#[derive(Debug, Default, Clone)]
pub struct RegionIds {
    /// Name of each id, by index.
    names: Vec<RegionName>,
    /// Id of each name.
    ids: FxHashMap<RegionName, RegionId>,
}

impl RegionIds {
    /// The id for `name`, allocating one on first sight.
    pub fn intern(&mut self, name: &RegionName) -> RegionId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = RegionId(self.names.len() as u32);
        self.names.push(name.clone());
        self.ids.insert(name.clone(), id);
        id
    }

    /// The id for `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<RegionId> {
        self.ids.get(name).copied()
    }

    /// The name behind `id`.
    pub fn name(&self, id: RegionId) -> &RegionName {
        &self.names[id.index()]
    }

    /// How many regions have ids.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no region has an id yet.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A set of regions as a bitset over [`RegionId`]s: unions and membership in
/// a few word operations, no allocation for up to 128 regions after the first use.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct RegionSet {
    /// One bit per region id.
    words: Vec<u64>,
}

impl RegionSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `id`.
    pub fn insert(&mut self, id: RegionId) {
        let (w, b) = (id.index() / 64, id.index() % 64);
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        self.words[w] |= 1 << b;
    }

    /// Remove `id`.
    pub fn remove(&mut self, id: RegionId) {
        let (w, b) = (id.index() / 64, id.index() % 64);
        if let Some(word) = self.words.get_mut(w) {
            *word &= !(1 << b);
        }
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: RegionId) -> bool {
        let (w, b) = (id.index() / 64, id.index() % 64);
        self.words.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    /// Add every member of `other`.
    pub fn union_with(&mut self, other: &RegionSet) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// Empty the set, keeping its storage.
    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Members in id order.
    pub fn iter(&self) -> impl Iterator<Item = RegionId> + '_ {
        self.words.iter().enumerate().flat_map(|(w, word)| {
            let mut word = *word;
            std::iter::from_fn(move || {
                if word == 0 {
                    return None;
                }
                let b = word.trailing_zeros();
                word &= word - 1;
                Some(RegionId((w * 64) as u32 + b))
            })
        })
    }
}

impl FromIterator<RegionId> for RegionSet {
    fn from_iter<I: IntoIterator<Item = RegionId>>(iter: I) -> Self {
        let mut set = RegionSet::new();
        for id in iter {
            set.insert(id);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn region_names() {
        for ok in ["eu-west", "a", "us-east-1", "x9"] {
            assert!(RegionName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-eu",
            "eu-",
            "EU",
            "eu_west",
            "eu.west",
            &"a".repeat(64),
        ] {
            assert!(RegionName::new(bad).is_err(), "{bad}");
        }
        assert!(NodeName::new("eu-west-a.example_1").is_ok());
        assert!(NodeName::new("a b").is_err());
    }

    #[test]
    fn costs() {
        assert!(Cost::new(0).is_err());
        assert!(Cost::new(1).is_ok());
        assert!(Cost::new(u64::from(Cost::MAX) + 1).is_err());
    }

    #[test]
    fn region_sets() {
        let mut ids = RegionIds::default();
        let names: Vec<_> = (0..200)
            .map(|i| RegionName::new(&format!("r{i}")).unwrap())
            .collect();
        let all: Vec<_> = names.iter().map(|n| ids.intern(n)).collect();
        assert_eq!(ids.intern(&names[5]), all[5]);
        let mut set: RegionSet = [all[3], all[130], all[64]].into_iter().collect();
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec![all[3], all[64], all[130]]
        );
        assert!(set.contains(all[130]) && !set.contains(all[129]));
        set.remove(all[64]);
        assert_eq!(set.len(), 2);
        let mut other = RegionSet::new();
        other.insert(all[199]);
        set.union_with(&other);
        assert_eq!(set.len(), 3);
        set.clear();
        assert!(set.is_empty());
    }
}
