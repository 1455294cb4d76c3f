//! What the capsule-operation tests share besides the platform: WebSocket helpers, direct
//! status changes, and this process's memory.
#![allow(dead_code)]

use crate::support::TestApp;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wrenn_control_plane::ids::{self, IdKind};

/// Sets a capsule's status in the database (to see the routes refuse a paused one).
pub async fn set_status(cp: &TestApp, capsule: &str, status: &str) {
    let id = ids::decode(IdKind::Capsule, capsule).expect("capsule id");
    sqlx::query("UPDATE sandboxes SET status = $2 WHERE id = $1")
        .bind(id)
        .bind(status)
        .execute(&cp.app.db)
        .await
        .expect("status");
}

/// `ws://…` for an API path.
pub fn ws_url(cp: &TestApp, path: &str) -> String {
    cp.url(path).replacen("http://", "ws://", 1)
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket, with `X-API-Key` when `api_key` is given.
pub async fn ws_connect(
    url: &str,
    api_key: Option<&str>,
) -> Result<Ws, Box<dyn std::error::Error>> {
    let mut req = url.into_client_request()?;
    if let Some(key) = api_key {
        req.headers_mut().insert("X-API-Key", key.parse()?);
    }
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(ws)
}

/// What came over a socket, for assertions.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Json(Value),
    Binary(Vec<u8>),
    Closed,
}

/// The next text or binary frame (protocol pings skipped), within `timeout`.
pub async fn next_frame(ws: &mut Ws, timeout: Duration) -> Frame {
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return Frame::Json(serde_json::from_str(t.as_str()).expect("JSON text frame"));
                }
                Some(Ok(Message::Binary(b))) => return Frame::Binary(b.to_vec()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Frame::Closed,
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .expect("a frame in time")
}

/// Every frame until the socket closes.
pub async fn frames_until_close(ws: &mut Ws, timeout: Duration) -> Vec<Frame> {
    let deadline = Instant::now() + timeout;
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_frame(ws, left).await {
            Frame::Closed => return frames,
            f => frames.push(f),
        }
    }
}

pub async fn send_json(ws: &mut Ws, value: Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .expect("send");
}

/// This process's resident memory now, in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
