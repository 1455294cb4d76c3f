//! The control plane's one error type. Every failure leaves as `{"error":{"code","message"}}` with
//! the status that belongs to the code; internal causes are logged, never shown to the caller.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wrenn_api_types::{ErrorBody, ErrorCode};
use wrenn_protocol::connect;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An error meant for the caller.
    #[error("{code}: {message}")]
    Public {
        code: ErrorCode,
        message: String,
        /// Capsules blocking a host deletion.
        capsule_ids: Option<Vec<String>>,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Public {
            code,
            message: message.into(),
            capsule_ids: None,
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidState, message)
    }
    pub fn host_unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::HostUnavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(anyhow::anyhow!(message.into()))
    }

    /// The error code this error answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Public { code, .. } => *code,
            Self::Database(_) | Self::Internal(_) => ErrorCode::InternalError,
        }
    }

    /// A failed call to a host agent, translated for the API caller. `what` names the object
    /// (`capsule cl-…`) so that "not found" says what was not found.
    pub fn from_agent(err: connect::Error, what: &str) -> Self {
        use connect::Code;
        let message = err.message;
        match err.code {
            Code::NotFound => Self::not_found(format!("{what}: {message}")),
            Code::InvalidArgument | Code::OutOfRange => Self::invalid(message),
            Code::AlreadyExists => Self::conflict(message),
            Code::FailedPrecondition => Self::invalid_state(message),
            Code::PermissionDenied => Self::forbidden(message),
            Code::ResourceExhausted => Self::new(ErrorCode::TooLarge, message),
            Code::Unavailable => {
                Self::host_unavailable(format!("the host running {what} is unreachable: {message}"))
            }
            Code::DeadlineExceeded => Self::new(
                ErrorCode::AgentError,
                format!("the host did not answer in time for {what}: {message}"),
            ),
            _ => Self::new(ErrorCode::AgentError, format!("{what}: {message}")),
        }
    }
}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        Self::new(code, code.as_str().replace('_', " "))
    }
}

/// Builds the error response for a code and message (also used by rejections and fallbacks).
pub fn error_response(
    code: ErrorCode,
    message: &str,
    capsule_ids: Option<Vec<String>>,
) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = ErrorBody::new(code, message);
    body.capsule_ids = capsule_ids;
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Public {
                code,
                message,
                capsule_ids,
            } => error_response(code, &message, capsule_ids),
            Self::Database(err) => {
                tracing::error!(error = %err, "database error");
                error_response(
                    ErrorCode::InternalError,
                    "internal error (database); the operator's logs have the details",
                    None,
                )
            }
            Self::Internal(err) => {
                tracing::error!(error = %format!("{err:#}"), "internal error");
                error_response(
                    ErrorCode::InternalError,
                    "internal error; the operator's logs have the details",
                    None,
                )
            }
        }
    }
}

/// True for a unique-constraint violation (a name already taken).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}
