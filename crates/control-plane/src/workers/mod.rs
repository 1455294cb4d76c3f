//! Background workers: periodic jobs every control-plane instance runs. Each is safe to run on
//! several instances at once (their writes are idempotent), and each stops at `stop`.
//!
//! - [`sampler`]: team reservation samples every 10 s (the stats chart and usage come from them).
//! - [`usage_rollup`]: hourly, stores yesterday's usage per team.
//! - [`events_prune`]: hourly, drops events past retention.
//! - [`host_monitor`]: marks silent hosts unreachable and reconciles capsule states.
//! - housekeeping (hourly): purges accounts deleted 15 days ago, drops expired tokens.

pub mod events_prune;
pub mod host_monitor;
pub mod sampler;
pub mod usage_rollup;

use crate::state::AppState;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Starts every worker of this module.
pub fn spawn(app: &AppState, stop: &CancellationToken) {
    sampler::spawn(app.db.clone(), stop.clone());
    usage_rollup::spawn(app.db.clone(), stop.clone());
    events_prune::spawn(app.db.clone(), stop.clone());
    host_monitor::spawn(app.clone(), stop.clone());
    // Accounts deleted 15 days ago are purged; expired one-time tokens are dropped.
    let db = app.db.clone();
    every(
        "housekeeping",
        Duration::from_secs(3600),
        stop.clone(),
        move || {
            let db = db.clone();
            async move {
                if let Err(e) = crate::service::accounts::housekeeping(&db).await {
                    tracing::warn!(error = %format!("{e:#}"), "account housekeeping failed");
                }
            }
        },
    );
}

/// Runs `tick` every `period` (the first run at once) until `stop`. A tick that overruns delays
/// the next one rather than piling up.
pub(crate) fn every<F, Fut>(
    name: &'static str,
    period: Duration,
    stop: CancellationToken,
    mut tick: F,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = interval.tick() => {}
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick() => {}
            }
        }
        tracing::debug!(worker = name, "stopped");
    });
}
