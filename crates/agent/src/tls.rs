//! The agent's TLS listener configuration.
//!
//! Upstream runs the control plane ↔ agent link as mutual TLS: the control plane presents a
//! client certificate issued by the internal CA, the agent presents a host certificate from the
//! same CA. The agent therefore *requires* a client certificate whenever it is given a client CA,
//! and never silently downgrades to one-way TLS. Without a client CA (development setups) it
//! serves plain server-authenticated TLS.
//!
//! Only TLS 1.3 is offered (upstream's minimum) and only `http/1.1` is advertised: the agent's
//! server is HTTP/1.1 only so one slow stream cannot stall others sharing a connection.
//!
//! Host certificates are short-lived and rotated on every credential refresh, so the server
//! certificate lives behind [`ReloadableCert`]: new handshakes pick up the new certificate,
//! established connections keep the one they negotiated.

use crate::error::{AgentError, AgentResult};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

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

/// The crypto provider, chosen explicitly so the agent never depends on (or races to install)
/// a process-wide default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the listener's configuration with a certificate loaded once from `files`.
/// Use [`server_config_with_cert`] when the certificate must be rotated later.
pub fn server_config(files: &TlsFiles) -> AgentResult<Arc<ServerConfig>> {
    server_config_with_cert(files, Arc::new(ReloadableCert::load(files)?))
}

/// Builds the listener's configuration around a reloadable certificate: calling
/// [`ReloadableCert::reload`] later changes what new handshakes present. The client CA is read
/// from `files.client_ca` now and is not reloaded (the internal CA does not rotate with host
/// certificates).
pub fn server_config_with_cert(
    files: &TlsFiles,
    cert: Arc<ReloadableCert>,
) -> AgentResult<Arc<ServerConfig>> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| AgentError::Tls(format!("cannot enable TLS 1.3: {e}")))?;
    let builder = match &files.client_ca {
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for ca in read_certs(ca_path, "client CA certificate", "--tls-client-ca")? {
                roots.add(ca).map_err(|e| {
                    AgentError::Tls(format!(
                        "client CA {} holds a certificate rustls rejects: {e}; pass --tls-client-ca \
                         with the PEM of the CA that issues the control plane's client certificate",
                        ca_path.display()
                    ))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| {
                    AgentError::Tls(format!(
                        "cannot build the client certificate verifier from {}: {e}",
                        ca_path.display()
                    ))
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => {
            tracing::warn!(
                "TLS without a client CA: any client may connect (pass --tls-client-ca for mTLS)"
            );
            builder.with_no_client_auth()
        }
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads and checks a certificate chain and its key. The key must match the leaf certificate,
/// so a half-finished rotation (new certificate, old key) fails here instead of at handshake.
pub fn load_certified_key(files: &TlsFiles) -> AgentResult<Arc<CertifiedKey>> {
    let chain = read_certs(&files.cert, "certificate", "--tls-cert")?;
    let key = read_key(&files.key)?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        AgentError::Tls(format!(
            "the key {} does not fit the certificate {}: {e}; pass --tls-key with the key the \
             certificate was issued for",
            files.key.display(),
            files.cert.display()
        ))
    })?;
    Ok(Arc::new(certified))
}

/// A server certificate that can be swapped while the listener runs.
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// Loads the initial certificate.
    pub fn load(files: &TlsFiles) -> AgentResult<Self> {
        Ok(Self::from_certified_key(load_certified_key(files)?))
    }

    pub fn from_certified_key(key: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(key),
        }
    }

    /// Loads a new certificate and key; on any error the current certificate stays in use.
    pub fn reload(&self, files: &TlsFiles) -> AgentResult<()> {
        let next = load_certified_key(files)?;
        self.replace(next);
        tracing::info!(cert = %files.cert.display(), "TLS server certificate reloaded");
        Ok(())
    }

    /// Installs an already loaded certificate.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        // A poisoned lock only means a panic elsewhere while holding it; the Arc inside is
        // always whole, so keep serving.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableCert")
            .field("chain_len", &self.current().cert.len())
            .finish()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn read_pem(path: &Path, what: &str, flag: &str) -> AgentResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        AgentError::Tls(format!(
            "cannot read {what} {}: {e}; pass {flag} with a PEM file",
            path.display()
        ))
    })
}

fn read_certs(path: &Path, what: &str, flag: &str) -> AgentResult<Vec<CertificateDer<'static>>> {
    let pem = read_pem(path, what, flag)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            AgentError::Tls(format!(
                "cannot parse {what} {}: {e}; pass {flag} with a PEM file",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(AgentError::Tls(format!(
            "{} holds no `BEGIN CERTIFICATE` block; pass {flag} with a PEM file",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> AgentResult<PrivateKeyDer<'static>> {
    let pem = read_pem(path, "private key", "--tls-key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let detail = match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PKCS#8, SEC1 or RSA private key found".to_string()
            }
            e => e.to_string(),
        };
        AgentError::Tls(format!(
            "cannot parse private key {}: {detail}; pass --tls-key with a PEM file",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_name_the_path_and_the_flag() {
        let files = TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            client_ca: None,
        };
        let err = server_config(&files).expect_err("must fail").to_string();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
        assert!(err.contains("--tls-cert"), "{err}");
    }

    #[test]
    fn garbage_is_rejected_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "not a pem").expect("write");
        std::fs::write(&key, "not a pem").expect("write");
        let files = TlsFiles {
            cert: cert.clone(),
            key,
            client_ca: None,
        };
        let err = load_certified_key(&files)
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("no `BEGIN CERTIFICATE`"), "{err}");
    }
}
