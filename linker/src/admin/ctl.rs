//! `mqlink ctl`: the admin API's client. Each view is one call; the reply
//! is printed as tables a person reads at a glance, or as JSON.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::pb;
use super::pb::admin_client::AdminClient;
use crate::cli::CtlView;

/// Where the agent's admin API is and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`.
    pub addr: String,
    /// Mutual TLS (an admin API not on loopback).
    pub tls: Option<ClientTls>,
}

/// Our certificate and the CA for an admin API served over TLS.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// Certificate (PEM) from the deployment CA.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The deployment CA.
    pub ca: PathBuf,
    /// The region the agent's certificate names.
    pub name: String,
}

/// Why `ctl` could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The address does not parse.
    #[error("--admin {addr}: {reason}")]
    Address {
        /// What was given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Reading a certificate file.
    #[error("reading {file}: {source}")]
    File {
        /// Which.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// Nothing answered.
    #[error(
        "cannot reach the agent's admin API at {addr}: {reason}\n  \
         (is `mqlink run` running there, and is `listen.admin` this address? \
         An admin API not on loopback needs --config with a certificate from the deployment CA)"
    )]
    Unreachable {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The agent answered with an error.
    #[error("the agent answered: {0}")]
    Status(String),
}

impl From<tonic::Status> for CtlError {
    fn from(s: tonic::Status) -> Self {
        Self::Status(s.message().to_owned())
    }
}

/// Connect to the agent (fails fast when nothing listens).
pub async fn connect(target: &Target) -> Result<AdminClient<Channel>, CtlError> {
    let scheme = if target.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let addr_err = |reason: String| CtlError::Address {
        addr: target.addr.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", target.addr))
        .map_err(|e| addr_err(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10));
    if let Some(tls) = &target.tls {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| CtlError::File {
                file: p.display().to_string(),
                source,
            })
        };
        let cfg = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
            .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?))
            .domain_name(tls.name.clone());
        endpoint = endpoint
            .tls_config(cfg)
            .map_err(|e| addr_err(e.to_string()))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| CtlError::Unreachable {
            addr: target.addr.clone(),
            reason: error_chain(&e),
        })?;
    Ok(AdminClient::new(channel))
}

/// An error with its sources, one after the other.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let _ = write!(s, ": {c}");
        cur = c.source();
    }
    s
}

/// One view's reply.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// `peers`.
    Peers(pb::PeersReply),
    /// `topology`.
    Topology(pb::TopologyReply),
    /// `routes`.
    Routes(pb::RoutesReply),
    /// `interest`.
    Interest(pb::InterestReply),
    /// `spool`.
    Spool(pb::SpoolReply),
    /// `trace`.
    Trace(pb::TraceReply),
    /// `reload`.
    Reload(pb::ReloadReply),
}

/// Ask for `view`.
pub async fn fetch(client: &mut AdminClient<Channel>, view: &CtlView) -> Result<Reply, CtlError> {
    // A connection that fails below gRPC (refused, reset, an HTTP/2
    // handshake with a TLS-only server) is "unreachable", not an answer.
    let unreachable = |s: tonic::Status| {
        let transport = s.message().starts_with("h2 protocol error")
            || s.message().starts_with("transport error");
        if s.code() == tonic::Code::Unavailable || transport {
            CtlError::Unreachable {
                addr: "the agent".into(),
                reason: s.message().to_owned(),
            }
        } else {
            s.into()
        }
    };
    Ok(match view {
        CtlView::Peers => Reply::Peers(
            client
                .peers(pb::PeersRequest {})
                .await
                .map_err(unreachable)?
                .into_inner(),
        ),
        CtlView::Topology => Reply::Topology(
            client
                .topology(pb::TopologyRequest {})
                .await
                .map_err(unreachable)?
                .into_inner(),
        ),
        CtlView::Routes { origin } => Reply::Routes(
            client
                .routes(pb::RoutesRequest {
                    origin: origin.clone().unwrap_or_default(),
                })
                .await
                .map_err(unreachable)?
                .into_inner(),
        ),
        CtlView::Interest { region } => Reply::Interest(
            client
                .interest(pb::InterestRequest {
                    region: region.clone().unwrap_or_default(),
                })
                .await
                .map_err(unreachable)?
                .into_inner(),
        ),
        CtlView::Spool => Reply::Spool(
            client
                .spool(pb::SpoolRequest {})
                .await
                .map_err(unreachable)?
                .into_inner(),
        ),
        CtlView::Reload => Reply::Reload(
            client
                .reload(pb::ReloadRequest {})
                .await
                .map_err(unreachable)?
                .into_inner(),
        ),
        CtlView::Trace { topic, origin } => Reply::Trace(
            client
                .trace(pb::TraceRequest {
                    topic: topic.clone(),
                    origin: origin.clone().unwrap_or_default(),
                })
                .await
                .map_err(unreachable)?
                .into_inner(),
        ),
    })
}

