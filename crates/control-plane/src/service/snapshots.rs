//! Templates as the snapshots routes show them: the team's own (snapshots of its capsules and
//! images it built) and the platform's (visible to every team, never deletable by one). Creating
//! a snapshot is in [`snapshot_create`](crate::service::snapshot_create).

use crate::audit::{self, AuditEntry, AuditStatus};
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::events;
use crate::state::App;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;
use wrenn_api_types::Metadata;
use wrenn_api_types::events::{Actor, Event, EventKind, Outcome, Resource};
use wrenn_api_types::snapshots::{Template, TemplateType};
use wrenn_protocol::connect::Code;
use wrenn_protocol::hostagent as pb;

/// The team that owns platform templates.
pub const PLATFORM_TEAM: Uuid = Uuid::nil();

/// A `templates` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TemplateRow {
    pub id: Uuid,
    pub name: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub vcpus: i32,
    pub memory_mb: i32,
    pub size_bytes: i64,
    pub created_at: DateTime<Utc>,
    pub team_id: Uuid,
    pub host_id: Option<Uuid>,
    pub metadata: Json<Value>,
    pub protected: bool,
}

/// The columns of [`TemplateRow`], for `SELECT {COLUMNS} FROM templates`.
pub const COLUMNS: &str = "id, name, type, vcpus, memory_mb, size_bytes, created_at, team_id, host_id, metadata, protected";

impl TemplateRow {
    pub fn is_platform(&self) -> bool {
        self.team_id == PLATFORM_TEAM
    }

    pub fn kind(&self) -> TemplateType {
        if self.kind == "snapshot" {
            TemplateType::Snapshot
        } else {
            TemplateType::Base
        }
    }

    pub fn to_api(&self) -> Template {
        Template {
            name: self.name.clone(),
            kind: self.kind(),
            vcpus: self.vcpus,
            memory_mb: self.memory_mb,
            size_bytes: self.size_bytes,
            created_at: self.created_at,
            platform: self.is_platform(),
            protected: self.protected,
            metadata: string_metadata(&self.metadata.0),
        }
    }
}

/// Metadata as the SDK requires it (string values only), whatever a row holds.
fn string_metadata(value: &Value) -> Metadata {
    let Value::Object(map) = value else {
        return Metadata::new();
    };
    map.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// `?type=` of the listing: `base`, `snapshot`, or absent for both.
pub fn parse_type(value: Option<&str>) -> ApiResult<Option<&'static str>> {
    match value {
        None => Ok(None),
        Some("base") => Ok(Some("base")),
        Some("snapshot") => Ok(Some("snapshot")),
        Some(other) => Err(ApiError::invalid(format!(
            "type must be base or snapshot, got {other:?}"
        ))),
    }
}

/// `GET /v1/snapshots`: platform templates first, then the team's, newest first.
pub async fn list(app: &App, auth: &AuthContext, kind: Option<&str>) -> ApiResult<Vec<Template>> {
    let kind = parse_type(kind)?;
    let sql = format!(
        "SELECT {COLUMNS} FROM templates
          WHERE team_id IN ($1, $2) AND ($3::text IS NULL OR type = $3)
          ORDER BY (team_id = $2) DESC, created_at DESC, name"
    );
    let rows: Vec<TemplateRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(auth.team_id)
        .bind(PLATFORM_TEAM)
        .bind(kind)
        .fetch_all(&app.db)
        .await?;
    Ok(rows.iter().map(TemplateRow::to_api).collect())
}

