//! The host monitor: keeps capsule states true to what the hosts report.
//!
//! Every period (15 s by default):
//! - *Passive*: an online host silent for longer than the heartbeat timeout becomes
//!   `unreachable`, and its live capsules `missing` (`host.down`, `capsule.state.changed`).
//! - *Active*: every online host is asked for its sandboxes, running and paused.
//!   - Listed `paused` while the row says running (or missing): `paused` (`capsule.pause` by the
//!     system, reason `ttl_expired` when the idle timer did it, else `host_paused`: the agent
//!     paused it because it shut down or lost the control plane).
//!   - Listed `running` while the row says missing or paused: `running`.
//!   - Not listed while the row says running or missing: `paused` if the host reports it
//!     auto-paused, else `stopped` (`ttl_expired` if the idle timer destroyed it, else
//!     `host_failure`). A paused row that is not listed is left alone.
//!   - A row stuck in `pausing`/`resuming`/`snapshotting` long after any agent call could still
//!     be running (a control plane that died mid-call) takes the state the host reports.
//!   - A sandbox no capsule row owns (in any state but `stopped`) is destroyed (`orphaned`).
//!
//! The rows are read *before* the host is asked, and every change is conditional on the status
//! read: a pause or resume that lands in between makes the change a no-op instead of undoing it.

use crate::agents::AgentClient;
use crate::service::capsules::{self, COLUMNS, CapsuleRow, transition};
use crate::service::hosts::{self, HOST_COLUMNS, HostRow};
use crate::state::AppState;
use chrono::Utc;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wrenn_api_types::Metadata;
use wrenn_api_types::capsule::CapsuleStatus;
use wrenn_api_types::events::{Actor, EventKind, Outcome};
use wrenn_protocol::hostagent as pb;

/// How long a ListSandboxes call may take before the host is skipped this round.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// A capsule still `starting` after this long has lost its create task (a restarted control
/// plane): it is marked `error`.
const STARTING_GRACE: Duration = Duration::from_secs(600);
/// A capsule still `pausing`, `resuming` or `snapshotting` after this long has lost the task
/// that was settling it (every agent call involved times out well before).
const TRANSITION_GRACE: Duration = Duration::from_secs(600);

pub fn spawn(app: AppState, stop: CancellationToken) {
    let period = app.settings.host_monitor_period;
    super::every("host_monitor", period, stop, move || {
        let app = app.clone();
        async move {
            if let Err(e) = tick(&app).await {
                tracing::warn!(error = %e, "host monitor round failed");
            }
        }
    });
}

/// One round; public so tests can drive it.
pub async fn tick(app: &AppState) -> crate::ApiResult<()> {
    mark_silent_hosts(app).await?;
    let sql = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE status = 'online' AND address <> ''");
    let online = sqlx::query_as::<_, HostRow>(sqlx::AssertSqlSafe(sql))
        .fetch_all(&app.db)
        .await?;
    for host in online {
        reconcile_host(app, &host).await?;
    }
    Ok(())
}

/// Lists one host's sandboxes and brings its capsules' rows in line. Returns whether the host
/// answered.
pub async fn reconcile_host(app: &AppState, host: &HostRow) -> crate::ApiResult<bool> {
    let client = app.agents.client_for(host.id, &host.address);
    let rows = host_rows(app, host).await?;
    match tokio::time::timeout(
        LIST_TIMEOUT,
        client.call::<_, pb::ListSandboxesResponse>("ListSandboxes", &pb::ListSandboxesRequest {}),
    )
    .await
    {
        Ok(Ok(list)) => {
            reconcile(app, host, &client, rows, list).await?;
            Ok(true)
        }
        Ok(Err(e)) => {
            tracing::debug!(host = %host.public_id(), error = %e, "could not list sandboxes; trying next round");
            Ok(false)
        }
        Err(_) => {
            tracing::debug!(host = %host.public_id(), "listing sandboxes timed out; trying next round");
            Ok(false)
        }
    }
}

