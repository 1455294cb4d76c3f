//! Hosts: creation with a one-time registration token, agent registration (host JWT, rotating
//! refresh token, server certificate from the internal CA), heartbeats, listing and deletion.

use crate::audit::{self, AuditEntry};
use crate::auth::UserSession;
use crate::auth::secrets::{hash_secret, random_hex};
use crate::error::{ApiError, ApiResult};
use crate::events;
use crate::ids::{self, IdKind};
use crate::internal_pki::HOST_CERT_TTL;
use crate::state::App;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use wrenn_api_types::events::{Actor, Event, EventKind, Resource};
use wrenn_api_types::hosts::{
    CreateHostRequest, CreateHostResponse, HeartbeatRequest, Host, HostCredentials, HostStatus,
    HostType, RefreshHostRequest, RegisterHostRequest,
};

/// Registration tokens are valid for an hour (upstream).
pub const REGISTRATION_TOKEN_TTL_SECS: i64 = 3600;
/// Refresh tokens are valid for 60 days and single-use.
pub const REFRESH_TOKEN_TTL_DAYS: i64 = 60;
/// The platform team (owner of shared hosts' audit rows).
pub const PLATFORM_TEAM: Uuid = Uuid::nil();

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HostRow {
    pub id: Uuid,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub team_id: Option<Uuid>,
    pub provider: String,
    pub availability_zone: String,
    pub arch: String,
    pub cpu_cores: i32,
    pub memory_mb: i32,
    pub disk_gb: i32,
    pub address: String,
    pub status: String,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

pub const HOST_COLUMNS: &str = "id, type, team_id, provider, availability_zone, arch, cpu_cores, \
     memory_mb, disk_gb, address, status, last_heartbeat_at, created_at";

impl HostRow {
    pub fn public_id(&self) -> String {
        ids::encode(IdKind::Host, self.id)
    }

    pub fn to_api(&self, tags: Vec<String>) -> Host {
        Host {
            id: self.public_id(),
            kind: if self.kind == "byoc" {
                HostType::Byoc
            } else {
                HostType::Regular
            },
            team_id: self.team_id.map(|t| ids::encode(IdKind::Team, t)),
            provider: self.provider.clone(),
            availability_zone: self.availability_zone.clone(),
            arch: self.arch.clone(),
            cpu_cores: self.cpu_cores,
            memory_mb: self.memory_mb,
            disk_gb: self.disk_gb,
            address: self.address.clone(),
            status: match self.status.as_str() {
                "online" => HostStatus::Online,
                "offline" => HostStatus::Offline,
                "draining" => HostStatus::Draining,
                "unreachable" => HostStatus::Unreachable,
                _ => HostStatus::Pending,
            },
            last_heartbeat_at: self.last_heartbeat_at,
            created_at: self.created_at,
            tags,
        }
    }

    /// The team whose feed and audit log host events go to.
    pub fn audit_team(&self) -> Uuid {
        self.team_id.unwrap_or(PLATFORM_TEAM)
    }
}

/// A host by id; `None` once it is deleted.
pub async fn load(app: &App, id: Uuid) -> ApiResult<Option<HostRow>> {
    let sql = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = $1");
    Ok(sqlx::query_as::<_, HostRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&app.db)
        .await?)
}

async fn tags_of(app: &App, id: Uuid) -> ApiResult<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT tag FROM host_tags WHERE host_id = $1 ORDER BY tag")
            .bind(id)
            .fetch_all(&app.db)
            .await?,
    )
}

/// Who may manage a host: platform admins any; team owners/admins their team's BYOC hosts.
fn may_manage(session: &UserSession, host: &HostRow) -> bool {
    is_admin(session)
        || (host.kind == "byoc"
            && host.team_id == Some(session.ctx.team_id)
            && session.role.can_manage())
}

fn is_admin(session: &UserSession) -> bool {
    matches!(
        session.ctx.principal,
        crate::auth::Principal::User { is_admin: true, .. }
    )
}

/// A host the caller may see, or 404.
pub async fn get_visible(app: &App, session: &UserSession, id: &str) -> ApiResult<HostRow> {
    let not_found = || ApiError::not_found(format!("host {id} not found"));
    let uuid = ids::decode(IdKind::Host, id).ok_or_else(not_found)?;
    let host = load(app, uuid).await?.ok_or_else(not_found)?;
    let visible = is_admin(session) || host.team_id == Some(session.ctx.team_id);
    if !visible {
        return Err(not_found());
    }
    Ok(host)
}

