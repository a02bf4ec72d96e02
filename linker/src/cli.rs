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
    /// A development PKI: a CA, and certificates naming one region each.
    Certs {
        /// What to make.
        #[command(subcommand)]
        action: CertsAction,
    },
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
