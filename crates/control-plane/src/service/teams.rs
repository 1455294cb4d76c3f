//! Teams and their members. Every check of the caller's role re-reads it from the database (a
//! session's role claim may be hours old), and a team the caller is not in is a 404.

use crate::audit::{self, AuditEntry};
use crate::auth::UserSession;
use crate::auth::secrets::random_hex;
use crate::error::{ApiError, ApiResult};
use crate::ids::{self, IdKind};
use crate::service::accounts::parse_role;
use crate::state::App;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;
use wrenn_api_types::auth::{
    AddMemberRequest, NameRequest, RoleRequest, Team, TeamDetail, TeamMember, TeamRole,
    UserSearchResult,
};

/// The platform team (owns global templates and admin capsules); it can never be deleted.
pub const PLATFORM_TEAM: Uuid = Uuid::nil();
pub const MAX_TEAM_NAME_LEN: usize = 128;
/// `GET /v1/users/search` answers at most this many users.
pub const USER_SEARCH_LIMIT: i64 = 10;

/// Team names: 1 to 128 of `[A-Za-z0-9 _]` (upstream).
pub fn validate_team_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_TEAM_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '_');
    if !ok {
        return Err(ApiError::invalid(format!(
            "team name must be 1 to {MAX_TEAM_NAME_LEN} letters, digits, spaces or underscores"
        )));
    }
    Ok(name.to_string())
}

/// Creates a team owned by `owner`; the slug is `xxxxxx-yyyyyy` (6+6 random hex).
pub(crate) async fn create_team_in(
    conn: &mut PgConnection,
    name: &str,
    owner: Uuid,
    is_default: bool,
) -> ApiResult<Uuid> {
    let team_id = ids::new_uuid();
    // 48 random bits: a clash is rare, and then simply retried.
    for _ in 0..5 {
        let slug = format!("{}-{}", random_hex(3), random_hex(3));
        let inserted = sqlx::query(
            "INSERT INTO teams (id, name, slug) VALUES ($1, $2, $3) ON CONFLICT (slug) DO NOTHING",
        )
        .bind(team_id)
        .bind(name)
        .bind(&slug)
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() == 1 {
            sqlx::query(
                "INSERT INTO users_teams (user_id, team_id, is_default, role) VALUES ($1, $2, $3, 'owner')",
            )
            .bind(owner)
            .bind(team_id)
            .bind(is_default)
            .execute(&mut *conn)
            .await?;
            return Ok(team_id);
        }
    }
    Err(ApiError::internal("could not find a free team slug"))
}

#[derive(Debug, sqlx::FromRow)]
struct TeamRow {
    id: Uuid,
    name: String,
    slug: String,
    is_byoc: bool,
    created_at: DateTime<Utc>,
    role: String,
}

impl TeamRow {
    fn to_api(&self) -> Team {
        Team {
            id: ids::encode(IdKind::Team, self.id),
            name: self.name.clone(),
            slug: self.slug.clone(),
            is_byoc: self.is_byoc,
            created_at: self.created_at,
            role: Some(parse_role(&self.role)),
        }
    }
}

const TEAM_SELECT: &str = "SELECT t.id, t.name, t.slug, t.is_byoc, t.created_at, ut.role
       FROM teams t JOIN users_teams ut ON ut.team_id = t.id";

/// The caller's view of a team they belong to (`{id}` is a `team-…` string), or 404.
async fn team_of_member(app: &App, user_id: Uuid, id: &str) -> ApiResult<TeamRow> {
    let not_found = || ApiError::not_found(format!("team {id} not found"));
    let team_id = ids::decode(IdKind::Team, id).ok_or_else(not_found)?;
    let sql = format!("{TEAM_SELECT} WHERE t.id = $1 AND ut.user_id = $2 AND t.deleted_at IS NULL");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(team_id)
        .bind(user_id)
        .fetch_optional(&app.db)
        .await?
        .ok_or_else(not_found)
}

