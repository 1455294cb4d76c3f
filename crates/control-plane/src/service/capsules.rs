//! Capsules: the database row, team-scoped lookup, state transitions, events, destroy and ping.
//! Creation is in [`capsule_create`](crate::service::capsule_create); pause, resume and wake in
//! [`lifecycle`](crate::service::lifecycle).

use crate::agents::AgentClient;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::ids::{self, IdKind};
use crate::state::{App, AppState};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;
use wrenn_api_types::Metadata;
use wrenn_api_types::capsule::{Capsule, CapsuleStatus};

/// A `sandboxes` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CapsuleRow {
    pub id: Uuid,
    pub team_id: Uuid,
    pub host_id: Option<Uuid>,
    pub template: String,
    pub status: String,
    pub vcpus: i32,
    pub memory_mb: i32,
    pub timeout_sec: i32,
    pub disk_size_mb: i32,
    pub host_ip: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub last_active_at: Option<DateTime<Utc>>,
    pub last_updated: DateTime<Utc>,
    pub template_id: Option<Uuid>,
    pub template_team_id: Option<Uuid>,
    pub metadata: Json<Metadata>,
}

/// The columns of [`CapsuleRow`], for `SELECT {COLUMNS} FROM sandboxes`.
pub const COLUMNS: &str = "id, team_id, host_id, template, status, vcpus, memory_mb, timeout_sec, \
     disk_size_mb, host_ip, created_at, started_at, last_active_at, last_updated, template_id, \
     template_team_id, metadata";

impl CapsuleRow {
    pub fn public_id(&self) -> String {
        ids::capsule(self.id)
    }

    pub fn status(&self) -> CapsuleStatus {
        self.status.parse().unwrap_or(CapsuleStatus::Error)
    }

    /// The API form. `disk_used_mb` is filled by the single-capsule GET only.
    pub fn to_api(&self) -> Capsule {
        Capsule {
            id: self.public_id(),
            status: self.status(),
            template: self.template.clone(),
            vcpus: self.vcpus,
            memory_mb: self.memory_mb,
            timeout_sec: self.timeout_sec,
            created_at: self.created_at,
            started_at: self.started_at,
            last_active_at: self.last_active_at,
            last_updated: self.last_updated,
            metadata: self.metadata.0.clone(),
            disk_size_mb: self.disk_size_mb,
            disk_used_mb: None,
            host_id: self.host_id.map(|h| ids::encode(IdKind::Host, h)),
        }
    }
}

/// The caller's capsule `id` (a `cl-…` string), or 404: a capsule of another team is exactly
/// as invisible as one that does not exist.
pub async fn get_for_team(app: &App, auth: &AuthContext, id: &str) -> ApiResult<CapsuleRow> {
    get_in_team(app, auth.team_id, id).await
}

pub async fn get_in_team(app: &App, team_id: Uuid, id: &str) -> ApiResult<CapsuleRow> {
    let not_found = || ApiError::not_found(format!("capsule {id} not found"));
    let uuid = ids::decode(IdKind::Capsule, id).ok_or_else(not_found)?;
    let sql = format!("SELECT {COLUMNS} FROM sandboxes WHERE id = $1 AND team_id = $2");
    sqlx::query_as::<_, CapsuleRow>(sqlx::AssertSqlSafe(sql))
        .bind(uuid)
        .bind(team_id)
        .fetch_optional(&app.db)
        .await?
        .ok_or_else(not_found)
}

/// A running capsule of the caller's and a client for its host: what every exec, file and PTY
/// route needs. A paused capsule is woken (resumed) first, and one in transition waited for; a
/// capsule that cannot run is `invalid_state` (409).
pub async fn running(
    app: &AppState,
    auth: &AuthContext,
    id: &str,
) -> ApiResult<(CapsuleRow, AgentClient)> {
    let row = get_for_team(app, auth, id).await?;
    let row = crate::service::lifecycle::wake(app, row, &auth.actor()).await?;
    let client = host_client(app, &row).await?;
    Ok((row, client))
}

/// Like [`running`] without waking: for calls that must not resume a capsule (ping).
pub async fn running_now(
    app: &App,
    auth: &AuthContext,
    id: &str,
) -> ApiResult<(CapsuleRow, AgentClient)> {
    let row = get_for_team(app, auth, id).await?;
    require_running(&row)?;
    let client = host_client(app, &row).await?;
    Ok((row, client))
}

pub fn require_running(row: &CapsuleRow) -> ApiResult<()> {
    match row.status() {
        CapsuleStatus::Running => Ok(()),
        other => Err(ApiError::invalid_state(format!(
            "capsule {} is not running (status: {other})",
            row.public_id()
        ))),
    }
}

