//! The forwarding decision. A message from origin O on topic T, arriving at
//! this region X, goes to each child C of X in O's shortest-path tree whose
//! subtree holds a region that wants T; it is delivered locally if X wants
//! T. Backstops: never to a region the message already visited, never past
//! the hop limit.
//!
//! Routes are cached per (origin, topic). The cache is tagged with the
//! versions of the link-state database and the interests it was computed
//! from and is dropped as a whole when either changes; trees are likewise
//! rebuilt lazily, once per LSDB version, and only for origins that carry
//! traffic.

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::graph::{RegionGraph, Tree};
use crate::interest::{Applied, Delta, Snapshot};
use crate::interests::{DeltaError, Interests};
use crate::lsdb::{Lsa, LsaLink, LsaOutcome, Lsdb};
use crate::region::{NodeName, RegionId, RegionIds, RegionName, RegionSet};
use crate::topic::TopicName;

/// Default hop limit: more than the diameter of any sane deployment, few
/// enough that a bug cannot keep a message alive for long.
pub const DEFAULT_HOP_LIMIT: u32 = 16;

/// Most cached routes kept before the cache is emptied and refilled.
const ROUTE_CACHE_LIMIT: usize = 65_536;

/// Where one message goes from here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Whether this region wants the message (publish it to the local broker).
    pub deliver_local: bool,
    /// Neighbours to send it to, in name order.
    pub forward: Vec<RegionName>,
    /// Neighbours the tree would use but that were skipped because the
    /// message already visited them (a loop the backstop caught).
    pub skipped_visited: usize,
    /// Whether the hop limit stopped forwarding.
    pub hop_limited: bool,
}

/// The cached part of a decision: independent of visited list and hops.
#[derive(Debug, Clone)]
struct Route {
    /// Whether this region wants the topic.
    deliver_local: bool,
    /// Tree children to forward to.
    next: Vec<RegionId>,
}

/// This region's routing brain: the LSDB, everyone's interest, the trees
/// and the route cache.
#[derive(Debug)]
pub struct Router {
    /// This region.
    me: RegionName,
    /// Its id.
    me_id: RegionId,
    /// Region ids shared by the matcher and the trees.
    ids: RegionIds,
    /// Link state.
    lsdb: Lsdb,
    /// Interest of every region.
    interests: Interests,
    /// Hop limit for forwarding.
    hop_limit: u32,
    /// Graph built from the LSDB at `graph_version`.
    graph: Option<RegionGraph>,
    /// LSDB version `graph` and `trees` were built from.
    graph_version: u64,
    /// Graph position of each region id (by id index), for the current graph.
    positions: Vec<Option<usize>>,
    /// Region id of each graph position.
    pos_ids: Vec<RegionId>,
    /// Shortest-path trees computed so far for the current graph, by origin id.
    trees: FxHashMap<RegionId, Tree>,
    /// Cached routes.
    routes: FxHashMap<(RegionId, TopicName), Route>,
    /// (LSDB version, interests version) the cached routes were computed with.
    routes_version: (u64, u64),
    /// Scratch set reused by lookups.
    scratch: RegionSet,
    /// Number of tree computations (for metrics and tests).
    tree_builds: u64,
}

impl Router {
    /// A router for region `me`; LSAs not refreshed within `lsa_max_age` age out.
    pub fn new(me: RegionName, lsa_max_age: Duration) -> Self {
        let mut ids = RegionIds::default();
        let me_id = ids.intern(&me);
        Self {
            lsdb: Lsdb::new(me.clone(), NodeName::from(&me), lsa_max_age),
            me,
            me_id,
            ids,
            interests: Interests::new(),
            hop_limit: DEFAULT_HOP_LIMIT,
            graph: None,
            graph_version: u64::MAX,
            positions: Vec::new(),
            pos_ids: Vec::new(),
            trees: FxHashMap::default(),
            routes: FxHashMap::default(),
            routes_version: (u64::MAX, u64::MAX),
            scratch: RegionSet::new(),
            tree_builds: 0,
        }
    }