/// Like [`team_of_member`], but the caller must be the team's owner or an admin of it.
async fn team_managed_by(app: &App, user_id: Uuid, id: &str) -> ApiResult<TeamRow> {
    let team = team_of_member(app, user_id, id).await?;
    if !parse_role(&team.role).can_manage() {
        return Err(ApiError::forbidden(
            "only the team's owner or admins can do this",
        ));
    }
    Ok(team)
}

fn team_audit(
    session: &UserSession,
    team_id: Uuid,
    resource: &'static str,
    id: String,
    action: &'static str,
) -> AuditEntry {
    AuditEntry::new(team_id, session.ctx.actor(), resource, Some(id), action).admin()
}

pub async fn list(app: &App, session: &UserSession) -> ApiResult<Vec<Team>> {
    let sql = format!(
        "{TEAM_SELECT} WHERE ut.user_id = $1 AND t.deleted_at IS NULL ORDER BY t.created_at, t.id"
    );
    let rows: Vec<TeamRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(session.user_id)
        .fetch_all(&app.db)
        .await?;
    Ok(rows.iter().map(TeamRow::to_api).collect())
}

/// `POST /v1/teams`: the caller becomes the owner.
pub async fn create(app: &App, session: &UserSession, req: NameRequest) -> ApiResult<Team> {
    let name = validate_team_name(&req.name)?;
    let mut tx = app.db.begin().await?;
    let team_id = create_team_in(&mut tx, &name, session.user_id, false).await?;
    tx.commit().await?;
    let team = team_of_member(app, session.user_id, &ids::encode(IdKind::Team, team_id)).await?;
    audit::record(
        &app.db,
        team_audit(
            session,
            team_id,
            "team",
            ids::encode(IdKind::Team, team_id),
            "create",
        )
        .metadata(json!({ "name": name })),
    )
    .await;
    Ok(team.to_api())
}

pub async fn get(app: &App, session: &UserSession, id: &str) -> ApiResult<TeamDetail> {
    let team = team_of_member(app, session.user_id, id).await?;
    let members = members_of(app, team.id).await?;
    Ok(TeamDetail {
        team: team.to_api(),
        members,
    })
}

pub async fn rename(
    app: &App,
    session: &UserSession,
    id: &str,
    req: NameRequest,
) -> ApiResult<Team> {
    let name = validate_team_name(&req.name)?;
    let mut team = team_managed_by(app, session.user_id, id).await?;
    sqlx::query("UPDATE teams SET name = $2 WHERE id = $1")
        .bind(team.id)
        .bind(&name)
        .execute(&app.db)
        .await?;
    let old = std::mem::replace(&mut team.name, name.clone());
    audit::record(
        &app.db,
        team_audit(session, team.id, "team", id.to_string(), "rename")
            .metadata(json!({ "old_name": old, "name": name })),
    )
    .await;
    Ok(team.to_api())
}

/// `DELETE /v1/teams/{id}`: owner only.
pub async fn delete(app: &App, session: &UserSession, id: &str) -> ApiResult<()> {
    let team = team_of_member(app, session.user_id, id).await?;
    if parse_role(&team.role) != TeamRole::Owner {
        return Err(ApiError::forbidden("only the team's owner can delete it"));
    }
    delete_team(app, team.id).await?;
    audit::record(
        &app.db,
        team_audit(session, team.id, "team", id.to_string(), "delete"),
    )
    .await;
    Ok(())
}

/// What deleting a team left for the hosts to clean up.
#[derive(Debug, Clone, Default)]
pub struct TeamTeardown {
    pub team_id: Uuid,
    /// Capsules that were live and are now marked stopped: (capsule, host).
    pub stopped_capsules: Vec<(Uuid, Option<Uuid>)>,
    /// The team's templates (snapshots), whose rows were deleted: (template id, name, host).
    pub deleted_templates: Vec<(Uuid, String, Option<Uuid>)>,
}

