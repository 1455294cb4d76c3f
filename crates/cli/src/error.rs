//! The CLI's one error type. Its `Display` is what the user reads after `error: `, so every
//! variant says what failed and, where it helps, what to do about it.

use std::fmt;

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The control plane answered with a status ≥ 300.
    #[error("{}", ApiErrorDisplay { status: *status, code: code.as_deref(), message })]
    Api {
        status: u16,
        /// `error.code` of the envelope; `None` when the body was not the JSON envelope.
        code: Option<String>,
        message: String,
    },

    /// No TCP/TLS connection could be made.
    #[error("cannot connect to {url}: {detail} (check WRENN_BASE_URL or --base-url)")]
    Connect { url: String, detail: String },

    /// Connect (10 s) or response (30 s) deadline passed.
    #[error("request to {url} timed out")]
    Timeout { url: String },

    /// Any other transport failure (reset connection, broken body stream, bad TLS…).
    #[error("request to {url} failed: {detail}")]
    Transport { url: String, detail: String },

    /// A success response whose body is not what the API promises.
    #[error("unexpected response from {url}: {detail}")]
    Decode { url: String, detail: String },

    /// The WebSocket session broke or the peer broke the protocol.
    #[error("websocket {url}: {detail}")]
    WebSocket { url: String, detail: String },

    /// No API key from the flag, the environment or the config file.
    #[error("no API key: run `wrenn login` or set WRENN_API_KEY")]
    MissingApiKey,

    /// Bad command-line input that clap cannot check by itself.
    #[error("{0}")]
    Usage(String),

    /// The config file could not be read or written.
    #[error("config file {path}: {detail}")]
    Config { path: String, detail: String },

    /// A local I/O failure (files, terminal, stdin/stdout).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The remote side reported a failure that is not an HTTP error (exec `error` frame, a
    /// capsule that ended in `error` while we waited…).
    #[error("{0}")]
    Remote(String),
}

/// `Result` with [`CliError`].
pub type CliResult<T> = Result<T, CliError>;

impl CliError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// The API error code, when this is an API error with an envelope.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The HTTP status, when this is an API error.
    pub fn api_status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// `message (code)` for an envelope, `message (HTTP 404)` otherwise: the code is what a user
/// searches the docs for, the status is all we have without one.
struct ApiErrorDisplay<'a> {
    status: u16,
    code: Option<&'a str>,
    message: &'a str,
}

impl fmt::Display for ApiErrorDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "{} ({code})", self.message),
            None => write!(f, "{} (HTTP {})", self.message, self.status),
        }
    }
}

/// Joins an error and its sources (`a: b: c`), since transport errors hide the useful part
/// ("Connection refused") several levels down.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The innermost cause: for a refused or unresolvable connection this is the part a user can
/// act on ("Connection refused (os error 111)"), without the wrapper layers above it.
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(cause) = innermost.source() {
        innermost = cause;
    }
    innermost.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_shows_code_or_status() {
        let with_code = CliError::Api {
            status: 404,
            code: Some("not_found".into()),
            message: "capsule cl-x not found".into(),
        };
        assert_eq!(with_code.to_string(), "capsule cl-x not found (not_found)");
        let without = CliError::Api {
            status: 502,
            code: None,
            message: "Bad Gateway".into(),
        };
        assert_eq!(without.to_string(), "Bad Gateway (HTTP 502)");
    }

    #[test]
    fn error_chain_includes_sources_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = CliError::io("reading", inner);
        assert_eq!(error_chain(&outer), "reading: refused");
        assert_eq!(root_cause(&outer), "refused");
    }
}
