//! TLS configurations for Wrenn's internal link: the control plane calls every host agent over
//! mutual TLS, both sides holding certificates from the internal CA ([`crate::pki`]).
//!
//! - [`server_config`]: the agent's listener. With a client CA a client certificate is
//!   *required* (never a silent downgrade to one-way TLS); without one (development setups) it
//!   serves plain server-authenticated TLS.
//! - [`client_config`]: the control plane's side. It trusts only the given CA and presents its
//!   client certificate.
//!
//! Only TLS 1.3 is offered (upstream's minimum) and only `http/1.1` is advertised: the servers
//! are HTTP/1.1 only so one slow stream cannot stall others sharing a connection.
//!
//! Certificates are short-lived (hosts: 7 days, control plane: 24 h) and rotated while the
//! programs run, so both sides hold theirs in a [`ReloadableCert`]: new handshakes pick up the
//! new certificate, established connections keep the one they negotiated.
//!
//! PEM comes from files (operator flags) or from strings (credentials the control plane sent,
//! a CA read from the environment): see [`Pem`].

use crate::error::{Error, Result};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The only application protocol the internal link speaks.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// PEM text, from a file or in memory, with what to tell the operator when it is unusable.
#[derive(Clone)]
pub struct Pem {
    origin: Origin,
    hint: Option<String>,
}

#[derive(Clone)]
enum Origin {
    /// Read when used, so reloading picks up a rewritten file.
    File(PathBuf),
    Text {
        name: String,
        text: String,
    },
}

impl Pem {
    /// PEM in a file, read each time it is loaded.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            origin: Origin::File(path.into()),
            hint: None,
        }
    }

    /// PEM in memory. `name` says where it came from in error messages (e.g.
    /// `"cert_pem of host-credentials.json"`); the text itself is never printed.
    pub fn text(name: impl Into<String>, pem: impl Into<String>) -> Self {
        Self {
            origin: Origin::Text {
                name: name.into(),
                text: pem.into(),
            },
            hint: None,
        }
    }

    /// Appended to error messages about this PEM: how to fix it (e.g. `"pass --tls-key with a
    /// PEM file"`).
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Where the PEM comes from: the file's path or the given name.
    pub fn describe(&self) -> String {
        match &self.origin {
            Origin::File(path) => path.display().to_string(),
            Origin::Text { name, .. } => name.clone(),
        }
    }

    fn error(&self, message: String) -> Error {
        match &self.hint {
            Some(hint) => Error::Tls(format!("{message}; {hint}")),
            None => Error::Tls(message),
        }
    }

    fn bytes(&self, what: &str) -> Result<Cow<'_, [u8]>> {
        match &self.origin {
            Origin::File(path) => std::fs::read(path)
                .map(Cow::Owned)
                .map_err(|e| self.error(format!("cannot read {what} {}: {e}", path.display()))),
            Origin::Text { text, .. } => Ok(Cow::Borrowed(text.as_bytes())),
        }
    }

    /// The certificates in this PEM, in order (a chain is leaf first). At least one.
    pub fn certificates(&self, what: &str) -> Result<Vec<CertificateDer<'static>>> {
        let pem = self.bytes(what)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.error(format!("cannot parse {what} {}: {e}", self.describe())))?;
        if certs.is_empty() {
            return Err(self.error(format!(
                "{what} {} holds no `BEGIN CERTIFICATE` block",
                self.describe()
            )));
        }
        Ok(certs)
    }

    /// The private key in this PEM (PKCS#8, SEC1 or PKCS#1/RSA).
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>> {
        let pem = self.bytes("private key")?;
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            let detail = match e {
                rustls_pki_types::pem::Error::NoItemsFound => {
                    "no PKCS#8, SEC1 or RSA private key found".to_string()
                }
                e => e.to_string(),
            };
            self.error(format!(
                "cannot parse private key {}: {detail}",
                self.describe()
            ))
        })
    }
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the text: it may be a private key.
        f.debug_tuple("Pem").field(&self.describe()).finish()
    }
}

