//! Resource metrics: one capsule's CPU/memory/disk series, and the team's reservations (live, as
//! 10-second samples, and as the stats chart built from those samples).
//!
//! A running capsule's series lives in its host agent's ring buffer. When the capsule pauses or is
//! destroyed the lead's lifecycle code flushes that ring into `sandbox_metric_points` with
//! [`persist_flush`], so a paused capsule still has a chart.

use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::service::capsules;
use crate::state::App;
use chrono::{DateTime, Duration, DurationRound, Utc};
use sqlx::PgPool;
use uuid::Uuid;
use wrenn_api_types::capsule::{
    CapsuleMetrics, CapsuleStats, CapsuleStatus, METRIC_RANGES, MetricPoint, STATS_RANGES,
    StatsCurrent, StatsPeaks, StatsSeries,
};
use wrenn_protocol::hostagent as pb;

/// What `GET …/metrics` shows without `?range=`.
pub const DEFAULT_METRIC_RANGE: &str = "10m";
/// What `GET /v1/capsules/stats` shows without `?range=`.
pub const DEFAULT_STATS_RANGE: &str = "1h";
/// The sampler's period; each sample stands for this much time in usage sums.
pub const SAMPLE_PERIOD_SECS: i64 = 10;
/// How far back the stats' peaks look.
pub const PEAK_WINDOW_DAYS: i64 = 30;

/// The SQL that computes a team's reservations from `sandboxes`: running/starting capsules count
/// with their vCPUs and memory; a paused capsule holds half its memory (its snapshot on disk plus
/// what resuming needs), rounded up. Used by the stats route and the sampler, so they agree.
pub const RESERVATION_COLUMNS: &str = "\
    COUNT(*) FILTER (WHERE status IN ('running', 'starting'))::bigint AS running_count, \
    COALESCE(SUM(vcpus) FILTER (WHERE status IN ('running', 'starting')), 0)::bigint AS vcpus_reserved, \
    (COALESCE(SUM(memory_mb) FILTER (WHERE status IN ('running', 'starting')), 0) \
     + COALESCE(SUM(CEIL(memory_mb / 2.0)) FILTER (WHERE status = 'paused'), 0))::bigint AS memory_mb_reserved";

/// The agent tier a paused capsule's persisted points are read from, and the span `range` covers.
fn tier_for(range: &str) -> Option<(&'static str, i64)> {
    Some(match range {
        "5m" => ("10m", 300),
        "10m" => ("10m", 600),
        "1h" => ("2h", 3_600),
        "2h" => ("2h", 7_200),
        "6h" => ("24h", 21_600),
        "12h" => ("24h", 43_200),
        "24h" => ("24h", 86_400),
        _ => return None,
    })
}

/// `range` as given, the default when absent, or 400.
pub fn metric_range(range: Option<&str>) -> ApiResult<&str> {
    let range = range.unwrap_or(DEFAULT_METRIC_RANGE);
    if METRIC_RANGES.contains(&range) {
        Ok(range)
    } else {
        Err(ApiError::invalid(format!(
            "range must be one of {}",
            METRIC_RANGES.join(", ")
        )))
    }
}

fn from_pb(points: Vec<pb::MetricPoint>) -> Vec<MetricPoint> {
    points
        .into_iter()
        .map(|p| MetricPoint {
            timestamp_unix: p.timestamp_unix,
            cpu_pct: p.cpu_pct,
            mem_bytes: p.mem_bytes,
            disk_bytes: p.disk_bytes,
        })
        .collect()
}

/// `GET /v1/capsules/{id}/metrics`: a running capsule asks its agent; a paused one reads what was
/// flushed when it paused; any other state has no series (404).
pub async fn capsule_metrics(
    app: &App,
    auth: &AuthContext,
    id: &str,
    range: Option<&str>,
) -> ApiResult<CapsuleMetrics> {
    let range = metric_range(range)?;
    let row = capsules::get_for_team(app, auth, id).await?;
    let points = match row.status() {
        CapsuleStatus::Running => {
            let host = row
                .host_id
                .ok_or_else(|| ApiError::host_unavailable("the capsule has no host"))?;
            let client = app.agents.client(&app.db, host).await?;
            let req = pb::GetSandboxMetricsRequest {
                sandbox_id: row.public_id(),
                range: range.to_string(),
            };
            let resp: pb::GetSandboxMetricsResponse = client
                .call("GetSandboxMetrics", &req)
                .await
                .map_err(|e| ApiError::from_agent(e, &format!("capsule {id}")))?;
            from_pb(resp.points)
        }
        CapsuleStatus::Paused => persisted_points(&app.db, row.id, range).await?,
        other => {
            return Err(ApiError::not_found(format!(
                "capsule {id} has no metrics while {other}"
            )));
        }
    };
    Ok(CapsuleMetrics {
        sandbox_id: row.public_id(),
        range: range.to_string(),
        points,
    })
}

#[derive(sqlx::FromRow)]
struct PointRow {
    ts: i64,
    cpu_pct: f64,
    mem_bytes: i64,
    disk_bytes: i64,
}

