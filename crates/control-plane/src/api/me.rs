//! The caller's own account (`/v1/me`) and password resets.

use crate::api::extract::ApiJson;
use crate::auth::UserSession;
use crate::error::ApiResult;
use crate::service::accounts::profile;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use wrenn_api_types::ErrorBody;
use wrenn_api_types::auth::{
    AuthResponse, ChangePasswordRequest, DeleteAccountRequest, Me, NameRequest,
    PasswordResetConfirm, PasswordResetRequest,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/me", get(get_me).patch(patch_me).delete(delete_me))
        .route("/me/password", post(change_password))
        .route("/me/password/reset", post(request_reset))
        .route("/me/password/reset/confirm", post(confirm_reset))
}

#[utoipa::path(get, path = "/v1/me", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
pub async fn get_me(State(app): State<AppState>, session: UserSession) -> ApiResult<Json<Me>> {
    Ok(Json(profile::get_me(&app, &session).await?))
}

/// Renames the caller; answers with a new session token carrying the name.
#[utoipa::path(patch, path = "/v1/me", tag = "account", security(("bearer" = [])), request_body = NameRequest,
    responses((status = 200, body = AuthResponse), (status = 400, body = ErrorBody)))]
pub async fn patch_me(
    State(app): State<AppState>,
    session: UserSession,
    ApiJson(req): ApiJson<NameRequest>,
) -> ApiResult<Json<AuthResponse>> {
    Ok(Json(profile::rename_me(&app, &session, req).await?))
}

/// Deletes the caller's account (`confirmation` = their email).
#[utoipa::path(delete, path = "/v1/me", tag = "account", security(("bearer" = [])), request_body = DeleteAccountRequest,
    responses((status = 204), (status = 400, body = ErrorBody),
              (status = 409, description = "owns a team with other members, or is the last admin", body = ErrorBody)))]
pub async fn delete_me(
    State(app): State<AppState>,
    session: UserSession,
    ApiJson(req): ApiJson<DeleteAccountRequest>,
) -> ApiResult<StatusCode> {
    profile::delete_me(&app, &session, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/me/password", tag = "account", security(("bearer" = [])), request_body = ChangePasswordRequest,
    responses((status = 204), (status = 400, body = ErrorBody)))]
pub async fn change_password(
    State(app): State<AppState>,
    session: UserSession,
    ApiJson(req): ApiJson<ChangePasswordRequest>,
) -> ApiResult<StatusCode> {
    profile::change_password(&app, &session, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Emails a reset link if the account exists; always 204.
#[utoipa::path(post, path = "/v1/me/password/reset", tag = "account", request_body = PasswordResetRequest,
    responses((status = 204)))]
pub async fn request_reset(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<PasswordResetRequest>,
) -> ApiResult<StatusCode> {
    profile::request_password_reset(&app, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/me/password/reset/confirm", tag = "account", request_body = PasswordResetConfirm,
    responses((status = 204), (status = 400, body = ErrorBody)))]
pub async fn confirm_reset(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<PasswordResetConfirm>,
) -> ApiResult<StatusCode> {
    profile::confirm_password_reset(&app, req).await?;
    Ok(StatusCode::NO_CONTENT)
}
