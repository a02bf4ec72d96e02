//! Property tests against naive references: the matcher against per-filter
//! matching, aggregation against "only widens", and the forwarding decision
//! against "exactly one copy to every interested region, none elsewhere".

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use mqlink_topology::{
    Cost, InterestVersion, LsaLink, Matcher, NodeName, RegionIds, RegionName, Router, Snapshot,
    TopicFilter, TopicName, aggregate, disjoint_cover,
};
use proptest::prelude::*;

const LEVELS: &[&str] = &["a", "b", "c", ""];

fn topic_strategy() -> impl Strategy<Value = TopicName> {
    (
        any::<bool>(),
        prop::collection::vec(prop::sample::select(LEVELS), 1..5),
    )
        .prop_map(|(system, mut levels)| {
            if system {
                levels[0] = "$s";
            }
            let s = levels.join("/");
            TopicName::new(if s.is_empty() { "/" } else { &s }).unwrap()
        })
}

fn filter_strategy() -> impl Strategy<Value = TopicFilter> {
    let level = prop_oneof![4 => prop::sample::select(LEVELS), 2 => Just("+"), 1 => Just("$s")];
    (prop::collection::vec(level, 1..5), any::<bool>()).prop_map(|(levels, hash)| {
        // `$s` only makes sense first; elsewhere it is just another literal, which is fine.
        let mut s = levels.join("/");
        if s.is_empty() {
            s.push('/');
        }
        if hash {
            s.push_str("/#");
        }
        TopicFilter::new(&s).unwrap()
    })
}

