//! Matcher and route-cache benchmarks.
//!
//! `matcher/lookup`: 1,000,000 filters spread over 100 regions (10,000 per
//! region: device commands `dev/<n>/cmd`, factory sensors
//! `factory/<site>/+/<metric>`, vehicles `fleet/<v>/#`, and a few broad
//! filters), looked up with a mix of topics that hit and miss. The target is
//! at least 1,000,000 lookups per second on one core.
//!
//! Run: `cargo bench -p mqlink-topology --bench matcher`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mqlink_topology::{Matcher, RegionIds, RegionName, RegionSet, TopicFilter, TopicName};

/// splitmix64: a tiny seeded generator, so the benchmark needs no RNG crate
/// and every run sees the same data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const METRICS: &[&str] = &[
    "temp",
    "pressure",
    "humidity",
    "rpm",
    "power",
    "vibration",
    "flow",
    "level",
];

fn build(regions: usize, per_region: usize, rng: &mut Rng) -> Matcher {
    let mut ids = RegionIds::default();
    let mut matcher = Matcher::new();
    for r in 0..regions {
        let id = ids.intern(&RegionName::new(&format!("region-{r}")).unwrap());
        let (mut added, mut i) = (0, 0);
        while added < per_region {
            i += 1;
            let filter = match i % 10 {
                0 if i < 30 => format!("alerts/{}/#", rng.below(20)),
                0..=6 => format!("dev/{}/cmd", rng.below(1_000_000)),
                7 | 8 => format!(
                    "factory/{}/+/{}",
                    rng.below(5_000),
                    METRICS[rng.below(8) as usize]
                ),
                _ => format!("fleet/{}/#", rng.below(100_000)),
            };
            added += usize::from(matcher.insert(&TopicFilter::new(&filter).unwrap(), id));
        }
    }
    matcher
}

fn topics(n: usize, rng: &mut Rng) -> Vec<TopicName> {
    (0..n)
        .map(|_| {
            let t = match rng.below(5) {
                0 => format!("dev/{}/cmd", rng.below(1_000_000)),
                1 => format!(
                    "factory/{}/line{}/{}",
                    rng.below(5_000),
                    rng.below(10),
                    METRICS[rng.below(8) as usize]
                ),
                2 => format!("fleet/{}/gps/lat", rng.below(100_000)),
                3 => format!("alerts/{}/fire", rng.below(40)),
                _ => format!("telemetry/{}/raw", rng.below(1_000)),
            };
            TopicName::new(&t).unwrap()
        })
        .collect()
}

fn matcher_lookup(c: &mut Criterion) {
    let mut rng = Rng(0x5eed);
    let matcher = build(100, 10_000, &mut rng);
    let batch = topics(4096, &mut rng);
    let mut out = RegionSet::new();
    let hits: usize = batch
        .iter()
        .map(|t| {
            out.clear();
            matcher.matches_into(t, &mut out);
            out.len()
        })
        .sum();
    eprintln!(
        "matcher: {} (filter, region) pairs; {hits} region matches over {} topics",
        matcher.len(),
        batch.len()
    );
    let mut group = c.benchmark_group("matcher");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("lookup_1m_filters_100_regions", |b| {
        b.iter(|| {
            for t in &batch {
                out.clear();
                matcher.matches_into(black_box(t), &mut out);
            }
            black_box(&out);
        })
    });
    group.finish();
}

criterion_group!(benches, matcher_lookup);
criterion_main!(benches);
