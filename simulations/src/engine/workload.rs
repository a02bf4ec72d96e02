//! Publishers, and what a static flood bridge and a one-hop mesh would do
//! with each message (the baselines of the report).

use super::*;

impl Sim {
    pub(super) fn publish(&mut self, w: usize, p: u32) {
        // Short borrows of the workload: no per-message clone of it.
        let (rate, payload_size, qos_level) = {
            let wl = &self.scenario.workloads[w];
            (wl.rate, wl.payload, wl.qos)
        };
        // Next message: fixed rate with up to 10 % jitter, so publishers do not march in lockstep.
        let next = (0.95 + 0.1 * self.rng.random_range(0.0..1.0)) / rate;
        self.push(
            self.now + Duration::from_secs_f64(next),
            Ev::Publish {
                workload: w,
                publisher: p,
            },
        );
        let wl = &self.scenario.workloads[w];
        let Some(&origin) = self.rec.index.get(&wl.region) else {
            return;
        };
        // The broker hands the export to one live agent, in turn (shared subscription).
        let nodes = self.regions[origin].nodes.len();
        let start = self.regions[origin].turn;
        let Some(n) = (0..nodes)
            .map(|k| (start + k) % nodes)
            .find(|n| self.regions[origin].nodes[*n].agent.is_some())
        else {
            return;
        };
        self.regions[origin].turn = (n + 1) % nodes;
        let topic_text = wl
            .topic
            .replace("{id}", &p.to_string())
            .replace("{region}", wl.region.as_str());
        let Ok(topic) = TopicName::new(&topic_text) else {
            return;
        };
        let size = match payload_size {
            PayloadSize::Fixed(n) => n,
            PayloadSize::Uniform(a, b) => self.rng.random_range(a..=b),
        } as usize;
        let payload = if size <= ZEROS.len() {
            Bytes::from_static(&ZEROS[..size])
        } else {
            Bytes::from(vec![0u8; size])
        };
        let qos = match qos_level {
            0 => Qos::AtMostOnce,
            1 => Qos::AtLeastOnce,
            _ => Qos::ExactlyOnce,
        };
        let msg = Message {
            topic: topic.clone(),
            payload,
            qos,
            retain: false,
            properties: Properties::default(),
        };
        let wanted = self.wanted.matches(&topic);
        let origin_id = self.ids.intern(&self.regions[origin].name);
        let expected: Vec<usize> = wanted
            .iter()
            .filter(|id| *id != origin_id)
            .filter_map(|id| self.region_index(self.ids.name(id)).copied())
            .collect();
        let now = self.instant();
        // QoS >= 1: the broker keeps the message until the agent releases
        // it (its session is persistent), as Mosquitto does.
        let token = (qos != Qos::AtMostOnce).then(|| {
            self.next_token += 1;
            self.next_token
        });
        let node = &mut self.regions[origin].nodes[n];
        let Some(agent) = node.agent.as_mut() else {
            return;
        };
        if agent.handle_publish(now, msg.clone(), token) {
            node.published += 1;
            // Epochs are unique within a region, so (origin, epoch, seq) names one message.
            let key = (origin, node.epoch, node.published);
            if let Some(t) = token {
                self.regions[origin].unreleased.insert(t, (msg, key, n));
            }
            let direct = self.direct_alternatives(origin, &expected, size + topic_text.len());
            self.rec.published(key, self.now, &expected, direct);
        }
        self.after(origin, n);
    }

    /// Agent `n` of region `i` (re)started: its broker hands it every
    /// message its previous incarnation had not released.
    pub(super) fn redeliver(&mut self, i: usize, n: usize) {
        let held: Vec<(u64, Message, (usize, u64, u64))> = self.regions[i]
            .unreleased
            .iter()
            .filter(|(_, (_, _, node))| *node == n)
            .map(|(t, (m, k, _))| (*t, m.clone(), *k))
            .collect();
        if held.is_empty() {
            return;
        }
        let now = self.instant();
        for (old, msg, key) in held {
            self.regions[i].unreleased.remove(&old);
            self.next_token += 1;
            let token = self.next_token;
            let node = &mut self.regions[i].nodes[n];
            let Some(agent) = node.agent.as_mut() else {
                return;
            };
            if agent.handle_publish(now, msg.clone(), Some(token)) {
                node.published += 1;
                let again = (i, node.epoch, node.published);
                self.rec.republished(again, key);
                self.regions[i].unreleased.insert(token, (msg, key, n));
            }
        }
        self.after(i, n);
    }

    pub(super) fn region_index(&self, name: &RegionName) -> Option<&usize> {
        self.rec.index.get(name)
    }

    /// For the comparison: what a static flood bridge and a one-hop mesh
    /// would do with this message, given which links are usable now.
    pub(super) fn direct_alternatives(
        &self,
        origin: usize,
        expected: &[usize],
        size: usize,
    ) -> crate::report::Alternatives {
        let mut alt = crate::report::Alternatives::default();
        // MQTT PUBLISH header and topic length (about 20 bytes) plus the same
        // per-packet overhead (40) that mqlink frames are charged.
        let bridge_bytes = size as u64 + 60;
        for (l, link) in self.links.iter().enumerate() {
            if link.a != origin && link.b != origin {
                continue;
            }
            let peer = link.other(origin);
            if self.link_usable(l) && self.regions[peer].up() {
                // Flood bridge: everything goes to every neighbour.
                alt.flood_links.push(l);
                if expected.contains(&peer) {
                    alt.flood_delivered.push(peer);
                }
                // One-hop mesh: only to neighbours that want it.
                if expected.contains(&peer) {
                    alt.mesh_links.push(l);
                    alt.mesh_delivered.push(peer);
                }
            }
        }
        alt.bytes = bridge_bytes;
        alt
    }
}
