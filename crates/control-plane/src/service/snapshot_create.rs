//! `POST /v1/snapshots`: a template from a capsule's memory and disk.
//!
//! The source capsule (running or paused) is `snapshotting` while its host copies the snapshot,
//! then goes back to exactly the state it had: a running one keeps running (the agent freezes it
//! briefly), a paused one stays paused. The template's files live on that host only; its row
//! records the host, and capsules created from it are scheduled there.
//!
//! Overwriting a name (`?overwrite=true`) creates the new files first, then swaps the rows in
//! one transaction, then deletes the old files: at every moment the name resolves to a complete
//! template, old or new.

use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult, is_unique_violation};
use crate::ids;
use crate::service::capsules::{self, CapsuleRow, is_safe_name, transition};
use crate::service::snapshots::{self, COLUMNS, PLATFORM_TEAM, TemplateRow, snapshot_event};
use crate::state::{App, AppState};
use std::time::Duration;
use uuid::Uuid;
use wrenn_api_types::capsule::CapsuleStatus;
use wrenn_api_types::events::{Actor, EventKind, Outcome};
use wrenn_api_types::snapshots::{CreateSnapshotRequest, Template};
use wrenn_protocol::hostagent as pb;

/// How long the agent may take to copy a snapshot: the SDK gives the whole call 60 s.
pub const SNAPSHOT_RPC_TIMEOUT: Duration = Duration::from_secs(50);

/// `template-` and 8 hex digits, as upstream names unnamed snapshots.
pub fn default_name() -> String {
    format!("template-{}", &Uuid::new_v4().simple().to_string()[..8])
}

/// The team's template of that name, if any (platform templates are not the team's).
async fn team_template(app: &App, team_id: Uuid, name: &str) -> ApiResult<Option<TemplateRow>> {
    let sql = format!("SELECT {COLUMNS} FROM templates WHERE team_id = $1 AND name = $2");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(team_id)
        .bind(name)
        .fetch_optional(&app.db)
        .await?)
}

/// Whether `name` may be (re)used by the team: never a platform template's name; an existing
/// team template only with `overwrite`, and never a protected one.
fn check_name(name: &str, existing: Option<&TemplateRow>, overwrite: bool) -> ApiResult<()> {
    match existing {
        Some(old) if old.protected => Err(ApiError::forbidden(format!(
            "template {name} is protected and cannot be replaced"
        ))),
        Some(_) if !overwrite => Err(ApiError::conflict(format!(
            "the team already has a template named {name}; pass overwrite=true to replace it"
        ))),
        _ => Ok(()),
    }
}

async fn is_platform_name(app: &App, name: &str) -> ApiResult<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM templates WHERE team_id = $1 AND name = $2)",
    )
    .bind(PLATFORM_TEAM)
    .bind(name)
    .fetch_one(&app.db)
    .await?)
}

/// `POST /v1/snapshots[?overwrite=true]`.
pub async fn create(
    app: &AppState,
    auth: &AuthContext,
    req: CreateSnapshotRequest,
    overwrite: bool,
) -> ApiResult<Template> {
    let name = req
        .name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(default_name);
    if !is_safe_name(&name) {
        return Err(ApiError::invalid(format!(
            "snapshot name {name:?} is not valid (start with a letter or digit; then letters, \
             digits, '.', '_', '-'; up to 64)"
        )));
    }
    let capsule = capsules::get_for_team(app, auth, &req.sandbox_id).await?;
    if is_platform_name(app, &name).await? {
        return Err(ApiError::conflict(format!(
            "{name} is the name of a platform template; choose another"
        )));
    }
    check_name(
        &name,
        team_template(app, auth.team_id, &name).await?.as_ref(),
        overwrite,
    )?;
    let (during, before) = mark_snapshotting(app, &capsule).await?;
    // Detached: a client that goes away must not leave the capsule `snapshotting`.
    let task = tokio::spawn(finish(
        app.clone(),
        during,
        before,
        name,
        overwrite,
        auth.actor(),
    ));
    task.await
        .map_err(|join| ApiError::internal(format!("snapshot task failed: {join}")))?
}

/// `running|paused → snapshotting`; returns the row and the status to go back to.
async fn mark_snapshotting(
    app: &App,
    capsule: &CapsuleRow,
) -> ApiResult<(CapsuleRow, CapsuleStatus)> {
    for before in [CapsuleStatus::Running, CapsuleStatus::Paused] {
        if let Some(row) = transition(
            app,
            capsule.id,
            &[before.as_str()],
            CapsuleStatus::Snapshotting,
        )
        .await?
        {
            return Ok((row, before));
        }
    }
    let now = capsules::load(app, capsule.id).await?;
    Err(ApiError::invalid_state(format!(
        "capsule {} must be running or paused to be snapshotted (status: {})",
        capsule.public_id(),
        now.status()
    )))
}