/// Soft-deletes a team (the slug stays reserved) and everything that must stop with it: live
/// capsules are marked stopped, API keys, metric samples and template rows are deleted. The
/// caller commits, then calls [`release_team_resources`].
pub(crate) async fn teardown_team_in(
    conn: &mut PgConnection,
    team_id: Uuid,
) -> ApiResult<TeamTeardown> {
    if team_id == PLATFORM_TEAM {
        return Err(ApiError::forbidden("the platform team cannot be deleted"));
    }
    let marked =
        sqlx::query("UPDATE teams SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL")
            .bind(team_id)
            .execute(&mut *conn)
            .await?;
    if marked.rows_affected() == 0 {
        return Err(ApiError::not_found(format!(
            "team {} not found",
            ids::encode(IdKind::Team, team_id)
        )));
    }
    let stopped_capsules: Vec<(Uuid, Option<Uuid>)> = sqlx::query_as(
        "UPDATE sandboxes SET status = 'stopped', last_updated = now()
          WHERE team_id = $1 AND status NOT IN ('stopped', 'error')
          RETURNING id, host_id",
    )
    .bind(team_id)
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM team_api_keys WHERE team_id = $1")
        .bind(team_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "DELETE FROM sandbox_metric_points WHERE sandbox_id IN (SELECT id FROM sandboxes WHERE team_id = $1)",
    )
    .bind(team_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM sandbox_metrics_snapshots WHERE team_id = $1")
        .bind(team_id)
        .execute(&mut *conn)
        .await?;
    let deleted_templates: Vec<(Uuid, String, Option<Uuid>)> =
        sqlx::query_as("DELETE FROM templates WHERE team_id = $1 RETURNING id, name, host_id")
            .bind(team_id)
            .fetch_all(&mut *conn)
            .await?;
    Ok(TeamTeardown {
        team_id,
        stopped_capsules,
        deleted_templates,
    })
}

/// Deletes a team (owner's and platform admin's delete share this core).
pub async fn delete_team(app: &App, team_id: Uuid) -> ApiResult<TeamTeardown> {
    let mut tx = app.db.begin().await?;
    let teardown = teardown_team_in(&mut tx, team_id).await?;
    tx.commit().await?;
    release_team_resources(app, &teardown).await;
    Ok(teardown)
}

/// After a team is deleted: destroys its capsules on their hosts (their rows are already
/// `stopped`), deletes its snapshot files, and publishes the capsule events. Failures are only
/// logged: the team is already gone for its users, and the host monitor destroys whatever a
/// host still runs for a stopped capsule.
pub async fn release_team_resources(app: &App, teardown: &TeamTeardown) {
    for (capsule, host) in &teardown.stopped_capsules {
        if let Some(host) = host
            && let Ok(client) = app.agents.client(&app.db, *host).await
        {
            crate::service::capsules::destroy_on_agent(&client, &ids::capsule(*capsule)).await;
        }
        if let Ok(row) = crate::service::capsules::load(app, *capsule).await {
            let mut metadata = wrenn_api_types::Metadata::new();
            metadata.insert("reason".into(), "team_deleted".into());
            crate::service::capsules::capsule_event(
                app,
                &row,
                wrenn_api_types::events::EventKind::CapsuleDestroy,
                &wrenn_api_types::events::Actor::system(),
                Some(wrenn_api_types::events::Outcome::Success),
                metadata,
                None,
            )
            .await;
        }
    }
    for (template_id, name, host) in &teardown.deleted_templates {
        if let Err(e) = crate::service::snapshots::delete_snapshot_files(
            app,
            teardown.team_id,
            *template_id,
            name,
            *host,
        )
        .await
        {
            tracing::warn!(template = %name, error = %e, "could not delete a deleted team's snapshot files");
        }
    }
    tracing::info!(
        team = %ids::encode(IdKind::Team, teardown.team_id),
        capsules = teardown.stopped_capsules.len(),
        templates = teardown.deleted_templates.len(),
        "team deleted; its capsules and snapshots were released"
    );
}

#[derive(Debug, sqlx::FromRow)]
struct MemberRow {
    user_id: Uuid,
    email: String,
    name: String,
    role: String,
    created_at: DateTime<Utc>,
}

async fn members_of(app: &App, team_id: Uuid) -> ApiResult<Vec<TeamMember>> {
    let rows: Vec<MemberRow> = sqlx::query_as(
        "SELECT ut.user_id, u.email, u.name, ut.role, ut.created_at
           FROM users_teams ut JOIN users u ON u.id = ut.user_id
          WHERE ut.team_id = $1 AND u.status <> 'deleted'
          ORDER BY CASE ut.role WHEN 'owner' THEN 0 WHEN 'admin' THEN 1 ELSE 2 END, ut.created_at, u.email",
    )
    .bind(team_id)
    .fetch_all(&app.db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| TeamMember {
            user_id: ids::encode(IdKind::User, r.user_id),
            email: r.email,
            name: r.name,
            role: parse_role(&r.role),
            joined_at: r.created_at,
        })
        .collect())
}

