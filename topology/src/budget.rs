//! A region's own interest under a budget: the exact, refcounted table of
//! its local subscriptions, and the table it advertises, which holds at
//! most `budget` filters (after [`aggregate`]) and always covers every
//! exact filter (aggregation only widens: a false positive costs
//! bandwidth, never a message).
//!
//! Kept cheap for fleets (`dev/<id>/cmd` for 100,000 devices):
//! - a new exact filter already covered by an advertised one changes
//!   nothing on the wire (once `dev/+/cmd` is advertised, the next device
//!   costs a map insert and a look at the advertised wildcards);
//! - an uncovered one is advertised as it is at once (a subscriber never
//!   waits for an aggregation), and the table is marked over budget;
//! - the full aggregation runs when the caller says so
//!   ([`BudgetedInterest::aggregate`], the agent calls it on its timer
//!   while [`BudgetedInterest::due`]), and at once when the advertised
//!   table reaches twice the budget, so it stays bounded under any burst;
//! - an unsubscribe whose filter is not advertised as it is leaves the
//!   advertised table wider than needed ("loose"); the next aggregation
//!   tightens it.
//!
//! Without a budget the advertised table is the exact table.

use std::collections::BTreeSet;

use crate::aggregate::aggregate;
use crate::interest::{Delta, DeltaOp, InterestTable};
use crate::region::{NodeName, RegionName};
use crate::topic::TopicFilter;

/// One region agent's own interest, exact and advertised.
#[derive(Debug, Clone)]
pub struct BudgetedInterest {
    /// Local subscriptions, refcounted (unused without a budget: the
    /// advertised table is then the exact one).
    exact: InterestTable,
    /// What the summaries carry.
    advertised: InterestTable,
    /// The advertised filters with a wildcard: only they can cover a
    /// filter other than themselves.
    wild: BTreeSet<TopicFilter>,
    /// Most filters to advertise, if limited.
    budget: Option<usize>,
    /// The advertised table holds more than the budget.
    over: bool,
    /// The advertised table may be wider than the exact one needs.
    loose: bool,
    /// Filters the last aggregation advertised that no exact filter
    /// equals (the widened ones).
    widened: usize,
}

/// What an aggregation is due for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Over budget: aggregate soon.
    OverBudget,
    /// Wider than needed after unsubscribes: tighten when convenient.
    Loose,
}

impl BudgetedInterest {
    /// Empty interest for `region`/`node` in `epoch`, advertising at most
    /// `budget` filters if given (0 is taken as 1).
    pub fn new(region: RegionName, node: NodeName, epoch: u64, budget: Option<usize>) -> Self {
        Self {
            exact: InterestTable::new(region.clone(), node.clone(), epoch),
            advertised: InterestTable::new(region, node, epoch),
            wild: BTreeSet::new(),
            budget: budget.map(|b| b.max(1)),
            over: false,
            loose: false,
            widened: 0,
        }
    }

    /// The advertised table.
    pub fn advertised(&self) -> &InterestTable {
        &self.advertised
    }

    /// Distinct local filters.
    pub fn exact_len(&self) -> usize {
        if self.budget.is_some() {
            self.exact.len()
        } else {
            self.advertised.len()
        }
    }

    /// Advertised filters wider than any local one (after the last
    /// aggregation).
    pub fn widened(&self) -> usize {
        self.widened
    }

    /// The budget, if any.
    pub fn budget(&self) -> Option<usize> {
        self.budget
    }

    /// Whether (and why) [`Self::aggregate`] should run.
    pub fn due(&self) -> Option<Due> {
        if self.over {
            Some(Due::OverBudget)
        } else if self.loose {
            Some(Due::Loose)
        } else {
            None
        }
    }

    fn covered(&self, filter: &TopicFilter) -> bool {
        self.advertised.contains(filter) || self.wild.iter().any(|w| w.covers(filter))
    }