async fn finish(
    app: AppState,
    during: CapsuleRow,
    before: CapsuleStatus,
    name: String,
    overwrite: bool,
    actor: Actor,
) -> ApiResult<Template> {
    let template_id = ids::new_uuid();
    let result = copy_on_host(&app, &during, template_id).await;
    // Back to exactly what it was (unless it was destroyed meanwhile).
    transition(&app, during.id, &["snapshotting"], before).await?;
    let result = match result {
        Ok(size_bytes) => store(&app, &during, template_id, &name, size_bytes, overwrite).await,
        Err(e) => Err(e),
    };
    let (outcome, error) = match &result {
        Ok(_) => (Outcome::Success, None),
        Err(e) => (Outcome::Error, Some(e.to_string())),
    };
    snapshot_event(
        &app,
        during.team_id,
        &actor,
        EventKind::SnapshotCreate,
        &name,
        &during.public_id(),
        outcome,
        error,
    )
    .await;
    result
}

/// The agent copies the snapshot into the template's files; returns their size.
async fn copy_on_host(app: &App, capsule: &CapsuleRow, template_id: Uuid) -> ApiResult<i64> {
    let client = capsules::host_client(app, capsule).await?;
    #[allow(deprecated)]
    let req = pb::CreateSnapshotRequest {
        sandbox_id: capsule.public_id(),
        name: String::new(),
        team_id: capsule.team_id.to_string(),
        template_id: template_id.to_string(),
    };
    let resp = client
        .call_with_timeout::<_, pb::CreateSnapshotResponse>(
            "CreateSnapshot",
            &req,
            SNAPSHOT_RPC_TIMEOUT,
        )
        .await
        .map_err(|e| ApiError::from_agent(e, &format!("capsule {}", capsule.public_id())))?;
    Ok(resp.size_bytes)
}

/// Inserts the template row (replacing the old one of that name when overwriting). If the row
/// cannot be stored the new files are deleted again.
async fn store(
    app: &AppState,
    capsule: &CapsuleRow,
    template_id: Uuid,
    name: &str,
    size_bytes: i64,
    overwrite: bool,
) -> ApiResult<Template> {
    match swap_rows(app, capsule, template_id, name, size_bytes, overwrite).await {
        Ok((row, replaced)) => {
            if let Some(old) = replaced {
                // The old files go after the swap; a failure only leaves files behind.
                let app = app.clone();
                tokio::spawn(async move {
                    if let Err(e) = snapshots::delete_snapshot_files(
                        &app,
                        old.team_id,
                        old.id,
                        &old.name,
                        old.host_id,
                    )
                    .await
                    {
                        tracing::warn!(template = %old.name, error = %e, "could not delete a replaced snapshot's files");
                    }
                });
            }
            Ok(row.to_api())
        }
        Err(e) => {
            let app = app.clone();
            let (team, host, name) = (capsule.team_id, capsule.host_id, name.to_string());
            tokio::spawn(async move {
                if let Err(e) =
                    snapshots::delete_snapshot_files(&app, team, template_id, &name, host).await
                {
                    tracing::warn!(template = %name, error = %e, "could not delete an unused snapshot's files");
                }
            });
            Err(e)
        }
    }
}

/// In one transaction: the old row of that name (when overwriting) goes, the new one comes.
async fn swap_rows(
    app: &App,
    capsule: &CapsuleRow,
    template_id: Uuid,
    name: &str,
    size_bytes: i64,
    overwrite: bool,
) -> ApiResult<(TemplateRow, Option<TemplateRow>)> {
    let mut tx = app.db.begin().await?;
    let sql =
        format!("SELECT {COLUMNS} FROM templates WHERE team_id = $1 AND name = $2 FOR UPDATE");
    let old: Option<TemplateRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(capsule.team_id)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    check_name(name, old.as_ref(), overwrite)?;
    if let Some(old) = &old {
        sqlx::query("DELETE FROM templates WHERE id = $1")
            .bind(old.id)
            .execute(&mut *tx)
            .await?;
    }
    let sql = format!(
        "INSERT INTO templates (id, name, type, vcpus, memory_mb, disk_size_mb, size_bytes, team_id,
                                host_id, default_user, default_env, metadata)
         SELECT $1, $2, 'snapshot', $3, $4, $5, $6, $7, $8,
                COALESCE(src.default_user, 'root'), COALESCE(src.default_env, '{{}}'::jsonb), $9
           FROM (SELECT 1) one
           LEFT JOIN templates src ON src.id = $10
         RETURNING {COLUMNS}"
    );
    let inserted = sqlx::query_as::<_, TemplateRow>(sqlx::AssertSqlSafe(sql))
        .bind(template_id)
        .bind(name)
        .bind(capsule.vcpus)
        .bind(capsule.memory_mb)
        .bind(capsule.disk_size_mb)
        .bind(size_bytes)
        .bind(capsule.team_id)
        .bind(capsule.host_id)
        .bind(sqlx::types::Json(&capsule.metadata.0))
        .bind(capsule.template_id)
        .fetch_one(&mut *tx)
        .await;
    let row = match inserted {
        Ok(row) => row,
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::conflict(format!(
                "the name {name} was taken meanwhile (by the team or the platform)"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    tx.commit().await?;
    Ok((row, old))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_safe_and_distinct() {
        let a = default_name();
        assert!(
            a.starts_with("template-") && a.len() == "template-".len() + 8,
            "{a}"
        );
        assert!(is_safe_name(&a));
        assert_ne!(a, default_name());
    }
}
