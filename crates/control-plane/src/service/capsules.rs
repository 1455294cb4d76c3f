//! Capsules: the database row, team-scoped lookup, and the lifecycle.

use crate::agents::AgentClient;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::ids::{self, IdKind};
use crate::state::App;
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
/// route needs. A capsule in any other state is `invalid_state` (409).
pub async fn running(
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
use crate::service::scheduler;
use std::time::Duration;
use wrenn_api_types::capsule::CreateCapsuleRequest;
use wrenn_api_types::events::{Actor, Event, EventKind, Outcome, Resource};
use wrenn_protocol::hostagent as pb;

/// Defaults of `POST /v1/capsules` (client contract §4.1).
pub const DEFAULT_TEMPLATE: &str = "minimal-ubuntu";
pub const DEFAULT_VCPUS: i32 = 1;
pub const DEFAULT_MEMORY_MB: i32 = 512;
pub const DEFAULT_DISK_MB: i32 = 5120;
/// The create call answers within this even if the VM is still booting (status `starting`);
/// the SDK's HTTP timeout is 30 s and it polls until `running`.
pub const CREATE_ANSWER_WITHIN: Duration = Duration::from_secs(20);
/// How long the agent may take to boot a VM (TCG is slow).
pub const CREATE_RPC_TIMEOUT: Duration = Duration::from_secs(240);
/// Metadata keys the system sets; users may not.
pub const SYSTEM_METADATA_KEYS: [&str; 5] = [
    "kernel_version",
    "vmm_version",
    "agent_version",
    "envd_version",
    "firecracker_version",
];

/// A template a team may boot from.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TemplateRow {
    pub id: Uuid,
    pub team_id: Uuid,
    pub name: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub vcpus: i32,
    pub memory_mb: i32,
    pub host_id: Option<Uuid>,
    pub default_user: String,
    pub default_env: Json<std::collections::BTreeMap<String, String>>,
}

/// `[A-Za-z0-9][A-Za-z0-9._-]{0,63}` (upstream's SafeName).
pub fn is_safe_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The team's template or a platform one, by name.
pub async fn resolve_template(app: &App, team_id: Uuid, name: &str) -> ApiResult<TemplateRow> {
    if !is_safe_name(name) {
        return Err(ApiError::invalid(format!(
            "template name {name:?} is not valid (letters, digits, '.', '_', '-'; up to 64)"
        )));
    }
    sqlx::query_as::<_, TemplateRow>(
        "SELECT id, team_id, name, type, vcpus, memory_mb, host_id, default_user, default_env
           FROM templates WHERE name = $1 AND (team_id = $2 OR team_id = $3)
          ORDER BY (team_id = $2) DESC LIMIT 1",
    )
    .bind(name)
    .bind(team_id)
    .bind(Uuid::nil())
    .fetch_optional(&app.db)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("template {name:?} not found")))
}

fn validate_metadata(metadata: &Metadata) -> ApiResult<()> {
    if metadata.len() > 20 {
        return Err(ApiError::invalid("metadata may have at most 20 keys"));
    }
    for (k, v) in metadata {
        if !is_safe_name(k) {
            return Err(ApiError::invalid(format!(
                "metadata key {k:?} must match [a-zA-Z0-9][a-zA-Z0-9._-]{{0,63}}"
            )));
        }
        if SYSTEM_METADATA_KEYS.contains(&k.as_str()) {
            return Err(ApiError::invalid(format!(
                "metadata key {k:?} is reserved for the system"
            )));
        }
        if v.chars().count() > 64 {
            return Err(ApiError::invalid(format!(
                "metadata value of {k:?} is longer than 64 characters"
            )));
        }
    }
    Ok(())
}

fn in_range(name: &str, v: i32, lo: i32, hi: i32) -> ApiResult<i32> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::invalid(format!(
            "{name} must be between {lo} and {hi} (got {v})"
        )))
    }
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

