//! The HTTP API: one file of thin handlers per area; the logic lives in [`crate::service`].
//!
//! Routes are served at `/v1/...` and again under `/api/v1/...` (the SDK's production base URL
//! carries `/api`). Unknown routes and wrong methods answer in the error shape.

pub mod admin;
pub mod api_keys;
pub mod audit_logs;
pub mod auth;
pub mod capsules;
pub mod docs;
pub mod events;
pub mod exec;
pub mod exec_stream;
pub mod extract;
pub mod files;
pub mod health;
pub mod hosts;
pub mod me;
pub mod metrics;
pub mod processes;
pub mod pty;
pub mod snapshots;
pub mod teams;
pub mod ws;

use crate::error::error_response;
use crate::state::AppState;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::Response;
use axum::routing::get;
use wrenn_api_types::ErrorCode;

/// Bodies larger than this are refused on JSON routes; the file routes set their own limits.
pub const JSON_BODY_LIMIT: usize = 1024 * 1024;

/// The `/v1` routes.
fn v1() -> Router<AppState> {
    Router::new()
        .merge(capsules::routes())
        .merge(events::routes())
        .merge(exec::routes())
        .merge(exec_stream::routes())
        .merge(processes::routes())
        .merge(files::routes())
        .merge(pty::routes())
        .merge(metrics::routes())
        .merge(snapshots::routes())
        .merge(hosts::routes())
        .merge(auth::routes())
        .merge(me::routes())
        .merge(api_keys::routes())
        .merge(teams::routes())
        .merge(admin::routes())
        .merge(audit_logs::routes())
}

pub fn router(state: AppState) -> Router {
    let proxy = crate::port_proxy::PortProxy::new(state.clone());
    let api = v1().layer(DefaultBodyLimit::max(JSON_BODY_LIMIT));
    let routes = Router::new()
        .route("/health", get(health::health))
        .merge(docs::routes())
        .nest("/v1", api.clone())
        .nest("/api/v1", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    // The port proxy decides by Host before any route does.
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn_with_state(
            proxy,
            crate::port_proxy::route_by_host,
        ))
}

async fn not_found() -> Response {
    error_response(ErrorCode::NotFound, "no such route", None)
}

async fn method_not_allowed() -> Response {
    error_response(
        ErrorCode::InvalidRequest,
        "method not allowed on this route",
        None,
    )
}
