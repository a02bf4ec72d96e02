//! The command line.

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand};

/// mqlink: federate regional MQTT brokers into one global namespace.
#[derive(Debug, Parser)]
#[command(name = "mqlink", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// A local multi-region federation, end to end, narrated: brokers,
    /// agents over QUIC + mutual TLS, subscribers and publishers.
    Demo {
        /// Number of regions (2 to 8).
        #[arg(long, default_value_t = 3)]
        regions: usize,
        /// How long to run (e.g. 20s, 2m); 0 runs until Ctrl-C.
        #[arg(long = "for", default_value = "20s", value_name = "DURATION")]
        duration: String,
        /// Which brokers to run: embedded needs no install; mosquitto uses the system's.
        #[arg(long, value_enum, default_value = "embedded")]
        broker: crate::federation::BrokerKind,
    },
    /// Simulate a WAN scenario with the production routing and protocol code
    /// under simulated time; print the report.
    Simulate {
        /// The scenario YAML.
        scenario: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Also write report.txt, report.json and SVG charts into this directory.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Run one agent beside its region's broker.
    Run {
        /// The region's config file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate region config files. One file is checked alone; several are
    /// one deployment and are cross-checked (links on both sides, partitions,
    /// single points of failure, export/import filters that never overlap).
    /// Exits 0 when there are no errors (warnings allowed), 1 otherwise.
    Check(CheckArgs),
    /// Load generator: MQTT 5 publishers and subscribers against real
    /// brokers, measuring delivered, lost, duplicated, reordered and
    /// latency; `--compare` runs one broker, a Mosquitto bridge and an
    /// mqlink link side by side on loopback.
    Bench(Box<BenchArgs>),
    /// Ask a running agent (its admin API): peers, topology, routes,
    /// interest, spool, or where a topic's messages go (`trace`).
    Ctl(CtlArgs),
    /// A development PKI: a CA, and certificates naming one region each.
    Certs {
        /// What to make.
        #[command(subcommand)]
        action: CertsAction,
    },
}

/// Arguments of `mqlink ctl`.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The agent's admin address (`listen.admin`; default: from
    /// `--config`, else 127.0.0.1:7444).
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: Option<String>,
    /// An agent config: its `listen.admin` (when `--admin` is not
    /// given), and its certificate, key and CA for an admin API that is
    /// not on loopback (mutual TLS).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The region whose agent answers on a TLS admin address (its
    /// certificate names it; default: the `--config` file's region).
    #[arg(long, value_name = "REGION")]
    pub tls_name: Option<String>,
    /// Print the reply as one JSON document instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Refresh the view every second until Ctrl-C.
    #[arg(long, global = true)]
    pub watch: bool,
    /// What to show.
    #[command(subcommand)]
    pub view: CtlView,
}

/// The views of `mqlink ctl`.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlView {
    /// Neighbours: connections, endpoints, RTT, traffic, last error.
    Peers,
    /// The link-state database: regions, links, costs, up/down, ages.
    Topology,
    /// Shortest-path trees: how each origin's messages travel.
    Routes {
        /// Only this origin region.
        #[arg(long = "from", value_name = "REGION")]
        origin: Option<String>,
    },
    /// What every region wants (its agents' tables), and our own summary.
    Interest {
        /// Only this region.
        #[arg(long, value_name = "REGION")]
        region: Option<String>,
    },
    /// What waits in the spool (per destination region) and in custody.
    Spool,
    /// Re-read the agent's config file, as SIGHUP does: links, costs,
    /// policies and static interest change in place; a bad file changes
    /// nothing.
    Reload,
    /// Where a message on TOPIC from a region goes, and why it does not
    /// reach the others.
    Trace {
        /// The topic.
        topic: String,
        /// The publishing region (default: the agent's own).
        #[arg(long = "from", value_name = "REGION")]
        origin: Option<String>,
    },
}

