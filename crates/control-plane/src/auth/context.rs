//! Request extractors that authenticate the caller. Every capsule and snapshot lookup is scoped
//! by [`AuthContext::team_id`].

use crate::auth::jwt::UserClaims;
use crate::auth::secrets::hash_secret;
use crate::error::ApiError;
use crate::ids::{self, IdKind};
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use uuid::Uuid;
use wrenn_api_types::auth::TeamRole;
use wrenn_api_types::events::{Actor, ActorType};
use wrenn_api_types::{API_KEY_HEADER, ErrorCode, HOST_TOKEN_HEADER};

/// How the caller proved who it is.
#[derive(Debug, Clone)]
pub enum Principal {
    /// An API key: acts for its team, with no user and no role.
    ApiKey { key_id: Uuid, name: String },
    /// A dashboard session (JWT).
    User {
        user_id: Uuid,
        email: String,
        name: String,
        role: TeamRole,
        is_admin: bool,
    },
}

/// The authenticated caller of a team-scoped route (API key or JWT).
#[derive(Debug, Clone)]
pub struct AuthContext {
    pub team_id: Uuid,
    pub principal: Principal,
}

impl AuthContext {
    /// The actor recorded on audit rows and events.
    pub fn actor(&self) -> Actor {
        match &self.principal {
            Principal::ApiKey { key_id, name } => Actor {
                kind: ActorType::ApiKey,
                id: ids::encode(IdKind::ApiKey, *key_id),
                name: name.clone(),
            },
            Principal::User {
                user_id,
                email,
                name,
                ..
            } => Actor {
                kind: ActorType::User,
                id: ids::encode(IdKind::User, *user_id),
                name: if name.is_empty() {
                    email.clone()
                } else {
                    name.clone()
                },
            },
        }
    }

    pub fn user_id(&self) -> Option<Uuid> {
        match &self.principal {
            Principal::User { user_id, .. } => Some(*user_id),
            Principal::ApiKey { .. } => None,
        }
    }

    /// The caller's role in the team; API keys have none.
    pub fn role(&self) -> Option<TeamRole> {
        match &self.principal {
            Principal::User { role, .. } => Some(*role),
            Principal::ApiKey { .. } => None,
        }
    }
}

/// What credentials a request carries, before they are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    ApiKey(String),
    Bearer(String),
}

/// Reads `X-API-Key` (preferred) or `Authorization: Bearer`.
pub fn credentials_from_headers(headers: &HeaderMap) -> Option<Credentials> {
    if let Some(key) = headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()) {
        let key = key.trim();
        if !key.is_empty() {
            return Some(Credentials::ApiKey(key.to_string()));
        }
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| Credentials::Bearer(token.trim().to_string()))
        .filter(|c| !matches!(c, Credentials::Bearer(t) if t.is_empty()))
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    team_id: Uuid,
    name: String,
    stale: bool,
}

/// Checks credentials; every failure is `unauthorized` except a disabled account (403).
pub async fn authenticate(state: &AppState, creds: &Credentials) -> Result<AuthContext, ApiError> {
    match creds {
        Credentials::ApiKey(key) => {
            let row: Option<KeyRow> = sqlx::query_as(
                "SELECT k.id, k.team_id, k.name,
                        (k.last_used IS NULL OR k.last_used < now() - interval '60 seconds') AS stale
                   FROM team_api_keys k JOIN teams t ON t.id = k.team_id
                  WHERE k.key_hash = $1 AND t.deleted_at IS NULL",
            )
            .bind(hash_secret(key))
            .fetch_optional(&state.db)
            .await?;
            let row = row.ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
            if row.stale {
                // `last_used` is informational: updating it at most once a minute keeps hot
                // read paths free of writes.
                sqlx::query("UPDATE team_api_keys SET last_used = now() WHERE id = $1")
                    .bind(row.id)
                    .execute(&state.db)
                    .await?;
            }
            Ok(AuthContext {
                team_id: row.team_id,
                principal: Principal::ApiKey {
                    key_id: row.id,
                    name: row.name,
                },
            })
        }
        Credentials::Bearer(token) => {
            let claims = state
                .jwt
                .verify_user(token)
                .ok_or_else(|| ApiError::unauthorized("invalid or expired session token"))?;
            session_from_claims(state, &claims).await
        }
    }
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    status: String,
    email: String,
    name: String,
    is_admin: bool,
    role: Option<String>,
    team_deleted: Option<bool>,
}

