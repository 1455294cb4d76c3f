//! Pause, resume and wake: a capsule between `running` and `paused`.
//!
//! Every change starts with a conditional UPDATE (`running → pausing`, `paused → resuming`): that
//! UPDATE is the lock, so two callers never pause or resume the same capsule twice. The agent call
//! then runs in a detached task that settles the row whatever happens to the HTTP request; the
//! request waits for it up to [`Settings::answer_within`](crate::state::Settings) and otherwise
//! answers with the transitional status, which the SDK polls.
//!
//! [`wake`] is what everything that needs a running capsule goes through (exec, processes,
//! files, terminals, the port proxy): a paused capsule is resumed on the spot instead of
//! answering 409, and a capsule in the middle of a transition is waited for.

use crate::agents::AgentClient;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::service::capsules::{
    self, COLUMNS, CapsuleRow, SYSTEM_METADATA_KEYS, capsule_event, host_client, load, transition,
};
use crate::service::metrics;
use crate::state::{App, AppState};
use sqlx::types::Json;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;
use wrenn_api_types::capsule::{Capsule, CapsuleStatus};
use wrenn_api_types::events::{Actor, EventKind, Outcome};
use wrenn_api_types::{ErrorCode, Metadata};
use wrenn_protocol::connect::{self, Code};
use wrenn_protocol::hostagent as pb;

/// How long the agent may take to snapshot a VM to disk.
pub const PAUSE_RPC_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the agent may take to bring a VM back from its snapshot.
pub const RESUME_RPC_TIMEOUT: Duration = Duration::from_secs(120);
/// A request that needs a running capsule waits this long for it (pause in progress, then the
/// resume); the SDK's own timeout is 30 s.
pub const WAKE_WITHIN: Duration = Duration::from_secs(25);
/// How often a waiter looks at a capsule in transition.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Metrics are flushed before a pause or destroy, but never hold it up for longer than this.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// `POST /v1/capsules/{id}/pause`. A failed pause leaves the capsule running.
pub async fn pause(app: &AppState, auth: &AuthContext, id: &str) -> ApiResult<Capsule> {
    let row = capsules::get_for_team(app, auth, id).await?;
    let pausing = transition(app, row.id, &["running"], CapsuleStatus::Pausing)
        .await?
        .ok_or_else(|| {
            ApiError::invalid_state(format!(
                "capsule {id} is not running (status: {})",
                row.status()
            ))
        })?;
    let task = tokio::spawn(finish_pause(app.clone(), pausing, auth.actor()));
    answer(app, row.id, task).await
}

/// `POST /v1/capsules/{id}/resume`: a paused capsule is resumed; one already resuming is
/// reported as it is; one being paused or snapshotted is waited for first. Anything else
/// (including a running capsule) is `invalid_state`, as the contract says.
pub async fn resume(app: &AppState, auth: &AuthContext, id: &str) -> ApiResult<Capsule> {
    let mut row = capsules::get_for_team(app, auth, id).await?;
    let deadline = Instant::now() + WAKE_WITHIN;
    loop {
        match row.status() {
            CapsuleStatus::Paused => {
                if let Some(resuming) =
                    transition(app, row.id, &["paused"], CapsuleStatus::Resuming).await?
                {
                    let task =
                        tokio::spawn(finish_resume(app.clone(), resuming, auth.actor(), None));
                    return answer(app, row.id, task).await;
                }
            }
            CapsuleStatus::Resuming => return Ok(row.to_api()),
            CapsuleStatus::Pausing | CapsuleStatus::Snapshotting if Instant::now() < deadline => {
                tokio::time::sleep(POLL_EVERY).await;
            }
            other => {
                return Err(ApiError::invalid_state(format!(
                    "capsule {id} is not paused (status: {other})"
                )));
            }
        }
        row = load(app, row.id).await?;
    }
}

