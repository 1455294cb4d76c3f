//! Every 10 s: one reservation sample per team (see [`metrics::sample_reservations`]); hourly:
//! samples older than the retention are deleted.

use super::every;
use crate::service::metrics::{self, SAMPLE_PERIOD_SECS};
use chrono::Utc;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Samples (and destroyed capsules' metric points) are kept this long.
pub const RETENTION_DAYS: i32 = 60;
/// How often the retention is enforced.
const PRUNE_PERIOD: Duration = Duration::from_secs(3600);

pub fn spawn(db: PgPool, stop: CancellationToken) {
    let mut last_prune: Option<Instant> = None;
    let period = Duration::from_secs(SAMPLE_PERIOD_SECS.unsigned_abs());
    every("metrics-sampler", period, stop, move || {
        let db = db.clone();
        let prune = last_prune.is_none_or(|at| at.elapsed() >= PRUNE_PERIOD);
        if prune {
            last_prune = Some(Instant::now());
        }
        async move {
            if prune {
                match metrics::prune_samples(&db, RETENTION_DAYS).await {
                    Ok(n) if n > 0 => tracing::info!(rows = n, "pruned old reservation samples"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "could not prune reservation samples"),
                }
            }
            if let Err(e) = metrics::sample_reservations(&db, Utc::now()).await {
                tracing::warn!(error = %e, "could not sample team reservations");
            }
        }
    });
}
