//! The error envelope. The SDK picks its exception class from `code` alone, so the codes are a
//! closed set: inventing one downgrades the user's exception to the bare `WrennError`.

use serde::{Deserialize, Serialize};

/// `{"error":{"code":"not_found","message":"capsule cl-… not found"}}`, plus optional top-level
/// extras (`capsule_ids` for `host_has_capsules`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// Capsules that block a host deletion (code `host_has_capsules`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capsule_ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// Every code the API answers with, and the HTTP status that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    InvalidState,
    Conflict,
    TooLarge,
    HostHasCapsules,
    /// No host can take the capsule, or its host is unreachable (the contract's "no capacity").
    HostUnavailable,
    AgentError,
    InternalError,
    /// Too many requests (login attempts).
    RateLimited,
    /// Account states the login flow reports (as upstream).
    AccountNotActivated,
    AccountDisabled,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::InvalidState => "invalid_state",
            Self::Conflict => "conflict",
            Self::TooLarge => "too_large",
            Self::HostHasCapsules => "host_has_capsules",
            Self::HostUnavailable => "host_unavailable",
            Self::AgentError => "agent_error",
            Self::InternalError => "internal_error",
            Self::RateLimited => "rate_limited",
            Self::AccountNotActivated => "account_not_activated",
            Self::AccountDisabled => "account_disabled",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden | Self::AccountNotActivated | Self::AccountDisabled => 403,
            Self::NotFound => 404,
            Self::InvalidState | Self::Conflict | Self::HostHasCapsules => 409,
            Self::TooLarge => 413,
            Self::RateLimited => 429,
            Self::InternalError => 500,
            Self::AgentError => 502,
            Self::HostUnavailable => 503,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.as_str().to_string(),
                message: message.into(),
            },
            capsule_ids: None,
        }
    }
}
