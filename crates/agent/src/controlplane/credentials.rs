//! `host-credentials.json`: what the control plane gave this host at registration (and every
//! refresh), and the mTLS listener configuration built from it.
//!
//! The file holds a private key and a single-use refresh token, so it is written with mode 0600
//! and atomically (temporary file, fsync, rename, fsync of the directory): a crash mid-write
//! never leaves a half file, and a rotated refresh token is never lost once the write returned.

use crate::error::{AgentError, AgentResult};
use rustls::ServerConfig;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use wrenn_api_types::hosts::HostCredentials;
use wrenn_http::tls::{self, Pem, ReloadableCert};

pub const CREDENTIALS_FILE: &str = "host-credentials.json";

/// `<data_dir>/host-credentials.json`.
pub fn credentials_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CREDENTIALS_FILE)
}

/// The saved credentials, or `None` when there is no file (the host never registered, or the
/// control plane deleted it).
pub fn load(path: &Path) -> AgentResult<Option<HostCredentials>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AgentError::io(path, e)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        AgentError::Internal(format!(
            "{} is malformed ({e}); register again with --register <token>",
            path.display()
        ))
    })
}

/// Writes the credentials atomically with mode 0600.
pub fn save(path: &Path, credentials: &HostCredentials) -> AgentResult<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
    let tmp = dir.join(format!(".{CREDENTIALS_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(credentials)
        .map_err(|e| AgentError::Internal(format!("encoding the credentials: {e}")))?;
    // A leftover from a crash may have other permissions; start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| AgentError::io(&tmp, e))?;
    file.write_all(&json).map_err(|e| AgentError::io(&tmp, e))?;
    file.sync_all().map_err(|e| AgentError::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| AgentError::io(path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AgentError::io(dir, e))
}

/// Removes the credentials (the host was deleted); a missing file is fine.
pub fn remove(path: &Path) -> AgentResult<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AgentError::io(path, e)),
    }
}

fn cert_pem(c: &HostCredentials) -> Pem {
    Pem::text(
        format!("cert_pem of {CREDENTIALS_FILE}"),
        c.cert_pem.clone(),
    )
}

fn key_pem(c: &HostCredentials) -> Pem {
    Pem::text(format!("key_pem of {CREDENTIALS_FILE}"), c.key_pem.clone())
}

/// The agent's listener when it belongs to a control plane: TLS 1.3, the server certificate
/// from the credentials, and a client certificate signed by the credentials' CA required on
/// every connection (the control plane presents one).
#[derive(Debug)]
pub struct HostTls {
    cert: Arc<ReloadableCert>,
    config: Arc<ServerConfig>,
    ca_cert_pem: String,
}

impl HostTls {
    pub fn new(credentials: &HostCredentials) -> AgentResult<Self> {
        let cert = Arc::new(ReloadableCert::load(
            &cert_pem(credentials),
            &key_pem(credentials),
        )?);
        let ca = Pem::text(
            format!("ca_cert_pem of {CREDENTIALS_FILE}"),
            credentials.ca_cert_pem.clone(),
        );
        let config = tls::server_config(cert.clone(), Some(&ca))?;
        Ok(Self {
            cert,
            config,
            ca_cert_pem: credentials.ca_cert_pem.clone(),
        })
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// Switches new connections to the certificate in `credentials` (after a refresh). On any
    /// error the current certificate stays in use.
    pub fn install(&self, credentials: &HostCredentials) -> AgentResult<()> {
        self.cert
            .reload(&cert_pem(credentials), &key_pem(credentials))?;
        if credentials.ca_cert_pem.trim() != self.ca_cert_pem.trim() {
            // The client verifier is built once; a new CA needs a new listener.
            tracing::warn!(
                "the control plane's CA changed; restart the agent to accept client \
                 certificates from the new CA"
            );
        }
        Ok(())
    }
}

/// When the certificate in `credentials` expires.
pub fn cert_not_after(credentials: &HostCredentials) -> AgentResult<SystemTime> {
    Ok(wrenn_http::pki::cert_not_after(&credentials.cert_pem)?)
}
