//! The scenario YAML, parsed into checked types with file:line:column errors.
//!
//! ```yaml
//! name: triangle                  # optional, for the report
//! seed: 42                        # default 1; `mqlink simulate --seed` overrides
//! duration: 10m                   # simulated time
//! warmup: 5s                      # default 5s: publishers start after links and interest are up
//! regions:
//!   - name: eu-west
//!     interest: ["factory/+/temp"] # filters its subscribers hold
//!     replicas: 2                 # default 1: agents serving the region (nodes eu-west-r1,
//!                                 #   eu-west-r2); the broker splits exports between the live ones
//! links:
//!   - between: [eu-west, us-east]
//!     latency: 40ms               # one way
//!     jitter: 5ms                 # default 0: uniform extra delay in [0, jitter]
//!     loss: 0.5%                  # default 0: packets lost (QUIC retransmits them one RTT later)
//!     bandwidth: 100Mbps          # default 1Gbps: queueing at this rate, per direction
//!     cost: 80                    # default: round-trip latency in ms
//! workloads:
//!   - region: eu-west
//!     publishers: 10
//!     topic: "factory/{id}/temp"  # {id}: publisher index, {region}: region name
//!     rate: 5/s                   # per publisher; also 300/m, 2/h
//!     payload: 100                # bytes; or "100..500" for a uniform range
//!     qos: 0
//! faults:
//!   - { at: 2m, link_down: [eu-west, us-east] }
//!   - { at: 4m, link_up: [eu-west, us-east] }
//!   - { at: 5m, region_down: us-east }
//!   - { at: 6m, region_up: us-east }
//!   - { at: 7m, partition: [[eu-west], [us-east, ap-south]] }
//!   - { at: 8m, heal: true }
//!   - { at: 9m, replica_down: eu-west-r2 }   # one agent of a region stops (its broker stays)
//!   - { at: 10m, replica_up: eu-west-r2 }
//! ```
//!
//! Replicas: every agent of a region links to every agent of each
//! neighbouring region (one connection per pair, over the region link's
//! latency and bandwidth); the region's broker hands each exported message
//! to one live agent in turn (a shared subscription), and each import
//! arrives through exactly one of them.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use mqlink_config::units::parse_duration;
use mqlink_config::{Diagnostic, Pos};
use mqlink_topology::{NodeName, RegionName, TopicFilter};
use serde::Deserialize;
use serde_saphyr::Spanned;

type Text = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<Text>,
    seed: Option<Spanned<u64>>,
    duration: Text,
    warmup: Option<Text>,
    regions: Vec<RawRegion>,
    #[serde(default)]
    links: Vec<RawLink>,
    #[serde(default)]
    workloads: Vec<RawWorkload>,
    #[serde(default)]
    faults: Vec<RawFault>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: Text,
    #[serde(default)]
    interest: Vec<Text>,
    replicas: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    between: Spanned<Vec<Text>>,
    latency: Text,
    jitter: Option<Text>,
    loss: Option<Text>,
    bandwidth: Option<Text>,
    cost: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    region: Text,
    #[serde(default = "one")]
    publishers: u32,
    topic: Text,
    rate: Text,
    payload: Option<Text>,
    #[serde(default)]
    qos: u8,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    at: Text,
    link_down: Option<Vec<Text>>,
    link_up: Option<Vec<Text>>,
    region_down: Option<Text>,
    region_up: Option<Text>,
    replica_down: Option<Text>,
    replica_up: Option<Text>,
    partition: Option<Vec<Vec<Text>>>,
    heal: Option<bool>,
}

/// A checked scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name for the report.
    pub name: String,
    /// RNG seed.
    pub seed: u64,
    /// Simulated duration.
    pub duration: Duration,
    /// Publishers start after this (links connect and interest spreads first).
    pub warmup: Duration,
    /// Regions, in file order.
    pub regions: Vec<RegionSpec>,
    /// Links.
    pub links: Vec<LinkSpec>,
    /// Publishers.
    pub workloads: Vec<Workload>,
    /// Faults, sorted by time.
    pub faults: Vec<Fault>,
}

/// A region and what its subscribers want.
#[derive(Debug, Clone)]
pub struct RegionSpec {
    /// Name.
    pub name: RegionName,
    /// Filters subscribed in the region.
    pub interest: Vec<TopicFilter>,
    /// Agents serving the region (1 to [`MAX_REPLICAS`]).
    pub replicas: u32,
}

