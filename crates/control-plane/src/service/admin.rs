//! Platform administration of teams and users, and the control plane's recent log lines.
//! Every action is audited in the platform team's log (admin scope).

use crate::audit::{self, AuditEntry};
use crate::auth::{AdminSession, AuthContext, Principal};
use crate::error::{ApiError, ApiResult};
use crate::ids::{self, IdKind};
use crate::service::accounts::lock_admin_set;
use crate::service::teams::{self, PLATFORM_TEAM};
use crate::state::App;
use chrono::{DateTime, Utc};
use serde_json::json;
use std::sync::{Arc, OnceLock};
use uuid::Uuid;
use wrenn_api_types::auth::{AdminTeam, AdminTeamPage, AdminUser, AdminUserPage, LogsResponse};

/// Rows per page of the admin lists (upstream).
pub const PER_PAGE: i64 = 100;

fn offset(page: i64) -> (i64, i64) {
    let page = page.max(1);
    (page, (page - 1).saturating_mul(PER_PAGE))
}

fn total_pages(total: i64) -> i64 {
    (total + PER_PAGE - 1) / PER_PAGE
}

fn admin_audit(
    session: &AdminSession,
    resource: &'static str,
    id: String,
    action: &'static str,
) -> AuditEntry {
    AuditEntry::new(
        PLATFORM_TEAM,
        session.0.ctx.actor(),
        resource,
        Some(id),
        action,
    )
    .admin()
}

#[derive(Debug, sqlx::FromRow)]
struct AdminTeamRow {
    id: Uuid,
    name: String,
    slug: String,
    is_byoc: bool,
    created_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    member_count: i64,
    owner_name: Option<String>,
    owner_email: Option<String>,
    active_sandbox_count: i64,
}

/// `GET /v1/admin/teams?page=N`: every team but the platform team, deleted ones included.
pub async fn list_teams(app: &App, page: i64) -> ApiResult<AdminTeamPage> {
    let (page, skip) = offset(page);
    let rows: Vec<AdminTeamRow> = sqlx::query_as(
        "SELECT t.id, t.name, t.slug, t.is_byoc, t.created_at, t.deleted_at,
                (SELECT count(*) FROM users_teams ut WHERE ut.team_id = t.id) AS member_count,
                o.name AS owner_name, o.email AS owner_email,
                (SELECT count(*) FROM sandboxes s
                  WHERE s.team_id = t.id AND s.status NOT IN ('stopped', 'error')) AS active_sandbox_count
           FROM teams t
           LEFT JOIN LATERAL (
                SELECT u.name, u.email FROM users_teams ut JOIN users u ON u.id = ut.user_id
                 WHERE ut.team_id = t.id AND ut.role = 'owner' LIMIT 1) o ON true
          WHERE t.id <> $1
          ORDER BY t.created_at DESC, t.id
          LIMIT $2 OFFSET $3",
    )
    .bind(PLATFORM_TEAM)
    .bind(PER_PAGE)
    .bind(skip)
    .fetch_all(&app.db)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM teams WHERE id <> $1")
        .bind(PLATFORM_TEAM)
        .fetch_one(&app.db)
        .await?;
    Ok(AdminTeamPage {
        teams: rows
            .into_iter()
            .map(|r| AdminTeam {
                id: ids::encode(IdKind::Team, r.id),
                name: r.name,
                slug: r.slug,
                is_byoc: r.is_byoc,
                created_at: r.created_at,
                deleted_at: r.deleted_at,
                member_count: r.member_count,
                owner_name: r.owner_name,
                owner_email: r.owner_email,
                active_sandbox_count: r.active_sandbox_count,
                // Notification channels are not implemented.
                channel_count: 0,
            })
            .collect(),
        total,
        page,
        per_page: PER_PAGE,
        total_pages: total_pages(total),
    })
}

/// A live team other than the platform team, by `team-…` id, or 404.
fn customer_team(id: &str) -> ApiResult<Uuid> {
    ids::decode(IdKind::Team, id)
        .filter(|t| *t != PLATFORM_TEAM)
        .ok_or_else(|| ApiError::not_found(format!("team {id} not found")))
}

/// `PUT /v1/admin/teams/{id}/byoc`: lets the team register its own hosts. One-way: a team's
/// hosts and capsules would be stranded by turning it off.
pub async fn enable_byoc(
    app: &App,
    session: &AdminSession,
    id: &str,
    enabled: bool,
) -> ApiResult<()> {
    if !enabled {
        return Err(ApiError::invalid("BYOC cannot be disabled once enabled"));
    }
    let team_id = customer_team(id)?;
    let was_byoc: Option<bool> = sqlx::query_scalar(
        "WITH old AS (SELECT id, is_byoc FROM teams WHERE id = $1 AND deleted_at IS NULL FOR UPDATE)
         UPDATE teams t SET is_byoc = true FROM old WHERE t.id = old.id RETURNING old.is_byoc",
    )
    .bind(team_id)
    .fetch_optional(&app.db)
    .await?;
    match was_byoc {
        None => return Err(ApiError::not_found(format!("team {id} not found"))),
        Some(true) => {}
        Some(false) => {
            audit::record(
                &app.db,
                admin_audit(session, "team", id.to_string(), "byoc_enable"),
            )
            .await;
        }
    }
    Ok(())
}

