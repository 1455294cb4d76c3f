//! Who is calling: the access token that `/init` sets, signed file URLs, and the user a request
//! runs as (HTTP Basic auth user name, as E2B's SDK sends it).

use crate::error::EnvdError;
use crate::state::SharedState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::HeaderMap;
use sha2::{Digest, Sha256};

pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";

/// The user name of a `Authorization: Basic base64("<user>:")` header, if any.
pub fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split(':').next().unwrap_or_default();
    (!user.is_empty()).then(|| user.to_string())
}

fn header_token(headers: &HeaderMap) -> Option<&str> {
    headers.get(ACCESS_TOKEN_HEADER)?.to_str().ok()
}

/// Whether the request carries the access token (or none is configured).
pub fn has_valid_token(state: &SharedState, headers: &HeaderMap) -> bool {
    state.token_matches(header_token(headers))
}

/// The signature of a file URL: `v1_` + unpadded base64 of
/// sha256("<path>:<read|write>:<user>:<token>[:<expiration>]").
pub fn file_signature(
    path: &str,
    operation: &str,
    user: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let mut text = format!("{path}:{operation}:{user}:{token}");
    if let Some(exp) = expiration {
        text.push_str(&format!(":{exp}"));
    }
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// Checks a `/files` request: the token header, or a valid unexpired signature.
pub fn authorize_file_access(
    state: &SharedState,
    headers: &HeaderMap,
    path: &str,
    operation: &str,
    user: &str,
    signature: Option<&str>,
    expiration: Option<i64>,
) -> Result<(), EnvdError> {
    let Some(token) = state.access_token() else {
        return Ok(());
    };
    if has_valid_token(state, headers) {
        return Ok(());
    }
    let Some(signature) = signature else {
        return Err(EnvdError::Unauthenticated(
            "missing access token: send X-Access-Token or a signed URL".into(),
        ));
    };
    if let Some(exp) = expiration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        if now > exp {
            return Err(EnvdError::Unauthenticated("signed URL has expired".into()));
        }
    }
    let expected = file_signature(path, operation, user, &token, expiration);
    use subtle::ConstantTimeEq;
    if bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
        Ok(())
    } else {
        Err(EnvdError::Unauthenticated(
            "invalid file URL signature".into(),
        ))
    }
}

/// Routes that decide on their own: `/health` is open; `/init` may carry the token in its body;
/// `/files` accepts signed URLs.
fn self_authorizing(path: &str) -> bool {
    matches!(path, "/health" | "/init" | "/files")
}

/// Requires the access token on every other route once `/init` has set one.
pub async fn require_token(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    if req.method() == http::Method::OPTIONS
        || self_authorizing(req.uri().path())
        || has_valid_token(&state, req.headers())
    {
        return next.run(req).await;
    }
    EnvdError::Unauthenticated("missing or wrong X-Access-Token".into()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_user() {
        let mut h = HeaderMap::new();
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("user:")
        );
        h.insert(
            http::header::AUTHORIZATION,
            v.parse().unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(basic_auth_user(&h).as_deref(), Some("user"));
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer x"),
        );
        assert_eq!(basic_auth_user(&h), None);
    }

    #[test]
    fn signature_format() {
        let s = file_signature("/home/user/a.txt", "read", "user", "tok", None);
        assert!(s.starts_with("v1_"));
        assert!(!s.ends_with('='));
        assert_ne!(
            s,
            file_signature("/home/user/a.txt", "write", "user", "tok", None)
        );
        assert_ne!(
            s,
            file_signature("/home/user/a.txt", "read", "user", "tok", Some(1))
        );
    }
}
