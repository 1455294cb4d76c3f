//! `POST /v1/capsules`: template resolution, validation, scheduling and the boot.
//!
//! A capsule from a base image goes to the least-loaded eligible host. A capsule from a snapshot
//! template goes to the host holding the snapshot's files (they are host-local) and gets the
//! snapshot's vCPUs, memory and disk: the snapshot decides, and an explicit different value is
//! refused (400) rather than silently ignored.

use crate::agents::AgentClient;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::ids;
use crate::service::capsules::{
    COLUMNS, CapsuleRow, SYSTEM_METADATA_KEYS, capsule_event, destroy_on_agent, is_safe_name, load,
    transition,
};
use crate::service::scheduler;
use crate::state::{App, AppState};
use sqlx::types::Json;
use std::time::Duration;
use uuid::Uuid;
use wrenn_api_types::Metadata;
use wrenn_api_types::capsule::{Capsule, CapsuleStatus, CreateCapsuleRequest};
use wrenn_api_types::events::{Actor, EventKind, Outcome};
use wrenn_protocol::hostagent as pb;

/// Defaults of `POST /v1/capsules` (client contract §4.1).
pub const DEFAULT_TEMPLATE: &str = "minimal-ubuntu";
pub const DEFAULT_VCPUS: i32 = 1;
pub const DEFAULT_MEMORY_MB: i32 = 512;
pub const DEFAULT_DISK_MB: i32 = 5120;
/// How long the agent may take to boot a VM (TCG is slow).
pub const CREATE_RPC_TIMEOUT: Duration = Duration::from_secs(240);
/// The name every host knows its built-in base image by.
const BASE_IMAGE: &str = "minimal";

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
    pub disk_size_mb: Option<i32>,
    pub host_id: Option<Uuid>,
    pub default_user: String,
    pub default_env: Json<std::collections::BTreeMap<String, String>>,
}

impl TemplateRow {
    pub fn is_snapshot(&self) -> bool {
        self.kind == "snapshot"
    }
}

