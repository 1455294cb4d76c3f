//! The team event feed behind `GET /v1/events/stream`.
//!
//! Events are rows in PostgreSQL; an insert trigger announces each id with
//! `NOTIFY wrenn_events`. Every control-plane instance listens, loads the row and fans it out to
//! its SSE subscribers, so an event raised on one instance reaches clients of all of them. When
//! the listening connection drops, the listener reconnects and replays every row after the last
//! id it delivered, so a reconnect loses nothing.

use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wrenn_api_types::events::Event;

/// The NOTIFY channel the `events` insert trigger uses.
pub const CHANNEL: &str = "wrenn_events";

/// One delivered event and its team.
#[derive(Debug, Clone)]
pub struct TeamEvent {
    pub team_id: Uuid,
    pub event: Arc<Event>,
}

/// Cloning shares the channel: every clone delivers to the same subscribers.
#[derive(Debug, Clone)]
pub struct EventHub {
    tx: broadcast::Sender<TeamEvent>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    pub fn new() -> Self {
        // A subscriber that falls this far behind is told it lagged and skips ahead.
        let (tx, _) = broadcast::channel(1024);
        Self { tx }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<TeamEvent> {
        self.tx.subscribe()
    }

    /// Listens for new events until `stop`, reconnecting on failure.
    pub fn spawn_listener(&self, db: PgPool, stop: CancellationToken) {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut last_id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM events")
                .fetch_one(&db)
                .await
                .unwrap_or(0);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    result = hub.listen(&db, &mut last_id) => {
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "event listener lost its connection; reconnecting");
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }

    async fn listen(&self, db: &PgPool, last_id: &mut i64) -> sqlx::Result<()> {
        let mut listener = PgListener::connect_with(db).await?;
        listener.listen(CHANNEL).await?;
        // Anything inserted while we were not listening.
        self.deliver_after(db, last_id).await?;
        loop {
            let note = listener.recv().await?;
            if note.payload().parse::<i64>().is_ok_and(|id| id > *last_id) {
                self.deliver_after(db, last_id).await?;
            }
        }
    }

    async fn deliver_after(&self, db: &PgPool, last_id: &mut i64) -> sqlx::Result<()> {
        let rows: Vec<(i64, Uuid, Value)> = sqlx::query_as(
            "SELECT id, team_id, payload FROM events WHERE id > $1 ORDER BY id LIMIT 1000",
        )
        .bind(*last_id)
        .fetch_all(db)
        .await?;
        for (id, team_id, payload) in rows {
            *last_id = id;
            match serde_json::from_value::<Event>(payload) {
                Ok(event) => {
                    let _ = self.tx.send(TeamEvent {
                        team_id,
                        event: Arc::new(event),
                    });
                }
                Err(e) => {
                    tracing::warn!(event_id = id, error = %e, "skipping an unreadable event row")
                }
            }
        }
        Ok(())
    }
}

/// Stores an event for `team_id`; the trigger announces it to every instance.
pub async fn publish(db: &PgPool, team_id: Uuid, event: &Event) {
    let payload = match serde_json::to_value(event) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "event not serialisable");
            return;
        }
    };
    // Losing a notification must never fail the action that raised it.
    if let Err(e) = sqlx::query("INSERT INTO events (team_id, payload) VALUES ($1, $2)")
        .bind(team_id)
        .bind(payload)
        .execute(db)
        .await
    {
        tracing::warn!(error = %e, kind = event.event.as_str(), "could not store an event");
    }
}

/// Deletes events past retention.
pub async fn prune(db: &PgPool) -> sqlx::Result<u64> {
    // Events are kept a day, for replay after a reconnect and for debugging.
    Ok(
        sqlx::query("DELETE FROM events WHERE created_at < now() - interval '1 day'")
            .execute(db)
            .await?
            .rows_affected(),
    )
}
