//! Team API keys: created, listed and revoked by dashboard users (never by an API key).
//! The plaintext key is shown once, in the create response; only its SHA-256 is stored.

use crate::audit::{self, AuditEntry};
use crate::auth::UserSession;
use crate::auth::secrets::{api_key_display_prefix, hash_secret, new_api_key};
use crate::error::{ApiError, ApiResult};
use crate::ids::{self, IdKind};
use crate::state::App;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;
use wrenn_api_types::auth::{ApiKey, CreateApiKeyRequest};

/// The name of a key created without one (upstream).
pub const DEFAULT_KEY_NAME: &str = "Unnamed API Key";
/// Longest key name.
pub const MAX_KEY_NAME_LEN: usize = 128;

#[derive(Debug, sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    team_id: Uuid,
    name: String,
    key_prefix: String,
    created_by: Option<Uuid>,
    creator_email: Option<String>,
    created_at: DateTime<Utc>,
    last_used: Option<DateTime<Utc>>,
}

impl KeyRow {
    fn to_api(&self) -> ApiKey {
        ApiKey {
            id: ids::encode(IdKind::ApiKey, self.id),
            team_id: ids::encode(IdKind::Team, self.team_id),
            name: self.name.clone(),
            key_prefix: self.key_prefix.clone(),
            created_by: self.created_by.map(|u| ids::encode(IdKind::User, u)),
            creator_email: self.creator_email.clone(),
            created_at: self.created_at,
            last_used: self.last_used,
            key: None,
        }
    }
}

/// Inserts a new key for `team_id`; returns it (with the plaintext in `key`) and the plaintext.
pub(crate) async fn insert_key_in(
    conn: &mut PgConnection,
    team_id: Uuid,
    name: &str,
    created_by: Option<Uuid>,
) -> ApiResult<(ApiKey, String)> {
    let plaintext = new_api_key();
    let row: KeyRow = sqlx::query_as(
        "WITH k AS (
            INSERT INTO team_api_keys (id, team_id, name, key_hash, key_prefix, created_by)
            VALUES ($1, $2, $3, $4, $5, $6)
            RETURNING id, team_id, name, key_prefix, created_by, created_at, last_used)
         SELECT k.*, u.email AS creator_email FROM k LEFT JOIN users u ON u.id = k.created_by",
    )
    .bind(ids::new_uuid())
    .bind(team_id)
    .bind(name)
    .bind(hash_secret(&plaintext))
    .bind(api_key_display_prefix(&plaintext))
    .bind(created_by)
    .fetch_one(conn)
    .await?;
    let mut key = row.to_api();
    key.key = Some(plaintext.clone());
    Ok((key, plaintext))
}

fn key_name(req: &CreateApiKeyRequest) -> ApiResult<String> {
    let name = req.name.as_deref().map(str::trim).unwrap_or_default();
    if name.is_empty() {
        return Ok(DEFAULT_KEY_NAME.into());
    }
    if name.chars().count() > MAX_KEY_NAME_LEN || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "name must be at most {MAX_KEY_NAME_LEN} characters, without control characters"
        )));
    }
    Ok(name.to_string())
}

/// `POST /v1/api-keys`: a key for the session's team.
pub async fn create(
    app: &App,
    session: &UserSession,
    req: CreateApiKeyRequest,
) -> ApiResult<ApiKey> {
    let name = key_name(&req)?;
    let mut conn = app.db.acquire().await?;
    let (key, _) =
        insert_key_in(&mut conn, session.ctx.team_id, &name, Some(session.user_id)).await?;
    drop(conn);
    audit::record(
        &app.db,
        AuditEntry::new(
            session.ctx.team_id,
            session.ctx.actor(),
            "api_key",
            Some(key.id.clone()),
            "create",
        )
        .metadata(json!({ "name": key.name, "key_prefix": key.key_prefix })),
    )
    .await;
    Ok(key)
}

/// `GET /v1/api-keys`: the team's keys, newest first (never the key or its hash).
pub async fn list(app: &App, session: &UserSession) -> ApiResult<Vec<ApiKey>> {
    let rows: Vec<KeyRow> = sqlx::query_as(
        "SELECT k.id, k.team_id, k.name, k.key_prefix, k.created_by, u.email AS creator_email,
                k.created_at, k.last_used
           FROM team_api_keys k LEFT JOIN users u ON u.id = k.created_by
          WHERE k.team_id = $1
          ORDER BY k.created_at DESC, k.id",
    )
    .bind(session.ctx.team_id)
    .fetch_all(&app.db)
    .await?;
    Ok(rows.iter().map(KeyRow::to_api).collect())
}

/// `DELETE /v1/api-keys/{id}`: revokes one of the team's keys; another team's key is a 404.
pub async fn revoke(app: &App, session: &UserSession, id: &str) -> ApiResult<()> {
    let not_found = || ApiError::not_found(format!("API key {id} not found"));
    let key_id = ids::decode(IdKind::ApiKey, id).ok_or_else(not_found)?;
    let deleted: Option<(String, String)> = sqlx::query_as(
        "DELETE FROM team_api_keys WHERE id = $1 AND team_id = $2 RETURNING name, key_prefix",
    )
    .bind(key_id)
    .bind(session.ctx.team_id)
    .fetch_optional(&app.db)
    .await?;
    let (name, prefix) = deleted.ok_or_else(not_found)?;
    audit::record(
        &app.db,
        AuditEntry::new(
            session.ctx.team_id,
            session.ctx.actor(),
            "api_key",
            Some(id.to_string()),
            "revoke",
        )
        .metadata(json!({ "name": name, "key_prefix": prefix })),
    )
    .await;
    Ok(())
}
