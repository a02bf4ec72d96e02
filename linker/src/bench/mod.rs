//! `mqlink bench`: the load generator operators use to evaluate mqlink on
//! their own machines and brokers.
//!
//! MQTT 5 publishers and subscribers (counts, QoS, payload size, topic
//! count, the share of topics subscribed, a rate or as fast as the broker
//! takes them, a message count or a duration) measure what arrived:
//! delivered, lost, duplicated, reordered within a (publisher, topic)
//! stream, latency percentiles from a timestamp in each payload (an HDR
//! histogram; publishers and subscribers share this process's clock). A
//! progress line on a terminal; `--json` prints one JSON line per run.
//!
//! `--compare` starts the setups itself on loopback (one Mosquitto broker,
//! a Mosquitto bridge A → B, and mqlink: two agents between two Mosquitto
//! brokers; Mosquitto from the system, a setup skipped and said so when it
//! is missing), runs the same workload through each, and prints them side
//! by side with ratios, the agents' CPU time per message, and an SVG chart.
//! `--max-lossless` finds each setup's highest rate without loss by
//! bisection on fixed-rate runs. `--pair` measures what two agents carry
//! between them when the brokers are out of the way.
//!
//! # Layout
//!
//! - [`tally`]: one subscriber's accounting (sans IO).
//! - [`client`]: the publishers and subscribers, on the agent's own MQTT
//!   codec over TCP.
//! - [`run`]: one workload against given brokers → [`RunReport`].
//! - [`setups`]: the `--compare` setups (processes, stopped by PID).
//! - [`compare`]: `--compare` and `--max-lossless`: the table, the chart.
//! - [`pair`]: `--pair`: two agents' capacity with the brokers out of the
//!   way (their cores fed and drained in process, a real QUIC link).

pub mod client;
pub mod compare;
pub mod pair;
pub mod run;
pub mod setups;
pub mod tally;

use std::time::Duration;

pub use run::{RunReport, run};

/// What a bench run offers the brokers.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Publishing clients.
    pub publishers: u32,
    /// Subscribing clients (each subscribes to every wanted topic).
    pub subscribers: u32,
    /// QoS of publishes and subscriptions.
    pub qos: u8,
    /// Payload bytes (at least 24: the stamp).
    pub payload: usize,
    /// Topics `bench/0` .. `bench/<n-1>`, published round-robin.
    pub topics: u32,
    /// Share of the topics the subscribers want (0 < share <= 1): the
    /// first `ceil(topics * share)`.
    pub wanted: f64,
    /// Messages per second, all publishers together (`None`: as fast as
    /// the brokers take them).
    pub rate: Option<f64>,
    /// Messages in all (split among publishers).
    pub messages: Option<u64>,
    /// Or how long to publish.
    pub duration: Option<Duration>,
    /// After the publishers finish, how long without a new message ends
    /// the run (when not everything expected has arrived).
    pub settle: Duration,
}

impl Workload {
    /// The topic names.
    pub fn topic_names(&self) -> Vec<String> {
        (0..self.topics).map(|i| format!("bench/{i}")).collect()
    }

    /// How many topics the subscribers want.
    pub fn wanted_topics(&self) -> u32 {
        ((f64::from(self.topics) * self.wanted).ceil() as u32).clamp(1, self.topics.max(1))
    }

    /// One line saying what it is.
    pub fn describe(&self) -> String {
        let rate = self.rate.map_or_else(
            || "as fast as possible".to_owned(),
            |r| format!("{} msgs/s", group(r)),
        );
        let amount = match (self.messages, self.duration) {
            (Some(n), _) => format!("{} messages", group(n as f64)),
            (None, Some(d)) => format!("for {}", mqlink_config::units::format_duration(d)),
            (None, None) => "until stopped".to_owned(),
        };
        format!(
            "QoS {}, {} publisher(s) -> {} subscriber(s), {}-byte payloads, {} topics ({} wanted), {rate}, {amount}",
            self.qos,
            self.publishers,
            self.subscribers,
            self.payload,
            self.topics,
            self.wanted_topics(),
        )
    }
}

/// `1234567.8` as `1,234,568`.
pub fn group(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `BenchError::Setup` saying what failed while doing `what`.
pub(crate) fn failed<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> BenchError + '_ {
    move |e| BenchError::Setup(format!("{what}: {e}"))
}

/// Why a bench run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A client failed.
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// The setup never carried a warm-up message to every subscriber.
    #[error("{0}")]
    NotCarried(String),
    /// A setup could not be started.
    #[error("{0}")]
    Setup(String),
    /// The workload is not one the bench can run.
    #[error("{0}")]
    Workload(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_and_workloads_described() {
        assert_eq!(group(1_234_567.8), "1,234,568");
        assert_eq!(group(999.0), "999");
        assert_eq!(group(1000.0), "1,000");
        let w = Workload {
            publishers: 1,
            subscribers: 1,
            qos: 0,
            payload: 100,
            topics: 100,
            wanted: 0.1,
            rate: Some(38_000.0),
            messages: None,
            duration: Some(Duration::from_secs(10)),
            settle: Duration::from_secs(1),
        };
        assert_eq!(w.wanted_topics(), 10);
        assert_eq!(
            w.describe(),
            "QoS 0, 1 publisher(s) -> 1 subscriber(s), 100-byte payloads, 100 topics (10 wanted), 38,000 msgs/s, for 10s"
        );
    }
}
