//! The agent's REST calls to the control plane: register, heartbeat, refresh.
//!
//! Every call is bounded: connecting takes at most 10 s and a whole call 30 s (heartbeats
//! 10 s), so a hung control plane never wedges the heartbeat loop.

use crate::error::{AgentError, AgentResult};
use reqwest::StatusCode;
use std::time::Duration;
use wrenn_api_types::error::ErrorBody;
use wrenn_api_types::hosts::{
    HeartbeatRequest, HostCredentials, RefreshHostRequest, RegisterHostRequest,
};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// The header carrying the host JWT.
pub const HOST_TOKEN_HEADER: &str = "X-Host-Token";

/// What one heartbeat told the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// 204: the control plane knows the host is alive.
    Accepted,
    /// 401/403: the host JWT expired or was revoked; refresh the credentials.
    Unauthorized,
    /// 404: the host was deleted.
    HostDeleted,
    /// No answer (connect or read failure, timeout) or a gateway error (502/503/504: the control
    /// plane behind its proxy is down).
    Unreachable(String),
    /// Any other answer.
    Rejected { status: u16, message: String },
}

/// A client for one control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneClient {
    base: String,
    http: reqwest::Client,
}

impl ControlPlaneClient {
    /// `url` is the control plane's base URL (`https://cp.example.com`); http is accepted for
    /// local setups.
    pub fn new(url: &str) -> AgentResult<Self> {
        let base = url.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(AgentError::InvalidArgument(format!(
                "--cp-url {url:?} must start with https:// (or http:// for a local control plane)"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .user_agent(concat!("wrenn-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AgentError::Internal(format!("building the HTTP client: {e}")))?;
        Ok(Self { base, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn unreachable(&self, e: &reqwest::Error) -> AgentError {
        AgentError::ControlPlane {
            status: None,
            message: format!("{} is unreachable: {}", self.base, describe(e)),
        }
    }

    /// `POST /v1/hosts/register` with the one-time token: 201 and the credentials.
    pub async fn register(&self, request: &RegisterHostRequest) -> AgentResult<HostCredentials> {
        let response = self
            .http
            .post(self.url("/v1/hosts/register"))
            .json(request)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        self.credentials(response, StatusCode::CREATED, "registration")
            .await
    }

    /// `POST /v1/hosts/auth/refresh` with the single-use refresh token: 200 and rotated
    /// credentials (new JWT, new refresh token, new certificate).
    pub async fn refresh(&self, refresh_token: &str) -> AgentResult<HostCredentials> {
        let response = self
            .http
            .post(self.url("/v1/hosts/auth/refresh"))
            .json(&RefreshHostRequest {
                refresh_token: refresh_token.to_owned(),
            })
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        self.credentials(response, StatusCode::OK, "credential refresh")
            .await
    }

    async fn credentials(
        &self,
        response: reqwest::Response,
        expected: StatusCode,
        what: &str,
    ) -> AgentResult<HostCredentials> {
        let status = response.status();
        if status != expected {
            let message = error_message(response).await;
            return Err(AgentError::ControlPlane {
                status: Some(status.as_u16()),
                message: format!("{what} refused with HTTP {status}: {message}"),
            });
        }
        response
            .json::<HostCredentials>()
            .await
            .map_err(|e| AgentError::ControlPlane {
                status: Some(status.as_u16()),
                message: format!("{what}: unreadable answer: {}", describe(&e)),
            })
    }

    /// `POST /v1/hosts/{id}/heartbeat` with `X-Host-Token`.
    pub async fn heartbeat(
        &self,
        host_id: &str,
        token: &str,
        body: &HeartbeatRequest,
    ) -> HeartbeatOutcome {
        let sent = self
            .http
            .post(self.url(&format!("/v1/hosts/{host_id}/heartbeat")))
            .header(HOST_TOKEN_HEADER, token)
            .timeout(HEARTBEAT_TIMEOUT)
            .json(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return HeartbeatOutcome::Unreachable(describe(&e)),
        };
        match response.status() {
            s if s.is_success() => HeartbeatOutcome::Accepted,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => HeartbeatOutcome::Unauthorized,
            StatusCode::NOT_FOUND => HeartbeatOutcome::HostDeleted,
            s @ (StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT) => HeartbeatOutcome::Unreachable(format!(
                "HTTP {s}: {}",
                error_message(response).await
            )),
            s => HeartbeatOutcome::Rejected {
                status: s.as_u16(),
                message: error_message(response).await,
            },
        }
    }
}

/// The `message` of an API error body, else the body itself (shortened).
async fn error_message(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => format!("{} ({})", body.error.message, body.error.code),
        Err(_) if text.trim().is_empty() => "no details".to_owned(),
        Err(_) => text.chars().take(300).collect(),
    }
}

/// reqwest's error with its causes (refused, DNS, TLS), which its `Display` leaves out.
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out".to_owned()
    } else {
        e.to_string()
    };
    let mut out = what;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