pub async fn list_members(
    app: &App,
    session: &UserSession,
    id: &str,
) -> ApiResult<Vec<TeamMember>> {
    let team = team_of_member(app, session.user_id, id).await?;
    members_of(app, team.id).await
}

/// Adds an existing, active user (by email) as a `member`.
pub async fn add_member(
    app: &App,
    session: &UserSession,
    id: &str,
    req: AddMemberRequest,
) -> ApiResult<TeamMember> {
    let team = team_managed_by(app, session.user_id, id).await?;
    let email = req.email.trim().to_lowercase();
    let user: Option<(Uuid, String)> =
        sqlx::query_as("SELECT id, name FROM users WHERE email = $1 AND status = 'active'")
            .bind(&email)
            .fetch_optional(&app.db)
            .await?;
    let (user_id, name) =
        user.ok_or_else(|| ApiError::not_found(format!("no active user with email {email}")))?;
    let joined: Option<DateTime<Utc>> = sqlx::query_scalar(
        "INSERT INTO users_teams (user_id, team_id, is_default, role) VALUES ($1, $2, false, 'member')
         ON CONFLICT (team_id, user_id) DO NOTHING RETURNING created_at",
    )
    .bind(user_id)
    .bind(team.id)
    .fetch_optional(&app.db)
    .await?;
    let joined_at = joined
        .ok_or_else(|| ApiError::conflict(format!("{email} is already a member of this team")))?;
    let member_id = ids::encode(IdKind::User, user_id);
    audit::record(
        &app.db,
        team_audit(session, team.id, "member", member_id.clone(), "add")
            .metadata(json!({ "email": email })),
    )
    .await;
    Ok(TeamMember {
        user_id: member_id,
        email,
        name,
        role: TeamRole::Member,
        joined_at,
    })
}

/// The role of `user` (a `usr-…` string) in `team_id`, or 404.
async fn member_role(app: &App, team_id: Uuid, user: &str) -> ApiResult<(Uuid, TeamRole)> {
    let not_found = || ApiError::not_found(format!("user {user} is not a member of this team"));
    let user_id = ids::decode(IdKind::User, user).ok_or_else(not_found)?;
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM users_teams WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .fetch_optional(&app.db)
            .await?;
    Ok((user_id, parse_role(&role.ok_or_else(not_found)?)))
}