/// Most agents one region may have in a scenario.
pub const MAX_REPLICAS: u32 = 16;

impl RegionSpec {
    /// Node name of replica `i` (0-based): the region's name when it has
    /// one agent, else `<region>-r<i+1>`.
    pub fn node(&self, i: u32) -> NodeName {
        if self.replicas <= 1 {
            NodeName::from(&self.name)
        } else {
            NodeName::new(&format!("{}-r{}", self.name, i + 1))
                .unwrap_or_else(|_| NodeName::from(&self.name))
        }
    }
}

/// A WAN link.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    /// One end.
    pub a: RegionName,
    /// The other end.
    pub b: RegionName,
    /// One-way latency.
    pub latency: Duration,
    /// Extra delay, uniform in [0, jitter].
    pub jitter: Duration,
    /// Packet loss probability (0..1).
    pub loss: f64,
    /// Bits per second, per direction.
    pub bandwidth_bps: u64,
    /// Configured routing cost; `None`: the agents measure the round-trip
    /// time and use it, as `mqlink run` does (the production rule,
    /// [`mqlink_proto::MeasuredCost`]).
    pub cost: Option<u32>,
}

/// Payload size distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadSize {
    /// Always this many bytes.
    Fixed(u32),
    /// Uniform in [min, max].
    Uniform(u32, u32),
}

/// Publishers in one region.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Where they publish.
    pub region: RegionName,
    /// How many.
    pub publishers: u32,
    /// Topic pattern with `{id}` and `{region}`.
    pub topic: String,
    /// Messages per second per publisher.
    pub rate: f64,
    /// Payload sizes.
    pub payload: PayloadSize,
    /// QoS.
    pub qos: u8,
}

/// What happens at a fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// The link between the two regions fails.
    LinkDown(RegionName, RegionName),
    /// It comes back.
    LinkUp(RegionName, RegionName),
    /// A region's agent (and broker) stop.
    RegionDown(RegionName),
    /// It restarts (new epoch).
    RegionUp(RegionName),
    /// One agent of a region stops; the broker and the other agents stay.
    ReplicaDown(RegionName, u32),
    /// It restarts (new epoch).
    ReplicaUp(RegionName, u32),
    /// Every link between different groups fails.
    Partition(Vec<Vec<RegionName>>),
    /// Every link failed by a partition comes back.
    Heal,
}

/// A scheduled fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// When.
    pub at: Duration,
    /// What.
    pub kind: FaultKind,
}

/// Parse a rate: `5/s`, `300/m`, `2/h`, or a plain number per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    let expected = || {
        format!("invalid rate `{s}`: expected messages per time unit, like `5/s`, `300/m` or `2/h`")
    };
    let (n, unit) = s.split_once('/').unwrap_or((s, "s"));
    let n: f64 = n.trim().parse().map_err(|_| expected())?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(expected()),
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(expected());
    }
    Ok(n / per)
}

/// Parse a percentage (`0.5%`) or a fraction (`0.005`).
fn parse_loss(s: &str) -> Result<f64, String> {
    let v = match s.trim().strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => s.trim().parse::<f64>(),
    }
    .map_err(|_| {
        format!("invalid loss `{s}`: expected a percentage like `0.5%` or a fraction like `0.005`")
    })?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("loss `{s}` must be at least 0% and below 100%"))
    }
}

