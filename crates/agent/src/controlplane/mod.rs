//! The agent's side of the control-plane link.
//!
//! With `--cp-url` the agent belongs to a control plane:
//! 1. [`register::establish`]: registers with `--register <token>` (and `--address`, where the
//!    control plane dials it), or reuses `host-credentials.json` ([`credentials`]);
//! 2. serves its RPCs over TLS with the certificate from the credentials, requiring a client
//!    certificate signed by the control plane's CA ([`credentials::HostTls`]);
//! 3. heartbeats and refreshes the credentials ([`heartbeat`]), hot-swapping the certificate.

pub mod client;
pub mod credentials;
pub mod heartbeat;
pub mod register;

pub use client::{ControlPlaneClient, HeartbeatOutcome};
pub use credentials::HostTls;
pub use heartbeat::{Heartbeat, HostHooks, LinkEnd, LinkOptions};

use crate::error::AgentResult;
use crate::sandbox::SandboxManager;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wrenn_api_types::hosts::HostCredentials;

/// A registered host, ready to serve and heartbeat.
#[derive(Debug)]
pub struct ControlPlaneLink {
    pub client: ControlPlaneClient,
    pub credentials: HostCredentials,
    pub credentials_path: PathBuf,
    pub tls: Arc<HostTls>,
}

impl ControlPlaneLink {
    /// Registers (with `register_token`) or loads the saved credentials, and builds the mTLS
    /// listener configuration from them.
    pub async fn connect(
        cp_url: &str,
        data_dir: &Path,
        register_token: Option<&str>,
        address: &str,
    ) -> AgentResult<Self> {
        let client = ControlPlaneClient::new(cp_url)?;
        let credentials = register::establish(&client, data_dir, register_token, address).await?;
        let tls = Arc::new(HostTls::new(&credentials)?);
        tracing::info!(host_id = %credentials.host_id, cp = %client.base(), "host credentials loaded");
        Ok(Self {
            client,
            credentials,
            credentials_path: credentials::credentials_path(data_dir),
            tls,
        })
    }

    /// The heartbeat loop for this host; run it with [`Heartbeat::run`].
    pub fn heartbeat(&self, hooks: Arc<dyn HostHooks>, options: LinkOptions) -> Heartbeat {
        Heartbeat::new(
            self.client.clone(),
            self.credentials_path.clone(),
            self.credentials.clone(),
            self.tls.clone(),
            hooks,
            options,
        )
    }
}

#[async_trait::async_trait]
impl HostHooks for SandboxManager {
    fn running_sandboxes(&self) -> u32 {
        u32::try_from(self.list().len()).unwrap_or(u32::MAX)
    }

    async fn pause_all(&self) {
        SandboxManager::pause_all(self).await;
    }

    async fn host_deleted(&self) {
        self.destroy_all().await;
    }
}
