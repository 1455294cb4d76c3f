//! Metrics routes: one capsule's resource series, and the team's stats and daily usage.
//!
//! `/capsules/stats` and `/capsules/usage` sit beside `/capsules/{id}`: the router matches static
//! segments before parameters, so they are never read as capsule ids.

use crate::api::extract::{ApiPath, ApiQuery};
use crate::auth::AuthContext;
use crate::error::ApiResult;
use crate::service::{metrics, usage};
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use wrenn_api_types::ErrorBody;
use wrenn_api_types::capsule::{CapsuleMetrics, CapsuleStats, UsageResponse};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/capsules/stats", get(stats))
        .route("/capsules/usage", get(usage_report))
        .route("/capsules/{id}/metrics", get(capsule_metrics))
}

#[derive(Debug, Deserialize)]
pub struct RangeQuery {
    /// Time window; each route lists the values it accepts.
    pub range: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// First day, `YYYY-MM-DD` (UTC). Default: 29 days before `to`.
    pub from: Option<String>,
    /// Last day, `YYYY-MM-DD` (UTC). Default: today.
    pub to: Option<String>,
}

/// A capsule's CPU, memory and disk series. Running capsules are read live from their host;
/// paused ones from the points saved when they paused.
#[utoipa::path(
    get,
    path = "/v1/capsules/{id}/metrics",
    tag = "capsules",
    params(
        ("id" = String, Path, description = "Capsule id (`cl-…`)"),
        ("range" = Option<String>, Query, description = "5m, 10m (default), 1h, 2h, 6h, 12h or 24h"),
    ),
    responses(
        (status = 200, body = CapsuleMetrics),
        (status = 400, description = "Unknown range", body = ErrorBody),
        (status = 404, description = "Unknown capsule, or one that is neither running nor paused", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn capsule_metrics(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> ApiResult<Json<CapsuleMetrics>> {
    Ok(Json(
        metrics::capsule_metrics(&app, &auth, &id, q.range.as_deref()).await?,
    ))
}

/// The team's reservations now, their 30-day peaks, and a series over `range`.
#[utoipa::path(
    get,
    path = "/v1/capsules/stats",
    tag = "capsules",
    params(("range" = Option<String>, Query, description = "5m, 1h (default), 6h, 24h or 30d")),
    responses(
        (status = 200, body = CapsuleStats),
        (status = 400, description = "Unknown range", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn stats(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> ApiResult<Json<CapsuleStats>> {
    Ok(Json(
        metrics::team_stats(&app, &auth, q.range.as_deref()).await?,
    ))
}

/// CPU-minutes and RAM-MB-minutes per UTC day, one point for every day of the window.
#[utoipa::path(
    get,
    path = "/v1/capsules/usage",
    tag = "capsules",
    params(UsageQuery),
    responses(
        (status = 200, body = UsageResponse),
        (status = 400, description = "Malformed date, from after to, or more than 92 days", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn usage_report(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> ApiResult<Json<UsageResponse>> {
    Ok(Json(
        usage::team_usage(&app, &auth, q.from.as_deref(), q.to.as_deref()).await?,
    ))
}