    /// One more local subscription holds `filter`. Returns the deltas to
    /// advertise, in order (none when it was covered already).
    pub fn subscribe(&mut self, filter: TopicFilter) -> Vec<Delta> {
        let Some(budget) = self.budget else {
            return self.advertised.subscribe(filter).into_iter().collect();
        };
        if self.exact.subscribe(filter.clone()).is_none() || self.covered(&filter) {
            return Vec::new();
        }
        let mut out = Vec::new();
        if filter.has_wildcard() {
            self.wild.insert(filter.clone());
        }
        out.extend(self.advertised.subscribe(filter));
        if self.advertised.len() > budget {
            self.over = true;
            if self.advertised.len() >= budget.saturating_mul(2) {
                out.extend(self.aggregate());
            }
        }
        out
    }

    /// One local subscription to `filter` went away. Returns the deltas
    /// to advertise, in order.
    pub fn unsubscribe(&mut self, filter: &TopicFilter) -> Vec<Delta> {
        if self.budget.is_none() {
            return self.advertised.unsubscribe(filter).into_iter().collect();
        }
        if self.exact.unsubscribe(filter).is_none() {
            return Vec::new();
        }
        if !self.advertised.contains(filter) {
            // Covered by a wider advertised filter, which may now cover
            // nothing: tightened by the next aggregation.
            self.loose = true;
            return Vec::new();
        }
        // Advertised as it is: withdraw it, and advertise again any local
        // filter it was covering that nothing else covers.
        self.wild.remove(filter);
        let mut ops = vec![DeltaOp::Remove(filter.clone())];
        let orphans: Vec<TopicFilter> = self
            .exact
            .filters()
            .filter(|f| filter.covers(f) && !self.advertised.contains(f))
            .filter(|f| !self.wild.iter().any(|w| w.covers(f)))
            .cloned()
            .collect();
        for f in orphans {
            if f.has_wildcard() {
                self.wild.insert(f.clone());
            }
            ops.push(DeltaOp::Add(f));
        }
        self.apply(ops).into_iter().collect()
    }

    /// Aggregate the local filters under the budget and advertise the
    /// result: one delta from the current advertised set to it (none if
    /// nothing changes, or without a budget).
    pub fn aggregate(&mut self) -> Option<Delta> {
        let budget = self.budget?;
        self.over = false;
        self.loose = false;
        let agg = aggregate(self.exact.filters().cloned(), budget);
        self.widened = agg.widened();
        let new: BTreeSet<TopicFilter> = agg.filters.into_iter().collect();
        let mut ops: Vec<DeltaOp> = self
            .advertised
            .filters()
            .filter(|f| !new.contains(*f))
            .map(|f| DeltaOp::Remove(f.clone()))
            .collect();
        ops.extend(
            new.iter()
                .filter(|f| !self.advertised.contains(f))
                .map(|f| DeltaOp::Add(f.clone())),
        );
        self.wild = new.into_iter().filter(TopicFilter::has_wildcard).collect();
        self.apply(ops)
    }

