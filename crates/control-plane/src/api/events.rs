//! `GET /v1/events/stream`: the caller's team events as server-sent events.
//!
//! Each frame is `event: <kind>\ndata: <one-line JSON>\n\n`; the SDK ignores the `event:` line
//! and reads the kind from the JSON's `event` field. The first frame is the `connected` sentinel,
//! sent after subscribing so nothing published after it is missed.

use crate::auth::AuthContext;
use crate::events::TeamEvent;
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use futures::{Stream, StreamExt};
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;
use wrenn_api_types::ErrorBody;
use wrenn_api_types::events::{Event, EventKind};

/// How often an idle stream gets a `: keepalive` comment (proxies close silent connections).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

pub fn routes() -> Router<AppState> {
    Router::new().route("/events/stream", get(stream))
}

/// Streams the team's events until the client disconnects; there is no server-side timeout.
#[utoipa::path(
    get,
    path = "/v1/events/stream",
    tag = "events",
    responses(
        (status = 200, description = "Server-sent events: a `connected` sentinel, then one frame per team event; `: keepalive` comments every 30 s.", content_type = "text/event-stream", body = Event),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn stream(State(app): State<AppState>, auth: AuthContext) -> Response {
    let receiver = app.events.subscribe();
    let frames = team_frames(auth.team_id, receiver);
    let mut response = Sse::new(frames)
        .keep_alive(
            KeepAlive::new()
                .interval(KEEPALIVE_INTERVAL)
                .text("keepalive"),
        )
        .into_response();
    // Tells nginx-style proxies not to buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The sentinel, then every event of `team_id`. A subscriber that fell behind the hub's buffer
/// gets a comment saying how many events it missed and carries on with the next ones.
fn team_frames(
    team_id: Uuid,
    receiver: tokio::sync::broadcast::Receiver<TeamEvent>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let connected = json!({
        "event": EventKind::Connected.as_str(),
        "message": "connected",
        "timestamp": Utc::now(),
    });
    let first = SseEvent::default()
        .event(EventKind::Connected.as_str())
        .data(connected.to_string());
    let rest = futures::stream::unfold(receiver, move |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(delivered) if delivered.team_id == team_id => {
                    return Some((Ok(frame(&delivered.event)), receiver));
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => {
                    let note = SseEvent::default().comment(format!(
                        "lagged: {missed} events were dropped for this slow subscriber"
                    ));
                    return Some((Ok(note), receiver));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    futures::stream::once(async move { Ok(first) }).chain(rest)
}

/// One event frame. An event that cannot be serialised (it always can: string keys, no floats)
/// becomes a comment, because an invalid data frame would end the SDK user's iteration.
fn frame(event: &Event) -> SseEvent {
    match serde_json::to_string(event) {
        Ok(data) => SseEvent::default().event(event.event.as_str()).data(data),
        Err(e) => {
            tracing::error!(error = %e, "event not serialisable");
            SseEvent::default().comment("an event was dropped: not serialisable")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::sync::broadcast;
    use wrenn_api_types::Metadata;

    fn host_up(n: usize) -> Event {
        Event {
            event: EventKind::HostUp,
            outcome: None,
            resource: None,
            actor: None,
            metadata: Metadata::from([("n".to_string(), n.to_string())]),
            error: None,
            sandbox: None,
            timestamp: Utc::now(),
        }
    }

    async fn render(team: Uuid, rx: broadcast::Receiver<TeamEvent>) -> String {
        let body = Sse::new(team_frames(team, rx)).into_response().into_body();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_and_carries_on() {
        let (tx, rx) = broadcast::channel(2);
        let team = Uuid::new_v4();
        for n in 0..5 {
            tx.send(TeamEvent {
                team_id: team,
                event: Arc::new(host_up(n)),
            })
            .expect("send");
        }
        drop(tx);
        let text = render(team, rx).await;
        let frames: Vec<&str> = text.split_terminator("\n\n").collect();
        assert_eq!(frames.len(), 4, "{text}");
        assert!(frames[0].starts_with("event: connected\ndata: {"), "{text}");
        assert_eq!(
            frames[1],
            ": lagged: 3 events were dropped for this slow subscriber"
        );
        assert!(frames[2].starts_with("event: host.up\ndata: {"), "{text}");
        assert!(frames[2].contains(r#""n":"3""#), "{text}");
        assert!(frames[3].contains(r#""n":"4""#), "{text}");
    }

    #[tokio::test]
    async fn other_teams_events_are_skipped() {
        let (tx, rx) = broadcast::channel(8);
        let mine = Uuid::new_v4();
        for (n, team) in [mine, Uuid::new_v4(), mine].into_iter().enumerate() {
            tx.send(TeamEvent {
                team_id: team,
                event: Arc::new(host_up(n)),
            })
            .expect("send");
        }
        drop(tx);
        let text = render(mine, rx).await;
        assert!(
            text.contains(r#""n":"0""#) && text.contains(r#""n":"2""#),
            "{text}"
        );
        assert!(!text.contains(r#""n":"1""#), "{text}");
    }
}