    /// Set this agent's node name (default: the region name); replicas of
    /// one region must each have their own.
    pub fn with_node(mut self, node: NodeName) -> Self {
        self.lsdb = Lsdb::new(self.me.clone(), node, self.lsdb.max_age());
        self
    }

    /// Set the hop limit (at least 1).
    pub fn with_hop_limit(mut self, hop_limit: u32) -> Self {
        self.hop_limit = hop_limit.max(1);
        self
    }

    /// This region.
    pub fn me(&self) -> &RegionName {
        &self.me
    }

    /// The hop limit.
    pub fn hop_limit(&self) -> u32 {
        self.hop_limit
    }

    /// The link-state database.
    pub fn lsdb(&self) -> &Lsdb {
        &self.lsdb
    }

    /// Everyone's interest.
    pub fn interests(&self) -> &Interests {
        &self.interests
    }

    /// How many shortest-path trees have been computed so far.
    pub fn tree_builds(&self) -> u64 {
        self.tree_builds
    }

    /// Replace this region's own LSA; returns it for flooding.
    pub fn originate(&mut self, now: Instant, links: Vec<LsaLink>, seq_floor: u64) -> Lsa {
        self.lsdb.originate(now, links, seq_floor)
    }

    /// Take in a neighbour's LSA.
    pub fn handle_lsa(&mut self, now: Instant, lsa: Lsa) -> LsaOutcome {
        self.lsdb.handle_lsa(now, lsa)
    }

