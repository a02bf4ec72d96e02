//! Interest summaries: snapshots (start / entries / end, verified by
//! digest), sequenced deltas, digests and resyncs; our own table; the
//! export subscriptions that follow remote interest.

use super::*;

impl Agent {
    /// The table `table` names: ours, or one we follow.
    fn table_of(&self, table: &TableId) -> Option<&InterestTable> {
        if *table == table_id(self.local.advertised().version()) {
            Some(self.local.advertised())
        } else {
            self.router.interests().table(&table.region, &table.node)
        }
    }

    /// A peer asks for a table's snapshot: sent, unless the same version
    /// went to it less than [`RESYNC_HOLDOFF`] ago.
    pub(super) fn on_resync_request(&mut self, from: &PeerId, table: TableId) {
        let now = self.last_now;
        let Some(seq) = self.table_of(&table).map(|t| t.version().seq) else {
            return;
        };
        let Some(p) = self.peers.get_mut(from) else {
            return;
        };
        if let Some((s, at)) = p.served.get(&table)
            && *s == seq
            && now.saturating_duration_since(*at) < RESYNC_HOLDOFF
        {
            return;
        }
        p.served
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < RESYNC_HOLDOFF);
        p.served.insert(table.clone(), (seq, now));
        self.send_snapshot_of(from, &table);
    }

    /// Queue a snapshot of `table` (ours or one we follow) to `to`.
    pub(super) fn send_snapshot_of(&mut self, to: &PeerId, table: &TableId) {
        let Some(s) = self.table_of(table).map(InterestTable::snapshot) else {
            return;
        };
        let frames = self.snapshot_frames(s);
        for f in frames {
            self.outbox.push_back((to.clone(), f));
        }
    }

    pub(super) fn snapshot_frames(&self, s: Snapshot) -> Vec<Frame> {
        let table = table_id(&s.version);
        let digest = InterestTable::from_snapshot(s.clone()).digest();
        let mut frames = vec![Frame::SummaryStart {
            table: table.clone(),
            seq: s.version.seq,
            count: s.filters.len() as u64,
        }];
        for chunk in s.filters.chunks(self.cfg.summary_chunk.max(1)) {
            frames.push(Frame::SummaryEntries {
                table: table.clone(),
                filters: chunk.to_vec(),
            });
        }
        frames.push(Frame::SummaryEnd { table, digest });
        frames
    }

    pub(super) fn request_resync(&mut self, from: &PeerId, table: TableId) {
        self.stats.resyncs += 1;
        self.outbox
            .push_back((from.clone(), Frame::ResyncRequest { table }));
    }

    /// Whether we hold (region, node)'s table at `epoch` with at least `seq`.
    pub(super) fn have(&self, table: &TableId, seq: u64) -> Option<std::cmp::Ordering> {
        let t = self.router.interests().table(&table.region, &table.node)?;
        let v = t.version();
        Some((v.epoch, v.seq).cmp(&(table.epoch, seq)))
    }

    pub(super) fn on_snapshot_end(&mut self, from: &PeerId, table: TableId, digest: Digest) {
        let Some(inc) = self
            .peers
            .get_mut(from)
            .and_then(|p| p.incoming.remove(&table))
        else {
            return self.close(from, format!("summary end for {table:?} without a start"));
        };
        if table.region == self.cfg.region && table.node == self.cfg.node {
            return; // our own table, relayed back
        }
        let snapshot = Snapshot {
            version: InterestVersion {
                region: table.region.clone(),
                node: table.node.clone(),
                epoch: table.epoch,
                seq: inc.seq,
            },
            filters: inc.filters,
        };
        if snapshot.filters.len() as u64 != inc.count
            || InterestTable::from_snapshot(snapshot.clone()).digest() != digest
        {
            return self.request_resync(from, table);
        }
        if matches!(
            self.have(&table, inc.seq),
            Some(std::cmp::Ordering::Equal | std::cmp::Ordering::Greater)
        ) {
            return; // we are as new already
        }
        let frames = self.snapshot_frames(snapshot.clone());
        self.router.handle_snapshot(snapshot);
        for f in frames {
            self.broadcast(Some(from), &f);
        }
    }

    pub(super) fn on_delta(
        &mut self,
        from: &PeerId,
        table: TableId,
        seq: u64,
        add: Vec<TopicFilter>,
        remove: Vec<TopicFilter>,
    ) {
        if table.region == self.cfg.region && table.node == self.cfg.node {
            return;
        }
        let known_epoch = self
            .router
            .interests()
            .table(&table.region, &table.node)
            .map(|t| t.version().epoch);
        match known_epoch {
            Some(e) if e > table.epoch => return, // from an older incarnation
            Some(e) if e == table.epoch => {}
            _ => return self.request_resync(from, table),
        }
        let ops: Vec<DeltaOp> = add
            .iter()
            .cloned()
            .map(DeltaOp::Add)
            .chain(remove.iter().cloned().map(DeltaOp::Remove))
            .collect();
        let delta = Delta {
            epoch: table.epoch,
            seq,
            ops,
        };
        let result = self.router.handle_delta(&table.region, &table.node, &delta);
        let size = self
            .router
            .interests()
            .table(&table.region, &table.node)
            .map_or(0, |t| t.len() as u64);
        let limit = self.cfg.max_table_filters;
        if size > limit {
            // Forget the table rather than hold it: the peer is closed, and
            // a well-behaved one sends a snapshot within the limit.
            self.router.remove_interest(&table.region, &table.node);
            return self.close(
                from,
                format!(
                    "delta grows {}/{}'s table to {size} filters, above the limit of {limit}",
                    table.region, table.node
                ),
            );
        }
        match result {
            Ok(Applied::Changed(_)) => self.broadcast(
                Some(from),
                &Frame::SummaryDelta {
                    table,
                    seq,
                    add,
                    remove,
                },
            ),
            Ok(Applied::Stale) => {}
            Err(_) => self.request_resync(from, table),
        }
    }

    pub(super) fn on_digest(&mut self, from: &PeerId, table: TableId, seq: u64, digest: Digest) {
        if table.region == self.cfg.region && table.node == self.cfg.node {
            return;
        }
        match self.have(&table, seq) {
            None | Some(std::cmp::Ordering::Less) => self.request_resync(from, table),
            Some(std::cmp::Ordering::Equal) => {
                if self.router.interests().digest(&table.region, &table.node) != Some(digest) {
                    self.request_resync(from, table);
                }
            }
            Some(std::cmp::Ordering::Greater) => self.send_snapshot_of(from, &table),
        }
    }

    /// A local client subscribed to `filter` (refcounted).
    pub fn handle_subscribe(&mut self, now: Instant, filter: TopicFilter) {
        for delta in self.local.subscribe(filter) {
            self.publish_delta(delta);
        }
        self.schedule_aggregation(now);
        self.note_interest(now);
    }

    /// A local subscription to `filter` went away.
    pub fn handle_unsubscribe(&mut self, now: Instant, filter: &TopicFilter) {
        for delta in self.local.unsubscribe(filter) {
            self.publish_delta(delta);
        }
        self.schedule_aggregation(now);
        self.note_interest(now);
    }

    /// Aggregate our advertised interest when it is due: over the budget
    /// soon ([`AGGREGATE_AFTER`], so a burst of subscriptions is folded
    /// into one aggregation), wider than needed at leisure
    /// ([`TIGHTEN_AFTER`]).
    fn schedule_aggregation(&mut self, now: Instant) {
        let wait = match self.local.due() {
            None => {
                self.aggregate_at = None;
                return;
            }
            Some(Due::OverBudget) => AGGREGATE_AFTER,
            Some(Due::Loose) => TIGHTEN_AFTER,
        };
        let at = now + wait;
        if self.aggregate_at.is_none_or(|t| at < t) {
            self.aggregate_at = Some(at);
        }
    }

    pub(super) fn aggregate_interest(&mut self, now: Instant) {
        if self.aggregate_at.is_none_or(|t| now < t) {
            return;
        }
        self.aggregate_at = None;
        if let Some(delta) = self.local.aggregate() {
            self.publish_delta(delta);
            self.note_interest(now);
        }
    }

    /// Our own interest: local filters, advertised filters, widened ones
    /// and the budget (for metrics).
    pub fn interest_summary(&self) -> (usize, usize, usize, Option<usize>) {
        (
            self.local.exact_len(),
            self.local.advertised().len(),
            self.local.widened(),
            self.local.budget(),
        )
    }

    pub(super) fn publish_delta(&mut self, delta: Delta) {
        let region = self.cfg.region.clone();
        let node = self.cfg.node.clone();
        // Our router follows our own table like any other.
        if self.router.handle_delta(&region, &node, &delta).is_err() {
            self.router
                .handle_snapshot(self.local.advertised().snapshot());
        }
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for op in delta.ops {
            match op {
                DeltaOp::Add(f) => add.push(f),
                DeltaOp::Remove(f) => remove.push(f),
            }
        }
        let table = table_id(self.local.advertised().version());
        self.broadcast(
            None,
            &Frame::SummaryDelta {
                table,
                seq: delta.seq,
                add,
                remove,
            },
        );
    }

    /// Drop the interest tables of agents that left a region whose other
    /// agents live on: a replica taken out of service (its LSA aged out
    /// while its siblings' did not) must not keep pulling its old interest
    /// into the region forever. A region with no live agent at all keeps
    /// every table: interest outlives links, so traffic for it can wait.
    /// Decided from state (which LSAs are held), so a lagging peer that
    /// sends such a table again only has it dropped again. Returns whether
    /// anything was dropped.
    pub(super) fn forget_departed(&mut self) -> bool {
        let state = (
            self.router.lsdb().version(),
            self.router.interests().revision(),
        );
        if self.departed_checked == Some(state) {
            return false;
        }
        let lsdb = self.router.lsdb();
        let live: BTreeSet<&RegionName> = lsdb.lsas().map(|l| &l.origin).collect();
        let gone: Vec<(RegionName, NodeName)> = self
            .router
            .interests()
            .tables()
            .map(InterestTable::version)
            .filter(|v| live.contains(&v.region) && lsdb.lsa(&v.region, &v.node).is_none())
            .map(|v| (v.region.clone(), v.node.clone()))
            .collect();
        for (region, node) in &gone {
            self.router.remove_interest(region, node);
        }
        self.departed_checked = Some((
            self.router.lsdb().version(),
            self.router.interests().revision(),
        ));
        !gone.is_empty()
    }

    /// Forget regions gone for good. Interest outlives links, so a region
    /// with no live agent keeps its tables (traffic for it waits in
    /// custody and the spool) — but not for ever: once it has had no live
    /// agent for `max_age`, everything held for it has expired anyway, so
    /// its tables go (counted in [`Stats::regions_forgotten`]) and the
    /// export subscriptions they caused with them. A region that comes
    /// back (a live LSA) is remembered again from its summaries. Returns
    /// whether anything was dropped.
    pub(super) fn forget_gone(&mut self, now: Instant) -> bool {
        // Nothing to do while the LSAs and tables are as at the last look
        // and no silent region is due (this runs on every timeout).
        let state = (
            self.router.lsdb().version(),
            self.router.interests().revision(),
        );
        let due = self
            .silent_since
            .values()
            .min()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.cfg.max_age);
        if self.gone_checked == Some(state) && !due {
            return false;
        }
        let lsdb = self.router.lsdb();
        let live: BTreeSet<RegionName> = lsdb.lsas().map(|l| l.origin.clone()).collect();
        let held: BTreeSet<RegionName> = self
            .router
            .interests()
            .tables()
            .map(|t| t.version().region.clone())
            .filter(|r| *r != self.cfg.region)
            .collect();
        self.forgotten.retain(|r| !live.contains(r));
        self.silent_since
            .retain(|r, _| held.contains(r) && !live.contains(r));
        let max_age = self.cfg.max_age;
        let mut gone = Vec::new();
        for r in held.iter().filter(|r| !live.contains(*r)) {
            let since = *self.silent_since.entry(r.clone()).or_insert(now);
            if self.forgotten.contains(r) || now.saturating_duration_since(since) >= max_age {
                gone.push(r.clone());
            }
        }
        for r in &gone {
            let nodes: Vec<NodeName> = self
                .router
                .interests()
                .tables()
                .filter(|t| t.version().region == *r)
                .map(|t| t.version().node.clone())
                .collect();
            for n in &nodes {
                self.router.remove_interest(r, n);
            }
            self.silent_since.remove(r);
            if self.forgotten.insert(r.clone()) {
                self.stats.regions_forgotten += 1;
            }
        }
        if self.forgotten.len() > FORGOTTEN_MAX {
            // Oldest names first would need times; any will do: a
            // forgotten region that sends a table again is only kept for
            // another `max_age`.
            let extra: Vec<RegionName> = self
                .forgotten
                .iter()
                .take(self.forgotten.len() - FORGOTTEN_MAX)
                .cloned()
                .collect();
            for r in extra {
                self.forgotten.remove(&r);
            }
        }
        self.gone_checked = Some((
            self.router.lsdb().version(),
            self.router.interests().revision(),
        ));
        !gone.is_empty()
    }

    /// (table, seq, digest) of every table held, our own included.
    pub(super) fn table_digests(&self) -> Vec<(TableId, u64, Digest)> {
        self.router
            .interests()
            .tables()
            .map(|t| (table_id(t.version()), t.version().seq, t.digest()))
            .collect()
    }

    /// A fingerprint over every table held: equal on two agents exactly
    /// when they hold the same tables at the same versions (barring hash
    /// collisions), whatever the order.
    pub(super) fn digest_sum(&mut self) -> (u64, u64) {
        let version = self.router.interests().revision();
        if let Some((v, cached)) = self.digest_sum_cache
            && v == version
        {
            return cached;
        }
        let computed = self.compute_digest_sum();
        self.digest_sum_cache = Some((version, computed));
        computed
    }

    pub(super) fn compute_digest_sum(&self) -> (u64, u64) {
        let mut sum = 0u64;
        let mut n = 0u64;
        let mut bytes = Vec::new();
        for (t, seq, d) in self.table_digests() {
            bytes.clear();
            bytes.extend_from_slice(t.region.as_str().as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(t.node.as_str().as_bytes());
            for w in [t.epoch, seq, d.count, d.sum] {
                bytes.extend_from_slice(&w.to_le_bytes());
            }
            sum = sum.wrapping_add(mqlink_topology::interest::stable_hash(&bytes));
            n += 1;
        }
        (n, sum)
    }

    /// Interest changed: recompute the export subscriptions soon. Bursts of
    /// changes (a peer's snapshots arriving one table after another) are
    /// folded into one recomputation and one resubscription.
    pub(super) fn note_interest(&mut self, now: Instant) {
        if self.export_version != Some(self.router.interests().version())
            && self.export_due.is_none()
        {
            self.export_due = Some(now + self.cfg.export_debounce);
        }
    }

    pub(super) fn refresh_export(&mut self, now: Instant) {
        if self.export_due.is_none_or(|t| now < t) {
            return;
        }
        self.export_due = None;
        self.export_version = Some(self.router.interests().version());
        let set = self.export_filters();
        if set != self.export {
            self.export = set.clone();
            self.events.push_back(Event::ExportChanged(set));
        }
    }

    /// What to subscribe to on the local broker: a disjoint cover of every
    /// filter some other region wants that some link's export policy can let
    /// through. Widening here only costs local broker-to-agent traffic: what
    /// crosses a link is still decided per message by the routing core and
    /// the link's export filter.
    pub fn export_filters(&self) -> BTreeSet<TopicFilter> {
        let exports: Vec<&TopicFilter> = self.cfg.links.iter().flat_map(|l| &l.export).collect();
        let wanted = self
            .router
            .interests()
            .tables()
            .filter(|t| t.version().region != self.cfg.region)
            .flat_map(|t| t.filters())
            .filter(|f| exports.iter().any(|e| e.overlaps(f)))
            .cloned();
        // Non-overlapping, so the broker sends each message once (MQTT-3.3.4-2
        // lets it send one copy per matching subscription otherwise).
        mqlink_topology::disjoint_cover(wanted)
            .into_iter()
            .collect()
    }
}