/// Records activity (exec, files, ping, proxy) so the capsule's `last_active_at` is current.
/// The agent keeps the authoritative inactivity clock; this is what the API shows.
pub async fn touch(app: &App, id: Uuid) {
    if let Err(e) = sqlx::query(
        "UPDATE sandboxes SET last_active_at = now()
          WHERE id = $1 AND (last_active_at IS NULL OR last_active_at < now() - interval '1 second')",
    )
    .bind(id)
    .execute(&app.db)
    .await
    {
        tracing::warn!(error = %e, "could not record capsule activity");
    }
}

// ---------------------------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------------------------

use crate::audit::{self, AuditEntry, AuditStatus};
use crate::events;
use std::time::Duration;
use wrenn_api_types::events::{Actor, Event, EventKind, Outcome, Resource};
use wrenn_protocol::hostagent as pb;

pub use crate::service::capsule_create::create;
pub use crate::service::lifecycle::{pause, resume};

/// Metadata keys the system sets; users may not.
pub const SYSTEM_METADATA_KEYS: [&str; 5] = [
    "kernel_version",
    "vmm_version",
    "agent_version",
    "envd_version",
    "firecracker_version",
];

/// `[A-Za-z0-9][A-Za-z0-9._-]{0,63}` (upstream's SafeName).
pub fn is_safe_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Publishes a capsule event (with the capsule as it is now) and writes its audit row.
pub async fn capsule_event(
    app: &App,
    row: &CapsuleRow,
    kind: EventKind,
    actor: &Actor,
    outcome: Option<Outcome>,
    metadata: Metadata,
    error: Option<String>,
) {
    if let Some(action) = match kind {
        EventKind::CapsuleCreate => Some("create"),
        EventKind::CapsulePause => Some("pause"),
        EventKind::CapsuleResume => Some("resume"),
        EventKind::CapsuleDestroy => Some("destroy"),
        _ => None,
    } {
        let mut entry = AuditEntry::new(
            row.team_id,
            actor.clone(),
            "sandbox",
            Some(row.public_id()),
            action,
        )
        .metadata(serde_json::to_value(&metadata).unwrap_or_default());
        if outcome == Some(Outcome::Error) {
            entry = entry.status(AuditStatus::Error);
        }
        audit::record(&app.db, entry).await;
    }
    events::publish(
        &app.db,
        row.team_id,
        &Event {
            event: kind,
            outcome,
            resource: Some(Resource {
                id: row.public_id(),
                kind: "sandbox".into(),
            }),
            actor: Some(actor.clone()),
            metadata,
            error,
            sandbox: Some(row.to_api()),
            timestamp: Utc::now(),
        },
    )
    .await;
}

/// Sets a capsule's status if it is still in one of `from`; returns the updated row.
pub async fn transition(
    app: &App,
    id: Uuid,
    from: &[&str],
    to: CapsuleStatus,
) -> ApiResult<Option<CapsuleRow>> {
    let from: Vec<String> = from.iter().map(|s| s.to_string()).collect();
    let sql = format!(
        "UPDATE sandboxes SET status = $2, last_updated = now()
          WHERE id = $1 AND status = ANY($3) RETURNING {COLUMNS}"
    );
    Ok(sqlx::query_as::<_, CapsuleRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(to.as_str())
        .bind(&from)
        .fetch_optional(&app.db)
        .await?)
}

/// A capsule row by id, in any team (for system actions).
pub async fn load(app: &App, id: Uuid) -> ApiResult<CapsuleRow> {
    let sql = format!("SELECT {COLUMNS} FROM sandboxes WHERE id = $1");
    Ok(sqlx::query_as::<_, CapsuleRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_one(&app.db)
        .await?)
}

/// Destroys a sandbox on its agent; "not found" is success, other failures are logged (the
/// host monitor removes orphans).
pub async fn destroy_on_agent(client: &AgentClient, public_id: &str) {
    let req = pb::DestroySandboxRequest {
        sandbox_id: public_id.to_string(),
    };
    match client
        .call::<_, pb::DestroySandboxResponse>("DestroySandbox", &req)
        .await
    {
        Ok(_) => {}
        Err(e) if e.code == wrenn_protocol::connect::Code::NotFound => {}
        Err(e) => {
            tracing::warn!(capsule = %public_id, error = %e, "destroy on the agent failed; the host monitor will remove the orphan")
        }
    }
}