/// The crypto provider, chosen explicitly so no program depends on (or races to install) a
/// process-wide default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks a certificate chain and its key. The key must match the leaf certificate,
/// so a half-finished rotation (new certificate, old key) fails here instead of at handshake.
pub fn certified_key(cert: &Pem, key: &Pem) -> Result<Arc<CertifiedKey>> {
    let chain = cert.certificates("certificate")?;
    let private = key.private_key()?;
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        key.error(format!(
            "the key {} does not fit the certificate {}: {e}",
            key.describe(),
            cert.describe()
        ))
    })?;
    Ok(Arc::new(certified))
}

/// The roots a peer's certificate must chain to.
fn root_store(ca: &Pem, what: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in ca.certificates(what)? {
        roots.add(cert).map_err(|e| {
            ca.error(format!(
                "{what} {} holds a certificate rustls rejects: {e}",
                ca.describe()
            ))
        })?;
    }
    Ok(roots)
}

/// The server side: presents `cert` (reloadable) and, with `client_ca`, requires every client
/// to present a certificate that CA signed (mTLS). The client CA is read once: the internal CA
/// does not rotate with the leaf certificates.
pub fn server_config(
    cert: Arc<ReloadableCert>,
    client_ca: Option<&Pem>,
) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(format!("cannot enable TLS 1.3: {e}")))?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = root_store(ca, "client CA certificate")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| {
                    ca.error(format!(
                        "cannot build the client certificate verifier from {}: {e}",
                        ca.describe()
                    ))
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => {
            tracing::warn!("TLS without a client CA: any client may connect");
            builder.with_no_client_auth()
        }
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// The client side of the internal link: trusts only the CA in `trust_ca` (the peer's
/// certificate must chain to it and name the dialled host) and, when `client_cert` is given,
/// presents it whenever the server asks (mTLS). Replacing the certificate in `client_cert`
/// affects every later handshake of clients built from this configuration.
pub fn client_config(
    trust_ca: &Pem,
    client_cert: Option<Arc<ReloadableCert>>,
) -> Result<Arc<ClientConfig>> {
    let roots = root_store(trust_ca, "CA certificate")?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(format!("cannot enable TLS 1.3: {e}")))?
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some(cert) => builder.with_client_cert_resolver(cert),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// The connector of HTTPS clients on the internal link: TCP (connect timeout, keepalive 30 s,
/// no Nagle) then TLS with `config`, dialling `https` URLs only and offering `http/1.1` only
/// (whatever `config` says). Build a `hyper_util` legacy client on it; `config` usually comes
/// from [`client_config`].
pub fn https_connector(
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> HttpsConnector<HttpConnector> {
    let mut config = (*config).clone();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.set_keepalive(Some(Duration::from_secs(30)));
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let mut https = HttpsConnector::from((tcp, config));
    https.enforce_https();
    https
}

/// A certificate and key that can be swapped while connections are being made. Serves as the
/// server's certificate ([`ResolvesServerCert`]) and as a client certificate
/// ([`ResolvesClientCert`]).
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(key),
        }
    }

    /// Loads the initial certificate.
    pub fn load(cert: &Pem, key: &Pem) -> Result<Self> {
        Ok(Self::new(certified_key(cert, key)?))
    }

    /// Loads a new certificate and key; on any error the current certificate stays in use.
    pub fn reload(&self, cert: &Pem, key: &Pem) -> Result<()> {
        let next = certified_key(cert, key)?;
        self.replace(next);
        tracing::info!(cert = %cert.describe(), "TLS certificate reloaded");
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

impl ResolvesClientCert for ReloadableCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_name_the_path_and_the_hint() {
        let cert = Pem::file("/nonexistent/cert.pem").with_hint("pass --tls-cert");
        let key = Pem::file("/nonexistent/key.pem");
        let err = certified_key(&cert, &key)
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
        assert!(err.ends_with("; pass --tls-cert"), "{err}");
    }

    #[test]
    fn garbage_is_rejected_clearly() {
        let cert = Pem::text("cert_pem", "not a pem");
        let err = cert.certificates("certificate").expect_err("must fail");
        assert!(
            err.to_string()
                .contains("cert_pem holds no `BEGIN CERTIFICATE`"),
            "{err}"
        );
        let key = Pem::text("key_pem", "-----BEGIN PRIVATE KEY-----\nsecret\n");
        let debug = format!("{key:?}");
        assert!(!debug.contains("secret"), "{debug}");
    }
}
