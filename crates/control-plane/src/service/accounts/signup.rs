//! Signup (an inactive account and an emailed activation link) and activation.

use super::{
    ACTIVATION_TTL, TokenPurpose, consume_token, ensure_default_team, issue_session, issue_token,
    lock_admin_set, normalize_email, validate_name, validate_password,
};
use crate::auth::password::hash_password_blocking;
use crate::error::{ApiError, ApiResult, is_unique_violation};
use crate::ids;
use crate::state::App;
use uuid::Uuid;
use wrenn_api_types::auth::{AuthResponse, SignupRequest, TokenRequest};

/// The 201 message of a signup.
pub const SIGNUP_MESSAGE: &str =
    "account created: open the activation link we emailed you within 30 minutes";

/// Creates an inactive account and emails its activation link.
///
/// An email that belongs to an active (or disabled) account is refused with `conflict`. An
/// unactivated signup blocks its email for the activation window, then a new signup replaces it.
pub async fn signup(app: &App, req: SignupRequest) -> ApiResult<()> {
    if !app.settings.signup_enabled {
        return Err(ApiError::forbidden(
            "signups are disabled on this installation",
        ));
    }
    let email = normalize_email(&req.email)?;
    validate_password(&req.password)?;
    let name = validate_name(&req.name)?;
    let password_hash = hash_password_blocking(req.password).await?;

    let mut tx = app.db.begin().await?;
    let existing: Option<(Uuid, String, bool)> = sqlx::query_as(
        "SELECT id, status, created_at < now() - make_interval(secs => $2)
           FROM users WHERE email = $1 FOR UPDATE",
    )
    .bind(&email)
    .bind(ACTIVATION_TTL.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    match existing {
        Some((old_id, status, true)) if status == "inactive" => {
            // An abandoned signup: its tokens and the row go; the email is free again.
            sqlx::query("DELETE FROM one_time_tokens WHERE subject_id = $1")
                .bind(old_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(old_id)
                .execute(&mut *tx)
                .await?;
        }
        Some((_, status, false)) if status == "inactive" => {
            return Err(ApiError::conflict(
                "email already registered and awaiting activation: use the emailed link, or sign up again after 30 minutes",
            ));
        }
        Some(_) => return Err(ApiError::conflict("email already registered")),
        None => {}
    }
    let user_id = ids::new_uuid();
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, password_hash, name, status) VALUES ($1, $2, $3, $4, 'inactive')",
    )
    .bind(user_id)
    .bind(&email)
    .bind(&password_hash)
    .bind(&name)
    .execute(&mut *tx)
    .await;
    match inserted {
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::conflict("email already registered"));
        }
        other => {
            other?;
        }
    }
    let token = issue_token(&mut tx, TokenPurpose::Activation, user_id, ACTIVATION_TTL).await?;
    tx.commit().await?;

    let link = format!("{}/activate?token={token}", app.settings.public_url);
    app.mailer.send_later(
        email,
        "Activate your Wrenn account".into(),
        format!(
            "Hi {name},\n\nWelcome to Wrenn. Open this link within 30 minutes to activate your account:\n\n{link}\n\nIf you did not sign up, ignore this message.\n"
        ),
    );
    Ok(())
}

/// Consumes an activation token: the account becomes active, gets its default team, and the
/// first account ever activated becomes the platform admin. Returns a session.
pub async fn activate(app: &App, req: TokenRequest) -> ApiResult<AuthResponse> {
    let invalid = || ApiError::invalid("invalid or expired activation token");
    let mut tx = app.db.begin().await?;
    let user_id = consume_token(&mut tx, TokenPurpose::Activation, &req.token)
        .await?
        .ok_or_else(invalid)?;
    let activated: Option<Uuid> = sqlx::query_scalar(
        "UPDATE users SET status = 'active', updated_at = now()
          WHERE id = $1 AND status = 'inactive' RETURNING id",
    )
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?;
    if activated.is_none() {
        return Err(invalid());
    }
    let (team_id, _) = ensure_default_team(&mut tx, user_id).await?;
    promote_if_no_admin(&mut tx, user_id).await?;
    tx.commit().await?;
    issue_session(app, user_id, team_id).await
}

/// Makes `user_id` a platform admin if there is none yet. The admin-set lock makes the check and
/// the update one step: two first users activating at once cannot both become admin.
pub(crate) async fn promote_if_no_admin(
    conn: &mut sqlx::PgConnection,
    user_id: Uuid,
) -> ApiResult<bool> {
    lock_admin_set(conn).await?;
    let promoted = sqlx::query(
        "UPDATE users SET is_admin = true, updated_at = now()
          WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM users WHERE is_admin AND status <> 'deleted')",
    )
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(promoted.rows_affected() == 1)
}
