//! User accounts: signup and activation, login, the caller's own profile, password resets, and
//! the bootstrap admin. Shared here: input validation, one-time tokens, session issuing, the
//! default team, and the lock that serialises changes to the set of platform admins.
//!
//! - [`signup`]: `POST /v1/auth/signup`, `POST /v1/auth/activate`.
//! - [`login`]: `POST /v1/auth/login` (rate limited), `POST /v1/auth/switch-team`.
//! - [`profile`]: `/v1/me` and the password routes.
//! - [`bootstrap`]: `wrenn-cp bootstrap`, and the periodic purge of deleted accounts.

pub mod bootstrap;
pub mod login;
pub mod profile;
pub mod signup;

pub use bootstrap::{BootstrapOutcome, bootstrap_admin, housekeeping};

use crate::auth::password::{MAX_PASSWORD_LEN, MIN_PASSWORD_LEN};
use crate::auth::secrets::{hash_secret, random_hex};
use crate::error::{ApiError, ApiResult};
use crate::ids::{self, IdKind};
use crate::service::teams;
use crate::state::App;
use sqlx::PgConnection;
use std::time::Duration;
use uuid::Uuid;
use wrenn_api_types::auth::{AuthResponse, TeamRole};

/// Activation links are valid for 30 minutes (upstream); an unactivated signup blocks its email
/// for as long.
pub const ACTIVATION_TTL: Duration = Duration::from_secs(30 * 60);
/// Password-reset links are valid for 15 minutes (upstream).
pub const PASSWORD_RESET_TTL: Duration = Duration::from_secs(15 * 60);
/// Longest display name.
pub const MAX_NAME_LEN: usize = 100;
/// Longest email address (RFC 5321 path limit).
const MAX_EMAIL_LEN: usize = 254;

/// Advisory-lock key held (per transaction) by everything that may change who is a platform
/// admin, so "the first user becomes admin" and "never remove the last admin" hold under
/// concurrency.
const ADMIN_SET_LOCK: i64 = 0x7772_656e_6e5f_6164; // "wrenn_ad"

/// Takes the admin-set lock until the transaction ends.
pub(crate) async fn lock_admin_set(conn: &mut PgConnection) -> ApiResult<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ADMIN_SET_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

/// Lower-cased and trimmed; refused unless it is an email address.
pub fn normalize_email(email: &str) -> ApiResult<String> {
    let email = email.trim().to_lowercase();
    if email.len() > MAX_EMAIL_LEN || email.parse::<lettre::Address>().is_err() {
        return Err(ApiError::invalid("email is not a valid email address"));
    }
    Ok(email)
}

pub fn validate_password(password: &str) -> ApiResult<()> {
    let len = password.chars().count();
    if len < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::invalid(format!(
            "password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters"
        )));
    }
    Ok(())
}

/// A display name: trimmed, 1 to 100 characters, no control characters.
pub fn validate_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    let len = name.chars().count();
    if len == 0 || len > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "name must be 1 to {MAX_NAME_LEN} characters"
        )));
    }
    Ok(name.to_string())
}

/// What the account routes read of a `users` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub password_hash: Option<String>,
    pub status: String,
    pub is_admin: bool,
}

pub const USER_COLUMNS: &str = "id, email, name, password_hash, status, is_admin";

/// `one_time_tokens.purpose`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    Activation,
    PasswordReset,
}

impl TokenPurpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::Activation => "activation",
            Self::PasswordReset => "password_reset",
        }
    }
}

