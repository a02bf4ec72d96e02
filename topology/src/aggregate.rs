//! Summary aggregation: shrink a set of filters to at most a budget of
//! filters, only ever widening (every topic matched before is still matched).
//! Widening costs bandwidth (a region may receive messages nobody there
//! wants, which its broker then drops), never correctness.
//!
//! The steps, cheapest widening first, each applied only while the set is
//! over budget:
//! 1. drop filters covered by another (`a/1` under `a/+`): no widening at all;
//! 2. `+`-collapse: filters equal but for one literal level become one
//!    filter with `+` there (`dev/1/cmd` … `dev/9999/cmd` -> `dev/+/cmd`),
//!    largest groups first;
//! 3. `#`-collapse: filters sharing a prefix become `prefix/#`, deepest
//!    prefixes first;
//! 4. last resort: `#` for everything not under `$`, `$x/#` per `$` root.
//!
//! A `$`-topic is never matched by a leading wildcard, so no step ever puts a
//! wildcard in front of a `$` level (that would narrow, not widen).

use std::collections::{BTreeMap, BTreeSet};

use crate::topic::{TopicFilter, TopicName};

type Levels = Vec<String>;

/// The result of [`aggregate`].
#[derive(Debug, Clone)]
pub struct Aggregation {
    /// The aggregated filters, sorted.
    pub filters: Vec<TopicFilter>,
    /// The filters before aggregation, for cost estimates.
    original: Vec<TopicFilter>,
    /// Whether the budget could not be met (only with many distinct `$` roots).
    pub over_budget: bool,
}

/// What a widening costs on a sample of traffic: how much of it the original
/// filters wanted, and how much more the aggregated ones let through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WideningCost {
    /// Weight (messages or bytes) of sample topics the original filters match.
    pub wanted: u64,
    /// Weight of sample topics only the aggregated filters match.
    pub unwanted: u64,
}

impl WideningCost {
    /// Unwanted traffic as a fraction of wanted (0 when nothing is wanted).
    pub fn overhead(&self) -> f64 {
        if self.wanted == 0 {
            0.0
        } else {
            self.unwanted as f64 / self.wanted as f64
        }
    }
}

impl Aggregation {
    /// Estimate the cost of the widening on observed traffic: `sample`
    /// yields (topic, weight), e.g. message counts per topic seen on the
    /// exporting side over the last interval.
    pub fn estimate<'a>(
        &self,
        sample: impl IntoIterator<Item = (&'a TopicName, u64)>,
    ) -> WideningCost {
        let mut cost = WideningCost::default();
        for (topic, weight) in sample {
            if self.original.iter().any(|f| f.matches(topic)) {
                cost.wanted += weight;
            } else if self.filters.iter().any(|f| f.matches(topic)) {
                cost.unwanted += weight;
            }
        }
        cost
    }

    /// Number of filters that are wider than any original filter.
    pub fn widened(&self) -> usize {
        let original: BTreeSet<&TopicFilter> = self.original.iter().collect();
        self.filters
            .iter()
            .filter(|f| !original.contains(f))
            .count()
    }
}

/// Shrink `filters` to at most `budget` filters (a budget of 0 counts as 1),
/// only widening.
pub fn aggregate(filters: impl IntoIterator<Item = TopicFilter>, budget: usize) -> Aggregation {
    let budget = budget.max(1);
    let original: Vec<TopicFilter> = filters
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut set: BTreeSet<Levels> = original
        .iter()
        .map(|f| f.as_str().split('/').map(str::to_owned).collect())
        .collect();

    if set.len() > budget {
        drop_covered(&mut set);
    }
    while set.len() > budget && plus_round(&mut set, budget) {
        drop_covered(&mut set);
    }
    let max_depth = set.iter().map(Vec::len).max().unwrap_or(0);
    for depth in (1..max_depth).rev() {
        if set.len() <= budget {
            break;
        }
        hash_round(&mut set, budget, depth);
        drop_covered(&mut set);
    }
    if set.len() > budget {
        last_resort(&mut set);
    }
    let filters: Vec<TopicFilter> = set
        .iter()
        .filter_map(|l| TopicFilter::new(&l.join("/")).ok())
        .collect();
    Aggregation {
        over_budget: filters.len() > budget,
        filters,
        original,
    }
}