/// Makes a member `admin` or `member`; the owner's role never changes.
pub async fn set_role(
    app: &App,
    session: &UserSession,
    id: &str,
    user: &str,
    req: RoleRequest,
) -> ApiResult<TeamMember> {
    if req.role == TeamRole::Owner {
        return Err(ApiError::invalid("role must be admin or member"));
    }
    let team = team_managed_by(app, session.user_id, id).await?;
    let (user_id, current) = member_role(app, team.id, user).await?;
    if current == TeamRole::Owner {
        return Err(ApiError::forbidden(
            "the team owner's role cannot be changed",
        ));
    }
    // The guard on the role keeps a concurrent ownership change from being overwritten.
    let row: Option<MemberRow> = sqlx::query_as(
        "WITH m AS (
            UPDATE users_teams SET role = $3 WHERE team_id = $1 AND user_id = $2 AND role <> 'owner'
            RETURNING user_id, role, created_at)
         SELECT m.user_id, u.email, u.name, m.role, m.created_at FROM m JOIN users u ON u.id = m.user_id",
    )
    .bind(team.id)
    .bind(user_id)
    .bind(req.role.as_str())
    .fetch_optional(&app.db)
    .await?;
    let row = row
        .ok_or_else(|| ApiError::not_found(format!("user {user} is not a member of this team")))?;
    audit::record(
        &app.db,
        team_audit(session, team.id, "member", user.to_string(), "role_change")
            .metadata(json!({ "from": current.as_str(), "to": req.role.as_str() })),
    )
    .await;
    Ok(TeamMember {
        user_id: user.to_string(),
        email: row.email,
        name: row.name,
        role: parse_role(&row.role),
        joined_at: row.created_at,
    })
}

async fn delete_membership(app: &App, team_id: Uuid, user_id: Uuid) -> ApiResult<bool> {
    let removed = sqlx::query(
        "DELETE FROM users_teams WHERE team_id = $1 AND user_id = $2 AND role <> 'owner'",
    )
    .bind(team_id)
    .bind(user_id)
    .execute(&app.db)
    .await?;
    Ok(removed.rows_affected() == 1)
}

/// Removes a member (not the owner). Their sessions for this team stop working at once.
pub async fn remove_member(
    app: &App,
    session: &UserSession,
    id: &str,
    user: &str,
) -> ApiResult<()> {
    let team = team_managed_by(app, session.user_id, id).await?;
    let (user_id, role) = member_role(app, team.id, user).await?;
    if role == TeamRole::Owner || !delete_membership(app, team.id, user_id).await? {
        return Err(ApiError::forbidden("the team owner cannot be removed"));
    }
    audit::record(
        &app.db,
        team_audit(session, team.id, "member", user.to_string(), "remove"),
    )
    .await;
    Ok(())
}

/// `POST /v1/teams/{id}/leave`: any member but the owner.
pub async fn leave(app: &App, session: &UserSession, id: &str) -> ApiResult<()> {
    let team = team_of_member(app, session.user_id, id).await?;
    if parse_role(&team.role) == TeamRole::Owner
        || !delete_membership(app, team.id, session.user_id).await?
    {
        return Err(ApiError::forbidden(
            "the team owner cannot leave: delete the team instead",
        ));
    }
    audit::record(
        &app.db,
        team_audit(
            session,
            team.id,
            "member",
            ids::encode(IdKind::User, session.user_id),
            "leave",
        ),
    )
    .await;
    Ok(())
}

/// `GET /v1/users/search?email=<prefix>`: active users whose email starts with the prefix. The
/// prefix must include the `@`, so the search cannot enumerate every account.
pub async fn search_users(app: &App, prefix: &str) -> ApiResult<Vec<UserSearchResult>> {
    let prefix = prefix.trim().to_lowercase();
    if !prefix.contains('@') {
        return Err(ApiError::invalid("the email prefix must contain '@'"));
    }
    let pattern = format!(
        "{}%",
        prefix
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, email FROM users WHERE email LIKE $1 ESCAPE '\\' AND status = 'active'
          ORDER BY email LIMIT $2",
    )
    .bind(pattern)
    .bind(USER_SEARCH_LIMIT)
    .fetch_all(&app.db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, email)| UserSearchResult {
            user_id: ids::encode(IdKind::User, id),
            email,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_names() {
        assert_eq!(
            validate_team_name(" My_Team 2 ").expect("valid"),
            "My_Team 2"
        );
        for bad in ["", "   ", "a'b", "a-b", "ü", &"a".repeat(129)] {
            assert!(validate_team_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_team_name(&"a".repeat(128)).is_ok());
    }
}