/// Stores a new one-time token for `subject` and returns its plaintext (only the hash is kept).
pub(crate) async fn issue_token(
    conn: &mut PgConnection,
    purpose: TokenPurpose,
    subject: Uuid,
    ttl: Duration,
) -> ApiResult<String> {
    let token = random_hex(16);
    sqlx::query(
        "INSERT INTO one_time_tokens (token_hash, purpose, subject_id, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(hash_secret(&token))
    .bind(purpose.as_str())
    .bind(subject)
    .bind(ttl.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(token)
}

/// Consumes a one-time token in one statement (so two concurrent uses cannot both succeed) and
/// returns its subject; `None` when it is unknown, used, expired or for another purpose.
pub(crate) async fn consume_token(
    conn: &mut PgConnection,
    purpose: TokenPurpose,
    token: &str,
) -> ApiResult<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "UPDATE one_time_tokens SET used_at = now()
          WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > now()
          RETURNING subject_id",
    )
    .bind(hash_secret(token.trim()))
    .bind(purpose.as_str())
    .fetch_optional(conn)
    .await?)
}

/// The user's default team, creating "<name>'s Team" when they have none (a new account, or
/// one whose default team was deleted). Locks the user row so concurrent logins create one.
pub(crate) async fn ensure_default_team(
    conn: &mut PgConnection,
    user_id: Uuid,
) -> ApiResult<(Uuid, TeamRole)> {
    let name: String = sqlx::query_scalar("SELECT name FROM users WHERE id = $1 FOR UPDATE")
        .bind(user_id)
        .fetch_one(&mut *conn)
        .await?;
    let existing: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT ut.team_id, ut.role FROM users_teams ut JOIN teams t ON t.id = ut.team_id
          WHERE ut.user_id = $1 AND ut.is_default AND t.deleted_at IS NULL",
    )
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((team_id, role)) = existing {
        return Ok((team_id, parse_role(&role)));
    }
    // A default membership left on a deleted team would collide with the new one.
    sqlx::query("UPDATE users_teams SET is_default = false WHERE user_id = $1 AND is_default")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    let team_name = format!("{}'s Team", if name.is_empty() { "My" } else { &name });
    let team = teams::create_team_in(conn, &team_name, user_id, true).await?;
    Ok((team, TeamRole::Owner))
}

/// A role read from the database; the CHECK constraint makes anything else impossible, and the
/// least privilege is the safe reading if it ever happened.
pub(crate) fn parse_role(role: &str) -> TeamRole {
    role.parse().unwrap_or(TeamRole::Member)
}

/// Signs a session for `user_id` acting in `team_id`, reading name, role and admin flag fresh.
pub(crate) async fn issue_session(
    app: &App,
    user_id: Uuid,
    team_id: Uuid,
) -> ApiResult<AuthResponse> {
    let row: Option<(String, String, bool, String)> = sqlx::query_as(
        "SELECT u.email, u.name, u.is_admin, ut.role
           FROM users u JOIN users_teams ut ON ut.user_id = u.id AND ut.team_id = $2
          WHERE u.id = $1",
    )
    .bind(user_id)
    .bind(team_id)
    .fetch_optional(&app.db)
    .await?;
    let (email, name, is_admin, role) =
        row.ok_or_else(|| ApiError::forbidden("not a member of that team"))?;
    let user = ids::encode(IdKind::User, user_id);
    let team = ids::encode(IdKind::Team, team_id);
    let token = app
        .jwt
        .sign_user(&user, &team, &role, &email, &name, is_admin)?;
    Ok(AuthResponse {
        token,
        user_id: user,
        team_id: team,
        email,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(
            normalize_email("  Alice@Example.TEST ").expect("valid"),
            "alice@example.test"
        );
        for bad in [
            "",
            "alice",
            "@x.test",
            "a b@x.test",
            &format!("{}@x.test", "a".repeat(260)),
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        assert!(validate_password("1234567").is_err());
        assert!(validate_password("12345678").is_ok());
        assert!(validate_password(&"x".repeat(257)).is_err());
        assert_eq!(validate_name("  Ann ").expect("valid"), "Ann");
        assert!(validate_name("   ").is_err());
        assert!(validate_name(&"n".repeat(101)).is_err());
        assert!(validate_name("a\nb").is_err());
    }
}