    /// Apply `ops` to the advertised table as its next delta.
    fn apply(&mut self, ops: Vec<DeltaOp>) -> Option<Delta> {
        if ops.is_empty() {
            return None;
        }
        let v = self.advertised.version();
        let delta = Delta {
            epoch: v.epoch,
            seq: v.seq + 1,
            ops,
        };
        // Our own table at its next sequence number: this cannot fail.
        self.advertised.apply(&delta).ok()?;
        Some(delta)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use proptest::prelude::*;

    use super::*;
    use crate::topic::TopicName;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    fn interest(budget: Option<usize>) -> BudgetedInterest {
        BudgetedInterest::new(
            RegionName::new("eu").unwrap(),
            NodeName::new("eu-1").unwrap(),
            1,
            budget,
        )
    }

    /// A remote copy follows the deltas, and every local filter is
    /// covered by what it holds.
    fn check(i: &BudgetedInterest, remote: &mut InterestTable, deltas: Vec<Delta>) {
        for d in &deltas {
            remote.apply(d).unwrap();
        }
        let remote_set: Vec<_> = remote.filters().collect();
        let ours: Vec<_> = i.advertised().filters().collect();
        assert_eq!(remote_set, ours, "the remote copy follows the deltas");
        for e in i.exact.filters() {
            assert!(
                remote.filters().any(|a| a.covers(e)),
                "local filter {e:?} not covered"
            );
        }
    }

    #[test]
    fn a_fleet_of_devices_is_advertised_as_one_filter() {
        let mut i = interest(Some(10));
        let mut remote = InterestTable::from_snapshot(i.advertised().snapshot());
        let mut deltas = Vec::new();
        for d in 0..100_000 {
            deltas.extend(i.subscribe(f(&format!("dev/{d}/cmd"))));
        }
        deltas.extend(i.aggregate());
        check(&i, &mut remote, deltas);
        assert_eq!(
            i.advertised().filters().collect::<Vec<_>>(),
            vec![&f("dev/+/cmd")]
        );
        assert_eq!(i.exact_len(), 100_000);
        assert_eq!(i.widened(), 1);
        assert!(i.due().is_none());
        let t = TopicName::new("dev/77/cmd").unwrap();
        assert!(remote.filters().any(|a| a.matches(&t)));
        // Devices leaving keep the wide filter until the last one goes.
        let mut deltas = Vec::new();
        for d in 0..99_999 {
            deltas.extend(i.unsubscribe(&f(&format!("dev/{d}/cmd"))));
        }
        assert_eq!(i.due(), Some(Due::Loose));
        deltas.extend(i.aggregate());
        check(&i, &mut remote, deltas);
        assert_eq!(
            i.advertised().filters().collect::<Vec<_>>(),
            vec![&f("dev/99999/cmd")]
        );
        let deltas = i.unsubscribe(&f("dev/99999/cmd"));
        check(&i, &mut remote, deltas);
        assert!(remote.is_empty());
    }

    #[test]
    fn without_a_budget_the_advertised_table_is_the_exact_one() {
        let mut i = interest(None);
        assert_eq!(i.subscribe(f("a/1")).len(), 1);
        assert!(i.subscribe(f("a/1")).is_empty(), "refcounted");
        assert!(i.aggregate().is_none());
        assert!(i.unsubscribe(&f("a/1")).is_empty());
        assert_eq!(i.unsubscribe(&f("a/1")).len(), 1);
        assert!(i.advertised().is_empty());
    }

    #[test]
    fn withdrawing_a_wide_filter_re_advertises_what_it_covered() {
        let mut i = interest(Some(5));
        let mut remote = InterestTable::from_snapshot(i.advertised().snapshot());
        let mut deltas = i.subscribe(f("a/+"));
        deltas.extend(i.subscribe(f("a/1")));
        assert_eq!(i.advertised().len(), 1, "a/1 is covered by a/+");
        deltas.extend(i.unsubscribe(&f("a/+")));
        check(&i, &mut remote, deltas);
        assert_eq!(
            i.advertised().filters().collect::<Vec<_>>(),
            vec![&f("a/1")]
        );
    }

    proptest! {
        #[test]
        fn every_local_filter_stays_covered_and_aggregation_meets_the_budget(
            ops in prop::collection::vec(
                (any::<bool>(), "[ab]{1}(/[ab+]{1}){0,2}(/#)?", any::<bool>()),
                1..200,
            ),
            budget in 1usize..6,
        ) {
            let mut i = interest(Some(budget));
            let mut remote = InterestTable::from_snapshot(i.advertised().snapshot());
            for (sub, filter, agg) in ops {
                let Ok(filter) = TopicFilter::new(&filter) else { continue };
                let deltas = if sub { i.subscribe(filter) } else { i.unsubscribe(&filter) };
                check(&i, &mut remote, deltas);
                if agg {
                    let deltas: Vec<Delta> = i.aggregate().into_iter().collect();
                    check(&i, &mut remote, deltas);
                    prop_assert!(i.advertised().len() <= budget);
                }
            }
        }
    }
}
