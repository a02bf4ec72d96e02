//! What a simulation measured, and how it is shown: delivery and loss per
//! (origin, destination) pair, latency percentiles, messages and bytes per
//! link, duplicates, convergence after each fault, the routes chosen, and
//! the same workload under a static flood bridge and a one-hop full mesh.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use mqlink_proto::Frame;
use mqlink_topology::RegionName;
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::scenario::{FaultKind, Scenario};

/// What the alternatives would do with one message.
#[derive(Debug, Default)]
pub struct Alternatives {
    /// Links a flood bridge sends it over.
    pub flood_links: Vec<usize>,
    /// Regions a flood bridge delivers it to (that want it).
    pub flood_delivered: Vec<usize>,
    /// Links a one-hop mesh sends it over.
    pub mesh_links: Vec<usize>,
    /// Regions a one-hop mesh delivers it to.
    pub mesh_delivered: Vec<usize>,
    /// Bytes per copy on a bridge link.
    pub bytes: u64,
}

#[derive(Debug)]
struct MsgRec {
    at: Duration,
    expected: Vec<u16>,
    got: Vec<u16>,
}

#[derive(Debug, Default, Clone)]
struct PairRec {
    expected: u64,
    delivered: u64,
    duplicates: u64,
    latencies_us: Vec<u32>,
    flood: u64,
    mesh: u64,
}

#[derive(Debug, Default, Clone)]
struct LinkRec {
    messages: [u64; 2],
    bytes: [u64; 2],
    flood_bytes: u64,
    mesh_bytes: u64,
}

/// Collects measurements during a run.
#[derive(Debug)]
pub struct Recorder {
    /// Region index by name.
    pub index: BTreeMap<RegionName, usize>,
    names: Vec<String>,
    link_names: Vec<(String, String)>,
    msgs: FxHashMap<(usize, u64, u64), MsgRec>,
    /// A message the broker handed to a restarted agent again, under its
    /// new key -> the key it was published under.
    aliases: FxHashMap<(usize, u64, u64), (usize, u64, u64)>,
    pairs: BTreeMap<(usize, usize), PairRec>,
    links: Vec<LinkRec>,
    faults: Vec<(Duration, String)>,
    changes: Vec<Duration>,
    unwanted: u64,
    lost_envelopes: u64,
    /// Connections an agent closed for a protocol violation.
    closed: u64,
    timeline: Vec<u64>,
    /// Peak spool depth per region and simulated second.
    spool: Vec<Vec<Option<u64>>>,
    published: u64,
}

impl Recorder {
    /// A recorder for `scenario` whose regions are `names`, in order.
    pub fn new(scenario: &Scenario, names: &[RegionName]) -> Self {
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        Recorder {
            index,
            names: names.iter().map(ToString::to_string).collect(),
            link_names: scenario
                .links
                .iter()
                .map(|l| (l.a.to_string(), l.b.to_string()))
                .collect(),
            msgs: FxHashMap::default(),
            pairs: BTreeMap::new(),
            links: vec![LinkRec::default(); scenario.links.len()],
            faults: Vec::new(),
            changes: Vec::new(),
            unwanted: 0,
            lost_envelopes: 0,
            aliases: FxHashMap::default(),
            closed: 0,
            timeline: vec![0; scenario.duration.as_secs() as usize + 1],
            spool: vec![vec![None; scenario.duration.as_secs() as usize + 1]; names.len()],
            published: 0,
        }
    }

    /// Region `region`'s agents hold `depth` messages in their spools.
    pub fn spool_depth(&mut self, region: usize, at: Duration, depth: u64) {
        if let Some(series) = self.spool.get_mut(region) {
            let last = series.len().saturating_sub(1);
            let s = (at.as_secs() as usize).min(last);
            if let Some(v) = series.get_mut(s) {
                *v = Some(v.map_or(depth, |d| d.max(depth)));
            }
        }
    }