/// The team's template or a platform one, by name.
pub async fn resolve_template(app: &App, team_id: Uuid, name: &str) -> ApiResult<TemplateRow> {
    if !is_safe_name(name) {
        return Err(ApiError::invalid(format!(
            "template name {name:?} is not valid (letters, digits, '.', '_', '-'; up to 64)"
        )));
    }
    sqlx::query_as::<_, TemplateRow>(
        "SELECT id, team_id, name, type, vcpus, memory_mb, disk_size_mb, host_id, default_user,
                default_env
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

/// A size the snapshot fixes: the request may repeat it but not change it.
fn from_snapshot(
    template: &TemplateRow,
    field: &str,
    requested: Option<i32>,
    snapshot: i32,
) -> ApiResult<i32> {
    match requested {
        Some(v) if v != snapshot => Err(ApiError::invalid(format!(
            "{field} comes from snapshot {:?} ({snapshot}); omit it or pass {snapshot} (got {v})",
            template.name
        ))),
        _ => Ok(snapshot),
    }
}

/// The capsule's vCPUs, memory and disk: the request's (or the defaults) for a base image, the
/// snapshot's for a snapshot.
fn sizes(template: &TemplateRow, req: &CreateCapsuleRequest) -> ApiResult<scheduler::Request> {
    if template.is_snapshot() {
        return Ok(scheduler::Request {
            vcpus: from_snapshot(template, "vcpus", req.vcpus, template.vcpus)?,
            memory_mb: from_snapshot(template, "memory_mb", req.memory_mb, template.memory_mb)?,
            disk_mb: match template.disk_size_mb {
                Some(disk) => from_snapshot(template, "disk_size_mb", req.disk_size_mb, disk)?,
                None => req.disk_size_mb.unwrap_or(DEFAULT_DISK_MB),
            },
        });
    }
    Ok(scheduler::Request {
        vcpus: in_range("vcpus", req.vcpus.unwrap_or(DEFAULT_VCPUS), 1, 16)?,
        memory_mb: in_range(
            "memory_mb",
            req.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
            128,
            65536,
        )?,
        disk_mb: in_range(
            "disk_size_mb",
            req.disk_size_mb.unwrap_or(DEFAULT_DISK_MB),
            1024,
            512 * 1024,
        )?,
    })
}

/// `POST /v1/capsules`: schedules, boots, and answers with the capsule (running, or still
/// `starting` when the boot outlasts the answer time; it finishes in the background either way,
/// so a client that disconnects leaves no half-made capsule).
pub async fn create(
    app: &AppState,
    auth: &AuthContext,
    req: CreateCapsuleRequest,
) -> ApiResult<Capsule> {
    let template_name = req.template.as_deref().unwrap_or(DEFAULT_TEMPLATE);
    let template = resolve_template(app, auth.team_id, template_name).await?;
    let size = sizes(&template, &req)?;
    let timeout_sec = match req.timeout_sec.unwrap_or(0) {
        t if t < 0 => return Err(ApiError::invalid("timeout_sec must be 0 or more")),
        0 => 0,
        t => t.clamp(app.settings.min_capsule_timeout_sec, 30 * 24 * 3600),
    };
    let metadata = req.metadata.unwrap_or_default();
    validate_metadata(&metadata)?;

    let id = ids::new_uuid();
    let mut tx = app.db.begin().await?;
    let host = if template.is_snapshot() {
        let Some(snapshot_host) = template.host_id else {
            return Err(ApiError::host_unavailable(format!(
                "snapshot {template_name:?} has no host any more (its host was removed); it \
                 cannot be started"
            )));
        };
        scheduler::select_snapshot_host(&mut tx, auth.team_id, size, snapshot_host, template_name)
            .await?
    } else {
        scheduler::select_host(&mut tx, auth.team_id, size).await?
    };
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
        .bind(size.vcpus)
        .bind(size.memory_mb)
        .bind(timeout_sec)
        .bind(size.disk_mb)
        .bind(template.id)
        .bind(template.team_id)
        .bind(Json(&metadata))
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;

    #[allow(deprecated)]
    let rpc = pb::CreateSandboxRequest {
        sandbox_id: row.public_id(),
        // A snapshot is restored by its id (`template_id`); base templates all use the host's
        // built-in image.
        template: if template.is_snapshot() {
            template.name.clone()
        } else {
            BASE_IMAGE.into()
        },
        vcpus: size.vcpus,
        memory_mb: size.memory_mb,
        timeout_sec,
        disk_size_mb: size.disk_mb,
        team_id: template.team_id.to_string(),
        template_id: template.id.to_string(),
        default_user: template.default_user.clone(),
        default_env: template.default_env.0.clone().into_iter().collect(),
        metadata: metadata.clone().into_iter().collect(),
    };
    let client = app.agents.client_for(host.id, &host.address);
    // What an agent failure names: "not found" from a snapshot restore means the snapshot.
    let what = if template.is_snapshot() {
        format!(
            "snapshot {} (for capsule {})",
            template.name,
            row.public_id()
        )
    } else {
        format!("capsule {}", row.public_id())
    };
    let boot = tokio::spawn(finish_create(
        app.clone(),
        row.clone(),
        client,
        rpc,
        auth.actor(),
        what,
    ));
    match tokio::time::timeout(app.settings.answer_within, boot).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(ApiError::internal(format!("create task failed: {join}"))),
        // Still booting: the task finishes on its own; the client polls.
        Err(_) => Ok(load(app, id).await?.to_api()),
    }
}

async fn finish_create(
    app: AppState,
    row: CapsuleRow,
    client: AgentClient,
    rpc: pb::CreateSandboxRequest,
    actor: Actor,
    what: String,
) -> ApiResult<Capsule> {
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
            Err(ApiError::from_agent(err, &what))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(kind: &str, disk: Option<i32>) -> TemplateRow {
        TemplateRow {
            id: Uuid::nil(),
            team_id: Uuid::nil(),
            name: "snap".into(),
            kind: kind.into(),
            vcpus: 2,
            memory_mb: 1024,
            disk_size_mb: disk,
            host_id: None,
            default_user: "root".into(),
            default_env: Json(Default::default()),
        }
    }

    #[test]
    fn a_snapshot_decides_its_sizes() {
        let snap = template("snapshot", Some(4096));
        let got = sizes(&snap, &CreateCapsuleRequest::default()).expect("sizes");
        assert_eq!((got.vcpus, got.memory_mb, got.disk_mb), (2, 1024, 4096));
        let same = CreateCapsuleRequest {
            vcpus: Some(2),
            memory_mb: Some(1024),
            ..Default::default()
        };
        assert!(sizes(&snap, &same).is_ok());
        for conflicting in [
            CreateCapsuleRequest {
                vcpus: Some(1),
                ..Default::default()
            },
            CreateCapsuleRequest {
                memory_mb: Some(512),
                ..Default::default()
            },
            CreateCapsuleRequest {
                disk_size_mb: Some(8192),
                ..Default::default()
            },
        ] {
            assert!(sizes(&snap, &conflicting).is_err(), "{conflicting:?}");
        }
    }

    #[test]
    fn a_base_image_takes_the_requested_sizes() {
        let base = template("base", None);
        let got = sizes(&base, &CreateCapsuleRequest::default()).expect("defaults");
        assert_eq!(
            (got.vcpus, got.memory_mb, got.disk_mb),
            (DEFAULT_VCPUS, DEFAULT_MEMORY_MB, DEFAULT_DISK_MB)
        );
        let bad = CreateCapsuleRequest {
            vcpus: Some(0),
            ..Default::default()
        };
        assert!(sizes(&base, &bad).is_err());
    }
}
