//! Resolving peer endpoints (hickory-resolver): the system's resolvers and
//! `/etc/hosts` by default, or the name servers of `dns.servers`.
//!
//! A name is resolved at every dial attempt (every address is tried, in
//! the order the answer gives), and again when its record's TTL runs out
//! while a connection to it is up: if the address the connection uses is
//! no longer among the answers, the connection is closed ("endpoint
//! moved") and the dial loop connects to the new one. A literal IP address
//! is used as it is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use mqlink_config::{DnsConfig, Endpoint, Host};

/// Why resolving failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The system's resolver configuration could not be read.
    #[error("reading the system's resolver configuration: {0}")]
    System(String),
    /// The lookup failed.
    #[error("resolving {name}: {reason}")]
    Lookup {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// What a name resolved to, and until when the answer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Every address, in the answer's order, with the endpoint's port.
    pub addrs: Vec<SocketAddr>,
    /// When the answer's TTL runs out (`None`: a literal address).
    pub valid_until: Option<Instant>,
}

/// The agent's resolver (cheap to clone).
#[derive(Clone)]
pub struct Dns {
    resolver: Arc<TokioResolver>,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dns")
    }
}

impl Dns {
    /// The resolver `cfg` asks for.
    pub fn new(cfg: &DnsConfig) -> Result<Self, DnsError> {
        let provider = TokioRuntimeProvider::default();
        let builder = if cfg.servers.is_empty() {
            TokioResolver::builder(provider).map_err(|e| DnsError::System(e.to_string()))?
        } else {
            let servers = cfg
                .servers
                .iter()
                .map(|s| {
                    let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                    for c in &mut ns.connections {
                        c.port = s.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        Ok(Self {
            resolver: Arc::new(
                builder
                    .build()
                    .map_err(|e| DnsError::System(e.to_string()))?,
            ),
        })
    }

    /// Resolve `e` afresh.
    pub async fn resolve(&self, e: &Endpoint) -> Result<Resolved, DnsError> {
        let name = match &e.host {
            Host::Ip(ip) => {
                return Ok(Resolved {
                    addrs: vec![SocketAddr::new(*ip, e.port)],
                    valid_until: None,
                });
            }
            Host::Dns(name) => name,
        };
        let lookup = self
            .resolver
            .lookup_ip(name.as_str())
            .await
            .map_err(|err| DnsError::Lookup {
                name: name.clone(),
                reason: err.to_string(),
            })?;
        Ok(Resolved {
            addrs: lookup
                .iter()
                .map(|ip| SocketAddr::new(ip, e.port))
                .collect(),
            valid_until: Some(lookup.valid_until()),
        })
    }
}