    /// A message entered the federation.
    pub fn published(
        &mut self,
        key: (usize, u64, u64),
        at: Duration,
        expected: &[usize],
        alt: Alternatives,
    ) {
        self.published += 1;
        for &r in expected {
            let p = self.pairs.entry((key.0, r)).or_default();
            p.expected += 1;
            p.flood += u64::from(alt.flood_delivered.contains(&r));
            p.mesh += u64::from(alt.mesh_delivered.contains(&r));
        }
        for l in alt.flood_links {
            self.links[l].flood_bytes += alt.bytes;
        }
        for l in alt.mesh_links {
            self.links[l].mesh_bytes += alt.bytes;
        }
        self.msgs.insert(
            key,
            MsgRec {
                at,
                expected: expected.iter().map(|r| *r as u16).collect(),
                got: Vec::new(),
            },
        );
    }

    /// The broker handed message `original` again (to a restarted agent),
    /// which carries it as `again`.
    pub fn republished(&mut self, again: (usize, u64, u64), original: (usize, u64, u64)) {
        let original = self.aliases.get(&original).copied().unwrap_or(original);
        self.aliases.insert(again, original);
    }

    /// A region's agent delivered message `key` to its broker in region `to`.
    pub fn delivered(&mut self, key: (usize, u64, u64), to: usize, at: Duration) {
        let key = self.aliases.get(&key).copied().unwrap_or(key);
        let Some(m) = self.msgs.get_mut(&key) else {
            self.unwanted += 1;
            return;
        };
        if !m.expected.contains(&(to as u16)) {
            self.unwanted += 1;
            return;
        }
        let p = self.pairs.entry((key.0, to)).or_default();
        if m.got.contains(&(to as u16)) {
            p.duplicates += 1;
            return;
        }
        m.got.push(to as u16);
        p.delivered += 1;
        let lat = at.saturating_sub(m.at);
        p.latencies_us
            .push(lat.as_micros().min(u128::from(u32::MAX)) as u32);
        if let Some(slot) = self.timeline.get_mut(at.as_secs() as usize) {
            *slot += 1;
        }
    }

    /// A frame was put on link `l` in direction `dir`.
    pub fn sent(&mut self, l: usize, dir: usize, frame: &Frame, bytes: u64) {
        let rec = &mut self.links[l];
        rec.bytes[dir] += bytes;
        if let Frame::Data(b) = frame {
            rec.messages[dir] += b.envelopes.len() as u64;
        }
    }

    /// A frame died with its connection.
    pub fn frame_lost(&mut self, frame: &Frame) {
        if let Frame::Data(b) = frame {
            self.lost_envelopes += b.envelopes.len() as u64;
        }
    }

    /// An agent closed a connection for a protocol violation (a bug in a
    /// simulated agent: production would close that link too).
    pub fn connection_closed(&mut self) {
        self.closed += 1;
    }

    /// Some agent's view of the region graph changed.
    pub fn topology_changed(&mut self, at: Duration) {
        if self.changes.last() != Some(&at) {
            self.changes.push(at);
        }
    }

    /// A fault happened.
    pub fn fault(&mut self, at: Duration, kind: &FaultKind) {
        let what = match kind {
            FaultKind::LinkDown(a, b) => format!("link {a} <-> {b} down"),
            FaultKind::LinkUp(a, b) => format!("link {a} <-> {b} up"),
            FaultKind::RegionDown(r) => format!("region {r} down"),
            FaultKind::RegionUp(r) => format!("region {r} up"),
            FaultKind::ReplicaDown(r, i) => format!("replica {r}-r{} down", i + 1),
            FaultKind::ReplicaUp(r, i) => format!("replica {r}-r{} up", i + 1),
            FaultKind::Partition(groups) => {
                let g: Vec<String> = groups
                    .iter()
                    .map(|g| {
                        format!(
                            "{{{}}}",
                            g.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
                        )
                    })
                    .collect();
                format!("partition {}", g.join(" | "))
            }
            FaultKind::Heal => "partition healed".to_owned(),
        };
        self.faults.push((at, what));
    }

