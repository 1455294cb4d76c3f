//! envd's error type, and how it reaches the two kinds of client (Connect and plain HTTP).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wrenn_protocol::connect::{Code, Error as RpcError};

/// Everything that can go wrong serving a request.
#[derive(Debug, thiserror::Error)]
pub enum EnvdError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("not enough disk space: {0}")]
    NoSpace(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl EnvdError {
    /// Wraps an I/O error with what was being done, classifying "disk full" apart.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        let context = context.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => EnvdError::NoSpace(context),
            _ => EnvdError::Io { context, source },
        }
    }

    fn io_code(source: &std::io::Error) -> Code {
        use std::io::ErrorKind as K;
        match source.kind() {
            K::NotFound => Code::NotFound,
            K::PermissionDenied => Code::PermissionDenied,
            K::AlreadyExists => Code::AlreadyExists,
            K::InvalidInput
            | K::NotADirectory
            | K::IsADirectory
            | K::DirectoryNotEmpty
            | K::InvalidFilename
            | K::CrossesDevices => Code::InvalidArgument,
            _ => Code::Internal,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            EnvdError::InvalidArgument(_) => Code::InvalidArgument,
            EnvdError::NotFound(_) => Code::NotFound,
            EnvdError::AlreadyExists(_) => Code::AlreadyExists,
            EnvdError::Unauthenticated(_) => Code::Unauthenticated,
            EnvdError::PermissionDenied(_) => Code::PermissionDenied,
            EnvdError::FailedPrecondition(_) => Code::FailedPrecondition,
            EnvdError::NoSpace(_) => Code::ResourceExhausted,
            EnvdError::Io { source, .. } => Self::io_code(source),
            EnvdError::Internal(_) => Code::Internal,
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            EnvdError::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            _ => match self.code() {
                Code::InvalidArgument => StatusCode::BAD_REQUEST,
                Code::NotFound => StatusCode::NOT_FOUND,
                Code::AlreadyExists => StatusCode::CONFLICT,
                Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                Code::PermissionDenied => StatusCode::FORBIDDEN,
                Code::FailedPrecondition => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

impl From<EnvdError> for RpcError {
    fn from(e: EnvdError) -> Self {
        RpcError::new(e.code(), e.to_string())
    }
}

/// Plain HTTP routes answer with envd's JSON error shape `{"code": <status>, "message": ...}`,
/// which E2B's SDK reads.
impl IntoResponse for EnvdError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let body = serde_json::json!({ "code": status.as_u16(), "message": self.to_string() });
        (status, Json(body)).into_response()
    }
}

pub type Result<T, E = EnvdError> = std::result::Result<T, E>;
