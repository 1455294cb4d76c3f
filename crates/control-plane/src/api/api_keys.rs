//! Team API keys (`/v1/api-keys`), managed with a user session only.

use crate::api::extract::{ApiJson, ApiPath};
use crate::auth::UserSession;
use crate::error::ApiResult;
use crate::service::api_keys;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use wrenn_api_types::ErrorBody;
use wrenn_api_types::auth::{ApiKey, CreateApiKeyRequest};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api-keys", get(list).post(create))
        .route("/api-keys/{id}", delete(revoke))
}

/// Creates a key for the session's team; the plaintext `key` is in this response only.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", security(("bearer" = [])), request_body = CreateApiKeyRequest,
    responses((status = 201, body = ApiKey), (status = 401, body = ErrorBody)))]
pub async fn create(
    State(app): State<AppState>,
    session: UserSession,
    ApiJson(req): ApiJson<CreateApiKeyRequest>,
) -> ApiResult<(StatusCode, Json<ApiKey>)> {
    Ok((
        StatusCode::CREATED,
        Json(api_keys::create(&app, &session, req).await?),
    ))
}

#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", security(("bearer" = [])),
    responses((status = 200, body = Vec<ApiKey>), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    session: UserSession,
) -> ApiResult<Json<Vec<ApiKey>>> {
    Ok(Json(api_keys::list(&app, &session).await?))
}

#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "key-…")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    State(app): State<AppState>,
    session: UserSession,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    api_keys::revoke(&app, &session, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