/// `DELETE /v1/admin/teams/{id}`: the owner's delete, by a platform admin.
pub async fn delete_team(app: &App, session: &AdminSession, id: &str) -> ApiResult<()> {
    let team_id = customer_team(id)?;
    let teardown = teams::delete_team(app, team_id).await?;
    audit::record(
        &app.db,
        admin_audit(session, "team", id.to_string(), "delete")
            .metadata(json!({ "stopped_capsules": teardown.stopped_capsules.len() })),
    )
    .await;
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
struct AdminUserRow {
    id: Uuid,
    email: String,
    name: String,
    is_admin: bool,
    status: String,
    created_at: DateTime<Utc>,
    teams_joined: i64,
    teams_owned: i64,
}

/// `GET /v1/admin/users?page=N`.
pub async fn list_users(app: &App, page: i64) -> ApiResult<AdminUserPage> {
    let (page, skip) = offset(page);
    let rows: Vec<AdminUserRow> = sqlx::query_as(
        "SELECT u.id, u.email, u.name, u.is_admin, u.status, u.created_at,
                count(t.id) AS teams_joined,
                count(t.id) FILTER (WHERE ut.role = 'owner') AS teams_owned
           FROM users u
           LEFT JOIN users_teams ut ON ut.user_id = u.id
           LEFT JOIN teams t ON t.id = ut.team_id AND t.deleted_at IS NULL
          GROUP BY u.id
          ORDER BY u.created_at DESC, u.id
          LIMIT $1 OFFSET $2",
    )
    .bind(PER_PAGE)
    .bind(skip)
    .fetch_all(&app.db)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db)
        .await?;
    Ok(AdminUserPage {
        users: rows
            .into_iter()
            .map(|r| AdminUser {
                id: ids::encode(IdKind::User, r.id),
                email: r.email,
                name: r.name,
                is_admin: r.is_admin,
                status: r.status,
                created_at: r.created_at,
                teams_joined: r.teams_joined,
                teams_owned: r.teams_owned,
            })
            .collect(),
        total,
        page,
        per_page: PER_PAGE,
        total_pages: total_pages(total),
    })
}

fn user_id(id: &str) -> ApiResult<Uuid> {
    ids::decode(IdKind::User, id).ok_or_else(|| ApiError::not_found(format!("user {id} not found")))
}

/// `PUT /v1/admin/users/{id}/active`. Disabling takes effect at once (sessions re-check the
/// account on every request) and deletes the API keys the user created. An admin cannot
/// disable themself (so some admin always stays active).
pub async fn set_user_active(
    app: &App,
    session: &AdminSession,
    id: &str,
    active: bool,
) -> ApiResult<()> {
    let target = user_id(id)?;
    if !active && target == session.0.user_id {
        return Err(ApiError::invalid("you cannot deactivate your own account"));
    }
    let mut tx = app.db.begin().await?;
    let (status, from): (&str, &[&str]) = if active {
        ("active", &["disabled", "inactive"])
    } else {
        ("disabled", &["active", "inactive", "disabled"])
    };
    let found: Option<String> = sqlx::query_scalar(
        "WITH old AS (SELECT id, status FROM users WHERE id = $1 AND status <> 'deleted' FOR UPDATE)
         UPDATE users u SET status = CASE WHEN old.status = ANY($3) THEN $2 ELSE old.status END,
                            updated_at = now()
           FROM old WHERE u.id = old.id RETURNING u.status",
    )
    .bind(target)
    .bind(status)
    .bind(from)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(now_status) = found else {
        return Err(ApiError::not_found(format!("user {id} not found")));
    };
    let mut keys_deleted = 0;
    if !active {
        keys_deleted = sqlx::query("DELETE FROM team_api_keys WHERE created_by = $1")
            .bind(target)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    tx.commit().await?;
    audit::record(
        &app.db,
        admin_audit(
            session,
            "user",
            id.to_string(),
            if active { "activate" } else { "deactivate" },
        )
        .metadata(json!({ "status": now_status, "api_keys_deleted": keys_deleted })),
    )
    .await;
    Ok(())
}

/// `PUT /v1/admin/users/{id}/admin`: grants or revokes platform admin. The last active admin
/// cannot be revoked (checked under the admin-set lock, so two admins cannot revoke each other
/// at once and leave none).
pub async fn set_user_admin(
    app: &App,
    session: &AdminSession,
    id: &str,
    admin: bool,
) -> ApiResult<()> {
    let target = user_id(id)?;
    let mut tx = app.db.begin().await?;
    lock_admin_set(&mut tx).await?;
    let current: Option<(bool, String)> =
        sqlx::query_as("SELECT is_admin, status FROM users WHERE id = $1 AND status <> 'deleted'")
            .bind(target)
            .fetch_optional(&mut *tx)
            .await?;
    let (was_admin, status) =
        current.ok_or_else(|| ApiError::not_found(format!("user {id} not found")))?;
    if admin && status != "active" {
        return Err(ApiError::invalid_state(
            "only an active user can become an admin",
        ));
    }
    if !admin && was_admin {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM users WHERE is_admin AND status = 'active' AND id <> $1",
        )
        .bind(target)
        .fetch_one(&mut *tx)
        .await?;
        if others == 0 {
            return Err(ApiError::invalid_state(
                "cannot remove the last platform administrator",
            ));
        }
    }
    sqlx::query("UPDATE users SET is_admin = $2, updated_at = now() WHERE id = $1")
        .bind(target)
        .bind(admin)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if was_admin != admin {
        audit::record(
            &app.db,
            admin_audit(
                session,
                "user",
                id.to_string(),
                if admin { "admin_grant" } else { "admin_revoke" },
            ),
        )
        .await;
    }
    Ok(())
}

