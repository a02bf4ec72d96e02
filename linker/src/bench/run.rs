//! One bench run: subscribers first, a warm-up until every subscriber
//! gets a message on every wanted topic (so routes and interest are in
//! place before the clock starts), then the publishers, then the settle:
//! until everything expected arrived, or nothing more arrives for
//! [`Workload::settle`].

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::{self, Clock, Progress, PubPlan};
use super::tally::{HEADER, Tally, expected};
use super::{BenchError, Workload, group};

/// How long the warm-up may take before the setup is declared broken.
const WARM_LIMIT: Duration = Duration::from_secs(30);

/// A process whose CPU time a run reports per message.
#[derive(Debug, Clone)]
pub struct Watched {
    /// What it is ("agent a").
    pub name: String,
    /// Its PID.
    pub pid: u32,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// CPU time a watched process spent per delivered message.
#[derive(Debug, Clone, Serialize)]
pub struct CpuCost {
    /// The process.
    pub name: String,
    /// Microseconds of CPU (user + system) per delivered message.
    pub us_per_msg: f64,
    /// Times per delivered message one of its threads went to sleep and
    /// was woken again (voluntary context switches): at a moderate rate
    /// most of the CPU per message is these, not the work itself.
    pub wakeups_per_msg: f64,
    /// Its resident memory at the end, MB.
    pub rss_mb: f64,
    /// Its peak resident memory, MB.
    pub peak_rss_mb: f64,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The setup's name.
    pub setup: String,
    /// QoS.
    pub qos: u8,
    /// The rate offered (msgs/s), if fixed.
    pub offered_rate: Option<f64>,
    /// Messages published.
    pub sent: u64,
    /// Deliveries expected (sent to wanted topics × subscribers).
    pub expected: u64,
    /// Distinct deliveries.
    pub delivered: u64,
    /// Expected and never delivered.
    pub lost: u64,
    /// Delivered more than once.
    pub duplicated: u64,
    /// Delivered after a later message of the same publisher and topic.
    pub reordered: u64,
    /// Seconds from the first publish to the last delivery.
    pub seconds: f64,
    /// Distinct deliveries per second.
    pub rate: f64,
    /// Latency of first deliveries.
    pub latency: Latency,
    /// CPU per message of the watched processes.
    pub cpu: Vec<CpuCost>,
}

impl RunReport {
    /// The loss as a share of what was expected.
    pub fn loss(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected as f64
        }
    }

    /// One line a person reads.
    pub fn line(&self) -> String {
        let cpu: Vec<String> = self
            .cpu
            .iter()
            .map(|c| {
                format!(
                    "{} {:.1} µs/msg ({:.2} wake-ups)",
                    c.name, c.us_per_msg, c.wakeups_per_msg
                )
            })
            .collect();
        format!(
            "{}: {} delivered in {:.2} s = {} msgs/s; lost {} ({:.2} %), duplicated {}, reordered {}; latency p50 {:.3} / p99 {:.3} / max {:.1} ms{}{}",
            self.setup,
            group(self.delivered as f64),
            self.seconds,
            group(self.rate),
            group(self.lost as f64),
            self.loss() * 100.0,
            self.duplicated,
            self.reordered,
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.max_ms,
            if cpu.is_empty() { "" } else { "; CPU " },
            cpu.join(", ")
        )
    }
}

/// Where the clients connect (`host:port`).
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The publishers' broker.
    pub publish: String,
    /// The subscribers' broker.
    pub subscribe: String,
}

/// CPU time (user + system) from a `/proc/.../stat` file (a process's or
/// a thread's), in ticks of `USER_HZ` (100).
pub fn stat_cpu(path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces), from 3 on.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// What a watched process had used at one moment, from `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// CPU time (user + system). Linux counts it in ticks of `USER_HZ`,
    /// 100 on every mainstream configuration.
    pub cpu: Duration,
    /// Voluntary context switches of all its threads: each is a sleep
    /// (on a socket, a timer, a lock) and the wake-up after it.
    pub wakeups: u64,
    /// Resident memory now, bytes.
    pub rss: u64,
    /// Peak resident memory, bytes.
    pub peak_rss: u64,
}

