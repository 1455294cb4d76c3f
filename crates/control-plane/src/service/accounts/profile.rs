//! The caller's own account (`/v1/me`): profile, password, reset by email, and deletion.

use super::{
    PASSWORD_RESET_TTL, TokenPurpose, USER_COLUMNS, UserRow, consume_token, issue_session,
    issue_token, lock_admin_set, normalize_email, validate_name, validate_password,
};
use crate::auth::UserSession;
use crate::auth::password::{hash_password_blocking, verify_password_blocking};
use crate::error::{ApiError, ApiResult};
use crate::ids::{self, IdKind};
use crate::service::teams;
use crate::state::App;
use uuid::Uuid;
use wrenn_api_types::auth::{
    AuthResponse, ChangePasswordRequest, DeleteAccountRequest, Me, NameRequest,
    PasswordResetConfirm, PasswordResetRequest,
};

async fn load_user(app: &App, user_id: Uuid) -> ApiResult<UserRow> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_optional(&app.db)
        .await?
        .ok_or_else(|| ApiError::unauthorized("the session's user no longer exists"))
}

pub async fn get_me(app: &App, session: &UserSession) -> ApiResult<Me> {
    let user = load_user(app, session.user_id).await?;
    let providers: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT provider FROM oauth_providers WHERE user_id = $1 ORDER BY provider",
    )
    .bind(user.id)
    .fetch_all(&app.db)
    .await?;
    Ok(Me {
        user_id: ids::encode(IdKind::User, user.id),
        name: user.name,
        email: user.email,
        is_admin: user.is_admin,
        has_password: user.password_hash.is_some(),
        providers,
    })
}

/// Renames the caller; the answer is a new session carrying the new name.
pub async fn rename_me(
    app: &App,
    session: &UserSession,
    req: NameRequest,
) -> ApiResult<AuthResponse> {
    let name = validate_name(&req.name)?;
    sqlx::query("UPDATE users SET name = $2, updated_at = now() WHERE id = $1")
        .bind(session.user_id)
        .bind(&name)
        .execute(&app.db)
        .await?;
    issue_session(app, session.user_id, session.ctx.team_id).await
}

/// Changes the password (the current one is required when there is one), or sets a first
/// password on an OAuth-only account (`confirm_password` must repeat it).
pub async fn change_password(
    app: &App,
    session: &UserSession,
    req: ChangePasswordRequest,
) -> ApiResult<()> {
    validate_password(&req.new_password)?;
    let user = load_user(app, session.user_id).await?;
    match (&user.password_hash, req.current_password) {
        (Some(stored), Some(current)) => {
            if !verify_password_blocking(current, stored.clone()).await {
                return Err(ApiError::invalid("current password is wrong"));
            }
        }
        (Some(_), None) => return Err(ApiError::invalid("current_password is required")),
        (None, _) => {
            if req.confirm_password.as_deref() != Some(req.new_password.as_str()) {
                return Err(ApiError::invalid(
                    "confirm_password must repeat new_password",
                ));
            }
        }
    }
    set_password(app, user.id, req.new_password).await
}

async fn set_password(app: &App, user_id: Uuid, password: String) -> ApiResult<()> {
    let hash = hash_password_blocking(password).await?;
    sqlx::query("UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1")
        .bind(user_id)
        .bind(hash)
        .execute(&app.db)
        .await?;
    Ok(())
}

/// Emails a reset link to an active account. Answers the same whether or not the account
/// exists, so it cannot be used to discover accounts.
pub async fn request_password_reset(app: &App, req: PasswordResetRequest) -> ApiResult<()> {
    let Ok(email) = normalize_email(&req.email) else {
        return Ok(());
    };
    let user: Option<(Uuid, String)> =
        sqlx::query_as("SELECT id, name FROM users WHERE email = $1 AND status = 'active'")
            .bind(&email)
            .fetch_optional(&app.db)
            .await?;
    let Some((user_id, name)) = user else {
        return Ok(());
    };
    let mut conn = app.db.acquire().await?;
    let token = issue_token(
        &mut conn,
        TokenPurpose::PasswordReset,
        user_id,
        PASSWORD_RESET_TTL,
    )
    .await?;
    let link = format!("{}/reset-password?token={token}", app.settings.public_url);
    app.mailer.send_later(
        email,
        "Reset your Wrenn password".into(),
        format!(
            "Hi {name},\n\nOpen this link within 15 minutes to choose a new password:\n\n{link}\n\nIf you did not ask for this, ignore this message; your password is unchanged.\n"
        ),
    );
    Ok(())
}

