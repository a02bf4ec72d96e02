//! The matcher: "which regions want topic T?" over every region's filters at
//! once, updated one filter at a time.
//!
//! A trie over topic levels, stored in an arena (`Vec<Node>` with `u32`
//! links, freed nodes recycled). Each node keeps its literal children in a
//! hash map, and separately its `+` child and the regions whose filter ends
//! in `#` there, so a lookup walks at most three branches per level and
//! visits only nodes that can match. Regions are collected into a
//! [`RegionSet`] bitset the caller reuses, so a lookup does not allocate.

use rustc_hash::FxHashMap;

use crate::region::{RegionId, RegionSet};
use crate::topic::{Level, TopicFilter, TopicName};

type NodeIdx = u32;
const ROOT: NodeIdx = 0;

#[derive(Debug, Default)]
struct Node {
    /// Children by literal level text.
    literal: FxHashMap<Box<str>, NodeIdx>,
    /// The `+` child, if any filter has `+` at this depth under this prefix.
    plus: Option<NodeIdx>,
    /// Regions with a filter that ends here (`prefix` exactly).
    exact: Vec<RegionId>,
    /// Regions with the filter `prefix/#`.
    hash: Vec<RegionId>,
    /// Parent node and the edge that leads here, for pruning.
    parent: Option<(NodeIdx, Edge)>,
}

#[derive(Debug, Clone)]
enum Edge {
    Literal(Box<str>),
    Plus,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.plus.is_none()
            && self.exact.is_empty()
            && self.hash.is_empty()
    }
}

/// All regions' filters in one trie. Each (filter, region) pair is present
/// or absent; reference counting is the [`crate::InterestTable`]'s job.
#[derive(Debug)]
pub struct Matcher {
    /// Arena of nodes; index 0 is the root.
    nodes: Vec<Node>,
    /// Indexes of freed nodes, reused before growing the arena.
    free: Vec<NodeIdx>,
    /// Number of (filter, region) pairs held.
    len: usize,
}

impl Default for Matcher {
    fn default() -> Self {
        Self {
            nodes: vec![Node::default()],
            free: Vec::new(),
            len: 0,
        }
    }
}

fn set_insert(list: &mut Vec<RegionId>, region: RegionId) -> bool {
    match list.binary_search(&region) {
        Ok(_) => false,
        Err(pos) => {
            list.insert(pos, region);
            true
        }
    }
}

fn set_remove(list: &mut Vec<RegionId>, region: RegionId) -> bool {
    match list.binary_search(&region) {
        Ok(pos) => {
            list.remove(pos);
            if list.is_empty() {
                *list = Vec::new(); // give the memory back: most nodes hold no region
            }
            true
        }
        Err(_) => false,
    }
}