fn region(i: usize) -> RegionName {
    RegionName::new(&format!("r{i}")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn matcher_equals_naive_matching(
        entries in prop::collection::vec((0usize..6, filter_strategy()), 0..40),
        removals in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        topics in prop::collection::vec(topic_strategy(), 1..20),
    ) {
        let mut ids = RegionIds::default();
        let mut matcher = Matcher::new();
        let mut held: BTreeSet<(usize, TopicFilter)> = BTreeSet::new();
        for (r, f) in &entries {
            let id = ids.intern(&region(*r));
            prop_assert_eq!(matcher.insert(f, id), held.insert((*r, f.clone())));
        }
        for ix in removals {
            if held.is_empty() { break; }
            let (r, f) = ix.get(&held.iter().cloned().collect::<Vec<_>>()).clone();
            let id = ids.intern(&region(r));
            prop_assert!(matcher.remove(&f, id));
            held.remove(&(r, f));
        }
        prop_assert_eq!(matcher.len(), held.len());
        for topic in &topics {
            let got: BTreeSet<String> = matcher.matches(topic).iter().map(|id| ids.name(id).to_string()).collect();
            let want: BTreeSet<String> =
                held.iter().filter(|(_, f)| f.matches(topic)).map(|(r, _)| region(*r).to_string()).collect();
            prop_assert_eq!(got, want, "topic {}", topic);
        }
    }

    #[test]
    fn aggregation_only_widens(
        filters in prop::collection::vec(filter_strategy(), 1..40),
        budget in 1usize..6,
        topics in prop::collection::vec(topic_strategy(), 1..40),
    ) {
        let agg = aggregate(filters.clone(), budget);
        for topic in &topics {
            if filters.iter().any(|f| f.matches(topic)) {
                prop_assert!(agg.filters.iter().any(|f| f.matches(topic)), "{} lost by {:?}", topic, agg.filters);
            }
        }
        // Every original filter is covered by some aggregated filter.
        for f in &filters {
            prop_assert!(agg.filters.iter().any(|a| a.covers(f)), "{} not covered by {:?}", f, agg.filters);
        }
        // At most one filter per `$` root beyond the budget, and none at all without `$` roots.
        let dollar_roots: BTreeSet<&str> =
            filters.iter().filter_map(|f| f.as_str().split('/').next()).filter(|l| l.starts_with('$')).collect();
        prop_assert!(agg.filters.len() <= budget.max(1 + dollar_roots.len()));
        prop_assert_eq!(agg.over_budget, agg.filters.len() > budget);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn disjoint_cover_covers_and_never_overlaps(filters in prop::collection::vec(filter_strategy(), 0..30)) {
        let cover = disjoint_cover(filters.clone());
        for f in &filters {
            prop_assert!(cover.iter().any(|c| c.covers(f)), "{} not covered by {:?}", f, cover);
        }
        for (i, a) in cover.iter().enumerate() {
            for b in &cover[i + 1..] {
                prop_assert!(!a.overlaps(b), "{} overlaps {}", a, b);
            }
        }
    }
}

/// A random connected graph on `n` regions: a random spanning tree plus extra links.
fn graph_strategy() -> impl Strategy<Value = (usize, Vec<(usize, usize, u64)>)> {
    (2usize..9).prop_flat_map(|n| {
        let tree = prop::collection::vec((any::<prop::sample::Index>(), 1u64..4), n - 1);
        let extra = prop::collection::vec((0..n, 0..n, 1u64..4), 0..n * 2);
        (Just(n), tree, extra).prop_map(|(n, tree, extra)| {
            let mut links: BTreeMap<(usize, usize), u64> = BTreeMap::new();
            for (i, (parent, cost)) in tree.into_iter().enumerate() {
                let child = i + 1;
                links.insert((parent.index(child), child), cost);
            }
            for (a, b, cost) in extra {
                if a != b {
                    links.entry((a.min(b), a.max(b))).or_insert(cost);
                }
            }
            (n, links.into_iter().map(|((a, b), c)| (a, b, c)).collect())
        })
    })
}

/// One router per region, all fed the same LSAs and interest snapshots.
fn routers(n: usize, links: &[(usize, usize, u64)], interest: &[Vec<TopicFilter>]) -> Vec<Router> {
    let now = Instant::now();
    let mut lsas = Vec::new();
    let mut out: Vec<Router> = (0..n)
        .map(|i| Router::new(region(i), Duration::from_secs(60)))
        .collect();
    for (i, router) in out.iter_mut().enumerate() {
        let mine: Vec<LsaLink> = links
            .iter()
            .filter(|(a, b, _)| *a == i || *b == i)
            .map(|(a, b, c)| LsaLink {
                peer: region(if *a == i { *b } else { *a }),
                cost: Cost::new(*c).unwrap(),
                up: true,
            })
            .collect();
        lsas.push(router.originate(now, mine, 0));
    }
    for router in &mut out {
        for lsa in &lsas {
            router.handle_lsa(now, lsa.clone());
        }
        for (i, filters) in interest.iter().enumerate() {
            router.handle_snapshot(Snapshot {
                version: InterestVersion {
                    region: region(i),
                    node: NodeName::new("n").unwrap(),
                    epoch: 1,
                    seq: 0,
                },
                filters: filters.clone(),
            });
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn forwarding_delivers_exactly_once_along_identical_trees(
        (n, links) in graph_strategy(),
        interest_seed in prop::collection::vec(prop::collection::vec(filter_strategy(), 0..3), 9),
        topics in prop::collection::vec(topic_strategy(), 1..6),
    ) {
        let interest: Vec<Vec<TopicFilter>> = interest_seed.into_iter().take(n).collect();
        let mut routers = routers(n, &links, &interest);
        let linked: BTreeSet<(usize, usize)> = links.iter().flat_map(|(a, b, _)| [(*a, *b), (*b, *a)]).collect();

        // All regions compute identical trees.
        for origin in 0..n {
            let mut first: Option<Vec<Option<String>>> = None;
            for router in &mut routers {
                let (graph, tree) = router.tree(&region(origin)).unwrap();
                let parents: Vec<Option<String>> =
                    (0..graph.len()).map(|p| tree.parent(p).map(|q| graph.regions()[q].to_string())).collect();
                match &first {
                    None => first = Some(parents),
                    Some(f) => prop_assert_eq!(f, &parents),
                }
            }
        }

        for topic in &topics {
            for origin in 0..n {
                let wanted: BTreeSet<usize> =
                    (0..n).filter(|r| *r != origin && interest[*r].iter().any(|f| f.matches(topic))).collect();
                let mut received = vec![0u32; n];
                let mut delivered = BTreeSet::new();
                let mut queue = VecDeque::from([(origin, vec![region(origin)], 0u32)]);
                received[origin] = 1;
                while let Some((at, visited, hops)) = queue.pop_front() {
                    let d = routers[at].decide(&region(origin), topic, &visited, hops);
                    prop_assert_eq!(d.skipped_visited, 0);
                    prop_assert!(!d.hop_limited);
                    if d.deliver_local && at != origin {
                        delivered.insert(at);
                    }
                    for next in d.forward {
                        let j: usize = next.as_str()[1..].parse().unwrap();
                        prop_assert!(linked.contains(&(at, j)), "{} -> {} is not a link", at, j);
                        prop_assert!(!visited.contains(&next), "revisit of {}", next);
                        received[j] += 1;
                        let mut v = visited.clone();
                        v.push(next);
                        queue.push_back((j, v, hops + 1));
                    }
                }
                prop_assert_eq!(&delivered, &wanted, "topic {} from r{}", topic, origin);
                prop_assert!(received.iter().all(|c| *c <= 1), "duplicates: {:?}", received);
                // Transit only where needed: every region reached is wanted or leads to one that is.
                for (r, c) in received.iter().enumerate() {
                    if *c == 1 && r != origin && !wanted.contains(&r) {
                        let (graph, tree) = routers[0].tree(&region(origin)).unwrap();
                        let pos = graph.position(&region(r)).unwrap();
                        let leads = wanted.iter().any(|w| tree.in_subtree(pos, graph.position(&region(*w)).unwrap()));
                        prop_assert!(leads, "r{} got an unwanted copy", r);
                    }
                }
            }
        }
    }
}