/// `DELETE /v1/snapshots/{name}`: only the team's own, unprotected templates. A snapshot's files
/// live on one host, which is asked to delete them first (a failure there keeps the row, so the
/// delete can be retried); if that host is not online the row is deleted anyway and the files are
/// left behind, with a warning in the log.
pub async fn delete(app: &App, auth: &AuthContext, name: &str) -> ApiResult<()> {
    let sql = format!("SELECT {COLUMNS} FROM templates WHERE name = $1 AND team_id IN ($2, $3)");
    let rows: Vec<TemplateRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .bind(auth.team_id)
        .bind(PLATFORM_TEAM)
        .fetch_all(&app.db)
        .await?;
    let Some(row) = rows.iter().find(|r| r.team_id == auth.team_id) else {
        return Err(if rows.iter().any(TemplateRow::is_platform) {
            ApiError::forbidden(format!("template {name} belongs to the platform"))
        } else {
            ApiError::not_found(format!("snapshot {name} not found"))
        });
    };
    if row.protected {
        return Err(ApiError::forbidden(format!(
            "template {name} is protected and cannot be deleted"
        )));
    }
    if row.kind() == TemplateType::Snapshot {
        delete_snapshot_files(app, row.team_id, row.id, &row.name, row.host_id).await?;
    }
    let deleted = sqlx::query("DELETE FROM templates WHERE id = $1")
        .bind(row.id)
        .execute(&app.db)
        .await?
        .rows_affected();
    if deleted == 0 {
        // A concurrent delete got there first.
        return Err(ApiError::not_found(format!("snapshot {name} not found")));
    }
    snapshot_event(
        app,
        auth.team_id,
        &auth.actor(),
        EventKind::SnapshotDelete,
        name,
        "",
        Outcome::Success,
        None,
    )
    .await;
    Ok(())
}

/// A `template.snapshot.*` event and its audit row.
#[allow(clippy::too_many_arguments)]
pub async fn snapshot_event(
    app: &App,
    team_id: Uuid,
    actor: &Actor,
    kind: EventKind,
    name: &str,
    capsule_id: &str,
    outcome: Outcome,
    error: Option<String>,
) {
    let action = match kind {
        EventKind::SnapshotDelete => "delete",
        _ => "create",
    };
    let mut metadata = Metadata::new();
    if !capsule_id.is_empty() {
        metadata.insert("sandbox_id".into(), capsule_id.to_string());
    }
    let mut entry = AuditEntry::new(
        team_id,
        actor.clone(),
        "snapshot",
        Some(name.to_string()),
        action,
    )
    .metadata(serde_json::to_value(&metadata).unwrap_or_default());
    if outcome == Outcome::Error {
        entry = entry.status(AuditStatus::Error);
    }
    audit::record(&app.db, entry).await;
    events::publish(
        &app.db,
        team_id,
        &Event {
            event: kind,
            outcome: Some(outcome),
            resource: Some(Resource {
                id: name.to_string(),
                kind: "template".into(),
            }),
            actor: Some(actor.clone()),
            metadata,
            error,
            sandbox: None,
            timestamp: Utc::now(),
        },
    )
    .await;
}

#[derive(sqlx::FromRow)]
struct HostRow {
    status: String,
    address: String,
}

/// Asks the host holding a snapshot template's files to delete them. Nothing to do without a
/// host, or when the host is not online (a warning is logged: the files stay there); a host that
/// no longer has them is fine. Also what a team deletion calls for each of its snapshots.
pub async fn delete_snapshot_files(
    app: &App,
    team_id: Uuid,
    template_id: Uuid,
    name: &str,
    host_id: Option<Uuid>,
) -> ApiResult<()> {
    let Some(host_id) = host_id else {
        return Ok(());
    };
    let host: Option<HostRow> = sqlx::query_as("SELECT status, address FROM hosts WHERE id = $1")
        .bind(host_id)
        .fetch_optional(&app.db)
        .await?;
    let Some(host) = host.filter(|h| h.status == "online" && !h.address.is_empty()) else {
        tracing::warn!(template = %name, host = %host_id, "snapshot host is not online; its files stay there");
        return Ok(());
    };
    let client = app.agents.client_for(host_id, &host.address);
    #[allow(deprecated)]
    let req = pb::DeleteSnapshotRequest {
        name: name.to_string(),
        team_id: team_id.to_string(),
        template_id: template_id.to_string(),
    };
    match client
        .call::<_, pb::DeleteSnapshotResponse>("DeleteSnapshot", &req)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == Code::NotFound => Ok(()),
        Err(e) => Err(ApiError::from_agent(e, &format!("snapshot {name}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_values_become_strings() {
        let m = string_metadata(&json!({"a": "x", "n": 2, "b": true}));
        assert_eq!(m.get("a").map(String::as_str), Some("x"));
        assert_eq!(m.get("n").map(String::as_str), Some("2"));
        assert_eq!(m.get("b").map(String::as_str), Some("true"));
        assert!(string_metadata(&json!([1])).is_empty());
    }

    #[test]
    fn type_filter() {
        assert_eq!(parse_type(None).ok(), Some(None));
        assert_eq!(parse_type(Some("snapshot")).ok(), Some(Some("snapshot")));
        assert!(parse_type(Some("image")).is_err());
    }
}