/// `POST /v1/capsules`: schedules, boots, and answers with the capsule (running, or still
/// `starting` when the boot outlasts [`CREATE_ANSWER_WITHIN`]; it finishes in the background
/// either way, so a client that disconnects leaves no half-made capsule).
pub async fn create(
    app: &std::sync::Arc<App>,
    auth: &AuthContext,
    req: CreateCapsuleRequest,
) -> ApiResult<Capsule> {
    let template_name = req.template.as_deref().unwrap_or(DEFAULT_TEMPLATE);
    let template = resolve_template(app, auth.team_id, template_name).await?;
    if template.kind == "snapshot" {
        return Err(ApiError::invalid(format!(
            "template {template_name:?} is a snapshot; starting capsules from snapshots is not supported by this control plane yet"
        )));
    }
    let vcpus = in_range("vcpus", req.vcpus.unwrap_or(DEFAULT_VCPUS), 1, 16)?;
    let memory_mb = in_range(
        "memory_mb",
        req.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
        128,
        65536,
    )?;
    let disk_mb = in_range(
        "disk_size_mb",
        req.disk_size_mb.unwrap_or(DEFAULT_DISK_MB),
        1024,
        512 * 1024,
    )?;
    let timeout_sec = match req.timeout_sec.unwrap_or(0) {
        t if t < 0 => return Err(ApiError::invalid("timeout_sec must be 0 or more")),
        0 => 0,
        t => t.clamp(app.settings.min_capsule_timeout_sec, 30 * 24 * 3600),
    };
    let metadata = req.metadata.unwrap_or_default();
    validate_metadata(&metadata)?;

    let id = ids::new_uuid();
    let mut tx = app.db.begin().await?;
    let host = scheduler::select_host(
        &mut tx,
        auth.team_id,
        scheduler::Request {
            vcpus,
            memory_mb,
            disk_mb,
        },
    )
    .await?;
    let sql = format!(
        "INSERT INTO sandboxes (id, team_id, host_id, template, status, vcpus, memory_mb, timeout_sec,
                                disk_size_mb, template_id, template_team_id, metadata)
         VALUES ($1, $2, $3, $4, 'starting', $5, $6, $7, $8, $9, $10, $11) RETURNING {COLUMNS}"
    );
    let row = sqlx::query_as::<_, CapsuleRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(auth.team_id)
        .bind(host.id)
        .bind(&template.name)
        .bind(vcpus)
        .bind(memory_mb)
        .bind(timeout_sec)
        .bind(disk_mb)
        .bind(template.id)
        .bind(template.team_id)
        .bind(Json(&metadata))
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;

    let rpc = pb::CreateSandboxRequest {
        sandbox_id: row.public_id(),
        vcpus,
        memory_mb,
        timeout_sec,
        disk_size_mb: disk_mb,
        team_id: template.team_id.to_string(),
        template_id: template.id.to_string(),
        default_user: template.default_user.clone(),
        default_env: template.default_env.0.clone().into_iter().collect(),
        metadata: metadata.clone().into_iter().collect(),
        ..Default::default()
    };
    let client = app.agents.client_for(host.id, &host.address);
    let boot = tokio::spawn(finish_create(
        app.clone(),
        row.clone(),
        client,
        rpc,
        auth.actor(),
    ));
    match tokio::time::timeout(CREATE_ANSWER_WITHIN, boot).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(ApiError::internal(format!("create task failed: {join}"))),
        // Still booting: the task finishes on its own; the client polls.
        Err(_) => Ok(load(app, id).await?.to_api()),
    }
}

