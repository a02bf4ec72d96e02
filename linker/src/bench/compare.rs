//! `mqlink bench --compare`: the same workload through each setup, one
//! after the other on this machine, side by side with ratios; and
//! `--max-lossless`: each setup's highest rate without loss, by
//! bisection on fixed-rate runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::run::{CpuCost, RunReport, run};
use super::setups::{Setup, SetupKind, mosquitto_available};
use super::{BenchError, Workload, group};

/// What `--compare` does.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The setups, in order.
    pub setups: Vec<SetupKind>,
    /// The workload each one carries.
    pub workload: Workload,
    /// Also find each setup's highest lossless rate.
    pub max_lossless: bool,
    /// Bisection steps for `max_lossless`.
    pub steps: u32,
    /// How long each fixed-rate run of the bisection publishes.
    pub step_duration: Duration,
    /// The agents' `broker.batch_delay`.
    pub batch_delay: Duration,
    /// The `mqlink` binary the agents run.
    pub agent_bin: PathBuf,
    /// Scratch directory (configs, logs, spools).
    pub dir: PathBuf,
    /// Print a progress line on a terminal.
    pub progress: bool,
    /// Keep the scratch directory (configs, logs) after a good run too.
    pub keep: bool,
}

/// One setup's results.
#[derive(Debug, Clone, Serialize)]
pub struct SetupResult {
    /// The setup.
    pub setup: String,
    /// The workload's run.
    pub run: RunReport,
    /// Its highest rate without loss (msgs/s), when asked for.
    pub max_lossless: Option<f64>,
    /// The fixed-rate runs that found it: (rate, lost).
    pub probes: Vec<(f64, u64)>,
    /// The agents' own drops during the workload's run, by reason
    /// (mqlink only): where the lost messages went.
    pub agent_drops: Vec<(String, f64)>,
    /// Times a broker started dropping what it queued for its agent
    /// during the run (mqlink only; `mqlink_broker_dropping_total`, from
    /// Mosquitto's log notice, once per episode).
    pub broker_dropping: f64,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The workload, in words.
    pub workload: String,
    /// Setups that ran.
    pub results: Vec<SetupResult>,
    /// Setups skipped, and why.
    pub skipped: Vec<(String, String)>,
}

