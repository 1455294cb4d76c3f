//! The host monitor: keeps capsule states true to what the hosts report.
//!
//! Every period (15 s by default):
//! - *Passive*: an online host silent for longer than the heartbeat timeout becomes
//!   `unreachable`, and its live capsules `missing` (`host.down`, `capsule.state.changed`).
//! - *Active*: every online host is asked for its sandboxes. A `missing` capsule that is alive
//!   again is `running`. A running capsule that is gone is `paused` if the host auto-paused it for
//!   inactivity, `stopped` if the host destroyed it for inactivity (`ttl_expired`) or lost it
//!   (`host_failure`). A sandbox the host runs that no live capsule owns is destroyed
//!   (`orphaned`).

use crate::agents::AgentClient;
use crate::service::capsules::{self, COLUMNS, CapsuleRow, transition};
use crate::service::hosts::{self, HOST_COLUMNS, HostRow};
use crate::state::AppState;
use chrono::Utc;
use std::collections::HashSet;
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
        let client = app.agents.client_for(host.id, &host.address);
        match tokio::time::timeout(
            LIST_TIMEOUT,
            client.call::<_, pb::ListSandboxesResponse>(
                "ListSandboxes",
                &pb::ListSandboxesRequest {},
            ),
        )
        .await
        {
            Ok(Ok(list)) => reconcile(app, &host, &client, list).await?,
            Ok(Err(e)) => {
                tracing::debug!(host = %host.public_id(), error = %e, "could not list sandboxes; trying next round")
            }
            Err(_) => {
                tracing::debug!(host = %host.public_id(), "listing sandboxes timed out; trying next round")
            }
        }
    }
    Ok(())
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

async fn reconcile(
    app: &AppState,
    host: &HostRow,
    client: &AgentClient,
    list: pb::ListSandboxesResponse,
) -> crate::ApiResult<()> {
    let alive: HashSet<&str> = list
        .sandboxes
        .iter()
        .map(|s| s.sandbox_id.as_str())
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
    let sql = format!(
        "SELECT {COLUMNS} FROM sandboxes WHERE host_id = $1 AND status NOT IN ('stopped', 'error')"
    );
    let rows = sqlx::query_as::<_, CapsuleRow>(sqlx::AssertSqlSafe(sql))
        .bind(host.id)
        .fetch_all(&app.db)
        .await?;
    let mut owned: HashSet<String> = HashSet::new();
    for row in &rows {
        let id = row.public_id();
        owned.insert(id.clone());
        let is_alive = alive.contains(id.as_str());
        match (row.status(), is_alive) {
            (CapsuleStatus::Missing, true) => {
                if let Some(back) =
                    transition(app, row.id, &["missing"], CapsuleStatus::Running).await?
                {
                    tracing::info!(capsule = %id, "capsule found alive again");
                    capsules::capsule_event(
                        app,
                        &back,
                        EventKind::CapsuleStateChanged,
                        &Actor::system(),
                        None,
                        state_changed_metadata("missing", CapsuleStatus::Running, "host_recovered"),
                        None,
                    )
                    .await;
                }
            }
            (CapsuleStatus::Running | CapsuleStatus::Missing, false) => {
                let from = row.status.as_str();
                if auto_paused.contains(id.as_str()) {
                    if let Some(paused) =
                        transition(app, row.id, &[from], CapsuleStatus::Paused).await?
                    {
                        let mut m = Metadata::new();
                        m.insert("reason".into(), "ttl_expired".into());
                        capsules::capsule_event(
                            app,
                            &paused,
                            EventKind::CapsulePause,
                            &Actor::system(),
                            Some(Outcome::Success),
                            m,
                            None,
                        )
                        .await;
                    }
                } else {
                    let reason = if ttl_destroyed.contains(id.as_str()) {
                        "ttl_expired"
                    } else {
                        "host_failure"
                    };
                    if let Some(stopped) =
                        transition(app, row.id, &[from], CapsuleStatus::Stopped).await?
                    {
                        tracing::info!(capsule = %id, reason, "capsule is gone from its host");
                        let mut m = Metadata::new();
                        m.insert("reason".into(), reason.into());
                        m.insert("host_ip".into(), host.address.clone());
                        capsules::capsule_event(
                            app,
                            &stopped,
                            EventKind::CapsuleDestroy,
                            &Actor::system(),
                            Some(Outcome::Success),
                            m,
                            None,
                        )
                        .await;
                    }
                }
            }
            (CapsuleStatus::Starting | CapsuleStatus::Pending, false)
                if Utc::now() - row.created_at
                    > chrono::Duration::from_std(STARTING_GRACE).unwrap_or_default() =>
            {
                transition(app, row.id, &[row.status.as_str()], CapsuleStatus::Error).await?;
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