/// Brings `row` to `running` for a caller that needs it: running → as is; paused → resumed
/// (`capsule.resume` by `actor`, reason `wake`); pausing, resuming or snapshotting → waited for,
/// then looked at again. Concurrent wakes resume once (the `paused → resuming` UPDATE decides
/// who calls the agent; the others wait). Gives up with `invalid_state` after [`WAKE_WITHIN`]
/// (the resume itself carries on) or when the capsule is in a state that cannot run.
pub async fn wake(app: &AppState, row: CapsuleRow, actor: &Actor) -> ApiResult<CapsuleRow> {
    let deadline = Instant::now() + WAKE_WITHIN;
    let mut row = row;
    loop {
        match row.status() {
            CapsuleStatus::Running => return Ok(row),
            CapsuleStatus::Paused => {
                if let Some(resuming) =
                    transition(app, row.id, &["paused"], CapsuleStatus::Resuming).await?
                {
                    tracing::info!(capsule = %row.public_id(), "waking a paused capsule");
                    let task = tokio::spawn(finish_resume(
                        app.clone(),
                        resuming,
                        actor.clone(),
                        Some("wake"),
                    ));
                    let left = deadline.saturating_duration_since(Instant::now());
                    row = match tokio::time::timeout(left, task).await {
                        Ok(Ok(result)) => result?,
                        Ok(Err(join)) => {
                            return Err(ApiError::internal(format!("resume task failed: {join}")));
                        }
                        Err(_) => return Err(still_busy(&row.public_id(), "resuming")),
                    };
                    continue;
                }
            }
            status @ (CapsuleStatus::Pausing
            | CapsuleStatus::Resuming
            | CapsuleStatus::Snapshotting) => {
                if Instant::now() >= deadline {
                    return Err(still_busy(&row.public_id(), status.as_str()));
                }
                tokio::time::sleep(POLL_EVERY).await;
            }
            other => {
                return Err(ApiError::invalid_state(format!(
                    "capsule {} is not running (status: {other})",
                    row.public_id()
                )));
            }
        }
        row = load(app, row.id).await?;
    }
}

fn still_busy(id: &str, status: &str) -> ApiError {
    ApiError::invalid_state(format!(
        "capsule {id} is still {status}; it will be running shortly, retry"
    ))
}

/// Waits for a lifecycle task up to the configured answer time; after that the caller gets the
/// capsule as it is now (transitional) and the task finishes on its own.
async fn answer(
    app: &App,
    id: Uuid,
    task: JoinHandle<ApiResult<CapsuleRow>>,
) -> ApiResult<Capsule> {
    match tokio::time::timeout(app.settings.answer_within, task).await {
        Ok(Ok(result)) => result.map(|row| row.to_api()),
        Ok(Err(join)) => Err(ApiError::internal(format!("lifecycle task failed: {join}"))),
        Err(_) => Ok(load(app, id).await?.to_api()),
    }
}

/// Moves a capsule out of its transitional state (`during`) to `to`, and raises `kind` with the
/// outcome. Returns the row as it is afterwards (unchanged if someone else moved it meanwhile,
/// e.g. a destroy).
async fn settle(
    app: &App,
    during: &CapsuleRow,
    to: CapsuleStatus,
    kind: EventKind,
    actor: &Actor,
    metadata: Metadata,
    error: Option<String>,
) -> ApiResult<CapsuleRow> {
    let row = match transition(app, during.id, &[during.status.as_str()], to).await? {
        Some(row) => row,
        None => load(app, during.id).await?,
    };
    let outcome = if error.is_none() {
        Outcome::Success
    } else {
        Outcome::Error
    };
    capsule_event(app, &row, kind, actor, Some(outcome), metadata, error).await;
    Ok(row)
}

/// The agent's own view of one sandbox (`running`, `paused`), or `None` if it does not list it
/// or cannot be asked: used when the agent refuses a pause or resume as "not in that state".
async fn agent_status(client: &AgentClient, sandbox_id: &str) -> Option<String> {
    let list = tokio::time::timeout(
        Duration::from_secs(10),
        client.call::<_, pb::ListSandboxesResponse>("ListSandboxes", &pb::ListSandboxesRequest {}),
    )
    .await
    .ok()?
    .ok()?;
    list.sandboxes
        .into_iter()
        .find(|s| s.sandbox_id == sandbox_id)
        .map(|s| s.status)
}

