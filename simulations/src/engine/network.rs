//! The network model: connections per agent pair over each region link,
//! ordered per direction, with bandwidth, latency, jitter and loss;
//! connecting, cutting and detecting failure.

use super::*;

impl Sim {
    /// The WAN link itself works (not failed, not partitioned).
    pub(super) fn link_usable(&self, l: usize) -> bool {
        let link = &self.links[l];
        link.healthy && link.unpartitioned
    }

    /// Connection `pair` over `l` can exist: the link works and both agents run.
    pub(super) fn pair_usable(&self, l: usize, (na, nb): Pair) -> bool {
        let link = &self.links[l];
        self.link_usable(l)
            && self.regions[link.a].nodes[na].agent.is_some()
            && self.regions[link.b].nodes[nb].agent.is_some()
    }

    /// Every agent pair over `l`.
    pub(super) fn pairs(&self, l: usize) -> Vec<Pair> {
        let link = &self.links[l];
        let (ra, rb) = (
            self.regions[link.a].nodes.len(),
            self.regions[link.b].nodes.len(),
        );
        (0..ra).flat_map(|a| (0..rb).map(move |b| (a, b))).collect()
    }

    pub(super) fn conn(&mut self, l: usize, pair: Pair) -> &mut Conn {
        self.links[l].conns.entry(pair).or_default()
    }

    pub(super) fn rtt(&self, l: usize) -> Duration {
        self.links[l].latency * 2
    }

    /// Connect every usable, unconnected pair over `l` after a handshake.
    pub(super) fn schedule_connects(&mut self, l: usize) {
        for pair in self.pairs(l) {
            self.schedule_connect(l, pair);
        }
    }

    pub(super) fn schedule_connect(&mut self, l: usize, pair: Pair) {
        if self.pair_usable(l, pair) && !self.conn(l, pair).connected {
            let generation = self.conn(l, pair).generation;
            let at = self.now + self.rtt(l) * 3 / 2;
            self.push(
                at,
                Ev::Connect {
                    link: l,
                    pair,
                    generation,
                },
            );
        }
    }

    /// The connection became unusable: in-flight frames die now; the
    /// agents notice after DETECT.
    pub(super) fn cut(&mut self, l: usize, pair: Pair) {
        let conn = self.conn(l, pair);
        conn.generation += 1;
        if conn.connected {
            conn.connected = false;
            let generation = conn.generation;
            self.push(
                self.now + DETECT,
                Ev::Detect {
                    link: l,
                    pair,
                    generation,
                },
            );
        }
    }

    /// Run `f` on the agent at each end of connection `pair` over `link`
    /// (with its id for the other end).
    pub(super) fn at_both_ends(
        &mut self,
        link: usize,
        pair: Pair,
        mut f: impl FnMut(&mut Agent, &PeerId, Instant),
    ) {
        let (a, b) = (self.links[link].a, self.links[link].b);
        let now = self.instant();
        let id = conn_id(link, pair);
        for (me, n, peer) in [(a, pair.0, b), (b, pair.1, a)] {
            let peer_id = PeerId::new(self.regions[peer].name.clone(), id);
            if let Some(agent) = self.regions[me].nodes[n].agent.as_mut() {
                f(agent, &peer_id, now);
            }
            self.after(me, n);
        }
    }

    pub(super) fn send(&mut self, l: usize, pair: Pair, from: usize, to: usize, frame: Frame) {
        let size = mqlink_proto::encoded_len(&frame) as u64 + 40; // + QUIC/UDP/IP headers per frame, roughly
        let dir = self.links[l].dir(from);
        self.rec.sent(l, dir, &frame, size);
        let conn = *self.conn(l, pair);
        if !conn.connected {
            self.rec.frame_lost(&frame);
            return;
        }
        let link = &self.links[l];
        let tx = Duration::from_secs_f64(size as f64 * 8.0 / link.bandwidth_bps as f64);
        let start = link.busy_until[dir].max(self.now);
        let done = start + tx;
        let mut delay = link.latency;
        if !link.jitter.is_zero() {
            delay += Duration::from_secs_f64(
                self.rng.random_range(0.0..1.0) * link.jitter.as_secs_f64(),
            );
        }
        let mut retransmits = 0;
        while link.loss > 0.0 && retransmits < 20 && self.rng.random_bool(link.loss) {
            retransmits += 1;
        }
        delay += link.latency * 2 * retransmits;
        let arrival = (done + delay).max(link.last_arrival[dir]);
        let generation = conn.generation;
        let link = &mut self.links[l];
        link.busy_until[dir] = done;
        link.last_arrival[dir] = arrival;
        self.push(
            arrival,
            Ev::Arrive {
                link: l,
                pair,
                to,
                generation,
                frame,
            },
        );
    }
}