async fn finish_create(
    app: std::sync::Arc<App>,
    row: CapsuleRow,
    client: AgentClient,
    rpc: pb::CreateSandboxRequest,
    actor: Actor,
) -> ApiResult<Capsule> {
    #[allow(deprecated)]
    let rpc = pb::CreateSandboxRequest {
        template: "minimal".into(),
        ..rpc
    };
    let result = client
        .call_with_timeout::<_, pb::CreateSandboxResponse>(
            "CreateSandbox",
            &rpc,
            CREATE_RPC_TIMEOUT,
        )
        .await;
    match result {
        Ok(resp) => {
            let mut metadata = row.metadata.0.clone();
            for key in SYSTEM_METADATA_KEYS {
                if let Some(v) = resp.metadata.get(key) {
                    metadata.insert(key.to_string(), v.clone());
                }
            }
            let sql = format!(
                "UPDATE sandboxes SET status = 'running', host_ip = $2, metadata = $3,
                        started_at = now(), last_active_at = now(), last_updated = now()
                  WHERE id = $1 AND status = 'starting' RETURNING {COLUMNS}"
            );
            let updated = sqlx::query_as::<_, CapsuleRow>(sqlx::AssertSqlSafe(sql))
                .bind(row.id)
                .bind(&resp.host_ip)
                .bind(Json(&metadata))
                .fetch_optional(&app.db)
                .await?;
            match updated {
                Some(updated) => {
                    capsule_event(
                        &app,
                        &updated,
                        EventKind::CapsuleCreate,
                        &actor,
                        Some(Outcome::Success),
                        Metadata::new(),
                        None,
                    )
                    .await;
                    tracing::info!(capsule = %updated.public_id(), host = %client.host_id, "capsule running");
                    Ok(updated.to_api())
                }
                None => {
                    // Destroyed while booting: do not leave the VM behind.
                    destroy_on_agent(&client, &row.public_id()).await;
                    Ok(load(&app, row.id).await?.to_api())
                }
            }
        }
        Err(err) => {
            let public = row.public_id();
            tracing::warn!(capsule = %public, error = %err, "create failed");
            let failed = transition(&app, row.id, &["starting"], CapsuleStatus::Error)
                .await?
                .unwrap_or(row.clone());
            // The agent may have half-built it; make sure nothing lingers.
            destroy_on_agent(&client, &public).await;
            let mut metadata = Metadata::new();
            metadata.insert("reason".into(), "cleanup_after_create_error".into());
            capsule_event(
                &app,
                &failed,
                EventKind::CapsuleCreate,
                &actor,
                Some(Outcome::Error),
                metadata,
                Some(err.message.clone()),
            )
            .await;
            Err(ApiError::from_agent(err, &format!("capsule {public}")))
        }
    }
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

/// Destroys a capsule on its host (if it still has one) and marks it stopped.
pub async fn destroy_row(
    app: &App,
    row: CapsuleRow,
    actor: &Actor,
    reason: Option<&str>,
) -> ApiResult<()> {
    if row.status().is_terminal() {
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
        destroy_on_agent(&client, &row.public_id()).await;
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
    let (row, client) = running(app, auth, id).await?;
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

/// Ends a transitional state (`pausing`, `resuming`): moves the capsule on to `done` when the
/// agent call succeeded, back to `before` when it failed, and raises `kind` with the outcome
/// either way. So a failed pause leaves a running capsule, and a failed resume a paused one.
async fn settle<T>(
    app: &App,
    during: &CapsuleRow,
    result: ApiResult<T>,
    done: CapsuleStatus,
    before: CapsuleStatus,
    kind: EventKind,
    actor: &Actor,
) -> ApiResult<Capsule> {
    let from = [during.status.as_str()];
    let (to, outcome, error) = match &result {
        Ok(_) => (done, Outcome::Success, None),
        Err(e) => (before, Outcome::Error, Some(e.to_string())),
    };
    let row = transition(app, during.id, &from, to)
        .await?
        .unwrap_or_else(|| during.clone());
    capsule_event(
        app,
        &row,
        kind,
        actor,
        Some(outcome),
        Metadata::new(),
        error,
    )
    .await;
    result.map(|_| row.to_api())
}

/// `POST /v1/capsules/{id}/pause`. A failed pause leaves the capsule running.
pub async fn pause(app: &App, auth: &AuthContext, id: &str) -> ApiResult<Capsule> {
    let row = get_for_team(app, auth, id).await?;
    let pausing = transition(app, row.id, &["running"], CapsuleStatus::Pausing)
        .await?
        .ok_or_else(|| {
            ApiError::invalid_state(format!(
                "capsule {id} is not running (status: {})",
                row.status()
            ))
        })?;
    let result = async {
        host_client(app, &row)
            .await?
            .call::<_, pb::PauseSandboxResponse>(
                "PauseSandbox",
                &pb::PauseSandboxRequest {
                    sandbox_id: row.public_id(),
                },
            )
            .await
            .map_err(|e| ApiError::from_agent(e, &format!("capsule {id}")))
    }
    .await;
    settle(
        app,
        &pausing,
        result,
        CapsuleStatus::Paused,
        CapsuleStatus::Running,
        EventKind::CapsulePause,
        &auth.actor(),
    )
    .await
}

/// `POST /v1/capsules/{id}/resume`. A failed resume leaves the capsule paused.
pub async fn resume(app: &App, auth: &AuthContext, id: &str) -> ApiResult<Capsule> {
    let row = get_for_team(app, auth, id).await?;
    let resuming = transition(app, row.id, &["paused"], CapsuleStatus::Resuming)
        .await?
        .ok_or_else(|| {
            ApiError::invalid_state(format!(
                "capsule {id} is not paused (status: {})",
                row.status()
            ))
        })?;
    let result = async {
        let resp = host_client(app, &row)
            .await?
            .call_with_timeout::<_, pb::ResumeSandboxResponse>(
                "ResumeSandbox",
                &pb::ResumeSandboxRequest {
                    sandbox_id: row.public_id(),
                    timeout_sec: row.timeout_sec,
                    kernel_version: row
                        .metadata
                        .0
                        .get("kernel_version")
                        .cloned()
                        .unwrap_or_default(),
                    ..Default::default()
                },
                CREATE_RPC_TIMEOUT,
            )
            .await
            .map_err(|e| ApiError::from_agent(e, &format!("capsule {id}")))?;
        // A resumed VM may sit behind a new address.
        sqlx::query("UPDATE sandboxes SET host_ip = $2, last_active_at = now() WHERE id = $1")
            .bind(row.id)
            .bind(&resp.host_ip)
            .execute(&app.db)
            .await?;
        Ok(())
    }
    .await;
    settle(
        app,
        &resuming,
        result,
        CapsuleStatus::Running,
        CapsuleStatus::Paused,
        EventKind::CapsuleResume,
        &auth.actor(),
    )
    .await
}
