//! A small Firecracker API client: HTTP/1.1 over the VM's Unix socket.
//!
//! One connection per request. Firecracker's API server is single-threaded and answers in order,
//! so a pooled connection would gain nothing measurable on a local socket, and a fresh connection
//! per call means a request that timed out can never leave a half-read answer behind for the next.
//!
//! Every request has a deadline covering connect, send and the whole answer: a wedged VMM must
//! not hang a sandbox operation (or the agent's shutdown) forever.

use super::api::{
    ActionType, ApiError, Balloon, BalloonUpdate, BootSource, Drive, FirecrackerVersion,
    InstanceActionInfo, InstanceInfo, Logger, MachineConfiguration, Metrics, MmdsConfig,
    NetworkInterface, SnapshotCreateParams, SnapshotLoadParams, Vm, VmState,
};
use crate::error::{AgentError, AgentResult};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixStream;

/// The default deadline of one API call (what upstream used).
pub const DEFAULT_API_TIMEOUT: Duration = Duration::from_secs(10);
/// Snapshot create and load move the whole guest memory through the page cache; a few GiB can
/// take far longer than a configuration call, so they get their own, longer deadline.
pub const SNAPSHOT_API_TIMEOUT: Duration = Duration::from_secs(300);
/// Error answers longer than this are cut in messages.
const MAX_ERROR_TEXT: usize = 1024;

/// A client for one Firecracker process's API socket.
#[derive(Debug, Clone)]
pub struct FirecrackerClient {
    socket: PathBuf,
    timeout: Duration,
}