/// Parse a bandwidth: `100Mbps`, `1Gbps`, `512kbps`, `10000bps`.
fn parse_bandwidth(s: &str) -> Result<u64, String> {
    let expected = || {
        format!(
            "invalid bandwidth `{s}`: expected a number with bps, kbps, Mbps or Gbps, like `100Mbps`"
        )
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let n: f64 = t[..split].parse().map_err(|_| expected())?;
    let mult = match t[split..].trim() {
        "bps" => 1.0,
        "kbps" => 1e3,
        "Mbps" => 1e6,
        "Gbps" => 1e9,
        _ => return Err(expected()),
    };
    let v = n * mult;
    if v >= 1.0 {
        Ok(v as u64)
    } else {
        Err(expected())
    }
}

fn parse_payload(s: &str) -> Result<PayloadSize, String> {
    let expected =
        || format!("invalid payload `{s}`: expected bytes like `100`, or a range like `100..500`");
    if let Some((a, b)) = s.split_once("..") {
        let (a, b): (u32, u32) = (
            a.trim().parse().map_err(|_| expected())?,
            b.trim().parse().map_err(|_| expected())?,
        );
        if a > b {
            return Err(expected());
        }
        return Ok(PayloadSize::Uniform(a, b));
    }
    s.trim()
        .parse()
        .map(PayloadSize::Fixed)
        .map_err(|_| expected())
}

struct Ctx<'a> {
    file: &'a Path,
    diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn at<T>(&mut self, s: &Spanned<T>, msg: String) {
        self.diags
            .push(Diagnostic::error(self.file, Pos::of(s.referenced), msg));
    }

    fn parse<T, E: ToString>(
        &mut self,
        t: &Text,
        what: &str,
        f: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        match f(&t.value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.at(t, format!("{what}: {}", e.to_string()));
                None
            }
        }
    }

    fn region(&mut self, t: &Text, known: &BTreeSet<RegionName>, what: &str) -> Option<RegionName> {
        let r = self.parse(t, what, RegionName::new)?;
        if known.contains(&r) {
            Some(r)
        } else {
            self.at(t, format!("{what}: unknown region `{r}`; the scenario's regions are listed under `regions:`"));
            None
        }
    }

    /// A replica's node name (`<region>-r<n>`): the region and 0-based index.
    fn replica(
        &mut self,
        t: &Text,
        regions: &[RegionSpec],
        what: &str,
    ) -> Option<(RegionName, u32)> {
        let found = regions.iter().find_map(|r| {
            (0..r.replicas)
                .find(|i| r.replicas > 1 && r.node(*i).as_str() == t.value)
                .map(|i| (r.name.clone(), i))
        });
        if found.is_none() {
            let known: Vec<String> = regions
                .iter()
                .filter(|r| r.replicas > 1)
                .flat_map(|r| (0..r.replicas).map(|i| r.node(i).to_string()))
                .collect();
            let hint = if known.is_empty() {
                "no region has `replicas:` above 1".to_owned()
            } else {
                format!("replicas are {}", known.join(", "))
            };
            self.at(t, format!("{what}: unknown replica `{}`; {hint}", t.value));
        }
        found
    }

    fn pair(
        &mut self,
        list: &[Text],
        known: &BTreeSet<RegionName>,
        what: &str,
    ) -> Option<(RegionName, RegionName)> {
        match list {
            [a, b] => Some((self.region(a, known, what)?, self.region(b, known, what)?)),
            _ => {
                if let Some(first) = list.first() {
                    self.at(
                        first,
                        format!("{what}: expected exactly two regions, like `[eu-west, us-east]`"),
                    );
                } else {
                    self.diags.push(Diagnostic::error(
                        self.file,
                        None,
                        format!("{what}: expected two regions"),
                    ));
                }
                None
            }
        }
    }
}

