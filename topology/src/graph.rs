//! The region graph (petgraph, undirected, weighted by link cost), the
//! shortest-path tree of each origin, and the deployment analyses built on
//! the same graph: partitions and single points of failure.
//!
//! Nodes are added in region-name order, so a node's index order *is* the
//! name order, and every agent that holds the same LSAs builds the same
//! graph, the same indices and therefore the same trees.

use std::collections::BTreeMap;

use petgraph::graph::{NodeIndex, UnGraph};
use petgraph::visit::EdgeRef;

use crate::region::RegionName;

/// An undirected graph of regions and the links between them.
#[derive(Debug, Clone)]
pub struct RegionGraph {
    /// Region of each node index, sorted by name.
    names: Vec<RegionName>,
    /// The graph; node weights are unused, edge weights are costs.
    graph: UnGraph<(), u32>,
}

impl RegionGraph {
    /// Build from regions and links `(a, b, cost)`. Regions named only by a
    /// link are added too; for repeated links the lowest cost wins; self-links
    /// are ignored.
    pub fn new(
        regions: impl IntoIterator<Item = RegionName>,
        links: impl IntoIterator<Item = (RegionName, RegionName, impl Into<u32>)>,
    ) -> Self {
        let mut edges: BTreeMap<(RegionName, RegionName), u32> = BTreeMap::new();
        let mut names: Vec<RegionName> = regions.into_iter().collect();
        for (a, b, cost) in links {
            if a == b {
                continue;
            }
            names.push(a.clone());
            names.push(b.clone());
            let key = if a < b { (a, b) } else { (b, a) };
            let cost = cost.into();
            edges
                .entry(key)
                .and_modify(|c| *c = (*c).min(cost))
                .or_insert(cost);
        }
        names.sort();
        names.dedup();
        let mut graph = UnGraph::with_capacity(names.len(), edges.len());
        for _ in &names {
            graph.add_node(());
        }
        let index = |n: &RegionName| names.binary_search(n).map(NodeIndex::new);
        for ((a, b), cost) in edges {
            if let (Ok(a), Ok(b)) = (index(&a), index(&b)) {
                graph.add_edge(a, b, cost);
            }
        }
        Self { names, graph }
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are no regions.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Number of links.
    pub fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }

    /// Regions, sorted by name; a region's position is its index in trees.
    pub fn regions(&self) -> &[RegionName] {
        &self.names
    }

    /// Position of `region`, if present.
    pub fn position(&self, region: &RegionName) -> Option<usize> {
        self.names.binary_search(region).ok()
    }

    /// Cost of the link between `a` and `b`, if they are linked.
    pub fn cost(&self, a: &RegionName, b: &RegionName) -> Option<u32> {
        let (a, b) = (
            NodeIndex::new(self.position(a)?),
            NodeIndex::new(self.position(b)?),
        );
        self.graph
            .find_edge(a, b)
            .and_then(|e| self.graph.edge_weight(e).copied())
    }

    /// Links as (position, position, cost), lower position first, in index order.
    pub fn edges(&self) -> impl Iterator<Item = (usize, usize, u32)> + '_ {
        self.graph.edge_references().map(|e| {
            let (a, b) = (e.source().index(), e.target().index());
            (a.min(b), a.max(b), *e.weight())
        })
    }

    /// Neighbours of the region at `pos`, with link costs.
    pub fn neighbours(&self, pos: usize) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.graph.edges(NodeIndex::new(pos)).map(move |e| {
            let other = if e.source().index() == pos {
                e.target()
            } else {
                e.source()
            };
            (other.index(), *e.weight())
        })
    }

    /// The shortest-path tree rooted at `origin`, or `None` if `origin` is
    /// not in the graph.
    pub fn tree(&self, origin: &RegionName) -> Option<Tree> {
        let root = self.position(origin)?;
        Some(Tree::build(self, root))
    }

    /// Connected components, each sorted by name, largest first (ties by first name).
    pub fn components(&self) -> Vec<Vec<RegionName>> {
        let mut comps: Vec<Vec<RegionName>> = petgraph::algo::kosaraju_scc(&self.graph)
            .into_iter()
            .map(|c| {
                let mut names: Vec<RegionName> = c
                    .into_iter()
                    .map(|n| self.names[n.index()].clone())
                    .collect();
                names.sort();
                names
            })
            .collect();
        comps.sort_by(|a, b| {
            b.len()
                .cmp(&a.len())
                .then_with(|| a.first().cmp(&b.first()))
        });
        comps
    }

    /// Links whose loss would split a component (bridges), sorted.
    pub fn bridges(&self) -> Vec<(RegionName, RegionName)> {
        let mut out: Vec<(RegionName, RegionName)> = petgraph::algo::bridges::bridges(&self.graph)
            .map(|e| {
                let (a, b) = (
                    self.names[e.source().index()].clone(),
                    self.names[e.target().index()].clone(),
                );
                if a < b { (a, b) } else { (b, a) }
            })
            .collect();
        out.sort();
        out
    }

    /// Regions whose loss would split the rest of their component, sorted.
    pub fn articulation_points(&self) -> Vec<RegionName> {
        let mut out: Vec<RegionName> =
            petgraph::algo::articulation_points::articulation_points(&self.graph)
                .into_iter()
                .map(|n| self.names[n.index()].clone())
                .collect();
        out.sort();
        out
    }
}

/// A shortest-path tree: how messages from one origin reach every region.
///
/// Among equal-cost paths, a region's parent is the candidate that sorts
/// first by name, so every agent picks the same tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// Position of the origin.
    origin: usize,
    /// Parent of each position (`None` for the origin and unreachable regions).
    parent: Vec<Option<usize>>,
    /// Children of each position, in name order.
    children: Vec<Vec<usize>>,
    /// Distance from the origin (`None` if unreachable).
    dist: Vec<Option<u64>>,
    /// Pre-order number of each reachable position; a subtree is the range
    /// `pre[x] .. pre[x] + size[x]`.
    pre: Vec<u32>,
    /// Number of positions in each subtree (0 if unreachable).
    size: Vec<u32>,
}

