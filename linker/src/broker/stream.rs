//! The connection to the local broker: TCP (`mqtt://`), or TLS over TCP
//! (`mqtts://`, rustls with the ring provider as the links have).
//!
//! The broker's certificate is checked against `broker.ca` (default: the
//! system's bundle, `/etc/ssl/certs/ca-certificates.crt`) and the URL's
//! host name (or IP address); `broker.cert` + `broker.key` are presented
//! when the broker asks for a client certificate.
//!
//! Socket options the session tunes on the TCP socket under the TLS
//! (`TCP_QUICKACK`, `SO_RCVLOWAT`) go through a duplicate of its file
//! descriptor ([`Connected::sock`]): options belong to the socket, not
//! to the descriptor.

use std::io;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The system's CA bundle (Debian, Ubuntu, Alpine; Fedora links it too).
pub const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A connection to the broker.
#[derive(Debug)]
pub enum BrokerStream {
    /// `mqtt://`.
    Plain(TcpStream),
    /// `mqtts://`.
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connected stream and the socket under it.
#[derive(Debug)]
pub struct Connected {
    /// What MQTT is spoken over.
    pub stream: BrokerStream,
    /// The TCP socket (a duplicate descriptor), for socket options.
    pub sock: socket2::Socket,
}

/// Why TLS to the broker could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A certificate or key file.
    #[error("{file}: {reason}")]
    File {
        /// Which file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS to the broker: {0}")]
    Config(String),
    /// The URL's host is not a valid TLS server name.
    #[error("`{0}` is not a host name TLS can check")]
    Name(String),
}

/// What `mqtts://` needs: rustls's client config and the name to check.
#[derive(Clone)]
pub struct BrokerTls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for BrokerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerTls")
            .field("name", &self.name)
            .finish()
    }
}

impl BrokerTls {
    /// TLS to `host`, trusting `ca` (PEM; default: [`SYSTEM_CA`]), with a
    /// client certificate if both `cert` and `key` are given.
    pub fn new(
        host: &str,
        ca: Option<&Path>,
        client: Option<(&Path, &Path)>,
    ) -> Result<Self, TlsSetupError> {
        let ca = ca.unwrap_or(Path::new(SYSTEM_CA));
        let file_err = |file: &Path, e: &dyn std::fmt::Display| TlsSetupError::File {
            file: file.to_owned(),
            reason: e.to_string(),
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_err(ca, &e))? {
            let c = c.map_err(|e| file_err(ca, &e))?;
            // A bundle may hold certificates rustls cannot use; skip them.
            let _ = roots.add(c);
        }
        if roots.is_empty() {
            return Err(file_err(ca, &"no usable CA certificate in it"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .map_err(|e| TlsSetupError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| file_err(cert, &e))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| file_err(cert, &e))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, &e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsSetupError::Config(e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| TlsSetupError::Name(host.to_owned()))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

/// Connect to `host:port`, over TLS if `tls` is given.
pub async fn connect(host: &str, port: u16, tls: Option<&BrokerTls>) -> io::Result<Connected> {
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let sock = socket2::Socket::from(tcp.as_fd().try_clone_to_owned()?);
    let stream = match tls {
        None => BrokerStream::Plain(tcp),
        Some(t) => BrokerStream::Tls(Box::new(t.connector.connect(t.name.clone(), tcp).await?)),
    };
    Ok(Connected { stream, sock })
}

impl AsyncRead for BrokerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BrokerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
