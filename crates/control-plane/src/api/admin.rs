//! Platform administration of teams and users, and the log endpoint of `wrenn logs`
//! (`/v1/admin/...`; every route needs a platform admin's session).

use crate::api::extract::{ApiJson, ApiPath, ApiQuery};
use crate::auth::{AdminSession, AuthContext};
use crate::error::ApiResult;
use crate::service::admin;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use serde::Deserialize;
use wrenn_api_types::ErrorBody;
use wrenn_api_types::auth::{
    AdminTeamPage, AdminUserPage, ByocRequest, LogsResponse, UserActiveRequest, UserAdminRequest,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/teams", get(list_teams))
        .route("/admin/teams/{id}", delete(delete_team))
        .route("/admin/teams/{id}/byoc", put(set_byoc))
        .route("/admin/users", get(list_users))
        .route("/admin/users/{id}/active", put(set_active))
        .route("/admin/users/{id}/admin", put(set_admin))
        .route("/admin/logs", get(logs))
}

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    pub page: Option<i64>,
}

/// Every team but the platform team, 100 per page (`page` starts at 1).
#[utoipa::path(get, path = "/v1/admin/teams", tag = "admin", security(("bearer" = [])),
    params(("page" = Option<i64>, Query)),
    responses((status = 200, body = AdminTeamPage), (status = 403, body = ErrorBody)))]
pub async fn list_teams(
    State(app): State<AppState>,
    _admin: AdminSession,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<AdminTeamPage>> {
    Ok(Json(admin::list_teams(&app, q.page.unwrap_or(1)).await?))
}

/// Enables BYOC for a team (one-way: `enabled: false` is refused).
#[utoipa::path(put, path = "/v1/admin/teams/{id}/byoc", tag = "admin", security(("bearer" = [])), request_body = ByocRequest,
    params(("id" = String, Path, description = "team-…")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_byoc(
    State(app): State<AppState>,
    session: AdminSession,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ByocRequest>,
) -> ApiResult<StatusCode> {
    admin::enable_byoc(&app, &session, &id, req.enabled).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/admin/teams/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "team-…")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_team(
    State(app): State<AppState>,
    session: AdminSession,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    admin::delete_team(&app, &session, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every user, 100 per page (`page` starts at 1).
#[utoipa::path(get, path = "/v1/admin/users", tag = "admin", security(("bearer" = [])),
    params(("page" = Option<i64>, Query)),
    responses((status = 200, body = AdminUserPage), (status = 403, body = ErrorBody)))]
pub async fn list_users(
    State(app): State<AppState>,
    _admin: AdminSession,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<AdminUserPage>> {
    Ok(Json(admin::list_users(&app, q.page.unwrap_or(1)).await?))
}

/// Enables or disables an account (not one's own); disabling deletes the keys it created.
#[utoipa::path(put, path = "/v1/admin/users/{id}/active", tag = "admin", security(("bearer" = [])), request_body = UserActiveRequest,
    params(("id" = String, Path, description = "usr-…")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_active(
    State(app): State<AppState>,
    session: AdminSession,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UserActiveRequest>,
) -> ApiResult<StatusCode> {
    admin::set_user_active(&app, &session, &id, req.active).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Grants or revokes platform admin (the last admin cannot be revoked).
#[utoipa::path(put, path = "/v1/admin/users/{id}/admin", tag = "admin", security(("bearer" = [])), request_body = UserAdminRequest,
    params(("id" = String, Path, description = "usr-…")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn set_admin(
    State(app): State<AppState>,
    session: AdminSession,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UserAdminRequest>,
) -> ApiResult<StatusCode> {
    admin::set_user_admin(&app, &session, &id, req.admin).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub lines: Option<usize>,
}

/// The most recent log lines of the control plane (`source=control-plane`, the default) or of a
/// host agent (`source=host:<host-id>`). A platform admin's session, or an API key one created.
#[utoipa::path(get, path = "/v1/admin/logs", tag = "admin", security(("bearer" = [])),
    params(("source" = Option<String>, Query), ("lines" = Option<usize>, Query)),
    responses((status = 200, body = LogsResponse), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn logs(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Json<LogsResponse>> {
    admin::require_admin_caller(&app, &auth).await?;
    let source = q.source.as_deref().unwrap_or("control-plane");
    Ok(Json(admin::logs(&app, source, q.lines).await?))
}
