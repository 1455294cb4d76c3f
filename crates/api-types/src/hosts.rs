//! Hosts: what an operator creates, what an agent registers with, and its credentials.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum HostType {
    Regular,
    Byoc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum HostStatus {
    Pending,
    Online,
    Offline,
    Draining,
    Unreachable,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Host {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: HostType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    pub provider: String,
    pub availability_zone: String,
    pub arch: String,
    pub cpu_cores: i32,
    pub memory_mb: i32,
    pub disk_gb: i32,
    pub address: String,
    pub status: HostStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `POST /v1/hosts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateHostRequest {
    #[serde(rename = "type", default = "regular")]
    pub kind: HostType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
}

fn regular() -> HostType {
    HostType::Regular
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateHostResponse {
    pub host: Host,
    /// One-time token for `wrenn-agent serve --register`, valid one hour.
    pub registration_token: String,
}

/// `POST /v1/hosts/register`: the agent introduces itself with the one-time token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterHostRequest {
    pub token: String,
    pub arch: String,
    pub cpu_cores: i32,
    pub memory_mb: i32,
    pub disk_gb: i32,
    /// `ip:port` (or `name:port`) where the control plane reaches the agent; the certificate's SAN.
    pub address: String,
}

/// What the agent keeps in `host-credentials.json`, returned by register and refresh.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostCredentials {
    pub host_id: String,
    /// Host JWT, sent as `X-Host-Token`.
    pub token: String,
    /// Single-use; rotated by every refresh.
    pub refresh_token: String,
    /// The agent's server certificate, its key, and the CA that signs it and the control plane's
    /// client certificate (all PEM).
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_cert_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RefreshHostRequest {
    pub refresh_token: String,
}

/// Body of a heartbeat: optional, tells the control plane what the agent runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatRequest {
    #[serde(default)]
    pub running_sandboxes: u32,
    #[serde(default)]
    pub agent_version: String,
}
