//! Signup, activation, login and team switching (`/v1/auth/...`).

use crate::api::extract::ApiJson;
use crate::auth::UserSession;
use crate::error::ApiResult;
use crate::service::accounts::{login, signup};
use crate::state::AppState;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::post;
use axum::{Json, Router};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use wrenn_api_types::ErrorBody;
use wrenn_api_types::auth::{
    AuthResponse, LoginRequest, MessageResponse, SignupRequest, SwitchTeamRequest, TokenRequest,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/signup", post(signup_handler))
        .route("/auth/activate", post(activate_handler))
        .route("/auth/login", post(login_handler))
        .route("/auth/switch-team", post(switch_team_handler))
}

/// The peer address, when the server was started with connect info (the login rate limit keys
/// on it); `None` otherwise.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Creates an inactive account and emails an activation link.
#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = SignupRequest,
    responses((status = 201, body = MessageResponse),
              (status = 400, body = ErrorBody), (status = 409, description = "email already registered", body = ErrorBody)))]
pub async fn signup_handler(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<SignupRequest>,
) -> ApiResult<(StatusCode, Json<MessageResponse>)> {
    signup::signup(&app, req).await?;
    Ok((
        StatusCode::CREATED,
        Json(MessageResponse {
            message: signup::SIGNUP_MESSAGE.into(),
        }),
    ))
}

/// Activates an account with the emailed token (single use) and starts a session.
#[utoipa::path(post, path = "/v1/auth/activate", tag = "auth", request_body = TokenRequest,
    responses((status = 200, body = AuthResponse), (status = 400, body = ErrorBody)))]
pub async fn activate_handler(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> ApiResult<Json<AuthResponse>> {
    Ok(Json(signup::activate(&app, req).await?))
}

/// Email and password → a session for the user's default team.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = AuthResponse), (status = 401, body = ErrorBody),
              (status = 403, description = "account_not_activated or account_disabled", body = ErrorBody),
              (status = 429, description = "too many failed logins", body = ErrorBody)))]
pub async fn login_handler(
    State(app): State<AppState>,
    ClientIp(client): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<AuthResponse>> {
    Ok(Json(login::login(&app, req, client).await?))
}

/// A new session for another team the caller belongs to.
#[utoipa::path(post, path = "/v1/auth/switch-team", tag = "auth", request_body = SwitchTeamRequest,
    security(("bearer" = [])),
    responses((status = 200, body = AuthResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn switch_team_handler(
    State(app): State<AppState>,
    session: UserSession,
    ApiJson(req): ApiJson<SwitchTeamRequest>,
) -> ApiResult<Json<AuthResponse>> {
    Ok(Json(login::switch_team(&app, &session, req).await?))
}