    /// Turn the measurements into a report.
    pub fn finish(
        self,
        scenario: &Scenario,
        routes: BTreeMap<String, Vec<(String, String)>>,
    ) -> Report {
        let mut pairs = Vec::new();
        let mut latency_cdf = Vec::new();
        let (mut expected, mut delivered, mut duplicates, mut flood, mut mesh) = (0, 0, 0, 0, 0);
        for ((o, d), mut p) in self.pairs {
            p.latencies_us.sort_unstable();
            let pct = |q: f64| -> f64 {
                if p.latencies_us.is_empty() {
                    return 0.0;
                }
                let i = ((p.latencies_us.len() as f64 - 1.0) * q).round() as usize;
                f64::from(p.latencies_us[i]) / 1000.0
            };
            if !p.latencies_us.is_empty() {
                let points = (0..=50)
                    .map(|q| {
                        let f = f64::from(q) / 50.0;
                        let i = ((p.latencies_us.len() - 1) as f64 * f).round() as usize;
                        (round3(f64::from(p.latencies_us[i]) / 1000.0), f)
                    })
                    .collect();
                latency_cdf.push(CdfReport {
                    origin: self.names[o].clone(),
                    destination: self.names[d].clone(),
                    messages: p.delivered,
                    points,
                });
            }
            expected += p.expected;
            delivered += p.delivered;
            duplicates += p.duplicates;
            flood += p.flood;
            mesh += p.mesh;
            pairs.push(PairReport {
                origin: self.names[o].clone(),
                destination: self.names[d].clone(),
                expected: p.expected,
                delivered: p.delivered,
                lost: p.expected - p.delivered,
                duplicates: p.duplicates,
                p50_ms: round3(pct(0.5)),
                p90_ms: round3(pct(0.9)),
                p99_ms: round3(pct(0.99)),
                max_ms: round3(pct(1.0)),
            });
        }
        let links: Vec<LinkReport> = self
            .links
            .iter()
            .zip(&self.link_names)
            .map(|(l, (a, b))| LinkReport {
                a: a.clone(),
                b: b.clone(),
                messages_ab: l.messages[0],
                messages_ba: l.messages[1],
                bytes_ab: l.bytes[0],
                bytes_ba: l.bytes[1],
            })
            .collect();
        let mqlink_bytes: u64 = links.iter().map(|l| l.bytes_ab + l.bytes_ba).sum();
        let per_link = |f: &dyn Fn(&LinkRec) -> u64| -> Vec<(String, String, u64)> {
            self.links
                .iter()
                .zip(&self.link_names)
                .map(|(l, (a, b))| (a.clone(), b.clone(), f(l)))
                .collect()
        };
        let alternatives = vec![
            AltReport {
                name: "mqlink".into(),
                delivered,
                lost: expected - delivered,
                bytes: mqlink_bytes,
                bytes_per_link: per_link(&|l| l.bytes[0] + l.bytes[1]),
            },
            AltReport {
                name: "flood bridge (every link forwards everything, one hop)".into(),
                delivered: flood,
                lost: expected - flood,
                bytes: self.links.iter().map(|l| l.flood_bytes).sum(),
                bytes_per_link: per_link(&|l| l.flood_bytes),
            },
            AltReport {
                name: "one-hop full mesh (interest-based, no transit)".into(),
                delivered: mesh,
                lost: expected - mesh,
                bytes: self.links.iter().map(|l| l.mesh_bytes).sum(),
                bytes_per_link: per_link(&|l| l.mesh_bytes),
            },
        ];
        let mut faults = Vec::new();
        for (i, (at, what)) in self.faults.iter().enumerate() {
            let until = self.faults.get(i + 1).map_or(scenario.duration, |f| f.0);
            let last = self
                .changes
                .iter()
                .filter(|c| **c >= *at && **c < until)
                .max();
            faults.push(FaultReport {
                at_s: round3(at.as_secs_f64()),
                what: what.clone(),
                convergence_s: last.map(|l| round3((*l - *at).as_secs_f64())),
            });
        }
        let spool = self
            .spool
            .iter()
            .zip(&self.names)
            .filter_map(|(series, region)| {
                // A second without any event keeps the depth seen last.
                let mut last = 0;
                let per_second: Vec<u64> = series
                    .iter()
                    .map(|v| {
                        last = v.unwrap_or(last);
                        last
                    })
                    .collect();
                let peak = per_second.iter().copied().max().unwrap_or(0);
                (peak > 0).then(|| SpoolReport {
                    region: region.clone(),
                    peak,
                    per_second,
                })
            })
            .collect();
        Report {
            scenario: scenario.name.clone(),
            seed: scenario.seed,
            duration_s: scenario.duration.as_secs_f64(),
            published: self.published,
            expected,
            delivered,
            lost: expected - delivered,
            duplicates,
            unwanted: self.unwanted,
            connections_closed: self.closed,
            pairs,
            links,
            faults,
            routes,
            alternatives,
            deliveries_per_second: self.timeline,
            latency_cdf,
            spool,
        }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Delivery between one origin and one destination.
#[derive(Debug, Clone, Serialize)]
pub struct PairReport {
    /// Where messages were published.
    pub origin: String,
    /// Where they were wanted.
    pub destination: String,
    /// Messages the destination wanted.
    pub expected: u64,
    /// Delivered (first copies).
    pub delivered: u64,
    /// Never delivered.
    pub lost: u64,
    /// Extra copies delivered.
    pub duplicates: u64,
    /// Latency percentiles, ms.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// Traffic on one link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkReport {
    /// One end.
    pub a: String,
    /// Other end.
    pub b: String,
    /// Envelopes a -> b.
    pub messages_ab: u64,
    /// Envelopes b -> a.
    pub messages_ba: u64,
    /// Bytes a -> b (all frames, with per-packet overhead).
    pub bytes_ab: u64,
    /// Bytes b -> a.
    pub bytes_ba: u64,
}

/// Convergence after one fault.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    /// When, seconds from the start.
    pub at_s: f64,
    /// What.
    pub what: String,
    /// Seconds until the last change of any agent's view of the region graph
    /// caused by it (`None`: nothing changed).
    pub convergence_s: Option<f64>,
}

/// One deployment option's outcome on the same workload.
#[derive(Debug, Clone, Serialize)]
pub struct AltReport {
    /// Which option.
    pub name: String,
    /// Messages delivered to regions that wanted them.
    pub delivered: u64,
    /// Wanted but not delivered.
    pub lost: u64,
    /// Bytes over all links.
    pub bytes: u64,
    /// Bytes per link (a, b, bytes).
    pub bytes_per_link: Vec<(String, String, u64)>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed used.
    pub seed: u64,
    /// Simulated seconds.
    pub duration_s: f64,
    /// Messages published.
    pub published: u64,
    /// (message, region) deliveries wanted.
    pub expected: u64,
    /// Delivered.
    pub delivered: u64,
    /// Lost.
    pub lost: u64,
    /// Duplicate deliveries.
    pub duplicates: u64,
    /// Deliveries to regions that did not want the message.
    pub unwanted: u64,
    /// Connections agents closed for protocol violations (0 unless
    /// something is wrong).
    pub connections_closed: u64,
    /// Per (origin, destination).
    pub pairs: Vec<PairReport>,
    /// Per link.
    pub links: Vec<LinkReport>,
    /// Per fault.
    pub faults: Vec<FaultReport>,
    /// Shortest-path tree of each origin at the end, as (parent, child) edges.
    pub routes: BTreeMap<String, Vec<(String, String)>>,
    /// mqlink and the alternatives on the same workload.
    pub alternatives: Vec<AltReport>,
    /// Deliveries per simulated second.
    pub deliveries_per_second: Vec<u64>,
    /// Latency CDF per pair, 51 points each.
    pub latency_cdf: Vec<CdfReport>,
    /// Spool depth over time of every region whose agents spooled
    /// anything (messages waiting for a path, on disk).
    pub spool: Vec<SpoolReport>,
}

/// The spool depth of one region over time.
#[derive(Debug, Clone, Serialize)]
pub struct SpoolReport {
    /// The region (its agents' spools together).
    pub region: String,
    /// The most messages in the spool.
    pub peak: u64,
    /// The most messages in the spool in each simulated second.
    pub per_second: Vec<u64>,
}

/// The latency distribution of one region pair.
#[derive(Debug, Clone, Serialize)]
pub struct CdfReport {
    /// Origin.
    pub origin: String,
    /// Destination.
    pub destination: String,
    /// Messages delivered.
    pub messages: u64,
    /// (latency ms, fraction of deliveries at or below it).
    pub points: Vec<(f64, f64)>,
}

fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

impl Report {
    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "scenario {} (seed {}), {:.0} s simulated",
            self.scenario, self.seed, self.duration_s
        );
        let pct = |n: u64| {
            if self.expected == 0 {
                100.0
            } else {
                100.0 * n as f64 / self.expected as f64
            }
        };
        let _ = writeln!(
            o,
            "  {} published; {} deliveries wanted, {} delivered ({:.3} %), {} lost, {} duplicates, {} unwanted",
            self.published,
            self.expected,
            self.delivered,
            pct(self.delivered),
            self.lost,
            self.duplicates,
            self.unwanted
        );
        if self.connections_closed > 0 {
            let _ = writeln!(
                o,
                "  {} connections closed by agents for protocol violations",
                self.connections_closed
            );
        }
        let _ = writeln!(o, "\ndelivery per region pair (latency in ms)");
        let _ = writeln!(
            o,
            "  {:<14} {:<14} {:>9} {:>9} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8}",
            "origin",
            "destination",
            "wanted",
            "delivered",
            "lost",
            "dup",
            "p50",
            "p90",
            "p99",
            "max"
        );
        let shown = if self.pairs.len() > 40 {
            40
        } else {
            self.pairs.len()
        };
        for p in &self.pairs[..shown] {
            let _ = writeln!(
                o,
                "  {:<14} {:<14} {:>9} {:>9} {:>7} {:>5} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                p.origin,
                p.destination,
                p.expected,
                p.delivered,
                p.lost,
                p.duplicates,
                p.p50_ms,
                p.p90_ms,
                p.p99_ms,
                p.max_ms
            );
        }
        if shown < self.pairs.len() {
            let _ = writeln!(
                o,
                "  ... {} more pairs (see --json)",
                self.pairs.len() - shown
            );
        }
        let _ = writeln!(
            o,
            "\ncross-region traffic per link (msgs: data envelopes; MB: every frame, data and control, ~40 B of headers each)"
        );
        let mut links: Vec<&LinkReport> = self.links.iter().collect();
        links.sort_by_key(|l| std::cmp::Reverse(l.bytes_ab + l.bytes_ba));
        for l in links.iter().take(30) {
            let _ = writeln!(
                o,
                "  {:<14} -> {:<14} {:>9} msgs {:>11}    <- {:>9} msgs {:>11}",
                l.a,
                l.b,
                l.messages_ab,
                mb(l.bytes_ab),
                l.messages_ba,
                mb(l.bytes_ba)
            );
        }
        if links.len() > 30 {
            let _ = writeln!(o, "  ... {} more links (see --json)", links.len() - 30);
        }
        if !self.faults.is_empty() {
            let _ = writeln!(o, "\nfaults and convergence");
            for f in &self.faults {
                let conv = f.convergence_s.map_or("no routing change".to_owned(), |c| {
                    format!("converged in {c:.3} s")
                });
                let _ = writeln!(o, "  {:>8.1} s  {:<40} {conv}", f.at_s, f.what);
            }
        }
        let _ = writeln!(o, "\nroutes (shortest-path tree per origin, at the end)");
        for (origin, edges) in self.routes.iter().take(12) {
            let e: Vec<String> = edges.iter().map(|(a, b)| format!("{a}->{b}")).collect();
            let _ = writeln!(o, "  {origin:<14} {}", e.join(" "));
        }
        if self.routes.len() > 12 {
            let _ = writeln!(
                o,
                "  ... {} more origins (see --json)",
                self.routes.len() - 12
            );
        }
        if !self.spool.is_empty() {
            let _ = writeln!(o, "\nspool (QoS >= 1 waiting for a path, on disk)");
            for sp in &self.spool {
                let busy = sp.per_second.iter().filter(|d| **d > 0).count();
                let _ = writeln!(
                    o,
                    "  {:<14} peak {:>8} messages, non-empty for {busy} s",
                    sp.region, sp.peak
                );
            }
        }
        let _ = writeln!(
            o,
            "\nthe same workload under the alternatives (MB: mqlink every frame, data and control; the others their messages only)"
        );
        for a in &self.alternatives {
            let _ = writeln!(
                o,
                "  {:<56} delivered {:>9} ({:>7.3} %), lost {:>8}, {:>12} over all links",
                a.name,
                a.delivered,
                pct(a.delivered),
                a.lost,
                mb(a.bytes)
            );
        }
        o
    }
}
