//! Templates: base images and snapshots of capsules.

use crate::Metadata;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TemplateType {
    Base,
    Snapshot,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Template {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: TemplateType,
    pub vcpus: i32,
    pub memory_mb: i32,
    pub size_bytes: i64,
    pub created_at: DateTime<Utc>,
    /// Platform-managed, visible to every team.
    pub platform: bool,
    /// Built-in and cannot be deleted.
    pub protected: bool,
    #[serde(default)]
    pub metadata: Metadata,
}

/// `POST /v1/snapshots`. The field is `sandbox_id`, not `capsule_id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateSnapshotRequest {
    pub sandbox_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}
