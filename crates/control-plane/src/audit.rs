//! The audit log, and the event each audited capsule/snapshot/host action raises.

use crate::ids;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;
use wrenn_api_types::events::{Actor, ActorType};

/// `audit_logs.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditStatus {
    Success,
    Info,
    Warning,
    Error,
}

impl AuditStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

/// One audit row.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub team_id: Uuid,
    pub actor: Actor,
    pub resource_type: &'static str,
    pub resource_id: Option<String>,
    pub action: &'static str,
    pub status: AuditStatus,
    /// Admin-scope rows are visible only to team owners/admins and platform admins.
    pub admin_scope: bool,
    pub metadata: Value,
}

impl AuditEntry {
    pub fn new(
        team_id: Uuid,
        actor: Actor,
        resource_type: &'static str,
        resource_id: Option<String>,
        action: &'static str,
    ) -> Self {
        Self {
            team_id,
            actor,
            resource_type,
            resource_id,
            action,
            status: AuditStatus::Success,
            admin_scope: false,
            metadata: Value::Object(Default::default()),
        }
    }

    pub fn status(mut self, status: AuditStatus) -> Self {
        self.status = status;
        self
    }

    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }

    pub fn admin(mut self) -> Self {
        self.admin_scope = true;
        self
    }
}

fn actor_type(actor: &Actor) -> &'static str {
    match actor.kind {
        ActorType::User => "user",
        ActorType::ApiKey => "api_key",
        ActorType::System => "system",
    }
}

/// Writes an audit row. Failing to audit is logged, never turned into a failed request.
pub async fn record(db: &PgPool, entry: AuditEntry) {
    let result = sqlx::query(
        "INSERT INTO audit_logs (id, team_id, actor_type, actor_id, actor_name, resource_type,
                                 resource_id, action, scope, status, metadata)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(ids::new_uuid())
    .bind(entry.team_id)
    .bind(actor_type(&entry.actor))
    .bind((!entry.actor.id.is_empty()).then_some(entry.actor.id.as_str()))
    .bind(&entry.actor.name)
    .bind(entry.resource_type)
    .bind(entry.resource_id.as_deref())
    .bind(entry.action)
    .bind(if entry.admin_scope { "admin" } else { "team" })
    .bind(entry.status.as_str())
    .bind(&entry.metadata)
    .execute(db)
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, action = entry.action, "could not write an audit row");
    }
}
