//! Snapshot routes: snapshot a capsule into a template, list the templates a team can boot
//! from, delete the team's own.

use crate::api::extract::{ApiJson, ApiPath, ApiQuery};
use crate::auth::AuthContext;
use crate::error::ApiResult;
use crate::service::{snapshot_create, snapshots};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use wrenn_api_types::ErrorBody;
use wrenn_api_types::snapshots::{CreateSnapshotRequest, Template};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/snapshots", get(list).post(create))
        .route("/snapshots/{name}", delete(remove))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateQuery {
    /// Replace the team's template of the same name.
    #[serde(default)]
    pub overwrite: bool,
}

/// Snapshots a running or paused capsule (memory and disk) into a template of type `snapshot`.
/// The capsule is `snapshotting` meanwhile and then back in its previous state. Capsules created
/// from the template start with its files and running processes, on the host that holds it.
#[utoipa::path(
    post,
    path = "/v1/snapshots",
    tag = "snapshots",
    params(CreateQuery),
    request_body = CreateSnapshotRequest,
    responses(
        (status = 201, body = Template),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 403, description = "Would replace a protected template", body = ErrorBody),
        (status = 404, description = "No such capsule", body = ErrorBody),
        (status = 409, description = "Name taken (`conflict`), or the capsule is neither running nor paused (`invalid_state`)", body = ErrorBody),
        (status = 502, description = "The host failed to snapshot", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn create(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiQuery(q): ApiQuery<CreateQuery>,
    ApiJson(req): ApiJson<CreateSnapshotRequest>,
) -> ApiResult<(StatusCode, Json<Template>)> {
    Ok((
        StatusCode::CREATED,
        Json(snapshot_create::create(&app, &auth, req, q.overwrite).await?),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `base` or `snapshot`; both when absent.
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// The team's templates and the platform's, as a bare array.
#[utoipa::path(
    get,
    path = "/v1/snapshots",
    tag = "snapshots",
    params(ListQuery),
    responses(
        (status = 200, body = Vec<Template>),
        (status = 400, description = "Unknown type", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<Template>>> {
    Ok(Json(snapshots::list(&app, &auth, q.kind.as_deref()).await?))
}

/// Deletes one of the team's templates (and a snapshot's files on its host).
#[utoipa::path(
    delete,
    path = "/v1/snapshots/{name}",
    tag = "snapshots",
    params(("name" = String, Path, description = "Template name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "A platform or protected template", body = ErrorBody),
        (status = 404, description = "No such template", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn remove(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    snapshots::delete(&app, &auth, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
