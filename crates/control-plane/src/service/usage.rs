//! Daily usage: CPU-minutes and RAM-MB-minutes per team and UTC day.
//!
//! Each reservation sample stands for one sampling period (10 s = 1/6 minute) of what the team
//! held. Finished days are rolled up into `daily_usage` by the hourly worker; today, and any past
//! day the rollup has not stored yet, is summed from the samples at query time.

use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::service::metrics::SAMPLE_PERIOD_SECS;
use crate::state::App;
use chrono::{Days, NaiveDate, Utc};
use sqlx::PgPool;
use std::collections::HashMap;
use uuid::Uuid;
use wrenn_api_types::capsule::{UsagePoint, UsageResponse};

/// Days shown when `from` is not given: today and the 29 before it.
pub const DEFAULT_SPAN_DAYS: u64 = 29;
/// The longest `to - from` a request may ask for.
pub const MAX_SPAN_DAYS: i64 = 92;

/// Minutes one sample stands for, as SQL sees it.
const MINUTES_PER_SAMPLE: f64 = SAMPLE_PERIOD_SECS as f64 / 60.0;

fn parse_day(name: &str, value: Option<&str>) -> ApiResult<Option<NaiveDate>> {
    value
        .map(|v| {
            // chrono accepts unpadded fields; the contract's format is exactly YYYY-MM-DD.
            NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .ok()
                .filter(|_| v.len() == 10)
                .ok_or_else(|| {
                    ApiError::invalid(format!("{name} must be a date as YYYY-MM-DD, got {v:?}"))
                })
        })
        .transpose()
}

/// The `[from, to]` a request asks for, with the defaults and limits applied.
pub fn usage_window(
    from: Option<&str>,
    to: Option<&str>,
    today: NaiveDate,
) -> ApiResult<(NaiveDate, NaiveDate)> {
    let to = parse_day("to", to)?.unwrap_or(today);
    let from = match parse_day("from", from)? {
        Some(from) => from,
        None => to
            .checked_sub_days(Days::new(DEFAULT_SPAN_DAYS))
            .ok_or_else(|| ApiError::invalid("to is too early"))?,
    };
    if from > to {
        return Err(ApiError::invalid("from must not be after to"));
    }
    if (to - from).num_days() > MAX_SPAN_DAYS {
        return Err(ApiError::invalid(format!(
            "the range may span at most {MAX_SPAN_DAYS} days"
        )));
    }
    Ok((from, to))
}

#[derive(sqlx::FromRow)]
struct DayRow {
    day: NaiveDate,
    cpu_minutes: f64,
    ram_mb_minutes: f64,
}

/// `GET /v1/capsules/usage`: a point for every day of the window, zero where nothing ran.
pub async fn team_usage(
    app: &App,
    auth: &AuthContext,
    from: Option<&str>,
    to: Option<&str>,
) -> ApiResult<UsageResponse> {
    let today = Utc::now().date_naive();
    let (from, to) = usage_window(from, to, today)?;
    let stored: Vec<DayRow> = sqlx::query_as(
        "SELECT day, cpu_minutes::float8 AS cpu_minutes, ram_mb_minutes::float8 AS ram_mb_minutes
           FROM daily_usage WHERE team_id = $1 AND day BETWEEN $2 AND $3 AND day < $4",
    )
    .bind(auth.team_id)
    .bind(from)
    .bind(to)
    .bind(today)
    .fetch_all(&app.db)
    .await?;
    let mut by_day: HashMap<NaiveDate, (f64, f64)> = stored
        .into_iter()
        .map(|r| (r.day, (r.cpu_minutes, r.ram_mb_minutes)))
        .collect();
    let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
    let missing: Vec<NaiveDate> = days
        .iter()
        .copied()
        .filter(|d| *d <= today && !by_day.contains_key(d))
        .collect();
    if !missing.is_empty() {
        for row in usage_from_samples(&app.db, auth.team_id, &missing).await? {
            by_day.insert(row.day, (row.cpu_minutes, row.ram_mb_minutes));
        }
    }
    let points = days
        .into_iter()
        .map(|date| {
            let (cpu_minutes, ram_mb_minutes) = by_day.get(&date).copied().unwrap_or_default();
            UsagePoint {
                date,
                cpu_minutes,
                ram_mb_minutes,
            }
        })
        .collect();
    Ok(UsageResponse { from, to, points })
}

/// Sums one team's samples for the given UTC days (days without samples are absent).
async fn usage_from_samples(
    db: &PgPool,
    team_id: Uuid,
    days: &[NaiveDate],
) -> sqlx::Result<Vec<DayRow>> {
    let (Some(first), Some(last)) = (days.iter().min(), days.iter().max()) else {
        return Ok(Vec::new());
    };
    sqlx::query_as(
        "SELECT (sampled_at AT TIME ZONE 'UTC')::date AS day,
                (SUM(vcpus_reserved) * $5)::float8 AS cpu_minutes,
                (SUM(memory_mb_reserved) * $5)::float8 AS ram_mb_minutes
           FROM sandbox_metrics_snapshots
          WHERE team_id = $1
            AND sampled_at >= ($2::date)::timestamp AT TIME ZONE 'UTC'
            AND sampled_at < ($3::date + 1)::timestamp AT TIME ZONE 'UTC'
            AND (sampled_at AT TIME ZONE 'UTC')::date = ANY($4)
          GROUP BY 1",
    )
    .bind(team_id)
    .bind(*first)
    .bind(*last)
    .bind(days)
    .bind(MINUTES_PER_SAMPLE)
    .fetch_all(db)
    .await
}

/// Stores `day`'s usage for every team with samples that day; running it again overwrites the
/// same numbers. Returns how many teams were written.
pub async fn roll_up_day(db: &PgPool, day: NaiveDate) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "INSERT INTO daily_usage (team_id, day, cpu_minutes, ram_mb_minutes)
         SELECT team_id, $1, SUM(vcpus_reserved) * $2, SUM(memory_mb_reserved) * $2
           FROM sandbox_metrics_snapshots
          WHERE sampled_at >= ($1::date)::timestamp AT TIME ZONE 'UTC'
            AND sampled_at < ($1::date + 1)::timestamp AT TIME ZONE 'UTC'
          GROUP BY team_id
         ON CONFLICT (team_id, day) DO UPDATE
            SET cpu_minutes = EXCLUDED.cpu_minutes, ram_mb_minutes = EXCLUDED.ram_mb_minutes",
    )
    .bind(day)
    .bind(MINUTES_PER_SAMPLE)
    .execute(db)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
    }

    #[test]
    fn window_defaults_to_the_last_thirty_days() {
        let today = day("2026-03-31");
        assert_eq!(
            usage_window(None, None, today).ok(),
            Some((day("2026-03-02"), today))
        );
        assert_eq!(
            usage_window(None, Some("2026-01-31"), today).ok(),
            Some((day("2026-01-02"), day("2026-01-31")))
        );
    }

    #[test]
    fn window_limits() {
        let today = day("2026-03-31");
        assert!(usage_window(Some("2026-03-05"), Some("2026-03-04"), today).is_err());
        assert!(usage_window(Some("2026-03-4"), None, today).is_err());
        assert!(usage_window(Some("yesterday"), None, today).is_err());
        // 92 days apart is the limit; 93 is refused.
        assert!(usage_window(Some("2026-01-01"), Some("2026-04-03"), today).is_ok());
        assert!(usage_window(Some("2026-01-01"), Some("2026-04-04"), today).is_err());
        assert!(usage_window(Some("2026-03-31"), Some("2026-03-31"), today).is_ok());
    }
}