/// A process's [`Usage`]; `None` where `/proc` cannot tell (it is gone).
pub fn proc_usage(pid: u32) -> Option<Usage> {
    let cpu = stat_cpu(&format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| status_field(&status, key).unwrap_or(0);
    Some(Usage {
        cpu,
        wakeups: wakeups(pid),
        rss: kb("VmRSS:") * 1024,
        peak_rss: kb("VmHWM:") * 1024,
    })
}

/// The first number after `key` in a `/proc/.../status` text.
fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Voluntary context switches summed over the threads of `pid` (the
/// process's own `status` counts only its main thread).
fn wakeups(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| status_field(&s, "voluntary_ctxt_switches:"))
        .sum()
}

/// Run `w` against `at`, naming the result `setup`; the CPU time of
/// `watched` processes is reported per delivered message. `progress`
/// prints a live line on stderr when it is a terminal.
pub async fn run(
    setup: &str,
    at: &Endpoints,
    w: &Workload,
    watched: &[Watched],
    progress_line: bool,
) -> Result<RunReport, BenchError> {
    if w.payload < HEADER {
        return Err(BenchError::Workload(format!(
            "payloads must hold at least {HEADER} bytes (the bench's stamp)"
        )));
    }
    if w.publishers == 0 || w.subscribers == 0 || w.topics == 0 {
        return Err(BenchError::Workload(
            "publishers, subscribers and topics must be at least 1".into(),
        ));
    }
    if w.messages.is_none() && w.duration.is_none() {
        return Err(BenchError::Workload(
            "give a message count or a duration".into(),
        ));
    }
    let names: Arc<[String]> = w.topic_names().into();
    let wanted = w.wanted_topics();
    let filters: Vec<String> = names[..wanted as usize].to_vec();
    let clock = Clock(Instant::now());
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tag = std::process::id();

    // Subscribers, each subscribed before the warm-up starts.
    let mut subs = Vec::new();
    for i in 0..w.subscribers {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let addr = at.subscribe.clone();
        let id = format!("mqlink-bench-{tag}-sub-{i}");
        let task = tokio::spawn(client::subscribe(
            addr,
            id,
            (filters.clone(), w.qos),
            Tally::new(w.publishers, w.topics),
            (clock, progress.clone(), stop.clone()),
            ready_tx,
        ));
        if ready.await.is_err() {
            // The task ended before subscribing: its error says why.
            return Err(match task.await {
                Ok(Err(e)) => e.into(),
                _ => BenchError::Setup("a subscriber stopped".into()),
            });
        }
        subs.push(task);
    }

    // Warm-up: until every subscriber has had a message on every topic.
    let deadline = Instant::now() + WARM_LIMIT;
    while progress.warm.load(Ordering::Relaxed) < u64::from(w.subscribers) {
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            return Err(BenchError::NotCarried(format!(
                "{setup}: within {WARM_LIMIT:?} not every subscriber received a warm-up message \
                 on each of its {wanted} topics: is the path from the publishers' broker to the \
                 subscribers' up?"
            )));
        }
        client::warm(&at.publish, &format!("mqlink-bench-{tag}-warm"), &filters).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The measured run.
    let before: Vec<Option<Usage>> = watched.iter().map(|p| proc_usage(p.pid)).collect();
    let start_ns = clock.now_ns();
    let per = |total: u64, i: u32| {
        total / u64::from(w.publishers) + u64::from(u64::from(i) < total % u64::from(w.publishers))
    };
    let mut pubs = Vec::new();
    for i in 0..w.publishers {
        let plan = PubPlan {
            id: i,
            topics: names.clone(),
            qos: w.qos,
            payload: w.payload,
            rate: w.rate.map(|r| r / f64::from(w.publishers)),
            messages: w.messages.map_or(u64::MAX, |n| per(n, i)),
            duration: w.duration,
        };
        let addr = at.publish.clone();
        let id = format!("mqlink-bench-{tag}-pub-{i}");
        pubs.push(tokio::spawn({
            let (clock, progress) = (clock, progress.clone());
            async move { client::publish(&addr, &id, plan, clock, progress).await }
        }));
    }
    let ticker = (progress_line && std::io::stderr().is_terminal()).then(|| {
        let (progress, setup) = (progress.clone(), setup.to_owned());
        tokio::spawn(async move {
            let t0 = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let s = t0.elapsed().as_secs_f64();
                let sent = progress.sent.load(Ordering::Relaxed) as f64;
                let got = progress.received.load(Ordering::Relaxed) as f64;
                eprint!(
                    "\r  {setup}: {s:5.1} s  sent {} ({}/s)  received {}    ",
                    group(sent),
                    group(sent / s),
                    group(got)
                );
            }
        })
    });
    let mut sent = Vec::new();
    for p in pubs {
        match p.await {
            Ok(Ok(n)) => sent.push(n),
            Ok(Err(e)) => {
                stop.store(true, Ordering::Relaxed);
                return Err(e.into());
            }
            Err(e) => return Err(BenchError::Setup(format!("a publisher stopped: {e}"))),
        }
    }
    let expected_each: u64 = sent
        .iter()
        .enumerate()
        .map(|(i, n)| expected(i as u32, *n, w.topics, wanted))
        .sum();
    let expected_all = expected_each * u64::from(w.subscribers);

    // Settle: everything arrived, or nothing new for `settle`.
    let mut last = (progress.received.load(Ordering::Relaxed), Instant::now());
    loop {
        let got = progress.received.load(Ordering::Relaxed);
        if got >= expected_all {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() >= w.settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after: Vec<Option<Usage>> = watched.iter().map(|p| proc_usage(p.pid)).collect();
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = ticker {
        t.abort();
        eprint!("\r{:80}\r", "");
    }
    let mut total = Tally::new(w.publishers, w.topics);
    for s in subs {
        match s.await {
            Ok(Ok(t)) => total.merge(&t),
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(BenchError::Setup(format!("a subscriber stopped: {e}"))),
        }
    }
    let delivered = total.unique();
    let seconds = (total.last_ns.saturating_sub(start_ns) as f64 / 1e9).max(1e-9);
    let ms = |q: f64| total.latency.value_at_quantile(q) as f64 / 1000.0;
    let cpu = watched
        .iter()
        .zip(before.iter().zip(&after))
        .filter_map(|(p, (b, a))| {
            let (b, a) = ((*b)?, (*a)?);
            let per_msg = |x: f64| x / (delivered.max(1) as f64);
            Some(CpuCost {
                name: p.name.clone(),
                us_per_msg: per_msg(a.cpu.saturating_sub(b.cpu).as_secs_f64() * 1e6),
                wakeups_per_msg: per_msg(a.wakeups.saturating_sub(b.wakeups) as f64),
                rss_mb: a.rss as f64 / 1e6,
                peak_rss_mb: a.peak_rss as f64 / 1e6,
            })
        })
        .collect();
    Ok(RunReport {
        setup: setup.to_owned(),
        qos: w.qos,
        offered_rate: w.rate,
        sent: sent.iter().sum(),
        expected: expected_all,
        delivered,
        lost: expected_all.saturating_sub(delivered),
        duplicated: total.duplicates,
        reordered: total.reordered,
        seconds,
        rate: delivered as f64 / seconds,
        latency: Latency {
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: total.latency.max() as f64 / 1000.0,
        },
        cpu,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn this_thread_wakeups() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        status_field(&status, "voluntary_ctxt_switches:").unwrap()
    }

    #[test]
    fn wakeups_count_every_sleep_of_every_thread() {
        let before = this_thread_wakeups();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mine = this_thread_wakeups();
        assert!(mine >= before + 5, "{before} -> {mine}");
        // The process's sum covers this thread and any others.
        assert!(wakeups(std::process::id()) >= mine);
        let u = proc_usage(std::process::id()).unwrap();
        assert!(u.wakeups >= mine && u.rss > 0 && u.peak_rss >= u.rss);
    }
}