/// Re-reads the user and membership: a disabled user or a revoked membership takes effect at
/// once, not when the 6-hour token expires.
async fn session_from_claims(
    state: &AppState,
    claims: &UserClaims,
) -> Result<AuthContext, ApiError> {
    let user_id = ids::decode(IdKind::User, &claims.sub)
        .ok_or_else(|| ApiError::unauthorized("invalid session token"))?;
    let team_id = ids::decode(IdKind::Team, &claims.team_id)
        .ok_or_else(|| ApiError::unauthorized("invalid session token"))?;
    let row: Option<SessionRow> = sqlx::query_as(
        "SELECT u.status, u.email, u.name, u.is_admin, ut.role, (t.deleted_at IS NOT NULL) AS team_deleted
           FROM users u
           LEFT JOIN users_teams ut ON ut.user_id = u.id AND ut.team_id = $2
           LEFT JOIN teams t ON t.id = ut.team_id
          WHERE u.id = $1",
    )
    .bind(user_id)
    .bind(team_id)
    .fetch_optional(&state.db)
    .await?;
    let row = row.ok_or_else(|| ApiError::unauthorized("the session's user no longer exists"))?;
    match row.status.as_str() {
        "active" => {}
        "disabled" => {
            return Err(ApiError::new(
                ErrorCode::AccountDisabled,
                "this account has been disabled",
            ));
        }
        _ => return Err(ApiError::unauthorized("the session's user is not active")),
    }
    let role = row
        .role
        .as_deref()
        .and_then(|r| r.parse::<TeamRole>().ok())
        .filter(|_| row.team_deleted == Some(false))
        .ok_or_else(|| ApiError::unauthorized("not a member of the session's team"))?;
    Ok(AuthContext {
        team_id,
        principal: Principal::User {
            user_id,
            email: row.email,
            name: row.name,
            role,
            is_admin: row.is_admin,
        },
    })
}

impl FromRequestParts<AppState> for AuthContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let creds = credentials_from_headers(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized(
                "missing credentials: send an X-API-Key header or a Bearer token",
            )
        })?;
        authenticate(state, &creds).await
    }
}

/// Credentials on a WebSocket upgrade are optional: a browser cannot set headers, so it may
/// authenticate with a first `{"type":"auth","token":…}` message instead. Credentials that are
/// present but wrong are still refused before the upgrade.
#[derive(Debug, Clone)]
pub struct WsAuth(pub Option<AuthContext>);

impl FromRequestParts<AppState> for WsAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match credentials_from_headers(&parts.headers) {
            Some(creds) => Ok(Self(Some(authenticate(state, &creds).await?))),
            None => Ok(Self(None)),
        }
    }
}

/// A dashboard user (JWT only): account, team and key management routes.
#[derive(Debug, Clone)]
pub struct UserSession {
    pub ctx: AuthContext,
    pub user_id: Uuid,
    pub role: TeamRole,
}

impl FromRequestParts<AppState> for UserSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(Credentials::Bearer(token)) = credentials_from_headers(&parts.headers)
            .filter(|c| matches!(c, Credentials::Bearer(_)))
        else {
            return Err(ApiError::unauthorized(
                "this route needs a user session: send Authorization: Bearer <token> from /v1/auth/login",
            ));
        };
        let ctx = authenticate(state, &Credentials::Bearer(token)).await?;
        match ctx.principal {
            Principal::User { user_id, role, .. } => Ok(Self { ctx, user_id, role }),
            Principal::ApiKey { .. } => Err(ApiError::unauthorized("a user session is required")),
        }
    }
}

/// A platform administrator, checked against the database on every request.
#[derive(Debug, Clone)]
pub struct AdminSession(pub UserSession);

impl FromRequestParts<AppState> for AdminSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let session = UserSession::from_request_parts(parts, state).await?;
        match &session.ctx.principal {
            Principal::User { is_admin: true, .. } => Ok(Self(session)),
            _ => Err(ApiError::forbidden("platform administrators only")),
        }
    }
}

/// A host agent, by its host JWT in `X-Host-Token`.
#[derive(Debug, Clone)]
pub struct HostSession {
    pub host_id: Uuid,
}

impl FromRequestParts<AppState> for HostSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(HOST_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("missing X-Host-Token"))?;
        let claims = state
            .jwt
            .verify_host(token)
            .ok_or_else(|| ApiError::unauthorized("invalid or expired host token"))?;
        let host_id = ids::decode(IdKind::Host, &claims.host_id)
            .ok_or_else(|| ApiError::unauthorized("invalid host token"))?;
        Ok(Self { host_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn reads_api_key_first_then_bearer() {
        let mut h = HeaderMap::new();
        assert_eq!(credentials_from_headers(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(
            credentials_from_headers(&h),
            Some(Credentials::Bearer("abc".into()))
        );
        h.insert(API_KEY_HEADER, HeaderValue::from_static("wrn_x"));
        assert_eq!(
            credentials_from_headers(&h),
            Some(Credentials::ApiKey("wrn_x".into()))
        );
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(credentials_from_headers(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(credentials_from_headers(&h), None);
    }
}
