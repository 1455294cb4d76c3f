//! Host routes: operators create hosts and registration tokens; agents register, refresh their
//! credentials and send heartbeats.

use crate::api::extract::{ApiJson, ApiPath, ApiQuery};
use crate::auth::{HostSession, UserSession};
use crate::error::ApiResult;
use crate::service::hosts;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use wrenn_api_types::hosts::{
    CreateHostRequest, CreateHostResponse, HeartbeatRequest, Host, HostCredentials,
    RefreshHostRequest, RegisterHostRequest,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/hosts", post(create).get(list))
        .route("/hosts/register", post(register))
        .route("/hosts/auth/refresh", post(refresh))
        .route("/hosts/{id}", get(get_one).delete(remove))
        .route("/hosts/{id}/delete-preview", get(delete_preview))
        .route("/hosts/{id}/token", post(regenerate_token))
        .route("/hosts/{id}/heartbeat", post(heartbeat))
        .route("/hosts/{id}/tags", get(list_tags).post(add_tag))
        .route("/hosts/{id}/tags/{tag}", delete(remove_tag))
}

#[utoipa::path(post, path = "/v1/hosts", tag = "hosts", request_body = CreateHostRequest,
    responses((status = 201, body = CreateHostResponse)), security(("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    session: UserSession,
    ApiJson(req): ApiJson<CreateHostRequest>,
) -> ApiResult<(StatusCode, Json<CreateHostResponse>)> {
    Ok((
        StatusCode::CREATED,
        Json(hosts::create(&app, &session, req).await?),
    ))
}

#[utoipa::path(get, path = "/v1/hosts", tag = "hosts",
    responses((status = 200, body = [Host])), security(("bearer" = [])))]
pub async fn list(State(app): State<AppState>, session: UserSession) -> ApiResult<Json<Vec<Host>>> {
    Ok(Json(hosts::list(&app, &session).await?))
}

#[utoipa::path(get, path = "/v1/hosts/{id}", tag = "hosts",
    responses((status = 200, body = Host)), security(("bearer" = [])))]
pub async fn get_one(
    State(app): State<AppState>,
    session: UserSession,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Host>> {
    Ok(Json(hosts::get(&app, &session, &id).await?))
}

#[derive(Debug, Deserialize)]
pub struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

#[utoipa::path(delete, path = "/v1/hosts/{id}", tag = "hosts",
    params(("force" = Option<bool>, Query, description = "destroy the host's capsules too")),
    responses((status = 204)), security(("bearer" = [])))]
pub async fn remove(
    State(app): State<AppState>,
    session: UserSession,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<StatusCode> {
    hosts::delete(&app, &session, &id, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/hosts/{id}/delete-preview", tag = "hosts",
    responses((status = 200)), security(("bearer" = [])))]
pub async fn delete_preview(
    State(app): State<AppState>,
    session: UserSession,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let (host, capsules) = hosts::delete_preview(&app, &session, &id).await?;
    Ok(Json(
        json!({ "host": host, "capsule_ids": capsules, "sandbox_ids": capsules }),
    ))
}

#[utoipa::path(post, path = "/v1/hosts/{id}/token", tag = "hosts",
    responses((status = 201, body = CreateHostResponse)), security(("bearer" = [])))]
pub async fn regenerate_token(
    State(app): State<AppState>,
    session: UserSession,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<CreateHostResponse>)> {
    Ok((
        StatusCode::CREATED,
        Json(hosts::regenerate_token(&app, &session, &id).await?),
    ))
}

#[utoipa::path(post, path = "/v1/hosts/register", tag = "hosts", request_body = RegisterHostRequest,
    responses((status = 201, body = HostCredentials)))]
pub async fn register(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<RegisterHostRequest>,
) -> ApiResult<(StatusCode, Json<HostCredentials>)> {
    Ok((StatusCode::CREATED, Json(hosts::register(&app, req).await?)))
}

#[utoipa::path(post, path = "/v1/hosts/auth/refresh", tag = "hosts", request_body = RefreshHostRequest,
    responses((status = 200, body = HostCredentials)))]
pub async fn refresh(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<RefreshHostRequest>,
) -> ApiResult<Json<HostCredentials>> {
    Ok(Json(hosts::refresh(&app, req).await?))
}

#[utoipa::path(post, path = "/v1/hosts/{id}/heartbeat", tag = "hosts", request_body = HeartbeatRequest,
    responses((status = 204)), security(("host_token" = [])))]
pub async fn heartbeat(
    State(app): State<AppState>,
    host: HostSession,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    // The body is optional: an empty heartbeat is as good as any.
    let req: HeartbeatRequest = if body.is_empty() {
        HeartbeatRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| crate::error::ApiError::invalid(format!("invalid heartbeat body: {e}")))?
    };
    hosts::heartbeat(&app, host.host_id, &id, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TagRequest {
    tag: String,
}

#[utoipa::path(get, path = "/v1/hosts/{id}/tags", tag = "hosts",
    responses((status = 200, body = [String])), security(("bearer" = [])))]
pub async fn list_tags(
    State(app): State<AppState>,
    session: UserSession,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Vec<String>>> {
    Ok(Json(hosts::list_tags(&app, &session, &id).await?))
}

#[utoipa::path(post, path = "/v1/hosts/{id}/tags", tag = "hosts", request_body = TagRequest,
    responses((status = 204)), security(("bearer" = [])))]
pub async fn add_tag(
    State(app): State<AppState>,
    session: UserSession,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<TagRequest>,
) -> ApiResult<StatusCode> {
    hosts::add_tag(&app, &session, &id, &req.tag).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/hosts/{id}/tags/{tag}", tag = "hosts",
    responses((status = 204)), security(("bearer" = [])))]
pub async fn remove_tag(
    State(app): State<AppState>,
    session: UserSession,
    ApiPath((id, tag)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    hosts::remove_tag(&app, &session, &id, &tag).await?;
    Ok(StatusCode::NO_CONTENT)
}