impl FirecrackerClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_API_TIMEOUT,
        }
    }

    /// Sets the deadline of each call (snapshot calls use at least [`SNAPSHOT_API_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub async fn put_boot_source(&self, body: &BootSource) -> AgentResult<()> {
        self.send(Method::PUT, "/boot-source", body).await
    }

    pub async fn put_drive(&self, body: &Drive) -> AgentResult<()> {
        self.send(Method::PUT, &format!("/drives/{}", body.drive_id), body)
            .await
    }

    pub async fn put_network_interface(&self, body: &NetworkInterface) -> AgentResult<()> {
        self.send(
            Method::PUT,
            &format!("/network-interfaces/{}", body.iface_id),
            body,
        )
        .await
    }

    pub async fn put_machine_config(&self, body: &MachineConfiguration) -> AgentResult<()> {
        self.send(Method::PUT, "/machine-config", body).await
    }

    pub async fn put_balloon(&self, body: &Balloon) -> AgentResult<()> {
        self.send(Method::PUT, "/balloon", body).await
    }

    pub async fn patch_balloon(&self, body: &BalloonUpdate) -> AgentResult<()> {
        self.send(Method::PATCH, "/balloon", body).await
    }

    pub async fn put_mmds_config(&self, body: &MmdsConfig) -> AgentResult<()> {
        self.send(Method::PUT, "/mmds/config", body).await
    }

    /// Replaces the whole MMDS data store with `body`.
    pub async fn put_mmds<T: Serialize + ?Sized>(&self, body: &T) -> AgentResult<()> {
        self.send(Method::PUT, "/mmds", body).await
    }

    pub async fn put_action(&self, action_type: ActionType) -> AgentResult<()> {
        self.send(Method::PUT, "/actions", &InstanceActionInfo { action_type })
            .await
    }

    pub async fn patch_vm_state(&self, state: VmState) -> AgentResult<()> {
        self.send(Method::PATCH, "/vm", &Vm { state }).await
    }

    pub async fn put_snapshot_create(&self, body: &SnapshotCreateParams) -> AgentResult<()> {
        let timeout = self.timeout.max(SNAPSHOT_API_TIMEOUT);
        self.request(
            Method::PUT,
            "/snapshot/create",
            Some(encode(body)?),
            timeout,
        )
        .await
        .map(drop)
    }

    pub async fn put_snapshot_load(&self, body: &SnapshotLoadParams) -> AgentResult<()> {
        let timeout = self.timeout.max(SNAPSHOT_API_TIMEOUT);
        self.request(Method::PUT, "/snapshot/load", Some(encode(body)?), timeout)
            .await
            .map(drop)
    }

    pub async fn put_logger(&self, body: &Logger) -> AgentResult<()> {
        self.send(Method::PUT, "/logger", body).await
    }

    pub async fn put_metrics(&self, body: &Metrics) -> AgentResult<()> {
        self.send(Method::PUT, "/metrics", body).await
    }

    /// `GET /`: the instance id, state and VMM version.
    pub async fn get_instance_info(&self) -> AgentResult<InstanceInfo> {
        self.get("/").await
    }

    /// `GET /version`.
    pub async fn get_version(&self) -> AgentResult<FirecrackerVersion> {
        self.get("/version").await
    }

    async fn send<T: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: &T,
    ) -> AgentResult<()> {
        self.request(method, path, Some(encode(body)?), self.timeout)
            .await
            .map(drop)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> AgentResult<T> {
        let body = self.request(Method::GET, path, None, self.timeout).await?;
        serde_json::from_slice(&body).map_err(|e| {
            AgentError::Vmm(format!(
                "firecracker GET {path} answered malformed JSON ({e}): {}",
                excerpt(&body)
            ))
        })
    }

    /// Sends one request and returns the body of a 2xx answer; any other status becomes an error
    /// carrying Firecracker's `fault_message`.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> AgentResult<Bytes> {
        tracing::trace!(socket = %self.socket.display(), %method, path, "firecracker API call");
        let call = self.exchange(method.clone(), path, body);
        let (status, answer) = tokio::time::timeout(timeout, call).await.map_err(|_| {
            AgentError::Timeout(format!(
                "firecracker {method} {path} did not answer within {timeout:?}"
            ))
        })??;
        if status.is_success() {
            return Ok(answer);
        }
        let detail = serde_json::from_slice::<ApiError>(&answer)
            .map(|e| e.fault_message)
            .unwrap_or_else(|_| excerpt(&answer));
        Err(AgentError::Vmm(format!(
            "firecracker {method} {path} failed ({status}): {detail}"
        )))
    }

    /// Connect, send, read the whole answer. No deadline here: the caller wraps it in one, and
    /// dropping this future closes the connection.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> AgentResult<(StatusCode, Bytes)> {
        let socket = self.socket.display();
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            AgentError::Vmm(format!(
                "cannot connect to firecracker API at {socket}: {e}"
            ))
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| AgentError::Vmm(format!("firecracker API handshake on {socket}: {e}")))?;
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, "localhost")
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| AgentError::Internal(format!("bad firecracker request {path}: {e}")))?;
        let failed = |e: hyper::Error| AgentError::Vmm(format!("firecracker {method} {path}: {e}"));
        let exchange = async {
            let response = sender.send_request(request).await.map_err(failed)?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(failed)?
                .to_bytes();
            Ok((status, bytes))
        };
        // The connection future does the actual I/O; it is driven alongside the exchange (rather
        // than spawned) so that nothing outlives this call when the deadline drops it.
        let mut conn = std::pin::pin!(conn);
        let mut exchange = std::pin::pin!(exchange);
        tokio::select! {
            biased;
            result = &mut exchange => result,
            closed = &mut conn => match closed {
                // The server closed cleanly, possibly right after a complete answer.
                Ok(()) => exchange.await,
                Err(e) => Err(failed(e)),
            },
        }
    }
}

fn encode<T: Serialize + ?Sized>(body: &T) -> AgentResult<Vec<u8>> {
    serde_json::to_vec(body)
        .map_err(|e| AgentError::Internal(format!("cannot encode firecracker request: {e}")))
}

/// The start of a non-JSON answer, for error messages.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX_ERROR_TEXT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "(empty answer)".into(),
        None => text.to_string(),
    }
}