impl Tree {
    fn build(g: &RegionGraph, origin: usize) -> Self {
        let n = g.len();
        let dists = petgraph::algo::dijkstra(&g.graph, NodeIndex::new(origin), None, |e| {
            u64::from(*e.weight())
        });
        let mut dist = vec![None; n];
        for (node, d) in dists {
            dist[node.index()] = Some(d);
        }
        let mut parent = vec![None; n];
        let mut children = vec![Vec::new(); n];
        for v in 0..n {
            let Some(dv) = dist[v] else { continue };
            if v == origin {
                continue;
            }
            // Candidates are neighbours on a shortest path; the lowest index
            // is the first name. Costs are positive, so parents are strictly
            // closer and the parent links form a tree.
            let best = g
                .neighbours(v)
                .filter(|(u, w)| dist[*u].is_some_and(|du| du + u64::from(*w) == dv))
                .map(|(u, _)| u)
                .min();
            parent[v] = best;
            if let Some(u) = best {
                children[u].push(v);
            }
        }
        for c in &mut children {
            c.sort_unstable();
        }
        let mut pre = vec![u32::MAX; n];
        let mut size = vec![0u32; n];
        let mut order = Vec::with_capacity(n);
        let mut stack = vec![origin];
        while let Some(x) = stack.pop() {
            pre[x] = order.len() as u32;
            order.push(x);
            stack.extend(children[x].iter().rev());
        }
        for &x in order.iter().rev() {
            size[x] = 1 + children[x].iter().map(|c| size[*c]).sum::<u32>();
        }
        Self {
            origin,
            parent,
            children,
            dist,
            pre,
            size,
        }
    }

    /// Position of the origin.
    pub fn origin(&self) -> usize {
        self.origin
    }

    /// Parent of `pos` (towards the origin).
    pub fn parent(&self, pos: usize) -> Option<usize> {
        self.parent.get(pos).copied().flatten()
    }

    /// Children of `pos`, in name order.
    pub fn children(&self, pos: usize) -> &[usize] {
        self.children.get(pos).map_or(&[], Vec::as_slice)
    }

    /// Distance (sum of costs) from the origin to `pos`.
    pub fn dist(&self, pos: usize) -> Option<u64> {
        self.dist.get(pos).copied().flatten()
    }

    /// Whether `pos` is reachable from the origin.
    pub fn reaches(&self, pos: usize) -> bool {
        self.dist(pos).is_some()
    }

    /// Whether `pos` lies in the subtree rooted at `root` (including `root`).
    pub fn in_subtree(&self, root: usize, pos: usize) -> bool {
        let (Some(&r), Some(&p)) = (self.pre.get(root), self.pre.get(pos)) else {
            return false;
        };
        r != u32::MAX && p != u32::MAX && p >= r && p < r + self.size[root]
    }

    /// The child of `at` whose subtree holds `pos`, if `pos` is strictly below `at`.
    pub fn child_towards(&self, at: usize, pos: usize) -> Option<usize> {
        if at == pos || !self.in_subtree(at, pos) {
            return None;
        }
        let p = self.pre[pos];
        let kids = self.children(at);
        // Children's pre-order ranges are disjoint and increasing with their
        // pre-order number, which follows the (sorted) child order.
        let i = kids.partition_point(|c| self.pre[*c] <= p);
        i.checked_sub(1).map(|i| kids[i])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn r(s: &str) -> RegionName {
        RegionName::new(s).unwrap()
    }
    fn graph(links: &[(&str, &str, u32)]) -> RegionGraph {
        RegionGraph::new([], links.iter().map(|(a, b, c)| (r(a), r(b), *c)))
    }

    #[test]
    fn equal_cost_ties_go_to_the_first_name() {
        // a-b-d and a-c-d both cost 2: d's parent is b.
        let g = graph(&[("a", "c", 1), ("a", "b", 1), ("c", "d", 1), ("b", "d", 1)]);
        let t = g.tree(&r("a")).unwrap();
        let p = |s| g.position(&r(s)).unwrap();
        assert_eq!(t.parent(p("d")), Some(p("b")));
        assert_eq!(t.children(p("a")), &[p("b"), p("c")]);
        assert_eq!(t.child_towards(p("a"), p("d")), Some(p("b")));
        assert_eq!(t.child_towards(p("b"), p("c")), None);
        assert_eq!(t.dist(p("d")), Some(2));
        // Cheaper path wins over name order.
        let g = graph(&[("a", "b", 5), ("b", "d", 5), ("a", "c", 1), ("c", "d", 1)]);
        let t = g.tree(&r("a")).unwrap();
        assert_eq!(t.parent(g.position(&r("d")).unwrap()), g.position(&r("c")));
    }

    #[test]
    fn partitions_and_single_points_of_failure() {
        let g = graph(&[
            ("a", "b", 1),
            ("b", "c", 1),
            ("c", "a", 1),
            ("c", "d", 1),
            ("x", "y", 1),
        ]);
        assert_eq!(
            g.components(),
            vec![vec![r("a"), r("b"), r("c"), r("d")], vec![r("x"), r("y")]]
        );
        assert_eq!(g.bridges(), vec![(r("c"), r("d")), (r("x"), r("y"))]);
        assert_eq!(g.articulation_points(), vec![r("c")]);
        let t = g.tree(&r("a")).unwrap();
        assert!(!t.reaches(g.position(&r("x")).unwrap()));
    }
}