pub async fn get(app: &App, session: &UserSession, id: &str) -> ApiResult<Host> {
    let host = get_visible(app, session, id).await?;
    let tags = tags_of(app, host.id).await?;
    Ok(host.to_api(tags))
}

pub async fn list(app: &App, session: &UserSession) -> ApiResult<Vec<Host>> {
    let sql = format!(
        "SELECT {HOST_COLUMNS} FROM hosts WHERE $1 OR team_id = $2 ORDER BY created_at DESC"
    );
    let rows = sqlx::query_as::<_, HostRow>(sqlx::AssertSqlSafe(sql))
        .bind(is_admin(session))
        .bind(session.ctx.team_id)
        .fetch_all(&app.db)
        .await?;
    let mut hosts = Vec::with_capacity(rows.len());
    for row in rows {
        let tags = tags_of(app, row.id).await?;
        hosts.push(row.to_api(tags));
    }
    Ok(hosts)
}

async fn new_registration_token(app: &App, host_id: Uuid, by: Uuid) -> ApiResult<String> {
    registration_token(&app.db, host_id, Some(by)).await
}

/// Stores a new one-time registration token for `host_id` (valid an hour) and returns it.
pub async fn registration_token(
    db: &sqlx::PgPool,
    host_id: Uuid,
    by: Option<Uuid>,
) -> ApiResult<String> {
    let token = random_hex(32);
    sqlx::query(
        "INSERT INTO one_time_tokens (token_hash, purpose, subject_id, created_by, expires_at)
         VALUES ($1, 'host_registration', $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(hash_secret(&token))
    .bind(host_id)
    .bind(by)
    .bind(REGISTRATION_TOKEN_TTL_SECS as f64)
    .execute(db)
    .await?;
    Ok(token)
}

/// `POST /v1/hosts`: a pending host and its registration token.
pub async fn create(
    app: &App,
    session: &UserSession,
    req: CreateHostRequest,
) -> ApiResult<CreateHostResponse> {
    let team_id = match req.kind {
        HostType::Regular => {
            if !is_admin(session) {
                return Err(ApiError::forbidden(
                    "only platform administrators can add shared hosts",
                ));
            }
            None
        }
        HostType::Byoc => {
            let team = req
                .team_id
                .as_deref()
                .ok_or_else(|| ApiError::invalid("team_id is required for a BYOC host"))?;
            let team = ids::decode(IdKind::Team, team)
                .ok_or_else(|| ApiError::not_found(format!("team {team} not found")))?;
            if !(is_admin(session) || (team == session.ctx.team_id && session.role.can_manage())) {
                return Err(ApiError::forbidden(
                    "only the team's owner or admins can add its hosts",
                ));
            }
            let byoc: Option<bool> = sqlx::query_scalar(
                "SELECT is_byoc FROM teams WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(team)
            .fetch_optional(&app.db)
            .await?;
            match byoc {
                None => return Err(ApiError::not_found("team not found")),
                Some(false) => {
                    return Err(ApiError::forbidden(
                        "bring-your-own-compute is not enabled for this team; ask a platform administrator",
                    ));
                }
                Some(true) => Some(team),
            }
        }
    };
    let id = insert_pending(
        &app.db,
        team_id,
        &req.provider.unwrap_or_default(),
        &req.availability_zone.unwrap_or_default(),
        Some(session.user_id),
    )
    .await?;
    let token = new_registration_token(app, id, session.user_id).await?;
    let host = load(app, id)
        .await?
        .ok_or_else(|| ApiError::internal("host vanished after insert"))?;
    audit_by_user(app, session, &host, "create").await;
    Ok(CreateHostResponse {
        host: host.to_api(vec![]),
        registration_token: token,
    })
}

/// Inserts a pending host (BYOC when `team_id` is given) and returns its id.
pub async fn insert_pending(
    db: &sqlx::PgPool,
    team_id: Option<Uuid>,
    provider: &str,
    availability_zone: &str,
    created_by: Option<Uuid>,
) -> ApiResult<Uuid> {
    let id = ids::new_uuid();
    sqlx::query(
        "INSERT INTO hosts (id, type, team_id, provider, availability_zone, created_by)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(if team_id.is_some() { "byoc" } else { "regular" })
    .bind(team_id)
    .bind(provider)
    .bind(availability_zone)
    .bind(created_by)
    .execute(db)
    .await?;
    Ok(id)
}

/// `POST /v1/hosts/{id}/token`: a new token while the host is still pending.
pub async fn regenerate_token(
    app: &App,
    session: &UserSession,
    id: &str,
) -> ApiResult<CreateHostResponse> {
    let host = get_visible(app, session, id).await?;
    if !may_manage(session, &host) {
        return Err(ApiError::forbidden("you cannot manage this host"));
    }
    if host.status != "pending" {
        return Err(ApiError::invalid_state(
            "the host is already registered; delete and re-create it to register another agent",
        ));
    }
    let token = new_registration_token(app, host.id, session.user_id).await?;
    Ok(CreateHostResponse {
        host: host.to_api(tags_of(app, host.id).await?),
        registration_token: token,
    })
}

fn validate_address(address: &str) -> ApiResult<()> {
    let ok = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0))
        && address.len() <= 255
        && !address.contains(['/', ' ', '@']);
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "address {address:?} must be host:port, reachable from the control plane"
        )))
    }
}

