//! The audit log: the session team's (`/v1/audit-logs`) and the platform's
//! (`/v1/admin/audit-logs`).

use crate::api::extract::ApiQuery;
use crate::auth::{AdminSession, UserSession};
use crate::error::ApiResult;
use crate::service::audit_log::{self, AuditQuery};
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use wrenn_api_types::ErrorBody;
use wrenn_api_types::auth::AuditLogPage;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/audit-logs", get(team_logs))
        .route("/admin/audit-logs", get(platform_logs))
}

/// Newest first. Query: `before` (RFC 3339) + `before_id` (`log-…`) from the previous page's
/// `next_before`/`next_before_id`, `limit` (default 50, at most 200), `resource_type` and
/// `action` (repeatable, or comma lists). Members see `team`-scope rows only.
#[utoipa::path(get, path = "/v1/audit-logs", tag = "audit", security(("bearer" = [])),
    params(("before" = Option<String>, Query), ("before_id" = Option<String>, Query), ("limit" = Option<i64>, Query),
           ("resource_type" = Option<String>, Query), ("action" = Option<String>, Query)),
    responses((status = 200, body = AuditLogPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn team_logs(
    State(app): State<AppState>,
    session: UserSession,
    ApiQuery(pairs): ApiQuery<Vec<(String, String)>>,
) -> ApiResult<Json<AuditLogPage>> {
    let q = AuditQuery::from_pairs(&pairs)?;
    Ok(Json(audit_log::list_for_team(&app, &session, &q).await?))
}

/// The platform team's log (admin actions), both scopes; same query as `/v1/audit-logs`.
#[utoipa::path(get, path = "/v1/admin/audit-logs", tag = "admin", security(("bearer" = [])),
    params(("before" = Option<String>, Query), ("before_id" = Option<String>, Query), ("limit" = Option<i64>, Query),
           ("resource_type" = Option<String>, Query), ("action" = Option<String>, Query)),
    responses((status = 200, body = AuditLogPage), (status = 403, body = ErrorBody)))]
pub async fn platform_logs(
    State(app): State<AppState>,
    _admin: AdminSession,
    ApiQuery(pairs): ApiQuery<Vec<(String, String)>>,
) -> ApiResult<Json<AuditLogPage>> {
    let q = AuditQuery::from_pairs(&pairs)?;
    Ok(Json(audit_log::list_for_platform(&app, &q).await?))
}
