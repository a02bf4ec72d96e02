//! The spool's cost per message, and the same workload on redb.
//!
//! One iteration moves `batch` messages (100-byte payloads, the envelope
//! as the agent writes it) through the spool as the spool thread does:
//! append them, sync once (group commit), acknowledge them, sync once.
//! `spool/log/*` is mqlink's segment log, `spool/log-nosync/*` the same
//! without the syncs (so the difference is what `fdatasync` costs per
//! message), `spool/redb/*` (with `--features redb`) one write
//! transaction per step, committed with redb's default (immediate)
//! durability. The files live under the target directory, on the build
//! machine's disk, not tmpfs.
//!
//! Run: `cargo bench -p mqlink --bench spool --features redb`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code: a failure should panic

use std::path::PathBuf;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mqlink::spool::Spool;
use mqlink_proto::{Envelope, Message, Properties, Qos};
use mqlink_topology::{NodeName, RegionName, TopicName};

const BATCHES: [u64; 3] = [1, 64, 512];

fn env(seq: u64) -> Envelope {
    Envelope {
        origin: RegionName::new("eu-west").unwrap(),
        origin_node: NodeName::new("eu-west-a").unwrap(),
        epoch: 1,
        seq,
        hops: 1,
        visited: [RegionName::new("eu-west").unwrap()].into_iter().collect(),
        transit_ms: 0,
        dests: [RegionName::new("us-east").unwrap()].into_iter().collect(),
        message: Message {
            topic: TopicName::new(&format!("bench/{}", seq % 100)).unwrap(),
            payload: Bytes::from(vec![7u8; 100]),
            qos: Qos::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        },
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("spool-bench-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn log(c: &mut Criterion, sync: bool) {
    let name = if sync { "log" } else { "log-nosync" };
    let mut g = c.benchmark_group(format!("spool/{name}"));
    for batch in BATCHES {
        let dir = scratch(&format!("{name}-{batch}"));
        let (mut spool, _) = Spool::open(&dir, 1 << 30).unwrap();
        let mut seq = 0;
        g.throughput(Throughput::Elements(batch));
        g.bench_function(format!("{batch}"), |b| {
            b.iter(|| {
                let keys: Vec<u64> = (0..batch)
                    .map(|_| {
                        seq += 1;
                        spool.put(env(seq)).unwrap().unwrap()
                    })
                    .collect();
                if sync {
                    spool.sync().unwrap();
                }
                for k in keys {
                    spool.ack(k).unwrap();
                }
                if sync {
                    spool.sync().unwrap();
                }
            });
        });
        drop(spool);
        let _ = std::fs::remove_dir_all(&dir);
    }
    g.finish();
}

#[cfg(feature = "redb")]
fn redb(c: &mut Criterion) {
    use redb::{Database, TableDefinition};
    const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");
    let mut g = c.benchmark_group("spool/redb");
    for batch in BATCHES {
        let dir = scratch(&format!("redb-{batch}"));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Database::create(dir.join("spool.redb")).unwrap();
        let mut seq = 0u64;
        g.throughput(Throughput::Elements(batch));
        g.bench_function(format!("{batch}"), |b| {
            b.iter(|| {
                let first = seq + 1;
                let tx = db.begin_write().unwrap();
                {
                    let mut t = tx.open_table(TABLE).unwrap();
                    for _ in 0..batch {
                        seq += 1;
                        let bytes = mqlink_proto::encode_envelope(env(seq));
                        t.insert(seq, bytes.as_slice()).unwrap();
                    }
                }
                tx.commit().unwrap();
                let tx = db.begin_write().unwrap();
                {
                    let mut t = tx.open_table(TABLE).unwrap();
                    for k in first..=seq {
                        t.remove(k).unwrap();
                    }
                }
                tx.commit().unwrap();
            });
        });
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    log(c, true);
    log(c, false);
    #[cfg(feature = "redb")]
    redb(c);
}

criterion_group!(spool, benches);
criterion_main!(spool);
