//! WebSocket sessions (exec stream, PTY): the upgrade with `X-API-Key`, upgrade failures turned
//! into the same errors as REST calls, and client messages encoded the way the SDK sends them.

use crate::client::{ApiClient, api_error};
use crate::error::{CliError, CliResult, error_chain, root_cause};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wrenn_api_types::API_KEY_HEADER;
use wrenn_api_types::ws::ClientMessage;

/// A connected WebSocket.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Deadline for TCP connect + TLS + upgrade; after the upgrade reads have no deadline.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often we send a protocol Ping, as the SDK does, so idle sessions survive proxies.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// The `ws(s)://` URL of a route: the REST URL with `http` → `ws`, `https` → `wss`.
pub fn ws_url(client: &ApiClient, segments: &[&str]) -> CliResult<String> {
    let url = client.url(segments);
    let rest = url.as_str();
    if let Some(tail) = rest.strip_prefix("https://") {
        Ok(format!("wss://{tail}"))
    } else if let Some(tail) = rest.strip_prefix("http://") {
        Ok(format!("ws://{tail}"))
    } else {
        Err(CliError::Usage(format!(
            "unsupported base URL scheme in {rest}"
        )))
    }
}

/// Upgrades `GET <route>` with the API key. A non-101 answer becomes the API error its body
/// carries (e.g. `unauthorized`), exactly like a REST call.
pub async fn connect(client: &ApiClient, segments: &[&str]) -> CliResult<(WsStream, String)> {
    let key = client.api_key()?;
    let url = ws_url(client, segments)?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|error| CliError::Usage(format!("invalid URL {url}: {error}")))?;
    let key_header = HeaderValue::from_str(key).map_err(|_| {
        CliError::Usage("the API key contains characters not allowed in a header".into())
    })?;
    request.headers_mut().insert(API_KEY_HEADER, key_header);
    tracing::debug!(%url, "websocket upgrade");

    let handshake = tokio_tungstenite::connect_async(request);
    let (stream, _response) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Err(_elapsed) => return Err(CliError::Timeout { url }),
        Ok(Err(error)) => return Err(upgrade_error(&url, error)),
        Ok(Ok(connected)) => connected,
    };
    Ok((stream, url))
}

fn upgrade_error(url: &str, error: tungstenite::Error) -> CliError {
    match error {
        tungstenite::Error::Http(response) => {
            let body = response.body().as_deref().unwrap_or_default();
            api_error(response.status().as_u16(), body)
        }
        tungstenite::Error::Io(io) => CliError::Connect {
            url: url.to_owned(),
            detail: root_cause(&io),
        },
        other => CliError::WebSocket {
            url: url.to_owned(),
            detail: error_chain(&other),
        },
    }
}

/// Encodes a client message as its JSON text frame, omitting `null`s and empty collections
/// (`envs: {}`, `args: []`): the SDK sends only the keys that carry something.
pub fn encode(message: &ClientMessage) -> String {
    let mut value = serde_json::to_value(message).unwrap_or_default();
    if let serde_json::Value::Object(map) = &mut value {
        map.retain(|_, field| match field {
            serde_json::Value::Null => false,
            serde_json::Value::Object(inner) => !inner.is_empty(),
            serde_json::Value::Array(inner) => !inner.is_empty(),
            _ => true,
        });
    }
    value.to_string()
}

/// [`encode`] wrapped in a text frame.
pub fn text_frame(message: &ClientMessage) -> Message {
    Message::text(encode(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn start_frames_carry_only_given_fields() {
        let exec_start = ClientMessage::Start {
            cmd: Some("ls".into()),
            args: vec!["-l".into()],
            cols: None,
            rows: None,
            envs: BTreeMap::new(),
            cwd: None,
            user: None,
        };
        let json: serde_json::Value = serde_json::from_str(&encode(&exec_start)).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"type": "start", "cmd": "ls", "args": ["-l"]})
        );

        let pty_start = ClientMessage::Start {
            cmd: Some("/bin/bash".into()),
            args: vec![],
            cols: Some(100),
            rows: Some(30),
            envs: BTreeMap::new(),
            cwd: None,
            user: None,
        };
        let json: serde_json::Value = serde_json::from_str(&encode(&pty_start)).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"type": "start", "cmd": "/bin/bash", "cols": 100, "rows": 30})
        );
        assert_eq!(encode(&ClientMessage::Pong), r#"{"type":"pong"}"#);
    }

    #[test]
    fn ws_urls_swap_the_scheme_and_keep_the_prefix() {
        let http = ApiClient::new("http://h:8080/api", Some("k".into())).expect("client");
        assert_eq!(
            ws_url(&http, &["v1", "capsules", "cl-a", "pty"]).expect("url"),
            "ws://h:8080/api/v1/capsules/cl-a/pty"
        );
        let https = ApiClient::new("https://h", Some("k".into())).expect("client");
        assert_eq!(ws_url(&https, &["v1", "x"]).expect("url"), "wss://h/v1/x");
    }
}
