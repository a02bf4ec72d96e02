//! Mutual TLS 1.3 for the QUIC links (rustls with the ring provider).
//!
//! Identity: every agent holds a certificate signed by the deployment's CA
//! whose subject alternative name (DNS) is its region. A dialling agent
//! uses the peer's region as the TLS server name, so rustls checks the
//! server's SAN; an accepting agent requires a client certificate chained
//! to the same CA ([`rustls::server::WebPkiClientVerifier`]) and then reads
//! the region from the certificate's SAN ([`peer_regions`]). A certificate
//! from another CA fails the handshake; one for a region that is not a
//! configured neighbour is refused by the caller.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mqlink_config::TlsConfig;
use mqlink_topology::RegionName;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol id of the mqlink link protocol, version 1.
pub const ALPN: &[u8] = b"mqlink/1";

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Our own certificate does not name our region.
    #[error(
        "certificate {path} names {found:?} in its subject alternative names, not region `{region}`"
    )]
    WrongRegion {
        /// The certificate file.
        path: String,
        /// Our region.
        region: RegionName,
        /// The DNS names found.
        found: Vec<String>,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the rustls configuration.
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

/// This agent's TLS identity and trust anchors.
#[derive(Debug)]
pub struct Identity {
    /// Our certificate chain.
    certs: Vec<CertificateDer<'static>>,
    /// Our private key.
    key: PrivateKeyDer<'static>,
    /// The deployment CA.
    roots: Arc<RootCertStore>,
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The ring provider, which the whole process uses (installed as the
/// process default at start-up too, so no other provider can creep in).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Identity {
    /// Load and check the files named by `tls`: our certificate must name `region`.
    pub fn load(tls: &TlsConfig, region: &RegionName) -> Result<Self, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
            .map_err(|e| file_err(&tls.cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_err(&tls.cert, e))?;
        let Some(leaf) = certs.first() else {
            return Err(file_err(&tls.cert, "no certificate in the file"));
        };
        let names = dns_names(leaf).map_err(|e| file_err(&tls.cert, e))?;
        if !names.iter().any(|n| n == region.as_str()) {
            return Err(TlsError::WrongRegion {
                path: tls.cert.display().to_string(),
                region: region.clone(),
                found: names,
            });
        }
        let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| file_err(&tls.key, e))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&tls.ca).map_err(|e| file_err(&tls.ca, e))? {
            roots
                .add(ca.map_err(|e| file_err(&tls.ca, e))?)
                .map_err(|e| file_err(&tls.ca, e))?;
        }
        if roots.is_empty() {
            return Err(file_err(&tls.ca, "no CA certificate in the file"));
        }
        Ok(Self {
            certs,
            key,
            roots: Arc::new(roots),
        })
    }

    /// QUIC server side: requires a client certificate from our CA.
    pub fn server_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ServerConfig, TlsError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider()).build()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport);
        Ok(config)
    }

    /// QUIC client side: presents our certificate, trusts only our CA.
    pub fn client_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig, TlsError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport);
        Ok(config)
    }
}

/// Concurrent unidirectional streams a peer may open: the data shards
/// plus large payloads in flight. Each stream's reader buffers up to one
/// frame (`MAX_FRAME_LEN`), so this bounds what a peer can make us hold.
pub const MAX_UNI_STREAMS: u32 = 32;

/// A peer acknowledges after this many packets that need it, at the
/// latest (with [`ACK_DELAY`]): one ACK per packet pair, QUIC's default,
/// cost the sending agent a wake-up (and a `recvmsg`) per two packets at
/// moderate rates, where each packet carries a few messages.
pub const ACK_EVERY: u32 = 16;
/// ... or after this long (QUIC's ACK frequency extension, which quinn
/// negotiates with its peers; a peer without it acknowledges as before).
pub const ACK_DELAY: Duration = Duration::from_millis(5);

/// Transport settings for links: keep-alives often enough that a dead
/// link is noticed after `idle` (default about a second), and room for the
/// data streams.
pub fn transport(idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(idle / 4));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    t.max_concurrent_uni_streams(MAX_UNI_STREAMS.into());
    t.max_concurrent_bidi_streams(8u32.into());
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(ACK_EVERY.into())
        .max_ack_delay(Some(ACK_DELAY));
    t.ack_frequency_config(Some(acks));
    Arc::new(t)
}

/// The DNS subject alternative names of a DER certificate.
pub fn dns_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unparsable certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative names: {e}"))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(s) => Some((*s).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The regions the peer's (already verified) certificate names.
pub fn peer_regions(conn: &quinn::Connection) -> Result<Vec<RegionName>, String> {
    let identity = conn
        .peer_identity()
        .ok_or("the peer presented no certificate")?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "unexpected peer identity type".to_owned())?;
    let leaf = certs.first().ok_or("empty certificate chain")?;
    Ok(dns_names(leaf)?
        .iter()
        .filter_map(|n| RegionName::new(n).ok())
        .collect())
}
