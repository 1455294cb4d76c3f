//! `GET /v1/events/stream`: one JSON object per SSE frame, kind inside as `event`.

use crate::Metadata;
use crate::capsule::Capsule;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The closed list of event kinds; the SDK rejects anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EventKind {
    #[serde(rename = "connected")]
    Connected,
    #[serde(rename = "capsule.create")]
    CapsuleCreate,
    #[serde(rename = "capsule.pause")]
    CapsulePause,
    #[serde(rename = "capsule.resume")]
    CapsuleResume,
    #[serde(rename = "capsule.destroy")]
    CapsuleDestroy,
    #[serde(rename = "capsule.state.changed")]
    CapsuleStateChanged,
    #[serde(rename = "template.snapshot.create")]
    SnapshotCreate,
    #[serde(rename = "template.snapshot.delete")]
    SnapshotDelete,
    #[serde(rename = "host.up")]
    HostUp,
    #[serde(rename = "host.down")]
    HostDown,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::CapsuleCreate => "capsule.create",
            Self::CapsulePause => "capsule.pause",
            Self::CapsuleResume => "capsule.resume",
            Self::CapsuleDestroy => "capsule.destroy",
            Self::CapsuleStateChanged => "capsule.state.changed",
            Self::SnapshotCreate => "template.snapshot.create",
            Self::SnapshotDelete => "template.snapshot.delete",
            Self::HostUp => "host.up",
            Self::HostDown => "host.down",
        }
    }

    /// Action events carry an outcome; state changes, host events and the sentinel do not.
    pub fn has_outcome(self) -> bool {
        !matches!(
            self,
            Self::Connected | Self::CapsuleStateChanged | Self::HostUp | Self::HostDown
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ActorType {
    User,
    ApiKey,
    System,
}

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Actor {
    #[serde(rename = "type")]
    pub kind: ActorType,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
}

impl Actor {
    pub fn system() -> Self {
        Self {
            kind: ActorType::System,
            id: String::new(),
            name: "system".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resource {
    pub id: String,
    /// `sandbox`, `template` or `host`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// One event as the SSE feed delivers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    pub event: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Capsule>,
    pub timestamp: DateTime<Utc>,
}
