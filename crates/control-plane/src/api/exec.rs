//! `POST /v1/capsules/{id}/exec`: run a command to completion (200, whatever its exit code) or
//! start it in the background (202).

use crate::api::extract::{ApiJson, ApiPath};
use crate::auth::AuthContext;
use crate::error::ApiResult;
use crate::service::capsule_ops::{Target, exec};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use wrenn_api_types::ErrorBody;
use wrenn_api_types::exec::{BackgroundExecResponse, ExecRequest, ExecResponse};

pub fn routes() -> Router<AppState> {
    Router::new().route("/capsules/{id}/exec", post(run))
}

/// Runs a command. Foreground: waits up to `timeout_sec` (default 30; 0 = no limit), then
/// answers with both output streams (base64 when either is not UTF-8) and the exit code; a
/// command still running at its limit is killed (502). Background: starts it under `tag`
/// (default `proc-` + 8 hex) and answers 202 with its pid. `envs` and `cwd` apply to both;
/// a relative `cwd` is relative to the user's home.
#[utoipa::path(
    post,
    path = "/v1/capsules/{id}/exec",
    tag = "exec",
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    request_body = ExecRequest,
    responses(
        (status = 200, description = "The foreground command ended (any exit code)", body = ExecResponse),
        (status = 202, description = "The background command started", body = BackgroundExecResponse),
        (status = 400, description = "Invalid request (empty cmd, bad timeout, missing cwd)", body = ErrorBody),
        (status = 404, description = "No such capsule", body = ErrorBody),
        (status = 409, description = "The capsule is not running", body = ErrorBody),
        (status = 413, description = "Output larger than the foreground limit", body = ErrorBody),
        (status = 502, description = "The command timed out (and was killed), or the host failed", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn run(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> ApiResult<Response> {
    exec::validate(&req)?;
    let target = Target::resolve(&app, &auth, &id).await?;
    if req.background {
        let started = exec::start_background(&target, req).await?;
        Ok((StatusCode::ACCEPTED, Json(started)).into_response())
    } else {
        Ok(Json(exec::run(&target, req).await?).into_response())
    }
}
