//! Hourly (first run at start): stores yesterday's (UTC) usage per team in `daily_usage`. Today
//! is always computed live, and a past day not stored yet is summed from the samples at query
//! time, so a missed run only costs speed.

use super::every;
use crate::service::usage;
use chrono::{Days, Utc};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const PERIOD: Duration = Duration::from_secs(3600);

pub fn spawn(db: PgPool, stop: CancellationToken) {
    every("usage-rollup", PERIOD, stop, move || {
        let db = db.clone();
        async move {
            let Some(yesterday) = Utc::now().date_naive().checked_sub_days(Days::new(1)) else {
                return;
            };
            match usage::roll_up_day(&db, yesterday).await {
                Ok(teams) => tracing::debug!(%yesterday, teams, "rolled up daily usage"),
                Err(e) => tracing::warn!(error = %e, "could not roll up daily usage"),
            }
        }
    });
}
