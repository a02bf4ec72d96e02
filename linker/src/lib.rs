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
//! - [`dns`]: resolving peer endpoints (hickory-resolver), following TTLs.
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
//! - [`sched`]: the agent runs as `SCHED_BATCH` (no preemption on
//!   wake-up between the processes of a message's path).
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
//! - [`reload`]: what a reload (SIGHUP, `ctl reload`) may change, and its plan.
//! - [`run`]: `mqlink run`: one agent wired together ([`run::start`]).
//! - [`scratch`]: throw-away directories under the temp dir (tests), the
//!   stale ones of finished processes swept.
//! - [`timer`]: a one-shot timer with microsecond precision (`timerfd`),
//!   for the read linger and the bench's paced publishers.
//!
//! # The data path: what was measured and changed
//!
//! Measured with `mqlink bench --compare` (loopback, two Mosquitto 2.0.11
//! brokers, 100-byte payloads; README "Benchmarks") and profiled with
//! `perf` and `strace` on the agents:
//!
//! - **Tail latency was Nagle's**, not ours: Mosquitto holds small writes
//!   to a client until the previous segment is acknowledged, and Linux
//!   delays the acknowledgement on a connection that only receives, so
//!   exports waited 15-17 ms for a full 64 KB segment (p99 17.9 ms at
//!   38,000 msgs/s). The session acknowledges every read at once
//!   (`TCP_QUICKACK`, [`broker`]'s session) and the shipped broker
//!   settings turn Nagle off (`set_tcp_nodelay true`): p99 1.3-1.6 ms.
//! - **Acknowledgements amortised**: QoS 0 envelopes are acknowledged
//!   every 512 or within 5 ms (custody acknowledgements still at once;
//!   `AgentConfig::ack_delay`), and QUIC's ACK frequency extension asks
//!   the peer for one ACK per 16 packets or 5 ms ([`tls::ACK_EVERY`]): the
//!   sending agent received a quarter of the datagrams it did.
//! - **Memory bounded in messages**: small payloads are copied out of the
//!   read buffer ([`broker::message_of`]: as slices, a few queued
//!   survivors pinned whole 64 KB blocks, 157 MB under a flat-out QoS 0
//!   load, now 23 MB), and what the session hands the core is counted in
//!   messages ([`core::CoreQueue`]).
//! - **Durable marks in larger groups at moderate rates**: the spool
//!   thread syncs steady traffic at most every 5 ms ([`spool`]'s
//!   `SYNC_GAP`; load is gathered for 1 ms): at 3,800 QoS 1 msgs/s the
//!   destination agent went from 74-80 to 46-48 µs per message, the
//!   whole path from 176-188 to 141-143 µs. Only the release upstream
//!   waits; the delivery has happened.
//! - **No preemption on wake-up** ([`sched`]): `mqlink run` switches
//!   itself to `SCHED_BATCH` (unless a policy was set from outside, or
//!   `MQLINK_SCHED=normal`): a process it wakes (the peer agent, its
//!   broker) no longer preempts it halfway through its turn, nor it them.
//!   Agents A / B at 3,800 msgs/s 40.5 / 35.3 -> 32.1 / 30.5 µs per
//!   message, p50 0.141 -> 0.125 ms; QoS 1 flat out 0.79-0.81x ->
//!   0.97-1.04x the bridge's rate (five runs).
//! - **What is left is wake-ups**: with the brokers out of the way
//!   (`mqlink bench --pair`) two agents carry 1 M msgs/s at QoS 0 for
//!   0.5-0.6 µs of CPU per message each; beside real brokers, with
//!   messages arriving evenly (the bench paces publishers on a `timerfd`;
//!   it used to send a millisecond's worth at once, which batched for
//!   free), every process in the path sleeps between messages, and a
//!   wake-up is most of the bill (`bench --compare` counts them: each
//!   agent's voluntary context switches per message). At 38,000 msgs/s
//!   brokers and agents alike wake about once per four messages and pay
//!   22-30 µs a time (8.3 / 7.2 µs per message on the agents, 6.4-7.4 on
//!   the brokers); at 3,800 msgs/s each message is a wake-up, 37 µs on an
//!   agent against 13-17 on a broker. A third of it is the kernel's
//!   context switch on this virtual machine, the rest our code and its
//!   dependencies with cold caches (the CPU figures, from `/proc`'s
//!   ticks, agree with `schedstat`'s nanoseconds). A task that does not
//!   read does not help: the readable socket wakes the thread anyway.
//!   **`broker.batch_delay`** ([`broker::linger`]) asks the kernel
//!   instead (`SO_RCVLOWAT`): where traffic is dense, messages gather in
//!   the socket for up to the delay ([`timer`]: a `timerfd`, so under a
//!   millisecond if asked), and are read, routed and sent as one batch;
//!   sparse traffic and the first message after a quiet spell are read at
//!   once. With 1 ms: 40 / 36 -> 14 / 10.5 µs per message at 3,800
//!   msgs/s and 8.5 / 7.3 -> 2.9 / 1.9-2.0 µs at 38,000 (the whole path,
//!   brokers included, 15.1-15.5 µs against the bridge's 13.7), for p50
//!   0.15 -> 0.7-1.0 ms. Off by default: latency first.

pub mod admin;
pub mod bench;
pub mod broker;
pub mod broker_conf;
pub mod brokers;
pub mod certs;
pub mod check;
pub mod cli;
pub mod core;
pub mod demo;
pub mod dns;
pub mod embedded_interest;
pub mod federation;
pub mod link;
pub mod metrics;
pub mod mosquitto;
pub mod mqtt;
pub mod plugin_feed;
pub mod relay;
pub mod reload;
pub mod run;
pub mod sched;
pub mod scratch;
pub mod spool;
pub mod timer;
pub mod tls;
