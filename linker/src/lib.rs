//! The mqlink agent: the tokio runtime around the sans-IO protocol core
//! (`mqlink-proto`), the way `quinn` wraps `quinn-proto`. It owns the
//! sockets and the clock; every decision is made by the core.
//!
//! # Layout
//!
//! - [`cli`]: the clap command line (`mqlink <command> ...`).
//! - [`bench`]: `mqlink bench`: the load generator and `--compare`.
//! - [`check`]: `mqlink check`: validate region files or a whole deployment.
//! - [`broker_conf`]: `mqlink check --broker-conf`: what a Mosquitto
//!   configuration means for custody.
//! - [`certs`]: `mqlink certs init|issue`: a development PKI (rcgen).
//! - [`tls`]: mutual TLS 1.3 (rustls, ring provider), region identity from
//!   the certificate's SAN.
//! - [`link`]: QUIC links (quinn): accept, dial with backoff, control
//!   stream, sharded data streams, large payloads on their own streams.
//! - [`broker`]: the MQTT 5 session with the local broker: export
//!   subscriptions, imports with the `mqlink-origin` property, acks in
//!   order (our own client over [`mqtt`]).
//! - [`mqtt`]: the MQTT 5 packet codec (sans-IO).
//! - [`mosquitto`]: dynamic interest from Mosquitto 2.x's `$SYS` log topics
//!   (the fallback, and the source of session-expiry lines).
//! - [`plugin_feed`]: dynamic interest from the `mqlink_interest` broker
//!   plugin (`deploy/mosquitto/`): snapshot, then sequenced deltas.
//! - [`core`]: the task that owns the protocol core and routes its
//!   transmits and events.
//! - [`spool`]: the durable on-disk spool (segment log over a storage
//!   trait, group commit) and the durable dedupe marks.
//! - [`metrics`]: Prometheus metrics.
//! - [`brokers`]: local brokers for the demo and tests (embedded `mqtt5`, or a
//!   Mosquitto process).
//! - [`embedded_interest`]: the embedded broker's subscription table, told
//!   to the agent in the plugin's protocol (`interest.dynamic: plugin`).
//! - [`federation`]: a whole federation on this machine (brokers, agents, PKI).
//! - [`demo`]: `mqlink demo`, narrated.
//! - [`relay`]: a UDP relay that cuts a link between live agents (demo, tests).
//! - [`run`]: `mqlink run`: one agent wired together ([`run::start`]).

pub mod bench;
pub mod broker;
pub mod broker_conf;
pub mod brokers;
pub mod certs;
pub mod check;
pub mod cli;
pub mod core;
pub mod demo;
pub mod embedded_interest;
pub mod federation;
pub mod link;
pub mod metrics;
pub mod mosquitto;
pub mod mqtt;
pub mod plugin_feed;
pub mod relay;
pub mod run;
pub mod spool;
pub mod tls;
