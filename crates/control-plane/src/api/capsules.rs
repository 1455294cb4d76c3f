//! Capsule lifecycle routes (create, list, get, destroy, ping, pause, resume).

use crate::api::extract::{ApiJson, ApiPath};
use crate::auth::AuthContext;
use crate::error::ApiResult;
use crate::service::capsules;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use wrenn_api_types::capsule::{Capsule, CreateCapsuleRequest};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/capsules", post(create).get(list))
        .route("/capsules/{id}", get(get_one).delete(destroy))
        .route("/capsules/{id}/ping", post(ping))
        .route("/capsules/{id}/pause", post(pause))
        .route("/capsules/{id}/resume", post(resume))
}

/// Creates a capsule from a base template or a snapshot. A snapshot fixes vCPUs, memory and disk
/// (a different explicit value is a 400) and runs on the host that holds it (503 when that host
/// is not online).
#[utoipa::path(post, path = "/v1/capsules", tag = "capsules", request_body = CreateCapsuleRequest,
    responses((status = 201, body = Capsule), (status = 400, description = "invalid sizes"),
              (status = 404, description = "unknown template"),
              (status = 503, description = "no host has room, or the snapshot's host is offline")),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiJson(req): ApiJson<CreateCapsuleRequest>,
) -> ApiResult<(StatusCode, Json<Capsule>)> {
    Ok((
        StatusCode::CREATED,
        Json(capsules::create(&app, &auth, req).await?),
    ))
}

#[utoipa::path(get, path = "/v1/capsules", tag = "capsules",
    responses((status = 200, body = [Capsule])), security(("api_key" = []), ("bearer" = [])))]
pub async fn list(State(app): State<AppState>, auth: AuthContext) -> ApiResult<Json<Vec<Capsule>>> {
    Ok(Json(capsules::list(&app, &auth).await?))
}

#[utoipa::path(get, path = "/v1/capsules/{id}", tag = "capsules",
    responses((status = 200, body = Capsule), (status = 404)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_one(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Capsule>> {
    Ok(Json(capsules::get(&app, &auth, &id).await?))
}

#[utoipa::path(delete, path = "/v1/capsules/{id}", tag = "capsules",
    responses((status = 204), (status = 404)), security(("api_key" = []), ("bearer" = [])))]
pub async fn destroy(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    capsules::destroy(&app, &auth, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/capsules/{id}/ping", tag = "capsules",
    responses((status = 204), (status = 409, description = "not running")),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn ping(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    capsules::ping(&app, &auth, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pauses a running capsule (memory and disk to the host's disk). Answers with `paused`, or with
/// `pausing` when the host takes longer than 20 s (poll until `paused`). Metrics are kept.
#[utoipa::path(post, path = "/v1/capsules/{id}/pause", tag = "capsules",
    responses((status = 200, body = Capsule), (status = 409, description = "not running"),
              (status = 502, description = "the host could not pause it; it keeps running")),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn pause(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Capsule>> {
    Ok(Json(capsules::pause(&app, &auth, &id).await?))
}

/// Resumes a paused capsule (it waits for a pause in progress first). Answers with `running`, or
/// `resuming` when the host takes longer than 20 s. Exec, files, terminals and port-proxy
/// traffic also resume a paused capsule by themselves. A damaged snapshot answers 502 and leaves
/// the capsule in `error`: destroy it.
#[utoipa::path(post, path = "/v1/capsules/{id}/resume", tag = "capsules",
    responses((status = 200, body = Capsule), (status = 409, description = "not paused"),
              (status = 502, description = "the host could not resume it")),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn resume(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Capsule>> {
    Ok(Json(capsules::resume(&app, &auth, &id).await?))
}