/// Run the comparison; `say` gets a line per event (setup started,
/// run done, probe done) for a person watching.
pub async fn compare(
    opts: &CompareOptions,
    mut say: impl FnMut(&str),
) -> Result<Comparison, BenchError> {
    let mut out = Comparison {
        workload: opts.workload.describe(),
        results: Vec::new(),
        skipped: Vec::new(),
    };
    let have_mosquitto = mosquitto_available();
    for kind in &opts.setups {
        if !have_mosquitto {
            let why = "`mosquitto` is not installed (apt-get install -y mosquitto)".to_owned();
            say(&format!("{}: skipped: {why}", kind.name()));
            out.skipped.push((kind.name().to_owned(), why));
            continue;
        }
        let dir = opts.dir.join(format!("{kind:?}").to_lowercase());
        let _ = std::fs::remove_dir_all(&dir);
        let setup = Setup::start(
            *kind,
            &dir,
            &opts.agent_bin,
            opts.workload.qos,
            opts.batch_delay,
        )
        .await?;
        let result = measure(&setup, opts, &mut say).await;
        setup.stop().await;
        match result {
            Ok(r) => {
                if !opts.keep {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                out.results.push(r);
            }
            Err(e) => {
                let logs: Vec<String> = Setup::logs(&dir)
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                return Err(BenchError::Setup(format!(
                    "{}: {e} (logs: {})",
                    kind.name(),
                    logs.join(", ")
                )));
            }
        }
    }
    Ok(out)
}

async fn measure(
    setup: &Setup,
    opts: &CompareOptions,
    say: &mut impl FnMut(&str),
) -> Result<SetupResult, BenchError> {
    let name = setup.kind.name();
    let before = super::setups::agent_counters(&setup.metrics).await;
    let report = run(
        name,
        &setup.at,
        &opts.workload,
        &setup.watched,
        opts.progress,
    )
    .await?;
    say(&report.line());
    let mut agent_drops = Vec::new();
    let mut broker_dropping = 0.0;
    if !setup.metrics.is_empty() {
        // The agents copy their counters to the recorder every second.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let after = super::setups::agent_counters(&setup.metrics).await;
        for (reason, n) in after.drops {
            let d = n - before.drops.get(&reason).copied().unwrap_or(0.0);
            if d > 0.0 {
                agent_drops.push((reason, d));
            }
        }
        let said: Vec<String> = agent_drops
            .iter()
            .map(|(r, n)| format!("{r} {}", group(*n)))
            .collect();
        broker_dropping = after.broker_dropping - before.broker_dropping;
        say(&format!(
            "  {name}: the agents dropped: {}{}",
            if said.is_empty() {
                "nothing".to_owned()
            } else {
                said.join(", ")
            },
            if broker_dropping > 0.0 {
                "; a broker dropped what it had queued for its agent \
                 (Mosquitto's notice, mqlink_broker_dropping_total): \
                 the publishers outran the path for longer than its queue covers"
            } else {
                ""
            }
        ));
    }
    let mut result = SetupResult {
        setup: name.to_owned(),
        max_lossless: None,
        probes: Vec::new(),
        agent_drops,
        broker_dropping,
        run: report,
    };
    if opts.max_lossless {
        // Up from what it carried flat out by a quarter at a time until a
        // rate is not carried (flat out, a setup may drop what it would
        // carry at a steady rate), then bisection; `steps` runs in all.
        let (mut lo, mut hi) = (0.0_f64, None::<f64>);
        let mut rate = result.run.rate.max(1000.0);
        for _ in 0..opts.steps {
            let (carried, r) = probe(name, setup, opts, rate).await?;
            say(&format!(
                "  {name}: at {} msgs/s offered: {} msgs/s delivered, lost {}",
                group(rate),
                group(r.rate),
                group(r.lost as f64)
            ));
            result.probes.push((rate, r.lost));
            if carried {
                lo = rate;
            } else {
                hi = Some(rate);
            }
            rate = match hi {
                None => rate * 1.25,
                Some(hi) => (lo + hi) / 2.0,
            };
        }
        result.max_lossless = Some(lo);
    }
    Ok(result)
}

/// One fixed-rate run at `rate` for `step_duration`: whether the setup
/// carried it (nothing lost, delivered at that rate: a setup that slows
/// the publisher down is not carrying the rate asked for).
async fn probe(
    name: &str,
    setup: &Setup,
    opts: &CompareOptions,
    rate: f64,
) -> Result<(bool, RunReport), BenchError> {
    let w = Workload {
        rate: Some(rate),
        messages: Some((rate * opts.step_duration.as_secs_f64()).ceil() as u64),
        duration: None,
        ..opts.workload.clone()
    };
    let r = run(name, &setup.at, &w, &setup.watched, opts.progress).await?;
    Ok((r.lost == 0 && r.rate >= 0.95 * rate, r))
}

/// The CPU column: the whole path's CPU per delivered message (brokers
/// and agents; the bench's own clients not counted), then each agent's,
/// and each agent's wake-ups per message (what most of its CPU at a
/// moderate rate pays for).
fn cpu_column(cpu: &[CpuCost]) -> String {
    if cpu.is_empty() {
        return "-".to_owned();
    }
    let path: f64 = cpu.iter().map(|c| c.us_per_msg).sum();
    let agents: Vec<&CpuCost> = cpu.iter().filter(|c| c.name.starts_with("agent")).collect();
    if agents.is_empty() {
        return format!("path {path:.1} µs");
    }
    let costs: Vec<String> = agents
        .iter()
        .map(|c| format!("{} {:.1}", c.name, c.us_per_msg))
        .collect();
    let wakeups: Vec<String> = agents
        .iter()
        .map(|c| format!("{:.2}", c.wakeups_per_msg))
        .collect();
    format!(
        "path {path:.1} µs ({} µs; wake-ups {})",
        costs.join(", "),
        wakeups.join(", ")
    )
}

/// `a / b`, or nothing when `b` is 0.
fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

impl Comparison {
    fn find(&self, kind: SetupKind) -> Option<&SetupResult> {
        self.results.iter().find(|r| r.setup == kind.name())
    }

    /// The side-by-side table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "workload: {}", self.workload);
        let lossless = self.results.iter().any(|r| r.max_lossless.is_some());
        let _ = writeln!(
            t,
            "{:<11} {:>10} {:>9} {:>9} {:>14} {:>5} {:>7} {:>8} {:>8}{} CPU per message",
            "setup",
            "msgs/s",
            "vs bridge",
            "vs broker",
            "lost",
            "dup",
            "reorder",
            "p50 ms",
            "p99 ms",
            if lossless { "  max lossless" } else { "" },
        );
        let bridge = self.find(SetupKind::Bridge);
        let broker = self.find(SetupKind::Broker);
        let fmt_ratio = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
        for r in &self.results {
            let cpu = cpu_column(&r.run.cpu);
            let _ = writeln!(
                t,
                "{:<11} {:>10} {:>9} {:>9} {:>14} {:>5} {:>7} {:>8.3} {:>8.3}{} {}",
                r.setup,
                group(r.run.rate),
                fmt_ratio(bridge.and_then(|b| ratio(r.run.rate, b.run.rate))),
                fmt_ratio(broker.and_then(|b| ratio(r.run.rate, b.run.rate))),
                format!(
                    "{} ({:.1}%)",
                    group(r.run.lost as f64),
                    r.run.loss() * 100.0
                ),
                r.run.duplicated,
                r.run.reordered,
                r.run.latency.p50_ms,
                r.run.latency.p99_ms,
                match (lossless, r.max_lossless) {
                    (false, _) => String::new(),
                    (true, Some(v)) => format!(
                        "  {:>8} {}",
                        group(v),
                        fmt_ratio(
                            bridge
                                .and_then(|b| b.max_lossless)
                                .and_then(|b| ratio(v, b))
                        )
                    ),
                    (true, None) => format!("  {:>12}", "-"),
                },
                cpu
            );
        }
        for (s, why) in &self.skipped {
            let _ = writeln!(t, "{s:<11} skipped: {why}");
        }
        t
    }

    /// Write the charts: `<stem>.svg` (throughput) and
    /// `<stem>-latency.svg`; returns their paths.
    pub fn write_charts(&self, svg: &Path) -> std::io::Result<Vec<PathBuf>> {
        let setups: Vec<String> = self.results.iter().map(|r| r.setup.clone()).collect();
        let per_setup =
            |f: &dyn Fn(&SetupResult) -> f64| -> Vec<f64> { self.results.iter().map(f).collect() };
        let mut rates = vec![("delivered msgs/s".to_owned(), per_setup(&|r| r.run.rate))];
        if self.results.iter().any(|r| r.max_lossless.is_some()) {
            rates.push((
                "max lossless msgs/s".to_owned(),
                per_setup(&|r| r.max_lossless.unwrap_or(0.0)),
            ));
        }
        let latency = vec![
            ("p50 ms".to_owned(), per_setup(&|r| r.run.latency.p50_ms)),
            ("p99 ms".to_owned(), per_setup(&|r| r.run.latency.p99_ms)),
        ];
        let title = |what: &str| format!("{what}: {}", self.workload);
        let lat_path = svg.with_file_name(format!(
            "{}-latency.svg",
            svg.file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("mqlink-bench")
        ));
        let charts = [
            (
                svg.to_path_buf(),
                mqlink_sim::charts::bars(&title("Throughput"), "msgs/s", &setups, &rates),
            ),
            (
                lat_path,
                mqlink_sim::charts::bars(&title("Latency"), "ms", &setups, &latency),
            ),
        ];
        let mut out = Vec::new();
        for (path, body) in charts {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, body)?;
            out.push(path);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(name: &str, us: f64, wakeups: f64) -> CpuCost {
        CpuCost {
            name: name.into(),
            us_per_msg: us,
            wakeups_per_msg: wakeups,
            rss_mb: 0.0,
            peak_rss_mb: 0.0,
        }
    }

    #[test]
    fn the_cpu_column_sums_the_path_and_names_the_agents() {
        assert_eq!(cpu_column(&[]), "-");
        assert_eq!(cpu_column(&[cost("broker", 4.6, 0.5)]), "path 4.6 µs");
        let mqlink = [
            cost("broker a", 7.0, 0.5),
            cost("broker b", 6.5, 0.5),
            cost("agent a", 8.0, 0.291),
            cost("agent b", 7.4, 0.28),
        ];
        assert_eq!(
            cpu_column(&mqlink),
            "path 28.9 µs (agent a 8.0, agent b 7.4 µs; wake-ups 0.29, 0.28)"
        );
    }
}
