//! Hourly (first run at start): deletes events past retention (see [`events::prune`]).

use super::every;
use crate::events;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const PERIOD: Duration = Duration::from_secs(3600);

pub fn spawn(db: PgPool, stop: CancellationToken) {
    every("events-prune", PERIOD, stop, move || {
        let db = db.clone();
        async move {
            match events::prune(&db).await {
                Ok(n) if n > 0 => tracing::info!(rows = n, "pruned old events"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not prune events"),
            }
        }
    });
}
