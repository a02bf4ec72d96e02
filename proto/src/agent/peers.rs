//! Connections: connect, disconnect, hello, and the dispatch of every
//! frame a peer sends.

use super::*;

impl Agent {
    /// The runtime connected to (or accepted) an agent of `peer.region`,
    /// whose identity it verified from the peer's certificate.
    pub fn handle_connect(&mut self, _now: Instant, peer: &PeerId) {
        let region = &peer.region;
        if self.policy(region).is_none() {
            self.close(
                peer,
                format!("region `{region}` is not a configured neighbour"),
            );
            return;
        }
        self.custody.generation += 1;
        let incarnation = self.custody.generation;
        if let Some(old) = self.peers.insert(peer.clone(), Peer::new(incarnation)) {
            // The runtime reused a live connection's number: that
            // connection is gone.
            self.connection_lost(old, None);
        }
        let hello = Hello {
            region: self.cfg.region.clone(),
            node: self.cfg.node.clone(),
            epoch: self.cfg.epoch,
            version: PROTOCOL_VERSION,
        };
        self.outbox.push_back((peer.clone(), Frame::Hello(hello)));
    }

    /// The connection `peer` is gone.
    pub fn handle_disconnect(&mut self, now: Instant, peer: &PeerId) {
        self.last_now = now;
        if let Some(peer) = self.peers.remove(peer) {
            let was_up = peer.hello.is_some();
            self.connection_lost(peer, None);
            if was_up {
                self.originate(now);
            }
        }
        self.retry_parked(now);
        self.request_replay();
    }

    /// A frame arrived on connection `from`.
    pub fn handle_frame(&mut self, now: Instant, from: &PeerId, frame: Frame) {
        self.last_now = now;
        self.frame(now, from, frame);
        self.note_interest(now);
        self.retry_parked(now);
        self.request_replay();
    }

    pub(super) fn frame(&mut self, now: Instant, from: &PeerId, frame: Frame) {
        let Some(peer) = self.peers.get(from) else {
            return;
        };
        match (&peer.hello, frame) {
            (None, Frame::Hello(h)) => self.on_hello(now, from, h),
            (None, _) => self.close(from, "frame before hello".to_owned()),
            (Some(_), Frame::Hello(_)) => self.close(from, "second hello".to_owned()),
            (Some(_), Frame::Lsa(lsa)) => match self.router.handle_lsa(now, lsa.clone()) {
                LsaOutcome::Installed => self.broadcast(Some(from), &Frame::Lsa(lsa)),
                LsaOutcome::Older => {
                    if let Some(ours) = self.router.lsdb().lsa(&lsa.origin, &lsa.node).cloned() {
                        self.outbox.push_back((from.clone(), Frame::Lsa(ours)));
                    }
                }
                LsaOutcome::OwnStale => self.originate(now),
                LsaOutcome::Duplicate => {}
                LsaOutcome::Refused => self.close(
                    from,
                    format!(
                        "LSA of {} numbered {} is above the maximum sequence number",
                        lsa.origin, lsa.seq
                    ),
                ),
            },
            (Some(_), Frame::SummaryStart { table, seq, count }) => {
                let (open, buffered) = self.peers.get(from).map_or((0, 0), |p| {
                    (
                        p.incoming.len(),
                        p.incoming.values().map(|i| i.count).sum::<u64>(),
                    )
                });
                let per_table = self.cfg.max_table_filters;
                let all = per_table.saturating_mul(MAX_INCOMING_FILTERS / MAX_TABLE_FILTERS);
                if count > per_table
                    || open >= MAX_OPEN_SNAPSHOTS
                    || buffered.saturating_add(count) > all
                {
                    return self.close(
                        from,
                        format!("summary of {count} filters with {open} snapshots ({buffered} filters) open exceeds the limits ({per_table} filters per table, {MAX_OPEN_SNAPSHOTS} open, {all} filters open)"),
                    );
                }
                if let Some(p) = self.peers.get_mut(from) {
                    p.incoming.insert(
                        table,
                        Incoming {
                            seq,
                            count,
                            filters: Vec::new(),
                        },
                    );
                }
            }
            (Some(_), Frame::SummaryEntries { table, filters }) => {
                let Some(inc) = self
                    .peers
                    .get_mut(from)
                    .and_then(|p| p.incoming.get_mut(&table))
                else {
                    return self.close(
                        from,
                        format!("summary entries for {table:?} without a start"),
                    );
                };
                inc.filters.extend(filters);
                if inc.filters.len() as u64 > inc.count {
                    self.close(
                        from,
                        format!("summary for {table:?} holds more filters than announced"),
                    );
                }
            }
            (Some(_), Frame::SummaryEnd { table, digest }) => {
                self.on_snapshot_end(from, table, digest)
            }
            (
                Some(_),
                Frame::SummaryDelta {
                    table,
                    seq,
                    add,
                    remove,
                },
            ) => self.on_delta(from, table, seq, add, remove),
            (Some(_), Frame::Digest { table, seq, digest }) => {
                self.on_digest(from, table, seq, digest)
            }
            (Some(_), Frame::ResyncRequest { table }) => self.on_resync_request(from, table),
            (Some(_), Frame::DigestSum { tables, sum }) => {
                if (tables, sum) != self.digest_sum() {
                    // Something differs: show the peer every table's digest;
                    // it asks for (or sends) the snapshots that fix it.
                    let batch = Frame::DigestBatch(self.table_digests());
                    self.outbox.push_back((from.clone(), batch));
                }
            }
            (Some(_), Frame::DigestBatch(entries)) => {
                for (table, seq, digest) in entries {
                    self.on_digest(from, table, seq, digest);
                }
            }
            (Some(_), Frame::Ack { ranges }) => self.on_ack(from, &ranges),
            (Some(_), Frame::Data(batch)) => self.on_data(from, batch),
        }
    }