/// Persists a running capsule's metrics ring before it stops producing points (pause,
/// destroy). Best effort: a failure is logged and the caller carries on.
pub async fn flush_metrics(app: &App, client: &AgentClient, row: &CapsuleRow) {
    let req = pb::FlushSandboxMetricsRequest {
        sandbox_id: row.public_id(),
    };
    match tokio::time::timeout(
        FLUSH_TIMEOUT,
        client.call::<_, pb::FlushSandboxMetricsResponse>("FlushSandboxMetrics", &req),
    )
    .await
    {
        Ok(Ok(flushed)) => {
            if let Err(e) = metrics::persist_flush(app, row.id, &flushed).await {
                tracing::warn!(capsule = %row.public_id(), error = %e, "could not store flushed metrics");
            }
        }
        Ok(Err(e)) => {
            tracing::debug!(capsule = %row.public_id(), error = %e, "metrics flush failed")
        }
        Err(_) => tracing::debug!(capsule = %row.public_id(), "metrics flush timed out"),
    }
}

/// The pause itself: flush metrics, snapshot on the agent, settle. Any failure but "already
/// paused" leaves the capsule running (the agent guarantees the VM keeps running then).
async fn finish_pause(app: AppState, pausing: CapsuleRow, actor: Actor) -> ApiResult<CapsuleRow> {
    let public = pausing.public_id();
    let what = format!("capsule {public}");
    let settle_as = |status, error| {
        settle(
            &app,
            &pausing,
            status,
            EventKind::CapsulePause,
            &actor,
            Metadata::new(),
            error,
        )
    };
    let client = match host_client(&app, &pausing).await {
        Ok(client) => client,
        Err(e) => {
            settle_as(CapsuleStatus::Running, Some(e.to_string())).await?;
            return Err(e);
        }
    };
    flush_metrics(&app, &client, &pausing).await;
    let req = pb::PauseSandboxRequest {
        sandbox_id: public.clone(),
    };
    let result = client
        .call_with_timeout::<_, pb::PauseSandboxResponse>("PauseSandbox", &req, PAUSE_RPC_TIMEOUT)
        .await;
    let err = match result {
        Ok(_) => None,
        // Paused by its idle timer a moment before: the pause happened all the same.
        Err(e)
            if e.code == Code::FailedPrecondition
                && agent_status(&client, &public).await.as_deref() == Some("paused") =>
        {
            None
        }
        Err(e) => Some(e),
    };
    match err {
        None => {
            tracing::info!(capsule = %public, "capsule paused");
            settle_as(CapsuleStatus::Paused, None).await
        }
        Some(e) => {
            tracing::warn!(capsule = %public, error = %e, "pause failed; the capsule keeps running");
            settle_as(CapsuleStatus::Running, Some(e.message.clone())).await?;
            Err(lifecycle_error(e, &what, "pause"))
        }
    }
}

/// An agent failure of a pause or resume, for the caller. "Not found" from the agent means the
/// host lost the sandbox, not that the caller's capsule id is unknown: it is an agent error.
fn lifecycle_error(e: connect::Error, what: &str, action: &str) -> ApiError {
    match e.code {
        Code::NotFound => ApiError::new(
            ErrorCode::AgentError,
            format!(
                "could not {action} {what}: its host does not have it ({})",
                e.message
            ),
        ),
        _ => ApiError::from_agent(e, what),
    }
}

/// The defaults a capsule's processes get (user, environment), from the template it came from;
/// the built-in defaults when that template is gone.
async fn template_defaults(
    app: &App,
    template_id: Option<Uuid>,
) -> (String, BTreeMap<String, String>) {
    let row: Option<(String, Json<BTreeMap<String, String>>)> = match template_id {
        Some(id) => sqlx::query_as("SELECT default_user, default_env FROM templates WHERE id = $1")
            .bind(id)
            .fetch_optional(&app.db)
            .await
            .unwrap_or_default(),
        None => None,
    };
    row.map(|(user, env)| (user, env.0))
        .unwrap_or_else(|| ("root".into(), BTreeMap::new()))
}