/// Issues the host's credentials: JWT, a new refresh token, a server certificate.
async fn issue_credentials(app: &App, host_id: Uuid, address: &str) -> ApiResult<HostCredentials> {
    let public_id = ids::encode(IdKind::Host, host_id);
    let token = app.jwt.sign_host(&public_id)?;
    let refresh_token = random_hex(32);
    sqlx::query(
        "INSERT INTO host_refresh_tokens (id, host_id, token_hash, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(days => $4))",
    )
    .bind(ids::new_uuid())
    .bind(host_id)
    .bind(hash_secret(&refresh_token))
    .bind(REFRESH_TOKEN_TTL_DAYS as i32)
    .execute(&app.db)
    .await?;
    let cert = app
        .pki
        .ca
        .issue_server_cert(&public_id, address, HOST_CERT_TTL)
        .map_err(|e| ApiError::invalid(format!("cannot issue a certificate for {address}: {e}")))?;
    let expires: DateTime<Utc> = cert.not_after.into();
    sqlx::query(
        "UPDATE hosts SET cert_fingerprint = $2, cert_expires_at = $3, updated_at = now() WHERE id = $1",
    )
    .bind(host_id)
    .bind(&cert.fingerprint_sha256_hex)
    .bind(expires)
    .execute(&app.db)
    .await?;
    Ok(HostCredentials {
        host_id: public_id,
        token,
        refresh_token,
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
        ca_cert_pem: app.pki.ca.cert_pem().to_string(),
    })
}

/// `POST /v1/hosts/register`: consumes the one-time token.
pub async fn register(app: &App, req: RegisterHostRequest) -> ApiResult<HostCredentials> {
    validate_address(&req.address)?;
    let host_id: Option<Uuid> = sqlx::query_scalar(
        "UPDATE one_time_tokens SET used_at = now()
          WHERE token_hash = $1 AND purpose = 'host_registration'
            AND used_at IS NULL AND expires_at > now()
          RETURNING subject_id",
    )
    .bind(hash_secret(req.token.trim()))
    .fetch_optional(&app.db)
    .await?;
    let host_id = host_id.ok_or_else(|| {
        ApiError::unauthorized(
            "invalid, used or expired registration token; create a new one with POST /v1/hosts/{id}/token",
        )
    })?;
    let updated = sqlx::query(
        "UPDATE hosts SET arch = $2, cpu_cores = $3, memory_mb = $4, disk_gb = $5, address = $6,
                status = 'online', last_heartbeat_at = now(), updated_at = now()
          WHERE id = $1",
    )
    .bind(host_id)
    .bind(&req.arch)
    .bind(req.cpu_cores.max(0))
    .bind(req.memory_mb.max(0))
    .bind(req.disk_gb.max(0))
    .bind(&req.address)
    .execute(&app.db)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(ApiError::not_found("the host for this token was deleted"));
    }
    // A new registration replaces whatever agent held the host before.
    sqlx::query("UPDATE host_refresh_tokens SET revoked_at = now() WHERE host_id = $1 AND revoked_at IS NULL")
        .bind(host_id)
        .execute(&app.db)
        .await?;
    app.agents.evict(host_id);
    let creds = issue_credentials(app, host_id, &req.address).await?;
    if let Some(host) = load(app, host_id).await? {
        host_event(app, &host, EventKind::HostUp, "registered").await;
    }
    tracing::info!(host = %creds.host_id, address = %req.address, "host registered");
    Ok(creds)
}

