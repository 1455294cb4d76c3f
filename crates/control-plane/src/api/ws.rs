//! WebSocket plumbing shared by the exec stream, the process stream and the terminal:
//! the upgrade extractor, authentication (header before the upgrade, or a first `auth`
//! message after it), JSON frames and closing.
//!
//! Protocol Pings are answered by the WebSocket layer itself while a handler reads, and sockets
//! have no idle timeout: a quiet terminal may stay open for hours.

use crate::auth::AuthContext;
use crate::auth::context::{Credentials, authenticate};
use crate::auth::secrets::API_KEY_PREFIX;
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::http::request::Parts;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Serialize;
use std::time::Duration;
use wrenn_api_types::ws::ClientMessage;

/// How long a client without header credentials has to send its `auth` message.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client has to send the protocol's first message (`start`, `connect`).
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Close codes (RFC 6455 §7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_POLICY: u16 = 1008;

/// [`WebSocketUpgrade`] whose refusal (a plain HTTP request) is in the API's error shape.
#[derive(Debug)]
pub struct WsUpgrade(pub WebSocketUpgrade);

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map(Self)
            .map_err(|e| {
                ApiError::invalid(format!(
                    "this route is a WebSocket: send GET with Upgrade: websocket ({})",
                    e.body_text()
                ))
            })
    }
}

/// The next text or binary message; `None` once the client has gone (close frame, error or
/// end of stream). Protocol Pings and Pongs are skipped (the layer below answers Pings).
pub async fn next_message<S>(stream: &mut S) -> Option<Message>
where
    S: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    loop {
        match stream.next().await? {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(m) => return Some(m),
        }
    }
}

/// A client message from a text frame; `Err` says what was wrong with it.
pub fn parse_client_message(msg: &Message) -> Result<ClientMessage, String> {
    match msg {
        Message::Text(text) => {
            serde_json::from_str(text.as_str()).map_err(|e| format!("unrecognised message: {e}"))
        }
        _ => Err("expected a JSON text frame".to_string()),
    }
}

/// The first protocol message within [`FIRST_MESSAGE_TIMEOUT`], skipping a redundant `auth`
/// from a client that also sent header credentials. `Ok(None)` when the client left.
pub async fn first_message<S>(stream: &mut S) -> Result<Option<ClientMessage>, String>
where
    S: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let read = async {
        loop {
            let Some(msg) = next_message(stream).await else {
                return Ok(None);
            };
            match parse_client_message(&msg)? {
                ClientMessage::Auth { .. } | ClientMessage::Ping | ClientMessage::Pong => continue,
                other => return Ok(Some(other)),
            }
        }
    };
    tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no first message within {}s",
                FIRST_MESSAGE_TIMEOUT.as_secs()
            ))
        })
}

/// The caller: from the upgrade's headers (already checked), or else from a first
/// `{"type":"auth","token":…}` message (a session JWT or an API key) within [`AUTH_TIMEOUT`].
/// `Err` carries what to tell the client before closing.
pub async fn caller<S>(
    app: &AppState,
    stream: &mut S,
    from_headers: Option<AuthContext>,
) -> Result<AuthContext, String>
where
    S: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    if let Some(auth) = from_headers {
        return Ok(auth);
    }
    let first = tokio::time::timeout(AUTH_TIMEOUT, next_message(stream))
        .await
        .map_err(|_| {
            format!(
                "unauthorized: send X-API-Key on the upgrade or {{\"type\":\"auth\",\"token\":…}} \
                 within {}s",
                AUTH_TIMEOUT.as_secs()
            )
        })?
        .ok_or_else(|| "the client closed before authenticating".to_string())?;
    let token = match parse_client_message(&first) {
        Ok(ClientMessage::Auth { token }) if !token.trim().is_empty() => token,
        _ => {
            return Err(
                "unauthorized: the first message must be {\"type\":\"auth\",\"token\":…}"
                    .to_string(),
            );
        }
    };
    authenticate(app, &token_credentials(token.trim()))
        .await
        .map_err(|e| format!("unauthorized: {}", public_message(&e)))
}

/// A first-message token is an API key when it looks like one, else a session JWT.
fn token_credentials(token: &str) -> Credentials {
    if token.starts_with(API_KEY_PREFIX) {
        Credentials::ApiKey(token.to_string())
    } else {
        Credentials::Bearer(token.to_string())
    }
}

/// What an error may tell a WebSocket client (internal causes are logged, not shown).
pub fn public_message(err: &ApiError) -> String {
    match err {
        ApiError::Public { message, .. } => message.clone(),
        other => {
            tracing::error!(error = %other, "WebSocket request failed");
            "internal error; the operator's logs have the details".to_string()
        }
    }
}

/// A JSON text frame.
pub fn json_frame<T: Serialize>(value: &T) -> Message {
    // Serialising our own message types cannot fail; an empty frame would be harmless anyway.
    Message::Text(serde_json::to_string(value).unwrap_or_default().into())
}

/// Sends a JSON frame; `false` when the client has gone.
pub async fn send_json<Si, T>(sink: &mut Si, value: &T) -> bool
where
    Si: Sink<Message, Error = axum::Error> + Unpin,
    T: Serialize,
{
    sink.send(json_frame(value)).await.is_ok()
}

/// A close frame (the reason is cut to the 123 bytes a control frame allows).
pub fn close_frame(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

/// Sends `frame` (the protocol's error or final message) and closes.
pub async fn finish<Si>(sink: &mut Si, frame: Message, code: u16, reason: &str)
where
    Si: Sink<Message, Error = axum::Error> + Unpin,
{
    if sink.send(frame).await.is_ok() {
        let _ = sink.send(close_frame(code, reason)).await;
    }
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_message_tokens_may_be_api_keys_or_jwts() {
        assert_eq!(
            token_credentials("wrn_0123"),
            Credentials::ApiKey("wrn_0123".into())
        );
        assert_eq!(
            token_credentials("eyJhbGciOi"),
            Credentials::Bearer("eyJhbGciOi".into())
        );
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        let long = "é".repeat(100);
        let Message::Close(Some(frame)) = close_frame(1000, &long) else {
            panic!("not a close frame");
        };
        assert!(frame.reason.as_str().len() <= 123);
    }

    #[tokio::test]
    async fn first_message_skips_auth_and_pings_and_reports_garbage() {
        let text = |t: &str| Ok(Message::Text(t.into()));
        let mut stream = futures::stream::iter(vec![
            Ok(Message::Ping(Default::default())),
            text(r#"{"type":"auth","token":"wrn_x"}"#),
            text(r#"{"type":"start","cmd":"ls"}"#),
        ]);
        match first_message(&mut stream).await {
            Ok(Some(ClientMessage::Start { cmd, .. })) => assert_eq!(cmd.as_deref(), Some("ls")),
            other => panic!("expected start, got {other:?}"),
        }
        let mut garbage = futures::stream::iter(vec![text("hello")]);
        assert!(first_message(&mut garbage).await.is_err());
        let mut binary = futures::stream::iter(vec![Ok(Message::Binary(vec![1u8].into()))]);
        assert!(first_message(&mut binary).await.is_err());
        let mut gone = futures::stream::iter(Vec::<Result<Message, axum::Error>>::new());
        assert!(matches!(first_message(&mut gone).await, Ok(None)));
    }
}