    /// Age out stale LSAs; returns the (region, node) of each.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<(RegionName, NodeName)> {
        self.lsdb.handle_timeout(now)
    }

    /// When [`Self::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.lsdb.poll_timeout()
    }

    /// Install a region's interest snapshot.
    pub fn handle_snapshot(&mut self, snapshot: Snapshot) {
        self.interests.handle_snapshot(&mut self.ids, snapshot);
    }

    /// Apply a region's interest delta.
    pub fn handle_delta(
        &mut self,
        region: &RegionName,
        node: &NodeName,
        delta: &Delta,
    ) -> Result<Applied, DeltaError> {
        self.interests
            .handle_delta(&mut self.ids, region, node, delta)
    }

    /// Forget a (region, node)'s interest table.
    pub fn remove_interest(&mut self, region: &RegionName, node: &NodeName) {
        self.interests.remove(&mut self.ids, region, node);
    }

    /// The current region graph.
    pub fn graph(&mut self) -> Option<&RegionGraph> {
        self.refresh_graph();
        self.graph.as_ref()
    }

    /// The shortest-path tree of `origin` in the current graph, with the graph.
    pub fn tree(&mut self, origin: &RegionName) -> Option<(&RegionGraph, &Tree)> {
        self.refresh_graph();
        let id = self.ids.get(origin.as_str())?;
        self.ensure_tree(id)?;
        Some((self.graph.as_ref()?, self.trees.get(&id)?))
    }

    fn refresh_graph(&mut self) {
        if self.graph.is_some() && self.graph_version == self.lsdb.version() {
            return;
        }
        let graph = self.lsdb.graph();
        self.positions.clear();
        self.pos_ids.clear();
        for (pos, name) in graph.regions().iter().enumerate() {
            let id = self.ids.intern(name);
            if self.positions.len() <= id.index() {
                self.positions.resize(id.index() + 1, None);
            }
            self.positions[id.index()] = Some(pos);
            self.pos_ids.push(id);
        }
        self.trees.clear();
        self.graph = Some(graph);
        self.graph_version = self.lsdb.version();
    }

    fn position(&self, id: RegionId) -> Option<usize> {
        self.positions.get(id.index()).copied().flatten()
    }

    fn ensure_tree(&mut self, origin: RegionId) -> Option<()> {
        if self.trees.contains_key(&origin) {
            return Some(());
        }
        let graph = self.graph.as_ref()?;
        let tree = graph.tree(self.ids.name(origin))?;
        self.tree_builds += 1;
        self.trees.insert(origin, tree);
        Some(())
    }

    /// Where a message from `origin` on `topic` goes from here, given the
    /// regions it has already visited and the hops it has taken.
    pub fn decide(
        &mut self,
        origin: &RegionName,
        topic: &TopicName,
        visited: &[RegionName],
        hops: u32,
    ) -> Decision {
        let origin_id = self.ids.intern(origin);
        let route = self.route(origin_id, topic);
        let mut decision = Decision {
            deliver_local: route.deliver_local,
            ..Decision::default()
        };
        if route.next.is_empty() {
            return decision;
        }
        if hops >= self.hop_limit {
            decision.hop_limited = true;
            return decision;
        }
        for id in &route.next {
            let name = self.ids.name(*id);
            if visited.contains(name) || name == origin {
                decision.skipped_visited += 1;
            } else {
                decision.forward.push(name.clone());
            }
        }
        decision
    }

    /// Every region that wants `topic` (this one included), in name order.
    pub fn wanting(&mut self, topic: &TopicName) -> Vec<RegionName> {
        let mut set = RegionSet::new();
        self.interests.wanting_into(topic, &mut set);
        let mut out: Vec<RegionName> = set.iter().map(|id| self.ids.name(id).clone()).collect();
        out.sort();
        out
    }

    /// The neighbour a message from `origin` takes from here towards
    /// `dest`: the child of this region on the path to `dest` in
    /// `origin`'s tree; or, when `dest` is not below this region in that
    /// tree (the tree changed after the message left its origin), the
    /// first hop of this region's own shortest path to `dest`; or, when
    /// both lead through a region in `visited` (never revisited: the
    /// backstop against loops while views differ), the first hop of the
    /// shortest path that avoids them. `None` when there is none.
    pub fn next_hop(
        &mut self,
        origin: &RegionName,
        dest: &RegionName,
        visited: &[RegionName],
    ) -> Option<RegionName> {
        self.refresh_graph();
        let origin_id = self.ids.intern(origin);
        let dest_id = self.ids.intern(dest);
        let me = self.me_id;
        let (me_pos, dest_pos) = (self.position(me)?, self.position(dest_id)?);
        let mut hop = None;
        for root in [origin_id, me] {
            if self.position(root).is_none() || self.ensure_tree(root).is_none() {
                continue;
            }
            if let Some(child) = self
                .trees
                .get(&root)
                .and_then(|t| t.child_towards(me_pos, dest_pos))
            {
                hop = Some(self.ids.name(self.pos_ids[child]).clone());
                break;
            }
        }
        if let Some(h) = hop.filter(|h| !visited.contains(h) && h != origin) {
            return Some(h);
        }
        // Both trees lead back through a region the message has visited
        // (views changed while it travelled): the shortest path from here
        // that avoids them, if there is one. Rare (a reroute mid-flight),
        // so computed on demand.
        let graph = self.graph.as_ref()?;
        let names = graph.regions();
        let banned: Vec<bool> = names
            .iter()
            .map(|n| visited.contains(n) || n == origin)
            .collect();
        let mut dist: Vec<u64> = vec![u64::MAX; names.len()];
        let mut first: Vec<Option<usize>> = vec![None; names.len()];
        let mut heap = std::collections::BinaryHeap::new();
        dist[me_pos] = 0;
        heap.push(std::cmp::Reverse((0u64, me_pos)));
        while let Some(std::cmp::Reverse((d, at))) = heap.pop() {
            if d > dist[at] {
                continue;
            }
            if at == dest_pos {
                break;
            }
            for (next, cost) in graph.neighbours(at) {
                if banned[next] && next != dest_pos {
                    continue;
                }
                let nd = d.saturating_add(u64::from(cost));
                // Ties go to the lower position (name order): every agent
                // picks the same path.
                let hop = if at == me_pos { Some(next) } else { first[at] };
                if nd < dist[next] || (nd == dist[next] && hop < first[next]) {
                    dist[next] = nd;
                    first[next] = hop;
                    heap.push(std::cmp::Reverse((nd, next)));
                }
            }
        }
        first[dest_pos]
            .map(|p| names[p].clone())
            .filter(|h| !visited.contains(h) && h != origin)
    }

    fn route(&mut self, origin: RegionId, topic: &TopicName) -> Route {
        self.refresh_graph();
        let version = (self.lsdb.version(), self.interests.version());
        if self.routes_version != version || self.routes.len() >= ROUTE_CACHE_LIMIT {
            self.routes.clear();
            self.routes_version = version;
        }
        if let Some(route) = self.routes.get(&(origin, topic.clone())) {
            return route.clone();
        }
        let route = self.compute_route(origin, topic);
        self.routes.insert((origin, topic.clone()), route.clone());
        route
    }

    fn compute_route(&mut self, origin: RegionId, topic: &TopicName) -> Route {
        let mut wanting = std::mem::take(&mut self.scratch);
        wanting.clear();
        self.interests.wanting_into(topic, &mut wanting);
        let mut route = Route {
            deliver_local: wanting.contains(self.me_id),
            next: Vec::new(),
        };
        if let (Some(()), Some(me), Some(_)) = (
            self.ensure_tree(origin),
            self.position(self.me_id),
            self.position(origin),
        ) && let Some(tree) = self.trees.get(&origin)
        {
            for region in wanting.iter().filter(|r| *r != self.me_id) {
                let Some(pos) = self.position(region) else {
                    continue;
                };
                if let Some(child) = tree.child_towards(me, pos) {
                    let id = self.pos_ids[child];
                    if !route.next.contains(&id) {
                        route.next.push(id);
                    }
                }
            }
        }
        route
            .next
            .sort_by(|a, b| self.ids.name(*a).cmp(self.ids.name(*b)));
        self.scratch = wanting;
        route
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::interest::InterestVersion;
    use crate::region::Cost;
    use crate::topic::TopicFilter;

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
    fn lsa(origin: &str, seq: u64, links: Vec<LsaLink>) -> Lsa {
        Lsa {
            origin: r(origin),
            node: NodeName::from(&r(origin)),
            seq,
            links,
        }
    }
    fn snapshot(region: &str, filters: &[&str]) -> Snapshot {
        Snapshot {
            version: InterestVersion {
                region: r(region),
                node: NodeName::new("n1").unwrap(),
                epoch: 1,
                seq: 0,
            },
            filters: filters
                .iter()
                .map(|f| TopicFilter::new(f).unwrap())
                .collect(),
        }
    }

    /// Triangle a-b-c with a cheap a-b, b-c and an expensive a-c.
    fn triangle_at(me: &str, ac_up: bool) -> Router {
        let now = Instant::now();
        let mut router = Router::new(r(me), Duration::from_secs(60));
        let all = [
            lsa("a", 1, vec![link("b", 1, true), link("c", 5, ac_up)]),
            lsa("b", 1, vec![link("a", 1, true), link("c", 1, true)]),
            lsa("c", 1, vec![link("a", 5, ac_up), link("b", 1, true)]),
        ];
        for l in all {
            if l.origin.as_str() == me {
                router.originate(now, l.links, 0);
            } else {
                router.handle_lsa(now, l);
            }
        }
        router
    }

    #[test]
    fn a_trace_names_paths_filters_and_why_not() {
        use crate::trace::Miss;
        let mut b = triangle_at("b", false);
        b.handle_snapshot(snapshot("c", &["t/#", "t/1", "u/#"]));
        b.handle_snapshot(snapshot("d", &["t/+"]));
        let topic = TopicName::new("t/1").unwrap();
        let t = b.trace(&r("a"), &topic);
        assert_eq!(t.seen_from, r("b"));
        let names: Vec<&str> = t.regions.iter().map(|h| h.region.as_str()).collect();
        assert_eq!(names, ["b", "c", "d"], "every region but the origin");
        // b wants nothing: not reached, though on the way.
        assert_eq!(t.regions[0].miss, Some(Miss::NoInterest));
        assert_eq!(t.regions[0].path, [r("a"), r("b")]);
        // c: through the transit b (a-c is down), both matching filters.
        let c = &t.regions[1];
        assert_eq!(c.miss, None);
        assert_eq!(c.path, [r("a"), r("b"), r("c")]);
        assert_eq!(c.cost, Some(2));
        let filters: Vec<&str> = c.matches.iter().map(|m| m.filter.as_str()).collect();
        assert_eq!(filters, ["t/#", "t/1"]);
        // d wants it but has no link: a partition.
        assert_eq!(t.regions[2].miss, Some(Miss::Partition));
        assert!(t.regions[2].path.is_empty());
        assert_eq!(t.reached().count(), 1);

        // A link policy on the way takes c out.
        let mut t2 = t.clone();
        let refused = Miss::ExportPolicy {
            from: r("b"),
            to: r("c"),
        };
        t2.refuse(&r("b"), &r("c"), &refused);
        assert_eq!(t2.regions[1].miss, Some(refused));

        // A hop limit of one stops c, two links away.
        let mut short = triangle_at("b", false).with_hop_limit(1);
        short.handle_snapshot(snapshot("c", &["t/#"]));
        let t = short.trace(&r("a"), &topic);
        assert_eq!(
            t.regions[1].miss,
            Some(Miss::HopLimit { hops: 2, limit: 1 })
        );
    }

    #[test]
    fn forwards_along_the_tree_and_reroutes_when_a_link_goes_down() {
        let mut a = triangle_at("a", true);
        a.handle_snapshot(snapshot("c", &["t/#"]));
        let topic = TopicName::new("t/1").unwrap();
        // a->c costs 5 direct, 2 via b: the tree goes through b.
        let d = a.decide(&r("a"), &topic, &[r("a")], 0);
        assert_eq!(d.forward, vec![r("b")]);
        assert!(!d.deliver_local);
        let mut b = triangle_at("b", true);
        b.handle_snapshot(snapshot("c", &["t/#"]));
        assert_eq!(
            b.decide(&r("a"), &topic, &[r("a")], 1).forward,
            vec![r("c")]
        );
        // Nobody wants other topics: nothing crosses.
        assert_eq!(
            a.decide(&r("a"), &TopicName::new("u").unwrap(), &[], 0),
            Decision::default()
        );

        // b-c fails: a goes direct to c (new LSAs invalidate the cached route).
        let now = Instant::now();
        a.handle_lsa(
            now,
            lsa("b", 2, vec![link("a", 1, true), link("c", 1, false)]),
        );
        assert_eq!(
            a.decide(&r("a"), &topic, &[r("a")], 0).forward,
            vec![r("c")]
        );
    }

    #[test]
    fn backstops_visited_and_hop_limit() {
        let mut b = triangle_at("b", true).with_hop_limit(2);
        b.handle_snapshot(snapshot("c", &["t"]));
        let topic = TopicName::new("t").unwrap();
        let d = b.decide(&r("a"), &topic, &[r("a"), r("c")], 1);
        assert!(d.forward.is_empty());
        assert_eq!(d.skipped_visited, 1);
        let d = b.decide(&r("a"), &topic, &[r("a")], 2);
        assert!(d.forward.is_empty() && d.hop_limited);
    }

    #[test]
    fn interest_changes_invalidate_cached_routes() {
        let mut a = triangle_at("a", true);
        let topic = TopicName::new("x/y").unwrap();
        assert!(a.decide(&r("a"), &topic, &[], 0).forward.is_empty());
        a.handle_snapshot(snapshot("b", &["x/+"]));
        a.handle_snapshot(snapshot("a", &["x/#"]));
        let d = a.decide(&r("a"), &topic, &[], 0);
        assert_eq!(d.forward, vec![r("b")]);
        assert!(d.deliver_local);
        let builds = a.tree_builds();
        a.decide(&r("a"), &topic, &[], 0);
        assert_eq!(a.tree_builds(), builds, "trees are cached per LSDB version");
    }
}
