//! Draining an agent after each input, as the runtime does: frames onto
//! the links, events acted on, timers rescheduled, deliveries and topology
//! changes recorded; and the routes at the end.

use super::*;

impl Sim {
    /// Drain agent `n` of region `i` after it handled something.
    pub(super) fn after(&mut self, i: usize, n: usize) {
        let mut out = Vec::new();
        let mut delivered = Vec::new();
        let mut closes = Vec::new();
        let mut released = Vec::new();
        let now = self.instant();
        let mut next_key = self.next_spool_key;
        {
            let region = &mut self.regions[i].nodes[n];
            let Some(agent) = region.agent.as_mut() else {
                return;
            };
            // The simulated broker acknowledges a delivery at once, which
            // lets the agent release its custody and acknowledge upstream.
            loop {
                while let Some(t) = agent.poll_transmit() {
                    out.push(t);
                }
                let mut acks = Vec::new();
                let mut marked = Vec::new();
                let mut spooled = Vec::new();
                let mut replay = None;
                while let Some(ev) = agent.poll_event() {
                    // Every event the runtime acts on, as it does: the
                    // broker acknowledges deliveries at once, forgets what
                    // the agent releases, and a connection the agent
                    // closes is closed.
                    match ev {
                        Event::Deliver { env, custody } => {
                            delivered.push(env);
                            acks.extend(custody);
                        }
                        Event::ClosePeer { peer, .. } => {
                            self.rec.connection_closed();
                            closes.push(peer);
                        }
                        Event::Replaced { peer } => closes.push(peer),
                        Event::Release(token) => released.push(token),
                        // Durable at once (the simulated disk never fails).
                        Event::Mark { custody, mark } => {
                            region.marks.check_mark(&mark);
                            marked.push(custody);
                        }
                        // The spool: durable at once, never full.
                        Event::Spool { custody, env } => {
                            region.spool.push((next_key, *env, false));
                            next_key += 1;
                            spooled.push(custody);
                        }
                        Event::SpoolAck(key) => region.spool.retain(|(k, _, _)| *k != key),
                        Event::SpoolReplay(max) => replay = Some(max),
                        Event::PeerUp { .. } | Event::ExportChanged(_) => {}
                    }
                }
                if acks.is_empty() && marked.is_empty() && spooled.is_empty() && replay.is_none() {
                    break;
                }
                for c in spooled {
                    agent.handle_spooled(now, c, true);
                }
                if let Some(max) = replay {
                    let mut back = Vec::new();
                    for (k, env, given) in region.spool.iter_mut().filter(|e| !e.2).take(max) {
                        *given = true;
                        back.push((*k, env.clone()));
                    }
                    let exhausted = back.len() < max;
                    for (k, env) in back {
                        agent.handle_unspooled(now, k, env);
                    }
                    agent.handle_replay_done(now, exhausted);
                }
                for c in acks {
                    agent.handle_delivered(now, c);
                }
                for c in marked {
                    agent.handle_marked(now, c);
                }
            }
            let version = agent.router().lsdb().version();
            if version != region.lsdb_version {
                region.lsdb_version = version;
                let mut h = rustc_hash::FxHasher::default();
                if let Some(g) = agent.router().graph() {
                    for (a, b, c) in g.edges() {
                        (g.regions()[a].as_str(), g.regions()[b].as_str(), c).hash(&mut h);
                    }
                }
                let fp = h.finish();
                if fp != region.graph_fingerprint {
                    region.graph_fingerprint = fp;
                    self.rec.topology_changed(self.now);
                }
            }
            let next = agent
                .poll_timeout()
                .map(|t| t.saturating_duration_since(self.base));
            if next != region.timer {
                region.timer = next;
                region.timer_generation += 1;
                if let Some(at) = next {
                    let generation = region.timer_generation;
                    let at = at.max(self.now);
                    self.queue.insert(
                        (at, self.next_id),
                        Ev::Timer {
                            region: i,
                            node: n,
                            generation,
                        },
                    );
                    self.next_id += 1;
                }
            }
        }
        self.next_spool_key = next_key;
        let depth: usize = self.regions[i].nodes.iter().map(|n| n.spool.len()).sum();
        self.rec.spool_depth(i, self.now, depth as u64);
        for env in delivered {
            let origin = self.region_index(&env.origin).copied();
            if let Some(origin) = origin {
                self.rec
                    .delivered((origin, env.epoch, env.seq), i, self.now);
            }
        }
        for (peer, frame) in out {
            let (l, pair) = pair_of(peer.conn);
            let Some(link) = self.links.get(l) else {
                continue;
            };
            if !(link.a == i || link.b == i) {
                continue;
            }
            let to = link.other(i);
            self.send(l, pair, i, to, frame);
        }
        for t in released {
            self.regions[i].unreleased.remove(&t);
        }
        for peer in closes {
            let (l, pair) = pair_of(peer.conn);
            if l < self.links.len() && self.conn(l, pair).connected {
                // Closed at once at both ends (QUIC's close frame), then
                // dialled again like any lost connection.
                let conn = self.conn(l, pair);
                conn.connected = false;
                conn.generation += 1;
                self.at_both_ends(l, pair, |agent, peer, now| {
                    agent.handle_disconnect(now, peer)
                });
                self.schedule_connect(l, pair);
            }
        }
    }

    /// The tree of every origin, as edges (parent, child), from the first
    /// running agent's view (every agent computes the same trees).
    pub(super) fn routes(&mut self) -> BTreeMap<String, Vec<(String, String)>> {
        let names: Vec<RegionName> = self.regions.iter().map(|r| r.name.clone()).collect();
        let mut out = BTreeMap::new();
        let Some(agent) = self
            .regions
            .iter_mut()
            .flat_map(|r| r.nodes.iter_mut())
            .find_map(|n| n.agent.as_mut())
        else {
            return out;
        };
        for origin in &names {
            let Some((graph, tree)) = agent.router().tree(origin) else {
                continue;
            };
            let mut edges: Vec<(String, String)> = (0..graph.len())
                .filter_map(|p| {
                    tree.parent(p).map(|q| {
                        (
                            graph.regions()[q].to_string(),
                            graph.regions()[p].to_string(),
                        )
                    })
                })
                .collect();
            edges.sort();
            out.insert(origin.to_string(), edges);
        }
        out
    }
}
