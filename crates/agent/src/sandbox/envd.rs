//! The agent's client for one sandbox's envd: Connect RPCs plus envd's plain HTTP routes.
//!
//! Two transports, on purpose: unary calls (and `/init`, `/health`) get overall timeouts, while
//! process streams and file transfers get none (an exec may rightly run for hours, a download may
//! be gigabytes); both have connect and response-header timeouts.

use crate::error::{AgentError, AgentResult};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;
use wrenn_protocol::connect::ConnectClient;
use wrenn_protocol::connect::server::BoxBody;
use wrenn_protocol::envd::ENVD_PORT;

/// Overall limit for unary RPCs and small HTTP calls.
pub const UNARY_TIMEOUT: Duration = Duration::from_secs(120);
/// Each `/health` probe while waiting for boot.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Short: a restored guest answers at once, and every poll saved is time to first exec.
const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The body of envd's `POST /init` (camelCase, as envd and E2B define it).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_workdir: Option<String>,
    /// RFC 3339; envd ignores an `/init` older than the last one it applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EnvdClient {
    sandbox_id: String,
    base: String,
    /// Unary Connect calls (filesystem, process list/signal/input).
    pub unary: ConnectClient,
    /// Streaming Connect calls (process start/connect).
    pub stream: ConnectClient,
    http: Client<HttpConnector, BoxBody>,
}

impl EnvdClient {
    pub fn new(sandbox_id: &str, ip: IpAddr) -> Self {
        Self::with_base(sandbox_id, format!("http://{ip}:{ENVD_PORT}"))
    }

    /// A client for an envd at any address (`http://host:port`): tests run envd on the host, on a
    /// free port, instead of inside a VM.
    pub fn with_base(sandbox_id: &str, base: impl Into<String>) -> Self {
        let base: String = base.into().trim_end_matches('/').to_string();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(10)
            .build(connector);
        Self {
            sandbox_id: sandbox_id.to_string(),
            unary: ConnectClient::new(base.clone()).with_unary_timeout(UNARY_TIMEOUT),
            stream: ConnectClient::new(base.clone()),
            base,
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn err(&self, detail: impl Into<String>) -> AgentError {
        AgentError::Envd {
            id: self.sandbox_id.clone(),
            detail: detail.into(),
        }
    }

    /// Sends a request and waits for the response headers (bounded); the body is the caller's.
    pub async fn send(
        &self,
        req: Request<BoxBody>,
    ) -> AgentResult<http::Response<hyper::body::Incoming>> {
        let what = format!("{} {}", req.method(), req.uri().path());
        match tokio::time::timeout(RESPONSE_HEADER_TIMEOUT, self.http.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(self.err(format!("{what}: {e}"))),
            Err(_) => Err(self.err(format!(
                "{what}: no response within {RESPONSE_HEADER_TIMEOUT:?}"
            ))),
        }
    }

    /// A request to one of envd's HTTP routes (`path` includes the query).
    pub fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: BoxBody,
    ) -> AgentResult<Request<BoxBody>> {
        Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path_and_query))
            .body(body)
            .map_err(|e| AgentError::InvalidArgument(format!("bad envd request: {e}")))
    }

    /// A small request with a full response body, under the unary timeout.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> AgentResult<(StatusCode, Bytes)> {
        let mut req = self.request(
            method,
            path,
            Full::new(body).map_err(|n| match n {}).boxed_unsync(),
        )?;
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let fut = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| self.err(format!("{path}: {e}")))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.err(format!("{path}: reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, AgentError>((status, body))
        };
        tokio::time::timeout(timeout, fut).await.map_err(|_| {
            AgentError::Timeout(format!(
                "envd {path} in sandbox {} after {timeout:?}",
                self.sandbox_id
            ))
        })?
    }

    /// One `/health` probe.
    pub async fn health(&self) -> AgentResult<()> {
        let (status, _) = self
            .call(Method::GET, "/health", Bytes::new(), HEALTH_PROBE_TIMEOUT)
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.err(format!("/health answered {status}")))
        }
    }

    /// Guest memory in use (MiB), from `/metrics`: what a balloon must leave the guest.
    pub async fn memory_used_mib(&self) -> AgentResult<u32> {
        let (status, body) = self
            .call(Method::GET, "/metrics", Bytes::new(), HEALTH_PROBE_TIMEOUT)
            .await?;
        if !status.is_success() {
            return Err(self.err(format!("/metrics answered {status}")));
        }
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["mem_used_mib"].as_u64())
            .map(|m| u32::try_from(m).unwrap_or(u32::MAX))
            .ok_or_else(|| self.err("/metrics did not say mem_used_mib"))
    }

    /// envd's version, from `/health` (`{"version": …}`).
    pub async fn version(&self) -> AgentResult<String> {
        let (status, body) = self
            .call(Method::GET, "/health", Bytes::new(), HEALTH_PROBE_TIMEOUT)
            .await?;
        if !status.is_success() {
            return Err(self.err(format!("/health answered {status}")));
        }
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["version"].as_str().map(str::to_string))
            .ok_or_else(|| self.err("/health did not say envd's version"))
    }

    /// Polls `/health` until envd answers, `timeout` passes, or `alive` says the VM is gone.
    pub async fn wait_ready(
        &self,
        timeout: Duration,
        alive: impl Fn() -> bool,
    ) -> AgentResult<Duration> {
        let started = tokio::time::Instant::now();
        loop {
            if self.health().await.is_ok() {
                return Ok(started.elapsed());
            }
            if !alive() {
                return Err(self.err("the VM exited before envd came up"));
            }
            if started.elapsed() >= timeout {
                return Err(AgentError::Timeout(format!(
                    "envd in sandbox {} did not answer /health within {timeout:?}",
                    self.sandbox_id
                )));
            }
            tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
        }
    }

    /// `POST /init`: environment, default user and working directory, and the clock.
    pub async fn init(&self, body: &InitRequest) -> AgentResult<()> {
        let json = serde_json::to_vec(body).map_err(|e| AgentError::Internal(e.to_string()))?;
        let (status, answer) = self
            .call(Method::POST, "/init", json.into(), Duration::from_secs(30))
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.err(format!(
                "/init answered {status}: {}",
                String::from_utf8_lossy(&answer)
            )))
        }
    }

    /// `POST /snapshot/prepare` before a pause (best effort, bounded). `drop_page_cache` is
    /// worth it only when freed guest pages leave the snapshot.
    pub async fn snapshot_prepare(
        &self,
        timeout: Duration,
        drop_page_cache: bool,
    ) -> AgentResult<()> {
        let path = if drop_page_cache {
            "/snapshot/prepare"
        } else {
            "/snapshot/prepare?drop_page_cache=false"
        };
        let (status, answer) = self.call(Method::POST, path, Bytes::new(), timeout).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.err(format!(
                "/snapshot/prepare answered {status}: {}",
                String::from_utf8_lossy(&answer)
            )))
        }
    }
}

/// Now as RFC 3339 UTC with nanoseconds, for `/init`'s `timestamp`.
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        now.subsec_nanos()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        let now = rfc3339_now();
        assert_eq!(now.len(), "2026-11-23T10:00:00.000000000Z".len(), "{now}");
    }

    #[test]
    fn init_body_is_camel_case_and_sparse() {
        let body = InitRequest {
            default_user: Some("user".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&body).expect("json"),
            r#"{"defaultUser":"user"}"#
        );
    }
}