/// Parse scenario YAML `text`, reporting positions against `file`.
pub fn parse(file: &Path, text: &str) -> Result<Scenario, mqlink_config::ConfigError> {
    let raw: RawScenario = serde_saphyr::from_str_with_options(text, mqlink_config::yaml_options())
        .map_err(|e| mqlink_config::ConfigError {
            diagnostics: vec![mqlink_config::yaml_error_in(file, text, &e)],
        })?;
    let mut ctx = Ctx {
        file,
        diags: Vec::new(),
    };
    let duration = ctx.parse(&raw.duration, "duration", parse_duration);
    let warmup = raw
        .warmup
        .as_ref()
        .map_or(Some(Duration::from_secs(5)), |w| {
            ctx.parse(w, "warmup", parse_duration)
        });

    let mut regions = Vec::new();
    let mut known = BTreeSet::new();
    for r in &raw.regions {
        let Some(name) = ctx.parse(&r.name, "regions.name", RegionName::new) else {
            continue;
        };
        if !known.insert(name.clone()) {
            ctx.at(&r.name, format!("regions.name: `{name}` is listed twice"));
        }
        let interest = r
            .interest
            .iter()
            .filter_map(|f| ctx.parse(f, "regions.interest", TopicFilter::new))
            .collect();
        let replicas = match &r.replicas {
            None => 1,
            Some(n) if (1..=MAX_REPLICAS).contains(&n.value) => n.value,
            Some(n) => {
                ctx.at(
                    n,
                    format!(
                        "regions.replicas: expected 1 to {MAX_REPLICAS} agents, found {}",
                        n.value
                    ),
                );
                1
            }
        };
        regions.push(RegionSpec {
            name,
            interest,
            replicas,
        });
    }

    let mut links = Vec::new();
    for l in &raw.links {
        let pair = ctx.pair(&l.between.value, &known, "links.between");
        let latency = ctx.parse(&l.latency, "links.latency", parse_duration);
        let jitter = l.jitter.as_ref().map_or(Some(Duration::ZERO), |j| {
            ctx.parse(j, "links.jitter", parse_duration)
        });
        let loss = l
            .loss
            .as_ref()
            .map_or(Some(0.0), |x| ctx.parse(x, "links.loss", parse_loss));
        let bandwidth = l.bandwidth.as_ref().map_or(Some(1_000_000_000), |b| {
            ctx.parse(b, "links.bandwidth", parse_bandwidth)
        });
        let cost = match &l.cost {
            Some(c) if c.value == 0 || c.value > u64::from(mqlink_topology::Cost::MAX) => {
                ctx.at(
                    c,
                    format!("links.cost: expected 1 to {}", mqlink_topology::Cost::MAX),
                );
                None
            }
            Some(c) => Some(Some(c.value as u32)),
            None => Some(None),
        };
        if let (
            Some((a, b)),
            Some(latency),
            Some(jitter),
            Some(loss),
            Some(bandwidth_bps),
            Some(cost),
        ) = (pair, latency, jitter, loss, bandwidth, cost)
        {
            if a == b {
                ctx.at(
                    &l.between,
                    format!("links.between: a link needs two different regions, not `{a}` twice"),
                );
                continue;
            }
            links.push(LinkSpec {
                a,
                b,
                latency,
                jitter,
                loss,
                bandwidth_bps,
                cost,
            });
        }
    }

    let mut workloads = Vec::new();
    for w in &raw.workloads {
        let region = ctx.region(&w.region, &known, "workloads.region");
        let rate = ctx.parse(&w.rate, "workloads.rate", parse_rate);
        let payload = w
            .payload
            .as_ref()
            .map_or(Some(PayloadSize::Fixed(100)), |p| {
                ctx.parse(p, "workloads.payload", parse_payload)
            });
        let sample = w.topic.value.replace("{id}", "0").replace("{region}", "r");
        let topic_ok = ctx
            .parse(&w.topic, "workloads.topic", |_| {
                mqlink_topology::TopicName::new(&sample)
            })
            .is_some();
        if w.qos > 2 {
            ctx.at(
                &w.topic,
                format!("workloads.qos: {} is not a QoS; expected 0, 1 or 2", w.qos),
            );
        }
        if let (Some(region), Some(rate), Some(payload), true) = (region, rate, payload, topic_ok) {
            workloads.push(Workload {
                region,
                publishers: w.publishers,
                topic: w.topic.value.clone(),
                rate,
                payload,
                qos: w.qos.min(2),
            });
        }
    }

    let mut faults = Vec::new();
    for f in &raw.faults {
        let Some(at) = ctx.parse(&f.at, "faults.at", parse_duration) else {
            continue;
        };
        let mut kinds = Vec::new();
        if let Some(l) = &f.link_down {
            kinds.extend(
                ctx.pair(l, &known, "faults.link_down")
                    .map(|(a, b)| FaultKind::LinkDown(a, b)),
            );
        }
        if let Some(l) = &f.link_up {
            kinds.extend(
                ctx.pair(l, &known, "faults.link_up")
                    .map(|(a, b)| FaultKind::LinkUp(a, b)),
            );
        }
        if let Some(r) = &f.region_down {
            kinds.extend(
                ctx.region(r, &known, "faults.region_down")
                    .map(FaultKind::RegionDown),
            );
        }
        if let Some(r) = &f.region_up {
            kinds.extend(
                ctx.region(r, &known, "faults.region_up")
                    .map(FaultKind::RegionUp),
            );
        }
        for (node, up) in [(&f.replica_down, false), (&f.replica_up, true)] {
            if let Some(t) = node {
                let field = if up {
                    "faults.replica_up"
                } else {
                    "faults.replica_down"
                };
                kinds.extend(ctx.replica(t, &regions, field).map(|(r, i)| {
                    if up {
                        FaultKind::ReplicaUp(r, i)
                    } else {
                        FaultKind::ReplicaDown(r, i)
                    }
                }));
            }
        }
        if let Some(groups) = &f.partition {
            let groups: Vec<Vec<RegionName>> = groups
                .iter()
                .map(|g| {
                    g.iter()
                        .filter_map(|r| ctx.region(r, &known, "faults.partition"))
                        .collect()
                })
                .collect();
            kinds.push(FaultKind::Partition(groups));
        }
        if f.heal == Some(true) {
            kinds.push(FaultKind::Heal);
        }
        let given = [
            f.link_down.is_some(),
            f.link_up.is_some(),
            f.region_down.is_some(),
            f.region_up.is_some(),
            f.replica_down.is_some(),
            f.replica_up.is_some(),
            f.partition.is_some(),
            f.heal == Some(true),
        ]
        .into_iter()
        .filter(|g| *g)
        .count();
        if given == 1 && kinds.len() != 1 {
            continue; // its error is already reported
        }
        if kinds.len() != 1 {
            ctx.at(&f.at, "faults: expected exactly one of link_down, link_up, region_down, region_up, replica_down, replica_up, partition, heal".to_owned());
            continue;
        }
        faults.extend(kinds.into_iter().map(|kind| Fault { at, kind }));
    }
    faults.sort_by_key(|f| f.at);

    if regions.is_empty() {
        ctx.diags.push(Diagnostic::error(
            file,
            None,
            "regions: expected at least one region",
        ));
    }
    match (duration, warmup, ctx.diags.is_empty()) {
        (Some(duration), Some(warmup), true) => Ok(Scenario {
            warmup,
            name: raw.name.map_or_else(
                || {
                    file.file_stem()
                        .map_or("scenario".into(), |s| s.to_string_lossy().into_owned())
                },
                |n| n.value,
            ),
            seed: raw.seed.map_or(1, |s| s.value),
            duration,
            regions,
            links,
            workloads,
            faults,
        }),
        _ => Err(mqlink_config::ConfigError {
            diagnostics: ctx.diags,
        }),
    }
}

