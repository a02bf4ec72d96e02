//! The admin API: read-only gRPC views of a running agent
//! (`proto/admin.proto`, served by tonic on `listen.admin`), and its
//! client, `mqlink ctl`.
//!
//! # Layout
//!
//! - [`pb`]: the generated messages, server and client.
//! - `answer`: the core task's side: a [`Query`] carries its reply channel
//!   and is answered from the agent's state between two bursts of inputs.
//! - `service`: the tonic service, turning calls into queries.
//! - [`ctl`]: the client: tables for a person, JSON for scripts, `--watch`.
//!
//! On a loopback address (the default, `127.0.0.1:7444`) the API is plain
//! HTTP/2: whoever can reach it is on the machine. On any other address it
//! is served only over mutual TLS: the agent's certificate, and clients
//! must present a certificate from the deployment CA (any region's, or
//! one issued for an operator with `mqlink certs issue`); a client without
//! one is refused in the handshake.

pub mod answer;
pub mod ctl;
mod service;

use std::net::SocketAddr;

use mqlink_config::TlsConfig;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub use answer::{Conn, CoreView, Query, answer};
pub use service::{AdminService, ReloadRequest};

/// The generated gRPC code.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("mqlink.admin.v1");
}

/// The admin listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Binding `listen.admin`.
    #[error("admin listener on {addr}: {source}")]
    Bind {
        /// `listen.admin`.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Reading the certificate files for mutual TLS.
    #[error("admin listener on {addr}: reading {file}: {source}")]
    Tls {
        /// `listen.admin`.
        addr: SocketAddr,
        /// Which file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// tonic refused the TLS configuration.
    #[error("admin listener on {addr}: {reason}")]
    Server {
        /// `listen.admin`.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// Whether `addr` needs mutual TLS (anything but loopback).
pub fn needs_tls(addr: &SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

/// Mutual TLS for the admin server: our certificate, clients from our CA.
fn server_tls(addr: SocketAddr, tls: &TlsConfig) -> Result<ServerTlsConfig, AdminError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| AdminError::Tls {
            addr,
            file: p.display().to_string(),
            source,
        })
    };
    let identity = Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
    Ok(ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(Certificate::from_pem(read(&tls.ca)?)))
}

/// Bind `addr` and serve `svc` on it until the task is dropped; returns
/// the bound address (port 0 picks one) and the serving future.
pub async fn bind(
    addr: SocketAddr,
    tls: &TlsConfig,
    svc: AdminService,
) -> Result<
    (
        SocketAddr,
        impl std::future::Future<Output = ()> + Send + 'static,
    ),
    AdminError,
> {
    let mut server = Server::builder();
    if needs_tls(&addr) {
        server = server
            .tls_config(server_tls(addr, tls)?)
            .map_err(|e| AdminError::Server {
                addr,
                reason: e.to_string(),
            })?;
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AdminError::Bind { addr, source })?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let serve = async move {
        let svc = pb::admin_server::AdminServer::new(svc);
        if let Err(e) = server.serve_with_incoming(svc, incoming).await {
            tracing::warn!(error = %e, "admin API stopped");
        }
    };
    Ok((bound, serve))
}
