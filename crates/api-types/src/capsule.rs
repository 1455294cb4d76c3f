//! Capsules (sandboxes): the resource, its status, create, metrics, stats and usage.

use crate::Metadata;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A capsule's lifecycle state. The SDK validates against exactly these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CapsuleStatus {
    Pending,
    Starting,
    Running,
    Pausing,
    Paused,
    Snapshotting,
    Resuming,
    Stopping,
    Hibernated,
    Stopped,
    Missing,
    Error,
}

impl CapsuleStatus {
    pub const ALL: [CapsuleStatus; 12] = [
        Self::Pending,
        Self::Starting,
        Self::Running,
        Self::Pausing,
        Self::Paused,
        Self::Snapshotting,
        Self::Resuming,
        Self::Stopping,
        Self::Hibernated,
        Self::Stopped,
        Self::Missing,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Pausing => "pausing",
            Self::Paused => "paused",
            Self::Snapshotting => "snapshotting",
            Self::Resuming => "resuming",
            Self::Stopping => "stopping",
            Self::Hibernated => "hibernated",
            Self::Stopped => "stopped",
            Self::Missing => "missing",
            Self::Error => "error",
        }
    }

    /// Terminal states: the capsule no longer exists anywhere.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Stopped | Self::Error)
    }
}

impl std::fmt::Display for CapsuleStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CapsuleStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown capsule status {s:?}"))
    }
}

/// A capsule as every capsule route returns it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Capsule {
    /// `cl-` followed by lowercase alphanumerics.
    pub id: String,
    pub status: CapsuleStatus,
    pub template: String,
    pub vcpus: i32,
    pub memory_mb: i32,
    /// Inactivity TTL in seconds before the capsule is paused; 0 = never.
    pub timeout_sec: i32,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_at: Option<DateTime<Utc>>,
    pub last_updated: DateTime<Utc>,
    #[serde(default)]
    pub metadata: Metadata,
    pub disk_size_mb: i32,
    /// Current disk usage; only on the single-capsule GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_used_mb: Option<i64>,
    /// The host the capsule runs on (not read by the SDK; useful to operators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
}

/// `POST /v1/capsules`: every field is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateCapsuleRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_sec: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size_mb: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// One sample of a capsule's resource use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricPoint {
    pub timestamp_unix: i64,
    pub cpu_pct: f64,
    pub mem_bytes: i64,
    pub disk_bytes: i64,
}

/// `GET /v1/capsules/{id}/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CapsuleMetrics {
    pub sandbox_id: String,
    pub range: String,
    pub points: Vec<MetricPoint>,
}

/// Ranges `GET …/metrics` accepts.
pub const METRIC_RANGES: [&str; 7] = ["5m", "10m", "1h", "2h", "6h", "12h", "24h"];
/// Ranges `GET /v1/capsules/stats` accepts.
pub const STATS_RANGES: [&str; 5] = ["5m", "1h", "6h", "24h", "30d"];

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsCurrent {
    pub running_count: i64,
    pub vcpus_reserved: i64,
    pub memory_mb_reserved: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsPeaks {
    pub running_count: i64,
    pub vcpus: i64,
    pub memory_mb: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsSeries {
    pub labels: Vec<DateTime<Utc>>,
    pub running: Vec<i64>,
    pub vcpus: Vec<i64>,
    pub memory_mb: Vec<i64>,
}

/// `GET /v1/capsules/stats`: the team's reservations now, their 30-day peaks and a series.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CapsuleStats {
    pub range: String,
    pub current: StatsCurrent,
    pub peaks: StatsPeaks,
    pub series: StatsSeries,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsagePoint {
    pub date: chrono::NaiveDate,
    pub cpu_minutes: f64,
    pub ram_mb_minutes: f64,
}

/// `GET /v1/capsules/usage`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageResponse {
    pub from: chrono::NaiveDate,
    pub to: chrono::NaiveDate,
    pub points: Vec<UsagePoint>,
}