/// `GET /v1/capsules`: the team's live capsules, newest first.
pub async fn list(app: &App, auth: &AuthContext) -> ApiResult<Vec<Capsule>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM sandboxes WHERE team_id = $1 AND status NOT IN ('stopped', 'error')
          ORDER BY created_at DESC"
    );
    let rows = sqlx::query_as::<_, CapsuleRow>(sqlx::AssertSqlSafe(sql))
        .bind(auth.team_id)
        .fetch_all(&app.db)
        .await?;
    Ok(rows.iter().map(CapsuleRow::to_api).collect())
}

/// `GET /v1/capsules/{id}`, with current disk usage when the capsule is running.
pub async fn get(app: &App, auth: &AuthContext, id: &str) -> ApiResult<Capsule> {
    let row = get_for_team(app, auth, id).await?;
    let mut capsule = row.to_api();
    if row.status() == CapsuleStatus::Running
        && let Some(host) = row.host_id
        && let Ok(client) = app.agents.client(&app.db, host).await
    {
        // Best effort and quick: polling clients must not wait on a slow host.
        let req = pb::GetSandboxMetricsRequest {
            sandbox_id: row.public_id(),
            range: "5m".into(),
        };
        if let Ok(Ok(resp)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.call::<_, pb::GetSandboxMetricsResponse>("GetSandboxMetrics", &req),
        )
        .await
            && let Some(last) = resp.points.last()
        {
            capsule.disk_used_mb = Some(last.disk_bytes / (1024 * 1024));
        }
    }
    Ok(capsule)
}

/// `DELETE /v1/capsules/{id}`: idempotent; the row stays (status `stopped`).
pub async fn destroy(app: &App, auth: &AuthContext, id: &str) -> ApiResult<()> {
    destroy_row(app, get_for_team(app, auth, id).await?, &auth.actor(), None).await
}

/// Destroys a capsule on its host (if it still has one) and marks it stopped. A running
/// capsule's metrics are flushed first (its 24-hour history is kept); the finer tiers go. A
/// capsule in `error` is destroyed too: its host may still hold it (a damaged snapshot).
pub async fn destroy_row(
    app: &App,
    row: CapsuleRow,
    actor: &Actor,
    reason: Option<&str>,
) -> ApiResult<()> {
    if row.status() == CapsuleStatus::Stopped {
        return Ok(());
    }
    let Some(stopping) = transition(
        app,
        row.id,
        &[
            "pending",
            "starting",
            "running",
            "pausing",
            "paused",
            "resuming",
            "snapshotting",
            "missing",
            "hibernated",
            "stopping",
            "error",
        ],
        CapsuleStatus::Stopping,
    )
    .await?
    else {
        return Ok(());
    };
    if let Some(host) = row.host_id
        && let Ok(client) = app.agents.client(&app.db, host).await
    {
        if row.status() == CapsuleStatus::Running {
            crate::service::lifecycle::flush_metrics(app, &client, &row).await;
        }
        destroy_on_agent(&client, &row.public_id()).await;
    }
    if let Err(e) = crate::service::metrics::discard_fine_points(app, row.id).await {
        tracing::warn!(capsule = %row.public_id(), error = %e, "could not drop fine metrics");
    }
    let stopped = transition(app, row.id, &["stopping"], CapsuleStatus::Stopped)
        .await?
        .unwrap_or(stopping);
    let mut metadata = Metadata::new();
    if let Some(reason) = reason {
        metadata.insert("reason".into(), reason.into());
    }
    capsule_event(
        app,
        &stopped,
        EventKind::CapsuleDestroy,
        actor,
        Some(Outcome::Success),
        metadata,
        None,
    )
    .await;
    Ok(())
}

/// `POST /v1/capsules/{id}/ping`: resets the inactivity timer.
pub async fn ping(app: &App, auth: &AuthContext, id: &str) -> ApiResult<()> {
    let (row, client) = running_now(app, auth, id).await?;
    client
        .call::<_, pb::PingSandboxResponse>(
            "PingSandbox",
            &pb::PingSandboxRequest {
                sandbox_id: row.public_id(),
            },
        )
        .await
        .map_err(|e| ApiError::from_agent(e, &format!("capsule {id}")))?;
    touch(app, row.id).await;
    Ok(())
}

/// The agent of the host a capsule lives on.
pub async fn host_client(app: &App, row: &CapsuleRow) -> ApiResult<AgentClient> {
    let host = row
        .host_id
        .ok_or_else(|| ApiError::host_unavailable("the capsule has no host"))?;
    app.agents.client(&app.db, host).await
}