/// Columns padded to their widest cell, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths.get(i).copied().unwrap_or(0));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

/// `1.2 MB`, `340 B`.
fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GB", n as f64 / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} kB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// `3m12s` ago, from milliseconds.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn since(unix_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if unix_ms == 0 {
        "-".to_owned()
    } else {
        age(now.saturating_sub(unix_ms))
    }
}

/// The reply as text for a person.
pub fn render(reply: &Reply) -> String {
    match reply {
        Reply::Peers(r) => peers(r),
        Reply::Topology(r) => topology(r),
        Reply::Routes(r) => routes(r),
        Reply::Interest(r) => interest(r),
        Reply::Spool(r) => spool(r),
        Reply::Trace(r) => trace(r),
        Reply::Reload(r) => format!("reloaded: {}\n", r.summary),
    }
}

fn peers(r: &pb::PeersReply) -> String {
    let rows: Vec<Vec<String>> = r
        .peers
        .iter()
        .map(|p| {
            vec![
                p.region.clone(),
                or_dash(&p.node),
                if p.up { "up" } else { "down" }.to_owned(),
                or_dash(&p.endpoint),
                since(p.connected_since_unix_ms),
                if p.up {
                    format!("{:.1}ms", p.rtt_us as f64 / 1000.0)
                } else {
                    "-".to_owned()
                },
                p.cost.to_string(),
                format!("{} / {}", p.messages_out, p.messages_in),
                format!("{} / {}", bytes(p.bytes_out), bytes(p.bytes_in)),
                if p.up {
                    "-".to_owned()
                } else {
                    or_dash(&p.last_error)
                },
            ]
        })
        .collect();
    let mut resolved = String::new();
    let mut seen = std::collections::BTreeSet::new();
    for p in &r.peers {
        for line in &p.resolved {
            if seen.insert(line) {
                let _ = writeln!(resolved, "resolved: {line}");
            }
        }
    }
    format!(
        "{} ({}): {} neighbour connection(s)\n{}{resolved}",
        r.region,
        r.node,
        r.peers.iter().filter(|p| p.up).count(),
        table(
            &[
                "REGION",
                "NODE",
                "STATE",
                "ENDPOINT",
                "UP FOR",
                "RTT",
                "COST",
                "MSGS OUT/IN",
                "BYTES OUT/IN",
                "LAST ERROR",
            ],
            &rows,
        )
    )
}

fn topology(r: &pb::TopologyReply) -> String {
    let mut rows = Vec::new();
    for s in &r.regions {
        if s.links.is_empty() {
            rows.push(vec![
                s.region.clone(),
                s.node.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                age(s.age_ms),
            ]);
        }
        for l in &s.links {
            let state = match (l.up, l.in_graph) {
                (true, true) => "up",
                (true, false) => "up (one side)",
                _ => "down",
            };
            rows.push(vec![
                s.region.clone(),
                s.node.clone(),
                l.to.clone(),
                l.cost.to_string(),
                state.to_owned(),
                age(s.age_ms),
            ]);
        }
    }
    let mut out = format!(
        "{} ({}): {} region(s) in the link-state database, hop limit {}\n",
        r.region,
        r.node,
        r.regions.len(),
        r.hop_limit
    );
    out.push_str(&table(
        &["REGION", "NODE", "LINK TO", "COST", "STATE", "LSA AGE"],
        &rows,
    ));
    if r.components.len() > 1 {
        out.push_str("PARTITIONED:\n");
        for c in &r.components {
            let _ = writeln!(out, "  {}", c.regions.join(", "));
        }
    }
    out
}