/// The persisted points of `range`'s tier, the last `range` of them before the newest (the
/// capsule stopped producing points when it paused, so "now" is the wrong anchor).
async fn persisted_points(db: &PgPool, capsule: Uuid, range: &str) -> ApiResult<Vec<MetricPoint>> {
    let Some((tier, span)) = tier_for(range) else {
        return Err(ApiError::invalid(format!("unknown range {range}")));
    };
    let rows: Vec<PointRow> = sqlx::query_as(
        "SELECT ts, cpu_pct, mem_bytes, disk_bytes FROM sandbox_metric_points
          WHERE sandbox_id = $1 AND tier = $2
            AND ts >= (SELECT COALESCE(MAX(ts), 0) FROM sandbox_metric_points
                        WHERE sandbox_id = $1 AND tier = $2) - $3
          ORDER BY ts",
    )
    .bind(capsule)
    .bind(tier)
    .bind(span)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| MetricPoint {
            timestamp_unix: r.ts,
            cpu_pct: r.cpu_pct,
            mem_bytes: r.mem_bytes,
            disk_bytes: r.disk_bytes,
        })
        .collect())
}

/// Stores what `FlushSandboxMetrics` returned for a capsule that is pausing or being destroyed.
/// Points already stored (same tier and second) are kept, so flushing twice is harmless.
pub async fn persist_flush(
    app: &App,
    capsule: Uuid,
    flushed: &pb::FlushSandboxMetricsResponse,
) -> sqlx::Result<()> {
    let mut tx = app.db.begin().await?;
    for (tier, points) in [
        ("10m", &flushed.points_10m),
        ("2h", &flushed.points_2h),
        ("24h", &flushed.points_24h),
    ] {
        if points.is_empty() {
            continue;
        }
        let ts: Vec<i64> = points.iter().map(|p| p.timestamp_unix).collect();
        let cpu: Vec<f64> = points.iter().map(|p| p.cpu_pct).collect();
        let mem: Vec<i64> = points.iter().map(|p| p.mem_bytes).collect();
        let disk: Vec<i64> = points.iter().map(|p| p.disk_bytes).collect();
        sqlx::query(
            "INSERT INTO sandbox_metric_points (sandbox_id, tier, ts, cpu_pct, mem_bytes, disk_bytes)
             SELECT $1, $2, t.ts, t.cpu, t.mem, t.disk
               FROM UNNEST($3::bigint[], $4::float8[], $5::bigint[], $6::bigint[]) AS t(ts, cpu, mem, disk)
             ON CONFLICT (sandbox_id, tier, ts) DO NOTHING",
        )
        .bind(capsule)
        .bind(tier)
        .bind(&ts)
        .bind(&cpu)
        .bind(&mem)
        .bind(&disk)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Drops a destroyed capsule's fine tiers (10m, 2h); the 24-hour tier is kept as its history.
pub async fn discard_fine_points(app: &App, capsule: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM sandbox_metric_points WHERE sandbox_id = $1 AND tier IN ('10m', '2h')",
    )
    .bind(capsule)
    .execute(&app.db)
    .await?;
    Ok(())
}

/// A stats range's window and bucket width, in seconds.
fn stats_window(range: &str) -> Option<(i64, i64)> {
    Some(match range {
        "5m" => (300, 3),
        "1h" => (3_600, 30),
        "6h" => (21_600, 180),
        "24h" => (86_400, 720),
        "30d" => (30 * 86_400, 21_600),
        _ => return None,
    })
}

#[derive(sqlx::FromRow)]
struct ReservationRow {
    running_count: i64,
    vcpus_reserved: i64,
    memory_mb_reserved: i64,
}

/// The team's reservations now, from `sandboxes`.
pub async fn live_reservations(db: &PgPool, team_id: Uuid) -> sqlx::Result<StatsCurrent> {
    let sql = format!("SELECT {RESERVATION_COLUMNS} FROM sandboxes WHERE team_id = $1");
    let row: ReservationRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(team_id)
        .fetch_one(db)
        .await?;
    Ok(StatsCurrent {
        running_count: row.running_count,
        vcpus_reserved: row.vcpus_reserved,
        memory_mb_reserved: row.memory_mb_reserved,
    })
}

#[derive(sqlx::FromRow)]
struct BucketRow {
    bucket: DateTime<Utc>,
    running: i64,
    vcpus: i64,
    memory_mb: i64,
}

/// `GET /v1/capsules/stats`: the series holds one point per bucket that has samples (the largest
/// sample in it), oldest first.
pub async fn team_stats(
    app: &App,
    auth: &AuthContext,
    range: Option<&str>,
) -> ApiResult<CapsuleStats> {
    let range = range.unwrap_or(DEFAULT_STATS_RANGE);
    let (window, bucket) = stats_window(range).ok_or_else(|| {
        ApiError::invalid(format!("range must be one of {}", STATS_RANGES.join(", ")))
    })?;
    let current = live_reservations(&app.db, auth.team_id).await?;
    let since = Utc::now() - Duration::seconds(window);
    let buckets: Vec<BucketRow> = sqlx::query_as(
        "SELECT to_timestamp(floor(extract(epoch FROM sampled_at) / $3) * $3) AS bucket,
                MAX(running_count)::bigint AS running, MAX(vcpus_reserved)::bigint AS vcpus,
                MAX(memory_mb_reserved)::bigint AS memory_mb
           FROM sandbox_metrics_snapshots
          WHERE team_id = $1 AND sampled_at >= $2
          GROUP BY 1 ORDER BY 1",
    )
    .bind(auth.team_id)
    .bind(since)
    .bind(bucket as f64)
    .fetch_all(&app.db)
    .await?;
    let mut series = StatsSeries::default();
    for b in buckets {
        series.labels.push(b.bucket);
        series.running.push(b.running);
        series.vcpus.push(b.vcpus);
        series.memory_mb.push(b.memory_mb);
    }
    let peak: ReservationRow = sqlx::query_as(
        "SELECT COALESCE(MAX(running_count), 0)::bigint AS running_count,
                COALESCE(MAX(vcpus_reserved), 0)::bigint AS vcpus_reserved,
                COALESCE(MAX(memory_mb_reserved), 0)::bigint AS memory_mb_reserved
           FROM sandbox_metrics_snapshots
          WHERE team_id = $1 AND sampled_at >= now() - make_interval(days => $2)",
    )
    .bind(auth.team_id)
    .bind(PEAK_WINDOW_DAYS as i32)
    .fetch_one(&app.db)
    .await?;
    // The latest sample may be up to one period old; a peak is never below what runs now.
    let peaks = StatsPeaks {
        running_count: peak.running_count.max(current.running_count),
        vcpus: peak.vcpus_reserved.max(current.vcpus_reserved),
        memory_mb: peak.memory_mb_reserved.max(current.memory_mb_reserved),
    };
    Ok(CapsuleStats {
        range: range.to_string(),
        current,
        peaks,
        series,
    })
}

/// The start of the sampling slot `at` falls in.
pub fn sample_slot(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(Duration::seconds(SAMPLE_PERIOD_SECS))
        .unwrap_or(at)
}

/// Records one reservation sample per live team for the slot of `at`: every team that has any
/// capsule row gets a row, zeros included, so charts stay continuous. Another instance that
/// already sampled this slot wins; returns how many rows this call inserted.
pub async fn sample_reservations(db: &PgPool, at: DateTime<Utc>) -> sqlx::Result<u64> {
    let sql = format!(
        "INSERT INTO sandbox_metrics_snapshots (team_id, sampled_at, running_count, vcpus_reserved, memory_mb_reserved)
         SELECT r.team_id, $1, r.running_count, r.vcpus_reserved, r.memory_mb_reserved
           FROM (SELECT team_id, {RESERVATION_COLUMNS} FROM sandboxes GROUP BY team_id) AS r
           JOIN teams t ON t.id = r.team_id
          WHERE t.deleted_at IS NULL
         ON CONFLICT (team_id, sampled_at) DO NOTHING"
    );
    Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(sample_slot(at))
        .execute(db)
        .await?
        .rows_affected())
}

