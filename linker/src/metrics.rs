//! Prometheus metrics (text format on `listen.metrics`, served by
//! metrics-exporter-prometheus's HTTP listener).
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `mqlink_messages_published_total` | | messages taken from the local broker (export) |
//! | `mqlink_messages_out_total` | peer | envelopes sent to a neighbour |
//! | `mqlink_messages_in_total` | peer | envelopes received from a neighbour |
//! | `mqlink_bytes_out_total` | peer | wire bytes written on the link's streams |
//! | `mqlink_bytes_in_total` | peer | wire bytes read from the link's streams |
//! | `mqlink_drops_total` | reason | messages dropped, by reason (every drop is counted) |
//! | `mqlink_delivered_total` | | imports published to the local broker |
//! | `mqlink_dedupe_unknown_total` | | delivered although older than the dedupe window could tell |
//! | `mqlink_regions_forgotten_total` | | regions whose interest was dropped after `spool.max_age` with no live agent |
//! | `mqlink_custody_messages` | | QoS >= 1 messages held (not yet acknowledged upstream) |
//! | `mqlink_custody_parked_messages` | | of those, waiting for a path to some region |
//! | `mqlink_custody_bytes` | | payload bytes held |
//! | `mqlink_peers_up` | | neighbours with a completed hello |
//! | `mqlink_broker_connected` | | 1 while the session with the local broker is up |
//! | `mqlink_interest_filters` | region | filters each region wants (as advertised) |
//! | `mqlink_interest_local_filters` | | distinct filters subscribed on our broker |
//! | `mqlink_interest_advertised_filters` | | filters our summary carries (at most `interest.budget`, after aggregation) |
//! | `mqlink_interest_widened_filters` | | of those, filters wider than any local one (aggregation) |
//! | `mqlink_interest_budget` | | `interest.budget` (absent: exact) |
//! | `mqlink_interest_invalid_filters_total` | | filters the broker's interest plugin reported that are not valid topic filters (skipped) |
//! | `mqlink_route_recomputations_total` | | shortest-path trees computed |
//! | `mqlink_resyncs_total` | | summary snapshots requested after drift |
//! | `mqlink_peer_errors_total` | peer, reason (`malformed_frame`, `protocol_violation`) | links closed for bad input |
//! | `mqlink_spool_messages` | | messages in the on-disk spool |
//! | `mqlink_spool_bytes` | | live bytes in the spool |
//! | `mqlink_spool_region_messages` | region | spooled messages owed to each destination region |
//! | `mqlink_spool_region_bytes` | region | their bytes on disk |
//! | `mqlink_spool_oldest_seconds` | | age of the oldest spooled message |
//! | `mqlink_spool_corrupt_records_total` | | spool records skipped for a bad checksum |
//! | `mqlink_handshake_failures_total` | | refused TLS handshakes and identities |
//! | `mqlink_broker_subscribe_failures_total` | | export (un)subscriptions the local broker refused in its SUBACK / UNSUBACK |
//! | `mqlink_broker_dropping_total` | | times the local broker (Mosquitto, `interest.dynamic: mosquitto`) logged that it started dropping messages queued for this agent: they were lost before the agent saw them |
//! | `mqlink_certificate_expiry_days` | | whole days until the agent's certificate expires (a warning is logged under 30) |
//!
//! The protocol core keeps plain counters ([`mqlink_proto::Stats`]); a
//! sampler copies them into the recorder once a second, so the hot path
//! never touches the metrics registry. Byte counters are updated by the
//! stream tasks directly.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::core::Input;

/// The metrics listener could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("metrics listener on {addr}: {reason}")]
pub struct MetricsError {
    /// `listen.metrics`.
    pub addr: SocketAddr,
    /// What went wrong.
    pub reason: String,
}

/// Install the process-wide Prometheus recorder and its HTTP listener.
/// Call once per process, from inside the tokio runtime.
pub fn install(addr: SocketAddr) -> Result<(), MetricsError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| MetricsError {
            addr,
            reason: e.to_string(),
        })
}

/// Copy the core's counters into the recorder every second until the core stops.
pub async fn sample(core: mpsc::Sender<Input>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let (tx, rx) = oneshot::channel();
        if core.send(Input::Stats(tx)).await.is_err() {
            return;
        }
        let Ok(r) = rx.await else { return };
        for (peer, n) in &r.stats.sent {
            metrics::counter!("mqlink_messages_out_total", "peer" => peer.to_string()).absolute(*n);
        }
        for (peer, n) in &r.stats.received {
            metrics::counter!("mqlink_messages_in_total", "peer" => peer.to_string()).absolute(*n);
        }
        for (reason, n) in &r.stats.drops {
            metrics::counter!("mqlink_drops_total", "reason" => reason.label()).absolute(*n);
        }
        metrics::counter!("mqlink_messages_published_total").absolute(r.stats.published);
        metrics::counter!("mqlink_delivered_total").absolute(r.stats.delivered);
        metrics::counter!("mqlink_dedupe_unknown_total").absolute(r.stats.dedupe_unknown);
        metrics::counter!("mqlink_regions_forgotten_total").absolute(r.stats.regions_forgotten);
        metrics::gauge!("mqlink_custody_messages").set(r.stats.held as f64);
        metrics::gauge!("mqlink_custody_parked_messages").set(r.stats.parked as f64);
        metrics::gauge!("mqlink_custody_bytes").set(r.stats.held_bytes as f64);
        metrics::counter!("mqlink_resyncs_total").absolute(r.stats.resyncs);
        metrics::counter!("mqlink_route_recomputations_total").absolute(r.tree_builds);
        metrics::gauge!("mqlink_peers_up").set(r.peers_up.len() as f64);
        let (local, advertised, widened, budget) = r.own_interest;
        metrics::gauge!("mqlink_interest_local_filters").set(local as f64);
        metrics::gauge!("mqlink_interest_advertised_filters").set(advertised as f64);
        metrics::gauge!("mqlink_interest_widened_filters").set(widened as f64);
        if let Some(b) = budget {
            metrics::gauge!("mqlink_interest_budget").set(b as f64);
        }
        for (region, filters) in &r.interest {
            metrics::gauge!("mqlink_interest_filters", "region" => region.to_string())
                .set(filters.len() as f64);
        }
    }
}
