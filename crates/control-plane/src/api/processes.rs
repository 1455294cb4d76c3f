//! Background processes: `GET /v1/capsules/{id}/processes`, and
//! `DELETE /v1/capsules/{id}/processes/{pid}` (by pid or tag, `?signal=SIGTERM` optional).

use crate::api::extract::{ApiPath, ApiQuery};
use crate::auth::AuthContext;
use crate::error::ApiResult;
use crate::service::capsule_ops::Target;
use crate::service::capsule_ops::exec::{self, ProcessSelector};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use wrenn_api_types::ErrorBody;
use wrenn_api_types::exec::ProcessList;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/capsules/{id}/processes", get(list))
        .route(
            "/capsules/{id}/processes/{pid}",
            axum::routing::delete(kill),
        )
}

/// The processes running in the capsule that were started through the API (background
/// commands, terminals, foreground commands in flight), by pid. Always an array.
#[utoipa::path(
    get,
    path = "/v1/capsules/{id}/processes",
    tag = "exec",
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses(
        (status = 200, body = ProcessList),
        (status = 404, description = "No such capsule", body = ErrorBody),
        (status = 409, description = "The capsule is not running", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ProcessList>> {
    let target = Target::resolve(&app, &auth, &id).await?;
    Ok(Json(exec::list(&target).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KillQuery {
    /// `SIGKILL` (default) or `SIGTERM`.
    pub signal: Option<String>,
}

/// Signals a process (SIGKILL unless `signal=SIGTERM`).
#[utoipa::path(
    delete,
    path = "/v1/capsules/{id}/processes/{pid}",
    tag = "exec",
    params(
        ("id" = String, Path, description = "Capsule id (`cl-…`)"),
        ("pid" = String, Path, description = "Decimal process id, or the process's tag"),
        KillQuery,
    ),
    responses(
        (status = 204, description = "Signalled"),
        (status = 400, description = "Unsupported signal", body = ErrorBody),
        (status = 404, description = "No such capsule or process", body = ErrorBody),
        (status = 409, description = "The capsule is not running", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn kill(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath((id, pid)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<KillQuery>,
) -> ApiResult<StatusCode> {
    let signal = exec::parse_signal(q.signal.as_deref())?;
    let target = Target::resolve(&app, &auth, &id).await?;
    let selector = ProcessSelector::parse(&pid)?;
    exec::kill(&target, &selector, signal).await?;
    Ok(StatusCode::NO_CONTENT)
}