    pub(super) fn on_hello(&mut self, now: Instant, from: &PeerId, h: Hello) {
        if h.region != from.region {
            return self.close(
                from,
                format!(
                    "hello claims region `{}` but the certificate says `{}`",
                    h.region, from.region
                ),
            );
        }
        if h.version != PROTOCOL_VERSION {
            return self.close(
                from,
                format!(
                    "protocol version {} not supported (we speak {PROTOCOL_VERSION})",
                    h.version
                ),
            );
        }
        let node = h.node.clone();
        // One connection per agent: a newer one (a restart, or a reconnect
        // before the old connection timed out) replaces the older.
        let older: Vec<PeerId> = self
            .peers
            .range(PeerId::range(&from.region))
            .filter(|(id, p)| *id != from && p.hello.as_ref().is_some_and(|o| o.node == node))
            .map(|(id, _)| id.clone())
            .collect();
        if let Some(p) = self.peers.get_mut(from) {
            p.hello = Some(h);
        }
        self.custody.generation += 1;
        for old in older {
            if let Some(p) = self.peers.remove(&old) {
                // Same agent: what was queued still goes, on the new
                // connection; custody copies are sent again there.
                self.connection_lost(p, Some(from));
            }
            self.events.push_back(Event::Replaced { peer: old });
        }
        self.events.push_back(Event::PeerUp {
            peer: from.clone(),
            node,
        });
        // Every neighbour is up: their summaries (every table they hold)
        // follow their hellos at once, so the warm-up can end soon.
        let all_up = self
            .cfg
            .links
            .iter()
            .all(|l| self.carrier_id(&l.region).is_some());
        if all_up {
            self.warm_until = self.warm_until.min(now + WARM_AFTER_ALL_UP);
        }
        // Bring the newcomer up to date: every LSA, every table.
        let lsas: Vec<Frame> = self.router.lsdb().lsas().cloned().map(Frame::Lsa).collect();
        for f in lsas {
            self.outbox.push_back((from.clone(), f));
        }
        let tables: Vec<TableId> = self
            .router
            .interests()
            .tables()
            .map(|t| table_id(t.version()))
            .collect();
        for t in tables {
            self.send_snapshot_of(from, &t);
        }
        self.originate(now);
    }
}

impl Agent {
    /// The configuration's links changed (a reload): new links, costs and
    /// export/import policies take effect now; our LSA is re-originated and
    /// the export subscriptions follow. Connections to regions that are no
    /// longer neighbours are ended here (their custody copies go back to
    /// waiting for a path); the runtime closes them: they are returned.
    pub fn handle_reconfigure(&mut self, now: Instant, links: Vec<LinkPolicy>) -> Vec<PeerId> {
        self.last_now = now;
        let gone: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|id| !links.iter().any(|l| l.region == id.region))
            .cloned()
            .collect();
        self.cfg.links = links;
        for id in &gone {
            self.handle_disconnect(now, id);
        }
        self.originate(now);
        self.export_due = Some(now);
        self.refresh_export(now);
        gone
    }
}