/// Read and parse the scenario at `file`.
pub fn load(file: &Path) -> Result<Scenario, mqlink_config::ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| mqlink_config::ConfigError {
        diagnostics: vec![Diagnostic::error(
            file,
            None,
            format!("cannot read the file: {e}"),
        )],
    })?;
    parse(file, &text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_rate("5/s"), Ok(5.0));
        assert_eq!(parse_rate("120/m"), Ok(2.0));
        assert!(parse_rate("0/s").is_err() && parse_rate("5/d").is_err());
        assert_eq!(parse_loss("0.5%"), Ok(0.005));
        assert!(parse_loss("100%").is_err());
        assert_eq!(parse_bandwidth("100Mbps"), Ok(100_000_000));
        assert_eq!(parse_bandwidth("1.5Gbps"), Ok(1_500_000_000));
        assert!(parse_bandwidth("fast").is_err());
        assert_eq!(
            parse_payload("100..500"),
            Ok(PayloadSize::Uniform(100, 500))
        );
    }

    #[test]
    fn errors_name_their_position() {
        let text = "duration: 1m\nregions:\n  - name: a\n  - name: b\n    interest: [\"x/#/y\"]\nlinks:\n  - between: [a, c]\n    latency: 10ms\nfaults:\n  - { at: 10s, link_dwn: [a, b] }\n";
        let e = parse(Path::new("s.yaml"), text).unwrap_err();
        assert!(
            e.diagnostics[0].to_string().starts_with(
                "s.yaml:10:16: error: unknown key `link_dwn`; did you mean `link_down`?"
            ),
            "{e}"
        );
        let text = "duration: 1m\nregions:\n  - name: a\n  - name: b\n    interest: [\"x/#/y\"]\nlinks:\n  - between: [a, c]\n    latency: 10ms\n";
        let e = parse(Path::new("s.yaml"), text).unwrap_err().to_string();
        assert!(
            e.contains("s.yaml:5:16: error: regions.interest: `#` must be the last level"),
            "{e}"
        );
        assert!(
            e.contains("s.yaml:7:18: error: links.between: unknown region `c`"),
            "{e}"
        );
    }
}