/// Reconciles `host` soon, not at the next round: its agent reports fewer running sandboxes
/// than the database has (it paused them on its way down, or lost them), or it is back after a
/// silence. At once, then a few quick retries in case its listener is not accepting yet.
pub fn reconcile_soon(app: &AppState, host_id: uuid::Uuid) {
    let app = app.clone();
    tokio::spawn(async move {
        for attempt in 0..5u32 {
            tokio::time::sleep(Duration::from_millis(500) * attempt).await;
            let Ok(Some(host)) = crate::service::hosts::load(&app, host_id).await else {
                return;
            };
            match reconcile_host(&app, &host).await {
                Ok(true) => return,
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(host = %host.public_id(), error = %e, "reconciling a host failed");
                    return;
                }
            }
        }
    });
}

/// The capsules a host owns: every row placed there that is not `stopped`.
async fn host_rows(app: &AppState, host: &HostRow) -> crate::ApiResult<Vec<CapsuleRow>> {
    let sql = format!("SELECT {COLUMNS} FROM sandboxes WHERE host_id = $1 AND status <> 'stopped'");
    Ok(sqlx::query_as::<_, CapsuleRow>(sqlx::AssertSqlSafe(sql))
        .bind(host.id)
        .fetch_all(&app.db)
        .await?)
}

fn state_changed_metadata(from: &str, to: CapsuleStatus, reason: &str) -> Metadata {
    let mut m = Metadata::new();
    m.insert("from".into(), from.into());
    m.insert("to".into(), to.as_str().into());
    m.insert("reason".into(), reason.into());
    m
}

async fn mark_silent_hosts(app: &AppState) -> crate::ApiResult<()> {
    let timeout = app.settings.heartbeat_timeout.as_secs_f64();
    let sql = format!(
        "UPDATE hosts SET status = 'unreachable', updated_at = now()
          WHERE status = 'online'
            AND (last_heartbeat_at IS NULL OR last_heartbeat_at < now() - make_interval(secs => $1))
          RETURNING {HOST_COLUMNS}"
    );
    let silent = sqlx::query_as::<_, HostRow>(sqlx::AssertSqlSafe(sql))
        .bind(timeout)
        .fetch_all(&app.db)
        .await?;
    for host in silent {
        tracing::warn!(host = %host.public_id(), "no heartbeat: host marked unreachable");
        let sql = format!(
            "SELECT {COLUMNS} FROM sandboxes
              WHERE host_id = $1 AND status IN ('running', 'pending', 'starting', 'pausing', 'resuming')"
        );
        let rows = sqlx::query_as::<_, CapsuleRow>(sqlx::AssertSqlSafe(sql))
            .bind(host.id)
            .fetch_all(&app.db)
            .await?;
        for row in rows {
            if let Some(missing) =
                transition(app, row.id, &[row.status.as_str()], CapsuleStatus::Missing).await?
            {
                capsules::capsule_event(
                    app,
                    &missing,
                    EventKind::CapsuleStateChanged,
                    &Actor::system(),
                    None,
                    state_changed_metadata(&row.status, CapsuleStatus::Missing, "host_failure"),
                    None,
                )
                .await;
            }
        }
        hosts::host_event(app, &host, EventKind::HostDown, "heartbeat_timeout").await;
    }
    Ok(())
}

/// Moves `row` from the status it was read with to `to` and raises `kind` from the system (with
/// `outcome` for action events); nothing if the row changed meanwhile.
async fn system_change(
    app: &AppState,
    row: &CapsuleRow,
    to: CapsuleStatus,
    kind: EventKind,
    metadata: Metadata,
) -> crate::ApiResult<()> {
    let Some(changed) = transition(app, row.id, &[row.status.as_str()], to).await? else {
        return Ok(());
    };
    tracing::info!(capsule = %row.public_id(), from = %row.status, to = %to, "capsule state reconciled with its host");
    let outcome = (kind != EventKind::CapsuleStateChanged).then_some(Outcome::Success);
    capsules::capsule_event(
        app,
        &changed,
        kind,
        &Actor::system(),
        outcome,
        metadata,
        None,
    )
    .await;
    Ok(())
}

fn reason(reason: &str) -> Metadata {
    let mut m = Metadata::new();
    m.insert("reason".into(), reason.into());
    m
}

/// What the host says about one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    Running,
    Paused,
    Absent,
}