/// Deletes samples older than `days`, and the persisted points of capsules destroyed that long ago.
pub async fn prune_samples(db: &PgPool, days: i32) -> sqlx::Result<u64> {
    let samples = sqlx::query(
        "DELETE FROM sandbox_metrics_snapshots WHERE sampled_at < now() - make_interval(days => $1)",
    )
    .bind(days)
    .execute(db)
    .await?
    .rows_affected();
    let points = sqlx::query(
        "DELETE FROM sandbox_metric_points p USING sandboxes s
          WHERE s.id = p.sandbox_id AND s.status IN ('stopped', 'error')
            AND s.last_updated < now() - make_interval(days => $1)",
    )
    .bind(days)
    .execute(db)
    .await?
    .rows_affected();
    Ok(samples + points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_range_has_a_tier_and_unknown_ones_are_refused() {
        for range in METRIC_RANGES {
            assert!(tier_for(range).is_some(), "{range}");
            assert_eq!(metric_range(Some(range)).ok(), Some(range));
        }
        assert_eq!(metric_range(None).ok(), Some("10m"));
        assert!(metric_range(Some("3h")).is_err());
        assert!(metric_range(Some("")).is_err());
        assert_eq!(tier_for("1h"), Some(("2h", 3_600)));
        assert_eq!(tier_for("12h"), Some(("24h", 43_200)));
    }

    #[test]
    fn every_stats_range_has_a_window() {
        for range in STATS_RANGES {
            assert!(stats_window(range).is_some(), "{range}");
        }
        assert_eq!(stats_window("30d"), Some((2_592_000, 21_600)));
        assert_eq!(stats_window("2h"), None);
    }

    #[test]
    fn samples_fall_on_ten_second_slots() {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:17.9Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(sample_slot(at).to_rfc3339(), "2026-01-02T03:04:10+00:00");
    }
}