/// Arguments of `mqlink bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The publishers' broker (host:port).
    #[arg(long, default_value = "127.0.0.1:1883", value_name = "HOST:PORT")]
    pub publish: String,
    /// The subscribers' broker (host:port; default: the publishers').
    #[arg(long, value_name = "HOST:PORT")]
    pub subscribe: Option<String>,
    /// Publishing clients.
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// Subscribing clients (each wants every wanted topic).
    #[arg(long, default_value_t = 1)]
    pub subscribers: u32,
    /// QoS of publishes and subscriptions (0, 1 or 2).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload bytes (at least 24).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Topics `bench/0` .. `bench/<N-1>`, published round-robin.
    #[arg(long, default_value_t = 100)]
    pub topics: u32,
    /// Share of the topics the subscribers want (0 < share <= 1).
    #[arg(long, default_value_t = 1.0)]
    pub wanted: f64,
    /// Messages per second, all publishers together (default: as fast as
    /// the brokers take them).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Messages in all (default 100,000 unless --for is given).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Publish for this long (e.g. 10s) instead of a message count.
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: Option<String>,
    /// After publishing, how long without a new message ends the run.
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub settle: String,
    /// Start the setups on loopback and compare them: one broker, a
    /// Mosquitto bridge, an mqlink link (Mosquitto from the system).
    #[arg(long)]
    pub compare: bool,
    /// Which setups `--compare` runs.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "broker,bridge,mqlink"
    )]
    pub setups: Vec<crate::bench::setups::SetupKind>,
    /// Measure two agents' capacity with the brokers out of the way: their
    /// cores fed and drained in this process, a real QUIC link between
    /// them (`--messages`, default 1,000,000; `--qos` 0 or 1).
    #[arg(long, conflicts_with = "compare")]
    pub pair: bool,
    /// With `--compare`: also find each setup's highest rate without loss
    /// (bisection on fixed-rate runs).
    #[arg(long)]
    pub max_lossless: bool,
    /// With `--compare`: the agents' `broker.batch_delay` (reads from the
    /// broker linger up to this long to batch: less CPU, more latency).
    #[arg(long, default_value = "0ms", value_name = "DURATION")]
    pub batch_delay: String,
    /// Bisection steps of `--max-lossless`.
    #[arg(long, default_value_t = 6)]
    pub steps: u32,
    /// How long each fixed-rate run of `--max-lossless` publishes.
    #[arg(long, default_value = "3s", value_name = "DURATION")]
    pub step_for: String,
    /// With `--compare`: where the throughput chart goes (the latency
    /// chart goes next to it, `-latency.svg`).
    #[arg(long, default_value = "mqlink-bench.svg", value_name = "FILE")]
    pub svg: PathBuf,
    /// Print one JSON line per run (and the comparison) instead of text.
    #[arg(long)]
    pub json: bool,
    /// With `--compare`: keep the scratch directory (the setups' configs
    /// and logs) after a good run too; its path is printed.
    #[arg(long)]
    pub keep: bool,
}

/// `mqlink certs` actions.
#[derive(Debug, Subcommand)]
pub enum CertsAction {
    /// Make a CA: DIR/ca.pem and DIR/ca.key.
    Init {
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Make DIR/REGION.pem and DIR/REGION.key, signed by DIR/ca.*.
    Issue {
        /// The region the certificate names (its SAN).
        region: String,
        /// Directory holding the CA, and where the files are written.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Days of validity (from a day ago).
        #[arg(long, default_value_t = crate::certs::LEAF_DAYS)]
        days: i64,
    },
    /// Show a certificate file: the region(s) it names, its validity and
    /// days left, its SHA-256 fingerprint.
    Inspect {
        /// A PEM file (every certificate in it is shown).
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `mqlink check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Region YAML files; repeat `--config` or list several after one.
    #[arg(long = "config", short = 'c', required = true, num_args = 1.., action = ArgAction::Append, value_name = "FILE")]
    pub configs: Vec<PathBuf>,
    /// Print a JSON report instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also warn about referenced files (certificates, keys, password
    /// file) that do not exist on this machine.
    #[arg(long)]
    pub files: bool,
    /// Treat warnings as errors (exit 1 when there are any).
    #[arg(long)]
    pub deny_warnings: bool,
    /// Also check the local Mosquitto configuration (following
    /// `include_dir`) for what custody needs: persistence, queue and
    /// in-flight limits, session expiry.
    #[arg(long, value_name = "FILE")]
    pub broker_conf: Option<PathBuf>,
}