fn to_filter(levels: &Levels) -> Option<TopicFilter> {
    TopicFilter::new(&levels.join("/")).ok()
}

/// Remove every filter covered by another one in the set.
fn drop_covered(set: &mut BTreeSet<Levels>) {
    let wild: Vec<TopicFilter> = set
        .iter()
        .filter(|l| l.iter().any(|x| x == "+" || x == "#"))
        .filter_map(to_filter)
        .collect();
    if wild.is_empty() {
        return;
    }
    set.retain(|levels| {
        let Some(me) = to_filter(levels) else {
            return true;
        };
        !wild.iter().any(|w| *w != me && w.covers(&me))
    });
}

/// One round of `+`-collapses, largest groups first, until the budget is met.
/// Returns whether anything was collapsed.
fn plus_round(set: &mut BTreeSet<Levels>, budget: usize) -> bool {
    // (depth, filter with `+` at depth) -> members.
    let mut groups: BTreeMap<(usize, Levels), Vec<Levels>> = BTreeMap::new();
    for levels in set.iter() {
        for (d, level) in levels.iter().enumerate() {
            if level == "#" || (d == 0 && level.starts_with('$')) {
                continue;
            }
            let mut key = levels.clone();
            key[d] = "+".to_owned();
            groups.entry((d, key)).or_default().push(levels.clone());
        }
    }
    let mut candidates: Vec<((usize, Levels), Vec<Levels>)> = groups
        .into_iter()
        .filter(|(_, members)| members.len() >= 2)
        .collect();
    // Largest first; ties by depth then text, so the result is deterministic.
    candidates.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    let mut changed = false;
    for ((_, widened), members) in candidates {
        if set.len() <= budget {
            break;
        }
        if !members.iter().all(|m| set.contains(m)) {
            continue; // some member was consumed by an earlier collapse this round
        }
        for m in &members {
            set.remove(m);
        }
        set.insert(widened);
        changed = true;
    }
    changed
}

/// Collapse filters sharing their first `depth` levels into `prefix/#`,
/// largest groups first, until the budget is met.
fn hash_round(set: &mut BTreeSet<Levels>, budget: usize, depth: usize) {
    let mut groups: BTreeMap<Levels, Vec<Levels>> = BTreeMap::new();
    for levels in set.iter() {
        if levels.len() > depth {
            groups
                .entry(levels[..depth].to_vec())
                .or_default()
                .push(levels.clone());
        }
    }
    let mut candidates: Vec<(Levels, Vec<Levels>)> =
        groups.into_iter().filter(|(_, m)| m.len() >= 2).collect();
    candidates.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    for (prefix, members) in candidates {
        if set.len() <= budget {
            break;
        }
        for m in &members {
            set.remove(m);
        }
        let mut widened = prefix;
        widened.push("#".to_owned());
        set.insert(widened);
    }
}

/// `#` for every filter that can be covered by it, `$root/#` for the rest.
fn last_resort(set: &mut BTreeSet<Levels>) {
    let mut out = BTreeSet::new();
    for levels in set.iter() {
        match levels.first() {
            Some(root) if root.starts_with('$') => {
                out.insert(vec![root.clone(), "#".to_owned()]);
            }
            _ => {
                out.insert(vec!["#".to_owned()]);
            }
        }
    }
    *set = out;
}

/// The smallest filter (by this construction) covering both `a` and `b`:
/// equal levels are kept, differing levels become `+`, and where one filter
/// ends or holds `#`, the rest becomes `#`.
pub fn generalize(a: &TopicFilter, b: &TopicFilter) -> TopicFilter {
    let (x, y): (Vec<&str>, Vec<&str>) = (
        a.as_str().split('/').collect(),
        b.as_str().split('/').collect(),
    );
    let mut out: Vec<&str> = Vec::new();
    for i in 0..x.len().max(y.len()) {
        match (x.get(i), y.get(i)) {
            (Some(p), Some(q)) if *p == "#" || *q == "#" => {
                out.push("#");
                break;
            }
            (Some(p), Some(q)) if p == q => out.push(p),
            (Some(_), Some(_)) => out.push("+"),
            _ => {
                out.push("#");
                break;
            }
        }
    }
    // Every step keeps the filter valid (`#` only last, wildcards alone).
    TopicFilter::new(&out.join("/")).unwrap_or_else(|_| a.clone())
}

