//! The heartbeat loop: tells the control plane every 30 s (and once at start) that this host is
//! alive, and keeps the credentials fresh.
//!
//! - 204: fine.
//! - 401/403: the host JWT is stale; refresh (`/v1/hosts/auth/refresh`), save the rotated
//!   credentials, hot-swap the listener's certificate. A refresh the control plane refuses
//!   (the refresh token is spent or revoked) ends the loop: the host must be registered again.
//! - 404: the host was deleted: remove the credentials, destroy every sandbox, end the loop (the
//!   agent then exits).
//! - No answer: keep trying. After [`LinkOptions::failures_before_pause`] in a row the
//!   sandboxes would be paused (upstream does; see [`HostHooks::pause_all`]).
//!
//! The certificate is also refreshed ahead of its expiry ([`LinkOptions::renew_before`]), so a
//! host whose JWT keeps working still never serves an expired certificate.

use super::client::{ControlPlaneClient, HeartbeatOutcome};
use super::credentials::{self, HostTls};
use crate::error::{AgentError, error_chain};
use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use wrenn_api_types::hosts::{HeartbeatRequest, HostCredentials};

/// What the loop needs from the rest of the agent.
#[async_trait]
pub trait HostHooks: Send + Sync {
    /// Sandboxes running now (sent with each heartbeat).
    fn running_sandboxes(&self) -> u32;
    /// The control plane has been unreachable for a while, or refused to refresh the
    /// credentials. Upstream pauses every sandbox here so nothing runs unaccounted.
    async fn pause_all(&self);
    /// The control plane deleted this host: destroy every sandbox.
    async fn host_deleted(&self);
}

/// Tuning; the defaults are upstream's.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    pub interval: Duration,
    /// Refresh when the certificate expires sooner than this.
    pub renew_before: Duration,
    /// Consecutive unanswered heartbeats before [`HostHooks::pause_all`].
    pub failures_before_pause: u32,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            renew_before: Duration::from_secs(2 * 24 * 3600),
            failures_before_pause: 3,
        }
    }
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEnd {
    /// The agent is stopping.
    Stopped,
    /// The control plane deleted the host; credentials removed, sandboxes destroyed.
    HostDeleted,
    /// The control plane refused the refresh token; the host needs `--register` again.
    RefreshRefused,
}

/// The heartbeat loop and the credentials it maintains.
pub struct Heartbeat {
    client: ControlPlaneClient,
    credentials_path: PathBuf,
    credentials: HostCredentials,
    cert_not_after: Option<SystemTime>,
    tls: Arc<HostTls>,
    hooks: Arc<dyn HostHooks>,
    options: LinkOptions,
    consecutive_failures: u32,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("cp", &self.client.base())
            .field("host_id", &self.credentials.host_id)
            .finish_non_exhaustive()
    }
}

impl Heartbeat {
    pub fn new(
        client: ControlPlaneClient,
        credentials_path: PathBuf,
        credentials: HostCredentials,
        tls: Arc<HostTls>,
        hooks: Arc<dyn HostHooks>,
        options: LinkOptions,
    ) -> Self {
        let cert_not_after = not_after(&credentials);
        Self {
            client,
            credentials_path,
            credentials,
            cert_not_after,
            tls,
            hooks,
            options,
            consecutive_failures: 0,
        }
    }

    /// Heartbeats until `stop` is cancelled or the link ends for good.
    ///
    /// `stop` is honoured between heartbeats, never during one: a refresh cut off after the
    /// control plane rotated the refresh token but before it was saved would lock the host out.
    /// A heartbeat is bounded by the client's timeouts (at most 40 s with a refresh).
    pub async fn run(mut self, stop: CancellationToken) -> LinkEnd {
        loop {
            if stop.is_cancelled() {
                return LinkEnd::Stopped;
            }
            if let Some(end) = self.tick().await {
                return end;
            }
            tokio::select! {
                () = tokio::time::sleep(self.options.interval) => {}
                () = stop.cancelled() => return LinkEnd::Stopped,
            }
        }
    }

