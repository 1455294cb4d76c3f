//! The host agent's one error type. Each variant knows its Connect code, so RPC handlers stay
//! thin: they return `AgentError` and the service maps it.

use std::path::PathBuf;
use wrenn_protocol::connect::{Code, Error as RpcError};

pub type AgentResult<T> = Result<T, AgentError>;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("Sandbox {0} not found")]
    SandboxNotFound(String),
    #[error("Sandbox {0} already exists")]
    SandboxExists(String),
    #[error("Sandbox {id} is {state}, not running")]
    NotRunning { id: String, state: String },
    #[error("Invalid argument: {0}")]
    InvalidArgument(String),
    #[error("No free network slot (all {0} are in use)")]
    SlotsExhausted(u32),
    #[error("{what} is not available on this host: {hint}")]
    Unavailable { what: String, hint: String },
    #[error("Command `{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("VMM error: {0}")]
    Vmm(String),
    #[error("Network setup failed: {0}")]
    Network(String),
    #[error("Disk setup failed: {0}")]
    Disk(String),
    #[error("Guest image error: {0}")]
    Image(String),
    #[error("envd in sandbox {id}: {detail}")]
    Envd { id: String, detail: String },
    #[error("envd in sandbox {id} answered")]
    EnvdRpc {
        id: String,
        #[source]
        source: RpcError,
    },
    #[error("Timed out: {0}")]
    Timeout(String),
    #[error("Not implemented yet: {0}")]
    Unimplemented(&'static str),
    /// A snapshot failed its checks (checksum, header, missing file). Resuming it would run the
    /// guest on garbage, so it is refused; the sandbox can only be destroyed.
    #[error("snapshot is damaged: {0}")]
    SnapshotDamaged(String),
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A call to the control plane failed. `status` is the HTTP status it answered with, `None`
    /// when it could not be reached at all.
    #[error("control plane: {message}")]
    ControlPlane {
        status: Option<u16>,
        message: String,
    },
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    /// Wraps an I/O error with the path it happened on (the path is what the operator needs).
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AgentError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn command(command: impl Into<String>, detail: impl Into<String>) -> Self {
        AgentError::Command {
            command: command.into(),
            detail: detail.into(),
        }
    }

    /// The Connect code the control plane sees.
    pub fn code(&self) -> Code {
        match self {
            AgentError::SandboxNotFound(_) => Code::NotFound,
            AgentError::SandboxExists(_) => Code::AlreadyExists,
            AgentError::NotRunning { .. } => Code::FailedPrecondition,
            AgentError::InvalidArgument(_) => Code::InvalidArgument,
            AgentError::SlotsExhausted(_) => Code::ResourceExhausted,
            AgentError::Unavailable { .. } => Code::Unavailable,
            AgentError::Timeout(_) => Code::DeadlineExceeded,
            AgentError::Unimplemented(_) => Code::Unimplemented,
            AgentError::SnapshotDamaged(_) => Code::DataLoss,
            AgentError::EnvdRpc { source, .. } => source.code,
            AgentError::Envd { .. } => Code::Unavailable,
            _ => Code::Internal,
        }
    }

    /// Logs internal errors (with their chain) and turns any error into a Connect error.
    pub fn into_rpc(self) -> RpcError {
        let code = self.code();
        if code == Code::Internal {
            tracing::error!(error = %error_chain(&self), "request failed");
        }
        RpcError::new(code, error_chain(&self))
    }
}

/// `outer: inner: innermost`, for logs and error messages.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl From<wrenn_http::Error> for AgentError {
    fn from(e: wrenn_http::Error) -> Self {
        AgentError::Tls(e.to_string())
    }
}

impl From<AgentError> for RpcError {
    fn from(e: AgentError) -> Self {
        e.into_rpc()
    }
}
