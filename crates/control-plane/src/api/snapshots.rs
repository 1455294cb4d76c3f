//! Snapshot routes: list the templates a team can boot from, delete the team's own.
//! `POST /v1/snapshots` (create, which pauses the capsule) is added by the lifecycle code.

use crate::api::extract::{ApiPath, ApiQuery};
use crate::auth::AuthContext;
use crate::error::ApiResult;
use crate::service::snapshots;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use wrenn_api_types::ErrorBody;
use wrenn_api_types::snapshots::Template;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/snapshots", get(list))
        .route("/snapshots/{name}", delete(remove))
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