/// Sets a new password with a reset token (single use).
pub async fn confirm_password_reset(app: &App, req: PasswordResetConfirm) -> ApiResult<()> {
    validate_password(&req.new_password)?;
    let invalid = || ApiError::invalid("invalid or expired password-reset token");
    // Hash first: the token is consumed and the password stored in one transaction.
    let hash = hash_password_blocking(req.new_password).await?;
    let mut tx = app.db.begin().await?;
    let user_id = consume_token(&mut tx, TokenPurpose::PasswordReset, &req.token)
        .await?
        .ok_or_else(invalid)?;
    let updated = sqlx::query(
        "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1 AND status = 'active'",
    )
    .bind(user_id)
    .bind(hash)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() != 1 {
        return Err(invalid());
    }
    // Other outstanding reset links for the account stop working too.
    sqlx::query(
        "UPDATE one_time_tokens SET used_at = now()
          WHERE purpose = 'password_reset' AND subject_id = $1 AND used_at IS NULL",
    )
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes the caller's account: refused while they own a team with other members or are the
/// last platform admin. Teams they own alone are deleted, the API keys they created revoked,
/// their other memberships ended; the row is kept (status `deleted`) until the purge.
pub async fn delete_me(
    app: &App,
    session: &UserSession,
    req: DeleteAccountRequest,
) -> ApiResult<()> {
    let user = load_user(app, session.user_id).await?;
    if req.confirmation.trim().to_lowercase() != user.email {
        return Err(ApiError::invalid(
            "confirmation must be the account's email address",
        ));
    }
    let mut tx = app.db.begin().await?;
    lock_admin_set(&mut tx).await?;
    let last_admin: bool = sqlx::query_scalar(
        "SELECT u.is_admin AND NOT EXISTS (
                SELECT 1 FROM users o WHERE o.is_admin AND o.status = 'active' AND o.id <> u.id)
           FROM users u WHERE u.id = $1",
    )
    .bind(user.id)
    .fetch_one(&mut *tx)
    .await?;
    if last_admin {
        return Err(ApiError::invalid_state(
            "you are the last platform administrator: make someone else an admin first",
        ));
    }
    let owned: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT t.id, t.name, (SELECT count(*) FROM users_teams o WHERE o.team_id = t.id AND o.user_id <> $1)
           FROM users_teams ut JOIN teams t ON t.id = ut.team_id
          WHERE ut.user_id = $1 AND ut.role = 'owner' AND t.deleted_at IS NULL",
    )
    .bind(user.id)
    .fetch_all(&mut *tx)
    .await?;
    if let Some((_, name, _)) = owned.iter().find(|(_, _, others)| *others > 0) {
        return Err(ApiError::conflict(format!(
            "you own the team {name:?}, which has other members: remove them or delete the team first"
        )));
    }
    let mut teardowns = Vec::with_capacity(owned.len());
    for (team_id, _, _) in &owned {
        teardowns.push(teams::teardown_team_in(&mut tx, *team_id).await?);
    }
    sqlx::query("DELETE FROM team_api_keys WHERE created_by = $1")
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "DELETE FROM users_teams ut USING teams t
          WHERE ut.team_id = t.id AND ut.user_id = $1 AND t.deleted_at IS NULL",
    )
    .bind(user.id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE users SET status = 'deleted', is_admin = false, deleted_at = now(), updated_at = now()
          WHERE id = $1",
    )
    .bind(user.id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    for teardown in &teardowns {
        teams::release_team_resources(app, teardown).await;
    }
    app.mailer.send_later(
        user.email,
        "Your Wrenn account was deleted".into(),
        format!(
            "Hi {},\n\nYour Wrenn account has been deleted and is scheduled for permanent removal in {} days.\n",
            user.name,
            super::bootstrap::DELETED_ACCOUNT_RETENTION_DAYS
        ),
    );
    Ok(())
}
