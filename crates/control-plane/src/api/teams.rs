//! Teams, members and the user search (`/v1/teams/...`, `/v1/users/search`), user sessions only.

use crate::api::extract::{ApiJson, ApiPath, ApiQuery};
use crate::auth::UserSession;
use crate::error::ApiResult;
use crate::service::teams;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use wrenn_api_types::ErrorBody;
use wrenn_api_types::auth::{
    AddMemberRequest, NameRequest, RoleRequest, Team, TeamDetail, TeamMember, UserSearchResult,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/teams", get(list).post(create))
        .route("/teams/{id}", get(detail).patch(rename).delete(delete_team))
        .route("/teams/{id}/members", get(members).post(add_member))
        .route(
            "/teams/{id}/members/{user_id}",
            patch(set_role).delete(remove_member),
        )
        .route("/teams/{id}/leave", post(leave))
        .route("/users/search", get(search_users))
}

/// The caller's teams, with their role in each.
#[utoipa::path(get, path = "/v1/teams", tag = "teams", security(("bearer" = [])),
    responses((status = 200, body = Vec<Team>), (status = 401, body = ErrorBody)))]
pub async fn list(State(app): State<AppState>, session: UserSession) -> ApiResult<Json<Vec<Team>>> {
    Ok(Json(teams::list(&app, &session).await?))
}

/// Creates a team owned by the caller.
#[utoipa::path(post, path = "/v1/teams", tag = "teams", security(("bearer" = [])), request_body = NameRequest,
    responses((status = 201, body = Team), (status = 400, body = ErrorBody)))]
pub async fn create(
    State(app): State<AppState>,
    session: UserSession,
    ApiJson(req): ApiJson<NameRequest>,
) -> ApiResult<(StatusCode, Json<Team>)> {
    Ok((
        StatusCode::CREATED,
        Json(teams::create(&app, &session, req).await?),
    ))
}

#[utoipa::path(get, path = "/v1/teams/{id}", tag = "teams", security(("bearer" = [])),
    params(("id" = String, Path, description = "team-…")),
    responses((status = 200, body = TeamDetail), (status = 404, body = ErrorBody)))]
pub async fn detail(
    State(app): State<AppState>,
    session: UserSession,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TeamDetail>> {
    Ok(Json(teams::get(&app, &session, &id).await?))
}

/// Renames a team (owner or admin).
#[utoipa::path(patch, path = "/v1/teams/{id}", tag = "teams", security(("bearer" = [])), request_body = NameRequest,
    params(("id" = String, Path, description = "team-…")),
    responses((status = 200, body = Team), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn rename(
    State(app): State<AppState>,
    session: UserSession,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<NameRequest>,
) -> ApiResult<Json<Team>> {
    Ok(Json(teams::rename(&app, &session, &id, req).await?))
}

/// Deletes a team (owner only): its capsules stop, its API keys stop working.
#[utoipa::path(delete, path = "/v1/teams/{id}", tag = "teams", security(("bearer" = [])),
    params(("id" = String, Path, description = "team-…")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_team(
    State(app): State<AppState>,
    session: UserSession,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    teams::delete(&app, &session, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/teams/{id}/members", tag = "teams", security(("bearer" = [])),
    params(("id" = String, Path, description = "team-…")),
    responses((status = 200, body = Vec<TeamMember>), (status = 404, body = ErrorBody)))]
pub async fn members(
    State(app): State<AppState>,
    session: UserSession,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Vec<TeamMember>>> {
    Ok(Json(teams::list_members(&app, &session, &id).await?))
}

/// Adds an existing user, by email, as a member (owner or admin).
#[utoipa::path(post, path = "/v1/teams/{id}/members", tag = "teams", security(("bearer" = [])), request_body = AddMemberRequest,
    params(("id" = String, Path, description = "team-…")),
    responses((status = 201, body = TeamMember), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "already a member", body = ErrorBody)))]
pub async fn add_member(
    State(app): State<AppState>,
    session: UserSession,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<AddMemberRequest>,
) -> ApiResult<(StatusCode, Json<TeamMember>)> {
    Ok((
        StatusCode::CREATED,
        Json(teams::add_member(&app, &session, &id, req).await?),
    ))
}

/// Sets a member's role to `admin` or `member` (owner or admin; the owner is immutable).
#[utoipa::path(patch, path = "/v1/teams/{id}/members/{user_id}", tag = "teams", security(("bearer" = [])), request_body = RoleRequest,
    params(("id" = String, Path, description = "team-…"), ("user_id" = String, Path, description = "usr-…")),
    responses((status = 200, body = TeamMember), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_role(
    State(app): State<AppState>,
    session: UserSession,
    ApiPath((id, user_id)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<RoleRequest>,
) -> ApiResult<Json<TeamMember>> {
    Ok(Json(
        teams::set_role(&app, &session, &id, &user_id, req).await?,
    ))
}

/// Removes a member (owner or admin; never the owner).
#[utoipa::path(delete, path = "/v1/teams/{id}/members/{user_id}", tag = "teams", security(("bearer" = [])),
    params(("id" = String, Path, description = "team-…"), ("user_id" = String, Path, description = "usr-…")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove_member(
    State(app): State<AppState>,
    session: UserSession,
    ApiPath((id, user_id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    teams::remove_member(&app, &session, &id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Leaves a team (not its owner).
#[utoipa::path(post, path = "/v1/teams/{id}/leave", tag = "teams", security(("bearer" = [])),
    params(("id" = String, Path, description = "team-…")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn leave(
    State(app): State<AppState>,
    session: UserSession,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    teams::leave(&app, &session, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    pub email: String,
}

/// Active users whose email starts with `email` (which must contain '@'); at most 10.
#[utoipa::path(get, path = "/v1/users/search", tag = "teams", security(("bearer" = [])),
    params(("email" = String, Query, description = "email prefix, containing '@'")),
    responses((status = 200, body = Vec<UserSearchResult>), (status = 400, body = ErrorBody)))]
pub async fn search_users(
    State(app): State<AppState>,
    _session: UserSession,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> ApiResult<Json<Vec<UserSearchResult>>> {
    Ok(Json(teams::search_users(&app, &q.email).await?))
}