/// `POST /v1/hosts/auth/refresh`: rotates the refresh token (the old one is revoked in the same
/// transaction) and renews the JWT and certificate.
pub async fn refresh(app: &App, req: RefreshHostRequest) -> ApiResult<HostCredentials> {
    let mut tx = app.db.begin().await?;
    let row: Option<(Uuid, String)> = sqlx::query_as(
        "UPDATE host_refresh_tokens r SET revoked_at = now()
           FROM hosts h
          WHERE r.token_hash = $1 AND r.revoked_at IS NULL AND r.expires_at > now()
            AND h.id = r.host_id
          RETURNING r.host_id, h.address",
    )
    .bind(hash_secret(req.refresh_token.trim()))
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let (host_id, address) =
        row.ok_or_else(|| ApiError::unauthorized("invalid, used or expired refresh token"))?;
    issue_credentials(app, host_id, &address).await
}

/// `POST /v1/hosts/{id}/heartbeat`.
pub async fn heartbeat(
    app: &crate::state::AppState,
    host_id_from_token: Uuid,
    id: &str,
    req: HeartbeatRequest,
) -> ApiResult<()> {
    let id = ids::decode(IdKind::Host, id)
        .ok_or_else(|| ApiError::not_found(format!("host {id} not found")))?;
    if id != host_id_from_token {
        return Err(ApiError::forbidden(
            "the host token belongs to another host",
        ));
    }
    let previous: Option<String> = sqlx::query_scalar(
        "UPDATE hosts h SET last_heartbeat_at = now(),
                status = CASE WHEN h.status = 'unreachable' THEN 'online' ELSE h.status END
           FROM (SELECT status FROM hosts WHERE id = $1 FOR UPDATE) old
          WHERE h.id = $1
          RETURNING old.status",
    )
    .bind(id)
    .fetch_optional(&app.db)
    .await?;
    let previous = previous.ok_or_else(|| ApiError::not_found("host deleted"))?;
    if previous == "unreachable"
        && let Some(host) = load(app, id).await?
    {
        tracing::info!(host = %host.public_id(), "host is back online");
        host_event(app, &host, EventKind::HostUp, "heartbeat_resumed").await;
        crate::workers::host_monitor::reconcile_soon(app, id);
        return Ok(());
    }
    // An agent that runs fewer sandboxes than we think paused or lost some (a restart, a
    // lost control plane): look now rather than at the next monitor round.
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sandboxes WHERE host_id = $1 AND status = 'running'",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await?;
    if i64::from(req.running_sandboxes) < running {
        crate::workers::host_monitor::reconcile_soon(app, id);
    }
    Ok(())
}

/// Audits an operator's action on a host.
async fn audit_by_user(app: &App, session: &UserSession, host: &HostRow, action: &'static str) {
    audit::record(
        &app.db,
        AuditEntry::new(
            host.audit_team(),
            session.ctx.actor(),
            "host",
            Some(host.public_id()),
            action,
        ),
    )
    .await;
}

/// Publishes `host.up`/`host.down` to the host's team and audits it.
pub async fn host_event(app: &App, host: &HostRow, kind: EventKind, reason: &str) {
    let team = host.audit_team();
    let action = match kind {
        EventKind::HostDown => "marked_down",
        _ => "marked_up",
    };
    audit::record(
        &app.db,
        AuditEntry::new(
            team,
            Actor::system(),
            "host",
            Some(host.public_id()),
            action,
        )
        .metadata(serde_json::json!({ "reason": reason, "address": host.address })),
    )
    .await;
    let mut metadata = wrenn_api_types::Metadata::new();
    metadata.insert("reason".into(), reason.into());
    metadata.insert("host_ip".into(), host.address.clone());
    events::publish(
        &app.db,
        team,
        &Event {
            event: kind,
            outcome: None,
            resource: Some(Resource {
                id: host.public_id(),
                kind: "host".into(),
            }),
            actor: Some(Actor::system()),
            metadata,
            error: None,
            sandbox: None,
            timestamp: Utc::now(),
        },
    )
    .await;
}