    /// One heartbeat (and a refresh when due); `Some` when the loop must end.
    async fn tick(&mut self) -> Option<LinkEnd> {
        if self.certificate_due() {
            tracing::info!(not_after = ?self.cert_not_after, "host certificate expires soon; refreshing");
            if let Some(end) = self.refresh().await {
                return Some(end);
            }
        }
        let body = HeartbeatRequest {
            running_sandboxes: self.hooks.running_sandboxes(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let outcome = self
            .client
            .heartbeat(&self.credentials.host_id, &self.credentials.token, &body)
            .await;
        match outcome {
            HeartbeatOutcome::Accepted => {
                if self.consecutive_failures > 0 {
                    tracing::info!(
                        after = self.consecutive_failures,
                        "control plane reachable again"
                    );
                }
                self.consecutive_failures = 0;
                None
            }
            HeartbeatOutcome::Unauthorized => {
                tracing::info!("host token refused; refreshing the credentials");
                self.refresh().await
            }
            HeartbeatOutcome::HostDeleted => {
                self.host_deleted().await;
                Some(LinkEnd::HostDeleted)
            }
            HeartbeatOutcome::Unreachable(detail) => {
                self.failed(&detail).await;
                None
            }
            HeartbeatOutcome::Rejected { status, message } => {
                tracing::warn!(status, %message, "heartbeat rejected");
                if status >= 500 {
                    self.failed(&format!("HTTP {status}: {message}")).await;
                }
                None
            }
        }
    }

    fn certificate_due(&self) -> bool {
        self.cert_not_after.is_some_and(|at| {
            at.duration_since(SystemTime::now())
                .map_or(true, |left| left < self.options.renew_before)
        })
    }

    /// Trades the refresh token for new credentials, saves them, and switches the listener to
    /// the new certificate. `Some` when the control plane refused: the loop must end.
    async fn refresh(&mut self) -> Option<LinkEnd> {
        let fresh = match self.client.refresh(&self.credentials.refresh_token).await {
            Ok(fresh) => fresh,
            Err(AgentError::ControlPlane {
                status: Some(status @ (401 | 403 | 404)),
                message,
            }) => {
                tracing::error!(
                    status,
                    %message,
                    "the control plane refused to refresh this host's credentials; heartbeats \
                     stop until the agent is started again with --register <new token>"
                );
                self.hooks.pause_all().await;
                return Some(LinkEnd::RefreshRefused);
            }
            Err(e) => {
                self.failed(&format!("refresh: {}", error_chain(&e))).await;
                return None;
            }
        };
        if fresh.host_id != self.credentials.host_id {
            tracing::warn!(old = %self.credentials.host_id, new = %fresh.host_id, "refresh answered for another host id");
        }
        // The old refresh token is spent now: keep the new one before anything else can fail.
        if let Err(e) = credentials::save(&self.credentials_path, &fresh) {
            tracing::error!(error = %error_chain(&e), "cannot save the refreshed credentials; keeping them in memory");
        }
        match self.tls.install(&fresh) {
            Ok(()) => tracing::info!("credentials refreshed; new certificate in use"),
            Err(e) => tracing::error!(
                error = %error_chain(&e),
                "the refreshed certificate is unusable; keeping the previous one"
            ),
        }
        self.cert_not_after = not_after(&fresh);
        self.credentials = fresh;
        None
    }

    async fn failed(&mut self, detail: &str) {
        self.consecutive_failures += 1;
        tracing::warn!(
            cp = %self.client.base(),
            failures = self.consecutive_failures,
            error = %detail,
            "heartbeat failed; retrying"
        );
        if self.consecutive_failures == self.options.failures_before_pause {
            tracing::warn!(
                failures = self.consecutive_failures,
                "control plane unreachable; pausing all sandboxes"
            );
            self.hooks.pause_all().await;
        }
    }

    async fn host_deleted(&self) {
        tracing::warn!(
            host_id = %self.credentials.host_id,
            "the control plane deleted this host: removing its credentials, destroying every \
             sandbox and shutting down"
        );
        if let Err(e) = credentials::remove(&self.credentials_path) {
            tracing::error!(error = %error_chain(&e), "cannot remove the credentials");
        }
        self.hooks.host_deleted().await;
    }

    pub fn credentials(&self) -> &HostCredentials {
        &self.credentials
    }
}

fn not_after(credentials: &HostCredentials) -> Option<SystemTime> {
    match credentials::cert_not_after(credentials) {
        Ok(at) => Some(at),
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "cannot read the host certificate's expiry");
            None
        }
    }
}