fn routes(r: &pb::RoutesReply) -> String {
    let mut out = format!("{} ({}): shortest-path trees\n", r.region, r.node);
    for o in &r.origins {
        let _ = writeln!(out, "\nfrom {}:", o.origin);
        let rows: Vec<Vec<String>> = o
            .entries
            .iter()
            .filter(|e| e.region != o.origin)
            .map(|e| {
                vec![
                    e.region.clone(),
                    e.via.clone(),
                    e.cost.to_string(),
                    e.path.join(" -> "),
                ]
            })
            .collect();
        out.push_str(&table(&["TO", "VIA", "COST", "PATH"], &rows));
        if !o.unreachable.is_empty() {
            let _ = writeln!(out, "unreachable: {}", o.unreachable.join(", "));
        }
    }
    out
}

fn interest(r: &pb::InterestReply) -> String {
    let mut out = format!("{} ({}): interest\n", r.region, r.node);
    if let Some(own) = &r.own {
        let budget = if own.budget == 0 {
            "exact (no budget)".to_owned()
        } else {
            format!("budget {}", own.budget)
        };
        let _ = writeln!(
            out,
            "own: {} local filter(s), {} advertised ({} widened by aggregation), {budget}; exports: {}",
            own.local,
            own.advertised,
            own.widened,
            if own.export.is_empty() {
                "none".to_owned()
            } else {
                own.export.join(" ")
            }
        );
    }
    let rows: Vec<Vec<String>> = r
        .tables
        .iter()
        .map(|t| {
            const SHOWN: usize = 8;
            let mut filters = t
                .filters
                .iter()
                .take(SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join(" ");
            if t.filters.len() > SHOWN {
                let _ = write!(
                    filters,
                    " ... (+{}; --json has all)",
                    t.filters.len() - SHOWN
                );
            }
            vec![
                t.region.clone(),
                t.node.clone(),
                format!("{}.{}", t.epoch, t.seq),
                t.digest.clone(),
                t.filters.len().to_string(),
                filters,
            ]
        })
        .collect();
    out.push_str(&table(
        &["REGION", "NODE", "VERSION", "DIGEST", "FILTERS", "WANTS"],
        &rows,
    ));
    out
}

fn spool(r: &pb::SpoolReply) -> String {
    let mut out = format!(
        "{} ({}): spool {} message(s), {} of {}, oldest {}; custody {} message(s) ({} waiting for a path), {}\n",
        r.region,
        r.node,
        r.messages,
        bytes(r.bytes),
        bytes(r.max_bytes),
        if r.messages == 0 {
            "-".to_owned()
        } else {
            age(r.oldest_ms)
        },
        r.custody_messages,
        r.custody_parked,
        bytes(r.custody_bytes),
    );
    if !r.regions.is_empty() {
        let rows: Vec<Vec<String>> = r
            .regions
            .iter()
            .map(|w| {
                vec![
                    w.region.clone(),
                    w.messages.to_string(),
                    bytes(w.bytes),
                    age(w.oldest_ms),
                ]
            })
            .collect();
        out.push_str(&table(
            &["FOR REGION", "MESSAGES", "BYTES", "OLDEST"],
            &rows,
        ));
    }
    out
}

fn trace(r: &pb::TraceReply) -> String {
    let reached: Vec<&pb::TraceHop> = r.regions.iter().filter(|h| h.reached).collect();
    let mut out = format!(
        "{} from {} (as {} sees it): reaches {} region(s)\n",
        r.topic,
        r.origin,
        r.region,
        reached.len()
    );
    let filters = |h: &pb::TraceHop| {
        h.matches
            .iter()
            .map(|m| format!("{} ({})", m.filter, m.node))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !reached.is_empty() {
        let rows: Vec<Vec<String>> = reached
            .iter()
            .map(|h| {
                vec![
                    h.region.clone(),
                    h.path.join(" -> "),
                    h.cost.to_string(),
                    filters(h),
                ]
            })
            .collect();
        out.push_str(&table(
            &["REACHES", "PATH", "COST", "MATCHED FILTER"],
            &rows,
        ));
    }
    let missed: Vec<Vec<String>> = r
        .regions
        .iter()
        .filter(|h| !h.reached)
        .map(|h| vec![h.region.clone(), h.reason.clone(), h.detail.clone()])
        .collect();
    if !missed.is_empty() {
        out.push_str(&table(&["NOT REACHED", "REASON", "WHY"], &missed));
    }
    out
}