/// Capsules that keep a host from being deleted.
pub async fn active_capsules(app: &App, host_id: Uuid) -> ApiResult<Vec<String>> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM sandboxes WHERE host_id = $1
            AND status NOT IN ('stopped', 'error') ORDER BY created_at",
    )
    .bind(host_id)
    .fetch_all(&app.db)
    .await?;
    Ok(ids.into_iter().map(ids::capsule).collect())
}

/// `DELETE /v1/hosts/{id}[?force=true]`.
pub async fn delete(app: &App, session: &UserSession, id: &str, force: bool) -> ApiResult<()> {
    let host = get_visible(app, session, id).await?;
    if !may_manage(session, &host) {
        return Err(ApiError::forbidden("you cannot manage this host"));
    }
    let capsules = active_capsules(app, host.id).await?;
    if !capsules.is_empty() && !force {
        return Err(ApiError::Public {
            code: wrenn_api_types::ErrorCode::HostHasCapsules,
            message: format!(
                "host {} still has {} capsule(s); destroy them or pass ?force=true",
                host.public_id(),
                capsules.len()
            ),
            capsule_ids: Some(capsules),
        });
    }
    if host.status == "online" {
        let client = app.agents.client_for(host.id, &host.address);
        // Terminate destroys every sandbox on the host and stops the agent.
        if let Err(e) = client
            .call::<_, wrenn_protocol::hostagent::TerminateResponse>(
                "Terminate",
                &wrenn_protocol::hostagent::TerminateRequest {},
            )
            .await
        {
            tracing::warn!(host = %host.public_id(), error = %e, "terminate call failed; deleting the host anyway");
        }
    }
    sqlx::query(
        "UPDATE sandboxes SET status = 'stopped', last_updated = now()
          WHERE host_id = $1 AND status NOT IN ('stopped', 'error')",
    )
    .bind(host.id)
    .execute(&app.db)
    .await?;
    sqlx::query("DELETE FROM hosts WHERE id = $1")
        .bind(host.id)
        .execute(&app.db)
        .await?;
    app.agents.evict(host.id);
    audit_by_user(app, session, &host, "delete").await;
    Ok(())
}

pub async fn delete_preview(
    app: &App,
    session: &UserSession,
    id: &str,
) -> ApiResult<(Host, Vec<String>)> {
    let host = get_visible(app, session, id).await?;
    let capsules = active_capsules(app, host.id).await?;
    Ok((host.to_api(tags_of(app, host.id).await?), capsules))
}

fn validate_tag(tag: &str) -> ApiResult<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 64
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "a tag is 1-64 characters of letters, digits, '-', '_', '.', ':'",
        ))
    }
}

pub async fn add_tag(app: &App, session: &UserSession, id: &str, tag: &str) -> ApiResult<()> {
    validate_tag(tag)?;
    let host = get_visible(app, session, id).await?;
    if !may_manage(session, &host) {
        return Err(ApiError::forbidden("you cannot manage this host"));
    }
    sqlx::query("INSERT INTO host_tags (host_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(host.id)
        .bind(tag)
        .execute(&app.db)
        .await?;
    Ok(())
}

pub async fn remove_tag(app: &App, session: &UserSession, id: &str, tag: &str) -> ApiResult<()> {
    let host = get_visible(app, session, id).await?;
    if !may_manage(session, &host) {
        return Err(ApiError::forbidden("you cannot manage this host"));
    }
    let removed = sqlx::query("DELETE FROM host_tags WHERE host_id = $1 AND tag = $2")
        .bind(host.id)
        .bind(tag)
        .execute(&app.db)
        .await?;
    if removed.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("tag {tag:?} not found")));
    }
    Ok(())
}

pub async fn list_tags(app: &App, session: &UserSession, id: &str) -> ApiResult<Vec<String>> {
    let host = get_visible(app, session, id).await?;
    tags_of(app, host.id).await
}