async fn reconcile(
    app: &AppState,
    host: &HostRow,
    client: &AgentClient,
    rows: Vec<CapsuleRow>,
    list: pb::ListSandboxesResponse,
) -> crate::ApiResult<()> {
    let listed: HashMap<&str, Listed> = list
        .sandboxes
        .iter()
        .map(|s| {
            let state = if s.status == "paused" {
                Listed::Paused
            } else {
                Listed::Running
            };
            (s.sandbox_id.as_str(), state)
        })
        .collect();
    let auto_paused: HashSet<&str> = list
        .auto_paused_sandbox_ids
        .iter()
        .map(String::as_str)
        .collect();
    let ttl_destroyed: HashSet<&str> = list
        .ttl_destroyed_sandbox_ids
        .iter()
        .map(String::as_str)
        .collect();
    let stale_before =
        Utc::now() - chrono::Duration::from_std(TRANSITION_GRACE).unwrap_or_default();
    let mut owned: HashSet<String> = HashSet::new();
    for row in &rows {
        let id = row.public_id();
        let on_host = listed.get(id.as_str()).copied().unwrap_or(Listed::Absent);
        owned.insert(id.clone());
        let paused_reason = if auto_paused.contains(id.as_str()) {
            "ttl_expired"
        } else {
            "host_paused"
        };
        match (row.status(), on_host) {
            (from @ (CapsuleStatus::Missing | CapsuleStatus::Paused), Listed::Running) => {
                let reason = if from == CapsuleStatus::Missing {
                    "host_recovered"
                } else {
                    "host_running"
                };
                let m = state_changed_metadata(from.as_str(), CapsuleStatus::Running, reason);
                system_change(
                    app,
                    row,
                    CapsuleStatus::Running,
                    EventKind::CapsuleStateChanged,
                    m,
                )
                .await?;
            }
            (CapsuleStatus::Running | CapsuleStatus::Missing, Listed::Paused) => {
                system_change(
                    app,
                    row,
                    CapsuleStatus::Paused,
                    EventKind::CapsulePause,
                    reason(paused_reason),
                )
                .await?;
            }
            (CapsuleStatus::Running | CapsuleStatus::Missing, Listed::Absent) => {
                if auto_paused.contains(id.as_str()) {
                    system_change(
                        app,
                        row,
                        CapsuleStatus::Paused,
                        EventKind::CapsulePause,
                        reason("ttl_expired"),
                    )
                    .await?;
                } else {
                    let why = if ttl_destroyed.contains(id.as_str()) {
                        "ttl_expired"
                    } else {
                        "host_failure"
                    };
                    let mut m = reason(why);
                    m.insert("host_ip".into(), host.address.clone());
                    system_change(
                        app,
                        row,
                        CapsuleStatus::Stopped,
                        EventKind::CapsuleDestroy,
                        m,
                    )
                    .await?;
                }
            }
            (CapsuleStatus::Starting | CapsuleStatus::Pending, Listed::Absent)
                if Utc::now() - row.created_at
                    > chrono::Duration::from_std(STARTING_GRACE).unwrap_or_default() =>
            {
                transition(app, row.id, &[row.status.as_str()], CapsuleStatus::Error).await?;
            }
            (
                status @ (CapsuleStatus::Pausing
                | CapsuleStatus::Resuming
                | CapsuleStatus::Snapshotting),
                on_host,
            ) if row.last_updated < stale_before => {
                let to = match on_host {
                    Listed::Running => CapsuleStatus::Running,
                    Listed::Paused => CapsuleStatus::Paused,
                    Listed::Absent => CapsuleStatus::Stopped,
                };
                tracing::warn!(capsule = %id, %status, %to, "capsule stuck in a transition; taking the host's state");
                let m = state_changed_metadata(status.as_str(), to, "stale_transition");
                system_change(app, row, to, EventKind::CapsuleStateChanged, m).await?;
            }
            _ => {}
        }
    }
    for sandbox in &list.sandboxes {
        if !owned.contains(&sandbox.sandbox_id) {
            tracing::warn!(host = %host.public_id(), sandbox = %sandbox.sandbox_id, "destroying an orphaned sandbox");
            let req = pb::DestroySandboxRequest {
                sandbox_id: sandbox.sandbox_id.clone(),
            };
            if let Err(e) = client
                .call::<_, pb::DestroySandboxResponse>("DestroySandbox", &req)
                .await
            {
                tracing::warn!(sandbox = %sandbox.sandbox_id, error = %e, "could not destroy an orphan");
            }
        }
    }
    Ok(())
}
