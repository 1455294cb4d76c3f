//! The agent's TLS listener when it runs without a control plane: certificates from files
//! named by flags (`--tls-cert`, `--tls-key`, `--tls-client-ca`). With a control plane the
//! certificates come from the registration instead (see [`crate::controlplane::HostTls`]).
//! The TLS machinery itself is [`wrenn_http::tls`].

use crate::error::AgentResult;
use rustls::ServerConfig;
use std::path::PathBuf;
use std::sync::Arc;
use wrenn_http::tls::{self, Pem, ReloadableCert};

/// The PEM files the listener is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain, leaf first.
    pub cert: PathBuf,
    /// The server certificate's private key (PKCS#8, SEC1 or PKCS#1/RSA).
    pub key: PathBuf,
    /// CA that client certificates must chain to. When set, a client certificate is required.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn cert(&self) -> Pem {
        Pem::file(&self.cert).with_hint("pass --tls-cert with a PEM file")
    }

    fn key(&self) -> Pem {
        Pem::file(&self.key)
            .with_hint("pass --tls-key with the PEM key the certificate was issued for")
    }

    fn client_ca(&self) -> Option<Pem> {
        self.client_ca.as_ref().map(|path| {
            Pem::file(path).with_hint(
                "pass --tls-client-ca with the PEM of the CA that issues the control plane's \
                 client certificate",
            )
        })
    }
}

/// Builds the listener's configuration and returns the certificate holder too, so a later
/// [`reload`] can rotate the certificate without restarting.
pub fn server_config(files: &TlsFiles) -> AgentResult<(Arc<ServerConfig>, Arc<ReloadableCert>)> {
    let cert = Arc::new(ReloadableCert::load(&files.cert(), &files.key())?);
    let config = tls::server_config(cert.clone(), files.client_ca().as_ref())?;
    Ok((config, cert))
}

/// Re-reads the certificate and key files; on any error the current certificate stays in use.
pub fn reload(cert: &ReloadableCert, files: &TlsFiles) -> AgentResult<()> {
    Ok(cert.reload(&files.cert(), &files.key())?)
}