impl Matcher {
    /// An empty matcher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (filter, region) pairs held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn alloc(&mut self, parent: NodeIdx, edge: Edge) -> NodeIdx {
        let node = Node {
            parent: Some((parent, edge)),
            ..Node::default()
        };
        if let Some(idx) = self.free.pop() {
            self.nodes[idx as usize] = node;
            idx
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as NodeIdx
        }
    }

    /// Record that `region` wants `filter`. Returns false if it already did.
    pub fn insert(&mut self, filter: &TopicFilter, region: RegionId) -> bool {
        let mut at = ROOT;
        for level in filter.levels() {
            at = match level {
                Level::Hash => {
                    let added = set_insert(&mut self.nodes[at as usize].hash, region);
                    self.len += usize::from(added);
                    return added;
                }
                Level::Plus => match self.nodes[at as usize].plus {
                    Some(next) => next,
                    None => {
                        let next = self.alloc(at, Edge::Plus);
                        self.nodes[at as usize].plus = Some(next);
                        next
                    }
                },
                Level::Literal(text) => match self.nodes[at as usize].literal.get(text) {
                    Some(next) => *next,
                    None => {
                        let next = self.alloc(at, Edge::Literal(text.into()));
                        self.nodes[at as usize].literal.insert(text.into(), next);
                        next
                    }
                },
            };
        }
        let added = set_insert(&mut self.nodes[at as usize].exact, region);
        self.len += usize::from(added);
        added
    }

    /// Record that `region` no longer wants `filter`. Returns false if it did not.
    pub fn remove(&mut self, filter: &TopicFilter, region: RegionId) -> bool {
        let mut at = ROOT;
        let mut via_hash = None;
        for level in filter.levels() {
            let node = &mut self.nodes[at as usize];
            let next = match level {
                Level::Hash => {
                    via_hash = Some(set_remove(&mut node.hash, region));
                    break;
                }
                Level::Plus => node.plus,
                Level::Literal(text) => node.literal.get(text).copied(),
            };
            let Some(next) = next else { return false };
            at = next;
        }
        let removed = match via_hash {
            Some(removed) => removed,
            None => set_remove(&mut self.nodes[at as usize].exact, region),
        };
        if removed {
            self.len -= 1;
            self.prune(at);
        }
        removed
    }

    /// Free `at` and its ancestors while they hold nothing.
    fn prune(&mut self, mut at: NodeIdx) {
        while at != ROOT && self.nodes[at as usize].is_empty() {
            let Some((parent, edge)) = self.nodes[at as usize].parent.take() else {
                return;
            };
            let p = &mut self.nodes[parent as usize];
            match edge {
                Edge::Plus => p.plus = None,
                Edge::Literal(text) => {
                    p.literal.remove(&text);
                }
            }
            self.nodes[at as usize] = Node::default();
            self.free.push(at);
            at = parent;
        }
    }

    /// Add to `out` every region with a filter matching `topic`.
    pub fn matches_into(&self, topic: &TopicName, out: &mut RegionSet) {
        let mut levels = topic.levels();
        let Some(first) = levels.next() else { return };
        let root = &self.nodes[ROOT as usize];
        if first.starts_with('$') {
            // MQTT-4.7.2-1: a leading wildcard never matches a `$` topic.
            if let Some(next) = root.literal.get(first) {
                self.walk(*next, levels, out);
            }
            return;
        }
        self.walk_level(ROOT, first, levels, out);
    }

    /// Regions wanting `topic`, as a fresh set (convenience over [`Self::matches_into`]).
    pub fn matches(&self, topic: &TopicName) -> RegionSet {
        let mut out = RegionSet::new();
        self.matches_into(topic, &mut out);
        out
    }

    /// At `at`, consume `level` and continue with `rest`.
    fn walk_level<'t>(
        &self,
        at: NodeIdx,
        level: &'t str,
        rest: std::str::Split<'t, char>,
        out: &mut RegionSet,
    ) {
        let node = &self.nodes[at as usize];
        for r in &node.hash {
            out.insert(*r);
        }
        if let Some(plus) = node.plus {
            self.walk(plus, rest.clone(), out);
        }
        if let Some(next) = node.literal.get(level) {
            self.walk(*next, rest, out);
        }
    }

    /// Having consumed the levels up to `at`, continue with `rest`.
    fn walk<'t>(&self, at: NodeIdx, mut rest: std::str::Split<'t, char>, out: &mut RegionSet) {
        match rest.next() {
            None => {
                // Topic exhausted: filters ending here, and `prefix/#` (which matches its parent).
                let node = &self.nodes[at as usize];
                for r in node.exact.iter().chain(&node.hash) {
                    out.insert(*r);
                }
            }
            Some(level) => self.walk_level(at, level, rest, out),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::region::{RegionIds, RegionName};

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }
    fn t(s: &str) -> TopicName {
        TopicName::new(s).unwrap()
    }

    #[test]
    fn lookups_insert_remove_and_prune() {
        let mut ids = RegionIds::default();
        let a = ids.intern(&RegionName::new("a").unwrap());
        let b = ids.intern(&RegionName::new("b").unwrap());
        let mut m = Matcher::new();
        assert!(m.insert(&f("sport/#"), a));
        assert!(!m.insert(&f("sport/#"), a));
        assert!(m.insert(&f("sport/+/player1"), b));
        assert!(m.insert(&f("#"), b));
        assert_eq!(
            m.matches(&t("sport")).iter().collect::<Vec<_>>(),
            vec![a, b]
        );
        assert_eq!(m.matches(&t("$SYS/x")).len(), 0);
        assert!(m.remove(&f("#"), b));
        assert!(!m.remove(&f("#"), b));
        assert_eq!(m.matches(&t("sport")).iter().collect::<Vec<_>>(), vec![a]);
        assert_eq!(m.matches(&t("sport/tennis/player1")).len(), 2);
        assert!(m.remove(&f("sport/+/player1"), b));
        assert!(m.remove(&f("sport/#"), a));
        assert!(m.is_empty());
        // Everything but the root was pruned and is reusable.
        assert_eq!(m.nodes.len() - m.free.len(), 1);
        assert!(m.insert(&f("x/y/z"), a));
        assert_eq!(m.matches(&t("x/y/z")).len(), 1);
        assert!(!m.remove(&f("x/y"), a));
        assert!(!m.remove(&f("x/y/z/#"), a));
    }
}