/// Recent log lines of this process, oldest first.
pub trait LogSource: Send + Sync {
    fn tail(&self, n: usize) -> Vec<String>;
}

/// The control plane's in-memory log, once start-up has installed one.
static LOG_SOURCE: OnceLock<Arc<dyn LogSource>> = OnceLock::new();

/// Installs the process's log source (once; `false` if one was already installed).
pub fn install_log_source(source: Arc<dyn LogSource>) -> bool {
    LOG_SOURCE.set(source).is_ok()
}

pub const DEFAULT_LOG_LINES: usize = 200;
pub const MAX_LOG_LINES: usize = 10_000;

/// The caller of `GET /v1/admin/logs` must be a platform admin: by session, or by an API key
/// created by a user who is (still) an active platform admin. The key form exists because
/// `wrenn logs` authenticates with the API key `wrenn login` stored; it is accepted on this
/// read-only route only.
pub async fn require_admin_caller(app: &App, auth: &AuthContext) -> ApiResult<()> {
    let is_admin = match &auth.principal {
        Principal::User { is_admin, .. } => *is_admin,
        Principal::ApiKey { key_id, .. } => sqlx::query_scalar(
            "SELECT u.is_admin AND u.status = 'active'
               FROM team_api_keys k JOIN users u ON u.id = k.created_by WHERE k.id = $1",
        )
        .bind(key_id)
        .fetch_optional(&app.db)
        .await?
        .unwrap_or(false),
    };
    if !is_admin {
        return Err(ApiError::forbidden("platform administrators only"));
    }
    Ok(())
}

/// `GET /v1/admin/logs?source=control-plane|host:<id>&lines=N`.
pub async fn logs(app: &App, source: &str, lines: Option<usize>) -> ApiResult<LogsResponse> {
    let lines = lines.unwrap_or(DEFAULT_LOG_LINES).clamp(1, MAX_LOG_LINES);
    if source == "control-plane" {
        let source = LOG_SOURCE.get().ok_or_else(|| {
            ApiError::invalid_state("this control plane does not keep its log in memory")
        })?;
        return Ok(LogsResponse {
            lines: source.tail(lines),
        });
    }
    let Some(host) = source.strip_prefix("host:") else {
        return Err(ApiError::invalid(
            "source must be control-plane or host:<host-id>",
        ));
    };
    let host_id = ids::decode(IdKind::Host, host)
        .ok_or_else(|| ApiError::not_found(format!("host {host} not found")))?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM hosts WHERE id = $1)")
        .bind(host_id)
        .fetch_one(&app.db)
        .await?;
    if !exists {
        return Err(ApiError::not_found(format!("host {host} not found")));
    }
    let client = app.agents.client(&app.db, host_id).await?;
    let req = wrenn_protocol::hostagent::GetLogsRequest {
        lines: u32::try_from(lines).unwrap_or(u32::MAX),
    };
    let resp: wrenn_protocol::hostagent::GetLogsResponse = client
        .call("GetLogs", &req)
        .await
        .map_err(|e| ApiError::from_agent(e, &format!("host {host}")))?;
    Ok(LogsResponse { lines: resp.lines })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging() {
        assert_eq!(offset(0), (1, 0));
        assert_eq!(offset(1), (1, 0));
        assert_eq!(offset(3), (3, 200));
        assert_eq!(total_pages(0), 0);
        assert_eq!(total_pages(100), 1);
        assert_eq!(total_pages(101), 2);
    }
}
