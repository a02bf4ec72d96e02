//! The fault schedule: links, regions, replicas and partitions going
//! down and up, and the agents started and stopped with them.

use super::*;

impl Sim {
    pub(super) fn start_node(&mut self, i: usize, n: usize) {
        let r = &mut self.regions[i];
        r.epochs += 1;
        let epoch = r.epochs;
        let cfg = agent_config(&self.scenario, i, n, epoch);
        let now = self.base + self.now;
        let mut agent = Agent::new(now, cfg);
        agent.restore_marks(self.regions[i].nodes[n].marks.clone());
        // The spool on disk: everything in it is unread by the new agent.
        let spool = &mut self.regions[i].nodes[n].spool;
        spool.iter_mut().for_each(|e| e.2 = false);
        agent.handle_spool_recovered(spool.len() as u64);
        for f in &self.scenario.regions[i].interest {
            agent.handle_subscribe(now, f.clone());
        }
        let node = &mut self.regions[i].nodes[n];
        node.epoch = epoch;
        node.published = 0;
        node.agent = Some(agent);
        self.after(i, n);
        self.redeliver(i, n);
    }

    pub(super) fn stop_node(&mut self, i: usize, n: usize) {
        if self.regions[i].nodes.len() > 1 {
            // Replicas' sessions end with their connection: what this one
            // had not released is gone (MQTT 5 §4.8.2; README, Delivery
            // guarantees).
            self.regions[i]
                .unreleased
                .retain(|_, (_, _, node)| *node != n);
        }
        let node = &mut self.regions[i].nodes[n];
        node.agent = None;
        node.timer_generation += 1;
        node.timer = None;
    }

    pub(super) fn set_partitioned(&mut self, l: usize, cut: bool) {
        self.change(l, |s| s.links[l].unpartitioned = !cut);
    }

    /// Apply `f` to link `l`'s state.
    pub(super) fn change(&mut self, l: usize, f: impl FnOnce(&mut Self)) {
        self.change_links(vec![l], f);
    }

    /// Apply `f` to agents of region `r`, refreshing every link touching it.
    pub(super) fn change_region(&mut self, r: usize, f: impl FnOnce(&mut Self)) {
        let touching: Vec<usize> = (0..self.links.len())
            .filter(|l| self.links[*l].a == r || self.links[*l].b == r)
            .collect();
        self.change_links(touching, f);
    }

    /// Apply `f`, then cut the connections over `links` it made unusable
    /// and schedule those it made usable.
    pub(super) fn change_links(&mut self, links: Vec<usize>, f: impl FnOnce(&mut Self)) {
        let before: Vec<(usize, Pair, bool)> = links
            .iter()
            .flat_map(|&l| self.pairs(l).into_iter().map(move |p| (l, p)))
            .map(|(l, p)| (l, p, self.pair_usable(l, p)))
            .collect();
        f(self);
        for (l, pair, was) in before {
            let is = self.pair_usable(l, pair);
            if was && !is {
                self.cut(l, pair);
            } else if !was && is {
                self.conn(l, pair).generation += 1;
                self.schedule_connect(l, pair);
            }
        }
    }

    pub(super) fn fault(&mut self, i: usize) {
        let kind = self.scenario.faults[i].kind.clone();
        self.rec.fault(self.now, &kind);
        let idx = |s: &Self, r: &RegionName| s.region_index(r).copied();
        match kind {
            FaultKind::LinkDown(a, b) | FaultKind::LinkUp(a, b) => {
                let up = matches!(self.scenario.faults[i].kind, FaultKind::LinkUp(..));
                let (Some(a), Some(b)) = (idx(self, &a), idx(self, &b)) else {
                    return;
                };
                let Some(&l) = self.link_of.get(&(a, b)) else {
                    return;
                };
                self.change(l, |s| s.links[l].healthy = up);
            }
            FaultKind::RegionDown(r) => {
                let Some(r) = idx(self, &r) else { return };
                self.change_region(r, |s| {
                    for n in 0..s.regions[r].nodes.len() {
                        s.stop_node(r, n);
                    }
                });
            }
            FaultKind::RegionUp(r) => {
                let Some(r) = idx(self, &r) else { return };
                self.change_region(r, |s| {
                    for n in 0..s.regions[r].nodes.len() {
                        if s.regions[r].nodes[n].agent.is_none() {
                            s.start_node(r, n);
                        }
                    }
                });
            }
            FaultKind::ReplicaDown(r, n) | FaultKind::ReplicaUp(r, n) => {
                let up = matches!(self.scenario.faults[i].kind, FaultKind::ReplicaUp(..));
                let Some(r) = idx(self, &r) else { return };
                let n = n as usize;
                if n >= self.regions[r].nodes.len()
                    || self.regions[r].nodes[n].agent.is_some() == up
                {
                    return;
                }
                self.change_region(r, |s| {
                    if up {
                        s.start_node(r, n);
                    } else {
                        s.stop_node(r, n);
                    }
                });
            }
            FaultKind::Partition(groups) => {
                let group_of: BTreeMap<usize, usize> = groups
                    .iter()
                    .enumerate()
                    .flat_map(|(g, rs)| {
                        rs.iter()
                            .filter_map(|r| idx(self, r))
                            .map(move |r| (r, g))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                for l in 0..self.links.len() {
                    let (a, b) = (self.links[l].a, self.links[l].b);
                    let cut = match (group_of.get(&a), group_of.get(&b)) {
                        (Some(x), Some(y)) => x != y,
                        _ => false,
                    };
                    if cut {
                        self.set_partitioned(l, true);
                    }
                }
            }
            FaultKind::Heal => {
                for l in 0..self.links.len() {
                    if !self.links[l].unpartitioned {
                        self.set_partitioned(l, false);
                    }
                }
            }
        }
    }
}