/// A set of pairwise non-overlapping filters that covers every filter in
/// `filters`: overlapping pairs are merged with [`generalize`] (or the
/// covered one dropped) until none overlap.
///
/// A client subscribed to overlapping filters may receive one copy of a
/// message per matching subscription [MQTT-3.3.4-2]; subscribing to a
/// disjoint cover instead guarantees one copy per message.
pub fn disjoint_cover(filters: impl IntoIterator<Item = TopicFilter>) -> Vec<TopicFilter> {
    // Distinct wildcard-free filters never overlap each other, so only pairs
    // involving a wildcard filter need checking: O(wild x all), not O(all^2).
    let (mut wild, mut literal): (BTreeSet<TopicFilter>, BTreeSet<TopicFilter>) =
        filters.into_iter().partition(TopicFilter::has_wildcard);
    loop {
        let pair = wild.iter().enumerate().find_map(|(i, a)| {
            wild.iter()
                .skip(i + 1)
                .chain(literal.iter())
                .find(|b| a.overlaps(b))
                .map(|b| (a.clone(), b.clone()))
        });
        let Some((a, b)) = pair else { break };
        wild.remove(&a);
        wild.remove(&b);
        literal.remove(&b);
        let merged = if a.covers(&b) {
            a
        } else if b.covers(&a) {
            b
        } else {
            generalize(&a, &b)
        };
        wild.retain(|f| !merged.covers(f));
        literal.retain(|f| !merged.covers(f));
        if merged.has_wildcard() {
            wild.insert(merged);
        } else {
            literal.insert(merged);
        }
    }
    wild.into_iter()
        .chain(literal)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    #[test]
    fn device_commands_collapse_to_plus() {
        let filters = (0..10_000)
            .map(|i| f(&format!("dev/{i}/cmd")))
            .chain([f("alerts/#"), f("alerts/fire")]);
        let agg = aggregate(filters, 10);
        assert_eq!(agg.filters, vec![f("alerts/#"), f("dev/+/cmd")]);
        assert_eq!(agg.widened(), 1);
        assert!(!agg.over_budget);
        let sample = [
            (TopicName::new("dev/1/cmd").unwrap(), 10),
            (TopicName::new("dev/x/cmd").unwrap(), 3),
            (TopicName::new("other").unwrap(), 100),
        ];
        let cost = agg.estimate(sample.iter().map(|(t, w)| (t, *w)));
        assert_eq!(
            cost,
            WideningCost {
                wanted: 10,
                unwanted: 3
            }
        );
        assert!((cost.overhead() - 0.3).abs() < 1e-9);
    }

    #[test]
    fn disjoint_covers() {
        assert_eq!(
            generalize(&f("factory/+/temp"), &f("factory/eu/#")),
            f("factory/+/#")
        );
        assert_eq!(generalize(&f("a/b"), &f("a/b/c")), f("a/b/#"));
        assert_eq!(generalize(&f("a/x/c"), &f("a/y/c")), f("a/+/c"));
        assert_eq!(
            disjoint_cover([f("factory/+/temp"), f("factory/eu/#"), f("alerts/#")]),
            vec![f("alerts/#"), f("factory/+/#")]
        );
        assert_eq!(
            disjoint_cover([f("a/+"), f("a/b"), f("c")]),
            vec![f("a/+"), f("c")]
        );
        assert_eq!(
            disjoint_cover([f("#"), f("$SYS/x")]),
            vec![f("#"), f("$SYS/x")]
        );
    }

    #[test]
    fn within_budget_nothing_changes() {
        let agg = aggregate([f("b"), f("a/+")], 2);
        assert_eq!(agg.filters, vec![f("a/+"), f("b")]);
        assert_eq!(agg.widened(), 0);
    }

    #[test]
    fn hash_collapse_and_last_resort_keep_dollar_topics() {
        let agg = aggregate([f("a/b/c"), f("a/b/d/e"), f("x/y/z/w")], 2);
        assert_eq!(agg.filters.len(), 2);
        let agg = aggregate([f("a"), f("b"), f("$SYS/x"), f("c/d")], 1);
        assert_eq!(agg.filters, vec![f("#"), f("$SYS/#")]);
        assert!(agg.over_budget);
        let topic = TopicName::new("$SYS/x").unwrap();
        assert!(agg.filters.iter().any(|x| x.matches(&topic)));
    }
}
