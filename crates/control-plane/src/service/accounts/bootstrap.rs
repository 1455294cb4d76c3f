//! The bootstrap admin (`wrenn-cp bootstrap`, used by the all-in-one install) and the periodic
//! clean-up of deleted accounts and spent tokens.

use super::{ensure_default_team, lock_admin_set, normalize_email, validate_password};
use crate::auth::password::hash_password_blocking;
use crate::auth::secrets::random_hex;
use crate::ids;
use crate::service::api_keys;
use anyhow::Context;
use sqlx::PgPool;
use uuid::Uuid;

/// The name of the key [`bootstrap_admin`] mints.
pub const BOOTSTRAP_KEY_NAME: &str = "all-in-one";
/// Deleted accounts are kept this long, then purged (upstream: 15 days).
pub const DELETED_ACCOUNT_RETENTION_DAYS: i32 = 15;

/// What `wrenn-cp bootstrap` prints.
#[derive(Debug, Clone)]
pub struct BootstrapOutcome {
    pub user_id: Uuid,
    pub team_id: Uuid,
    pub email: String,
    /// Set when the user was created without a given password: print it, it is not stored.
    pub password_if_generated: Option<String>,
    /// A fresh API key for the admin's default team (plaintext; only its hash is stored).
    pub api_key: String,
}

/// Creates (or reuses) an active platform admin with a default team, and mints a new API key
/// named "all-in-one". Idempotent apart from the key: running it again reactivates the account,
/// keeps it admin, and sets the password only when one is given.
pub async fn bootstrap_admin(
    db: &PgPool,
    email: &str,
    password: Option<String>,
) -> anyhow::Result<BootstrapOutcome> {
    let email = normalize_email(email).map_err(|e| anyhow::anyhow!("admin email: {e}"))?;
    if let Some(p) = &password {
        validate_password(p).map_err(|e| anyhow::anyhow!("admin password: {e}"))?;
    }
    let mut tx = db.begin().await?;
    lock_admin_set(&mut tx).await?;
    let existing: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM users WHERE email = $1 FOR UPDATE")
            .bind(&email)
            .fetch_optional(&mut *tx)
            .await?;
    let mut password_if_generated = None;
    let user_id = match existing {
        Some(id) => {
            if let Some(p) = password {
                let hash = hash_password_blocking(p).await?;
                sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
                    .bind(id)
                    .bind(hash)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "UPDATE users SET status = 'active', is_admin = true, deleted_at = NULL, updated_at = now()
                  WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            id
        }
        None => {
            let password = match password {
                Some(p) => p,
                None => {
                    let generated = random_hex(12);
                    password_if_generated = Some(generated.clone());
                    generated
                }
            };
            let hash = hash_password_blocking(password).await?;
            let id = ids::new_uuid();
            let name = email.split('@').next().unwrap_or("admin").to_string();
            sqlx::query(
                "INSERT INTO users (id, email, password_hash, name, status, is_admin)
                 VALUES ($1, $2, $3, $4, 'active', true)",
            )
            .bind(id)
            .bind(&email)
            .bind(hash)
            .bind(name)
            .execute(&mut *tx)
            .await?;
            id
        }
    };
    let (team_id, _) = ensure_default_team(&mut tx, user_id)
        .await
        .map_err(|e| anyhow::anyhow!("default team: {e}"))?;
    let api_key = api_keys::insert_key_in(&mut tx, team_id, BOOTSTRAP_KEY_NAME, Some(user_id))
        .await
        .map_err(|e| anyhow::anyhow!("API key: {e}"))?
        .1;
    tx.commit()
        .await
        .context("committing the bootstrap admin")?;
    Ok(BootstrapOutcome {
        user_id,
        team_id,
        email,
        password_if_generated,
        api_key,
    })
}

/// Periodic clean-up (the lead's worker calls it, e.g. hourly): purges accounts deleted more
/// than 15 days ago (their audit rows keep the action but lose the name) and drops activation
/// and reset tokens that expired more than a day ago. Returns (users purged, tokens dropped).
pub async fn housekeeping(db: &PgPool) -> anyhow::Result<(u64, u64)> {
    let mut tx = db.begin().await?;
    let purged: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM users
          WHERE status = 'deleted' AND deleted_at < now() - make_interval(days => $1)
          FOR UPDATE SKIP LOCKED",
    )
    .bind(DELETED_ACCOUNT_RETENTION_DAYS)
    .fetch_all(&mut *tx)
    .await?;
    let public_ids: Vec<String> = purged
        .iter()
        .map(|id| ids::encode(ids::IdKind::User, *id))
        .collect();
    sqlx::query(
        "UPDATE audit_logs SET actor_name = 'deleted user' WHERE actor_type = 'user' AND actor_id = ANY($1)",
    )
    .bind(&public_ids)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM users WHERE id = ANY($1)")
        .bind(&purged)
        .execute(&mut *tx)
        .await?;
    let tokens = sqlx::query(
        "DELETE FROM one_time_tokens
          WHERE purpose IN ('activation', 'password_reset') AND expires_at < now() - interval '1 day'",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok((purged.len() as u64, tokens))
}