/// The resume itself: the agent restores the VM (its address may change), then the row is
/// `running`. A damaged snapshot (`data_loss`) can never be resumed: the capsule becomes
/// `error` and the caller is told to destroy it. Any other failure leaves it paused.
async fn finish_resume(
    app: AppState,
    resuming: CapsuleRow,
    actor: Actor,
    reason: Option<&'static str>,
) -> ApiResult<CapsuleRow> {
    let public = resuming.public_id();
    let what = format!("capsule {public}");
    let mut metadata = Metadata::new();
    if let Some(reason) = reason {
        metadata.insert("reason".into(), reason.into());
    }
    let settle_failed = |status, error| {
        settle(
            &app,
            &resuming,
            status,
            EventKind::CapsuleResume,
            &actor,
            metadata.clone(),
            error,
        )
    };
    let client = match host_client(&app, &resuming).await {
        Ok(client) => client,
        Err(e) => {
            settle_failed(CapsuleStatus::Paused, Some(e.to_string())).await?;
            return Err(e);
        }
    };
    let (default_user, default_env) = template_defaults(&app, resuming.template_id).await;
    let req = pb::ResumeSandboxRequest {
        sandbox_id: public.clone(),
        timeout_sec: resuming.timeout_sec,
        default_user,
        default_env: default_env.into_iter().collect(),
        kernel_version: resuming
            .metadata
            .0
            .get("kernel_version")
            .cloned()
            .unwrap_or_default(),
    };
    let result = client
        .call_with_timeout::<_, pb::ResumeSandboxResponse>(
            "ResumeSandbox",
            &req,
            RESUME_RPC_TIMEOUT,
        )
        .await;
    let resumed = match result {
        Ok(resp) => Some((resp.host_ip, resp.metadata)),
        // Already running on the host (resumed by someone the control plane did not see).
        Err(e)
            if e.code == Code::FailedPrecondition
                && agent_status(&client, &public).await.as_deref() == Some("running") =>
        {
            None
        }
        Err(e) if e.code == Code::DataLoss => {
            tracing::error!(capsule = %public, error = %e, "the capsule's snapshot is damaged");
            settle_failed(
                CapsuleStatus::Error,
                Some(format!("snapshot damaged: {}", e.message)),
            )
            .await?;
            return Err(ApiError::new(
                ErrorCode::AgentError,
                format!(
                    "capsule {public} cannot be resumed: its snapshot is damaged ({}); the \
                     capsule must be destroyed",
                    e.message
                ),
            ));
        }
        Err(e) => {
            tracing::warn!(capsule = %public, error = %e, "resume failed; the capsule stays paused");
            settle_failed(CapsuleStatus::Paused, Some(e.message.clone())).await?;
            return Err(lifecycle_error(e, &what, "resume"));
        }
    };
    let mut row_metadata = resuming.metadata.0.clone();
    let mut host_ip = None;
    if let Some((ip, agent_metadata)) = resumed {
        host_ip = Some(ip);
        for key in SYSTEM_METADATA_KEYS {
            if let Some(v) = agent_metadata.get(key) {
                row_metadata.insert(key.to_string(), v.clone());
            }
        }
    }
    let sql = format!(
        "UPDATE sandboxes SET status = 'running', host_ip = COALESCE($2, host_ip), metadata = $3,
                last_active_at = now(), last_updated = now()
          WHERE id = $1 AND status = 'resuming' RETURNING {COLUMNS}"
    );
    let updated = sqlx::query_as::<_, CapsuleRow>(sqlx::AssertSqlSafe(sql))
        .bind(resuming.id)
        .bind(host_ip)
        .bind(Json(&row_metadata))
        .fetch_optional(&app.db)
        .await?;
    match updated {
        Some(running) => {
            tracing::info!(capsule = %public, "capsule resumed");
            capsule_event(
                &app,
                &running,
                EventKind::CapsuleResume,
                &actor,
                Some(Outcome::Success),
                metadata,
                None,
            )
            .await;
            Ok(running)
        }
        None => {
            // Destroyed while it resumed: do not leave the VM running.
            let now = load(&app, resuming.id).await?;
            if matches!(
                now.status(),
                CapsuleStatus::Stopping | CapsuleStatus::Stopped
            ) {
                capsules::destroy_on_agent(&client, &public).await;
            }
            Ok(now)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_that_lost_the_sandbox_is_an_agent_error_not_an_unknown_capsule() {
        let e = lifecycle_error(
            connect::Error::new(Code::NotFound, "Sandbox cl-x not found"),
            "capsule cl-x",
            "resume",
        );
        assert_eq!(e.code(), ErrorCode::AgentError);
        let e = lifecycle_error(
            connect::Error::new(Code::Unavailable, "down"),
            "capsule cl-x",
            "pause",
        );
        assert_eq!(e.code(), ErrorCode::HostUnavailable);
    }
}
