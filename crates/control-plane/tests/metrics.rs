//! Capsule metrics, team stats, daily usage, the sampler and the rollup.

mod fake_agent;
mod support;

use axum::Router;
use chrono::{DateTime, Days, Duration, DurationRound, NaiveDate, Utc};
use fake_agent::FakeAgent;
use serde_json::Value;
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use support::{Tenant, TestApp};
use tower::ServiceExt;
use uuid::Uuid;
use wrenn_api_types::capsule::{CapsuleMetrics, CapsuleStats, UsageResponse};
use wrenn_control_plane::ids::{self, IdKind};
use wrenn_control_plane::service::{metrics, usage};
use wrenn_protocol::hostagent as pb;

async fn get(t: &TestApp, tenant: &Tenant, path: &str) -> reqwest::Response {
    t.http
        .get(t.url(path))
        .header("X-API-Key", &tenant.api_key)
        .send()
        .await
        .expect("send")
}

async fn get_json<T: serde::de::DeserializeOwned>(t: &TestApp, tenant: &Tenant, path: &str) -> T {
    let resp = get(t, tenant, path).await;
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.json().await.expect("json")
}

async fn assert_error(t: &TestApp, tenant: &Tenant, path: &str, status: u16, code: &str) {
    let resp = get(t, tenant, path).await;
    assert_eq!(resp.status(), status, "GET {path}");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], code, "GET {path}: {body}");
}

/// A capsule row; returns its public id.
async fn capsule(
    db: &PgPool,
    team: Uuid,
    status: &str,
    vcpus: i32,
    memory_mb: i32,
    host: Option<Uuid>,
) -> String {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO sandboxes (id, team_id, host_id, status, vcpus, memory_mb) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(team)
    .bind(host)
    .bind(status)
    .bind(vcpus)
    .bind(memory_mb)
    .execute(db)
    .await
    .expect("capsule");
    ids::encode(IdKind::Capsule, id)
}

async fn sample(
    db: &PgPool,
    team: Uuid,
    at: DateTime<Utc>,
    running: i32,
    vcpus: i32,
    memory_mb: i32,
) {
    sqlx::query(
        "INSERT INTO sandbox_metrics_snapshots (team_id, sampled_at, running_count, vcpus_reserved, memory_mb_reserved)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(team)
    .bind(at)
    .bind(running)
    .bind(vcpus)
    .bind(memory_mb)
    .execute(db)
    .await
    .expect("sample");
}

fn point(ts: i64, cpu: f64) -> pb::MetricPoint {
    pb::MetricPoint {
        timestamp_unix: ts,
        cpu_pct: cpu,
        mem_bytes: ts * 10,
        disk_bytes: 4096,
    }
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn stats_and_usage_are_not_taken_for_capsule_ids(db: PgPool) {
    let t = TestApp::start_quiet(db).await;
    let alice = t.tenant("alice").await;
    // The served router, whatever capsule routes it has by now.
    for path in ["/v1/capsules/stats", "/api/v1/capsules/stats"] {
        let stats: CapsuleStats = get_json(&t, &alice, path).await;
        assert_eq!(stats.range, "1h");
    }
    let usage: UsageResponse = get_json(&t, &alice, "/v1/capsules/usage").await;
    assert_eq!(usage.points.len(), 30);
    // And next to a `/capsules/{id}` route, as the capsule routes define it.
    let router = Router::new()
        .route(
            "/capsules/{id}",
            axum::routing::get(|| async { "a capsule" }),
        )
        .merge(wrenn_control_plane::api::metrics::routes())
        .with_state(t.app.clone());
    for (path, marker) in [
        ("/capsules/stats", "\"range\""),
        ("/capsules/usage", "\"points\""),
        ("/capsules/cl-x", "a capsule"),
    ] {
        let req = axum::http::Request::get(path)
            .header("X-API-Key", &alice.api_key)
            .body(axum::body::Body::empty())
            .expect("request");
        let resp = router.clone().oneshot(req).await.expect("response");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains(marker), "{path}: {text}");
    }
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn stats_report_live_reservations_peaks_and_buckets(db: PgPool) {
    let t = TestApp::start_quiet(db.clone()).await;
    let alice = t.tenant("alice").await;
    let bob = t.tenant("bob").await;
    let team = alice.team_id;
    capsule(&db, team, "running", 2, 1024, None).await;
    capsule(&db, team, "running", 1, 512, None).await;
    capsule(&db, team, "starting", 1, 256, None).await;
    capsule(&db, team, "paused", 4, 1023, None).await; // holds ceil(1023 / 2) = 512
    capsule(&db, team, "stopped", 8, 8192, None).await;
    capsule(&db, bob.team_id, "running", 16, 16384, None).await;

    // Two samples in one 30-second bucket (the larger wins), one in the next minute.
    let base = (Utc::now() - Duration::minutes(50))
        .duration_trunc(Duration::seconds(30))
        .expect("trunc");
    sample(&db, team, base, 5, 8, 4096).await;
    sample(&db, team, base + Duration::seconds(10), 6, 7, 1000).await;
    sample(&db, team, base + Duration::seconds(60), 1, 1, 512).await;
    // Outside the hour but inside the 30-day peak window; and one older than 30 days.
    sample(&db, team, Utc::now() - Duration::days(2), 9, 3, 100).await;
    sample(&db, team, Utc::now() - Duration::days(40), 50, 50, 50_000).await;

    let stats: CapsuleStats = get_json(&t, &alice, "/v1/capsules/stats").await;
    assert_eq!(stats.range, "1h");
    assert_eq!(
        (
            stats.current.running_count,
            stats.current.vcpus_reserved,
            stats.current.memory_mb_reserved
        ),
        (3, 4, 1024 + 512 + 256 + 512)
    );
    assert_eq!(
        (
            stats.peaks.running_count,
            stats.peaks.vcpus,
            stats.peaks.memory_mb
        ),
        (9, 8, 4096)
    );
    let s = &stats.series;
    assert!(s.labels.len() >= 2, "{s:?}");
    assert_eq!(s.labels.len(), s.running.len());
    assert_eq!(s.labels.len(), s.vcpus.len());
    assert_eq!(s.labels.len(), s.memory_mb.len());
    assert_eq!(s.labels[..2], [base, base + Duration::seconds(60)]);
    assert_eq!((s.running[0], s.vcpus[0], s.memory_mb[0]), (6, 8, 4096));
    assert_eq!((s.running[1], s.vcpus[1], s.memory_mb[1]), (1, 1, 512));
    // Anything after is the live sampler's, which records what runs now.
    for i in 2..s.labels.len() {
        assert_eq!((s.running[i], s.vcpus[i], s.memory_mb[i]), (3, 4, 2304));
    }

    let month: CapsuleStats = get_json(&t, &alice, "/v1/capsules/stats?range=30d").await;
    assert_eq!(month.range, "30d");
    assert!(month.series.running.contains(&9), "{:?}", month.series);
    assert!(!month.series.running.contains(&50), "{:?}", month.series);
    let five: CapsuleStats = get_json(&t, &alice, "/v1/capsules/stats?range=5m").await;
    assert!(
        five.series.running.iter().all(|&r| r == 3),
        "{:?}",
        five.series
    );

    assert_error(
        &t,
        &alice,
        "/v1/capsules/stats?range=2h",
        400,
        "invalid_request",
    )
    .await;
    // Bob sees only his own.
    let bobs: CapsuleStats = get_json(&t, &bob, "/v1/capsules/stats").await;
    assert_eq!(
        (bobs.current.running_count, bobs.current.vcpus_reserved),
        (1, 16)
    );
    assert_eq!(bobs.peaks.running_count, 1);
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn day_start(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn usage_has_every_day_from_rollups_and_samples(db: PgPool) {
    let t = TestApp::start_quiet(db.clone()).await;
    let alice = t.tenant("alice").await;
    let team = alice.team_id;
    let ago = |n: u64| today().checked_sub_days(Days::new(n)).expect("date");
    // Yesterday: six samples (one minute) of 2 vCPUs and 600 MB → 2 CPU-minutes, 600 MB-minutes.
    for i in 0..6 {
        sample(
            &db,
            team,
            day_start(ago(1)) + Duration::seconds(3600 + 10 * i),
            1,
            2,
            600,
        )
        .await;
    }
    // Today so far: three samples of 4 vCPUs and 100 MB.
    for i in 0..3 {
        sample(
            &db,
            team,
            day_start(ago(0)) + Duration::seconds(10 * i),
            1,
            4,
            100,
        )
        .await;
    }
    // Three days ago is rolled up already: the stored row wins over the samples.
    sample(&db, team, day_start(ago(3)), 1, 60, 60).await;
    sqlx::query("INSERT INTO daily_usage (team_id, day, cpu_minutes, ram_mb_minutes) VALUES ($1, $2, 7.5, 30)")
        .bind(team)
        .bind(ago(3))
        .execute(&db)
        .await
        .expect("daily row");

    let path = format!("/v1/capsules/usage?from={}&to={}", ago(6), ago(0));
    let usage: UsageResponse = get_json(&t, &alice, &path).await;
    assert_eq!((usage.from, usage.to), (ago(6), ago(0)));
    let days: Vec<NaiveDate> = usage.points.iter().map(|p| p.date).collect();
    assert_eq!(days, (0..7).rev().map(ago).collect::<Vec<_>>());
    let by_day = |d: NaiveDate| {
        let p = usage.points.iter().find(|p| p.date == d).expect("day");
        (p.cpu_minutes, p.ram_mb_minutes)
    };
    assert_eq!(by_day(ago(0)), (2.0, 50.0));
    assert_eq!(by_day(ago(1)), (2.0, 600.0));
    assert_eq!(by_day(ago(3)), (7.5, 30.0));
    assert_eq!(by_day(ago(2)), (0.0, 0.0));

    // The rollup stores yesterday; running it twice changes nothing.
    for _ in 0..2 {
        assert!(usage::roll_up_day(&db, ago(1)).await.expect("rollup") >= 1);
    }
    let stored: (f64, f64) = sqlx::query_as(
        "SELECT cpu_minutes::float8, ram_mb_minutes::float8 FROM daily_usage WHERE team_id = $1 AND day = $2",
    )
    .bind(team)
    .bind(ago(1))
    .fetch_one(&db)
    .await
    .expect("rolled up");
    assert_eq!(stored, (2.0, 600.0));

    // Defaults: the last 30 days ending today.
    let default: UsageResponse = get_json(&t, &alice, "/v1/capsules/usage").await;
    assert_eq!((default.from, default.to), (ago(29), ago(0)));
    assert_eq!(default.points.len(), 30);
    // A future end is allowed; those days are zero.
    let tomorrow = today().checked_add_days(Days::new(1)).expect("date");
    let ahead: UsageResponse = get_json(
        &t,
        &alice,
        &format!("/v1/capsules/usage?from={}&to={tomorrow}", ago(0)),
    )
    .await;
    assert_eq!(ahead.points.len(), 2);
    assert_eq!(ahead.points[1].cpu_minutes, 0.0);

    for bad in [
        format!("?from={}&to={}", ago(0), ago(1)),
        format!("?from={}&to={}", ago(93), ago(0)),
        "?from=2026-1-01".to_string(),
        "?to=soon".to_string(),
    ] {
        assert_error(
            &t,
            &alice,
            &format!("/v1/capsules/usage{bad}"),
            400,
            "invalid_request",
        )
        .await;
    }
    let widest: UsageResponse = get_json(
        &t,
        &alice,
        &format!("/v1/capsules/usage?from={}&to={}", ago(92), ago(0)),
    )
    .await;
    assert_eq!(widest.points.len(), 93);
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn the_sampler_records_each_slot_once_and_prunes(db: PgPool) {
    let t = TestApp::start_quiet(db.clone()).await;
    let alice = t.tenant("alice").await;
    let idle = t.tenant("idle").await;
    capsule(&db, alice.team_id, "running", 2, 2048, None).await;
    capsule(&db, alice.team_id, "paused", 1, 1000, None).await;
    // A slot in the past, so no live sampler can have taken it; 3.3 s into the slot, so one
    // second later is still the same slot.
    let at = metrics::sample_slot(Utc::now() - Duration::hours(3)) + Duration::milliseconds(3_300);
    assert_eq!(
        metrics::sample_reservations(&db, at).await.expect("sample"),
        1
    );
    assert_eq!(
        metrics::sample_reservations(&db, at + Duration::seconds(1))
            .await
            .expect("again"),
        0
    );
    let rows: Vec<(Uuid, DateTime<Utc>, i32, i32, i32)> = sqlx::query_as(
        "SELECT team_id, sampled_at, running_count, vcpus_reserved, memory_mb_reserved
           FROM sandbox_metrics_snapshots WHERE sampled_at < now() - interval '1 hour'",
    )
    .fetch_all(&db)
    .await
    .expect("rows");
    assert_eq!(
        rows,
        vec![(alice.team_id, metrics::sample_slot(at), 1, 2, 2548)]
    );
    assert_eq!(metrics::sample_slot(at).timestamp() % 10, 0);
    let idle_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sandbox_metrics_snapshots WHERE team_id = $1")
            .bind(idle.team_id)
            .fetch_one(&db)
            .await
            .expect("count");
    assert_eq!(idle_rows, 0, "a team without capsules is not sampled");

    sample(&db, alice.team_id, Utc::now() - Duration::days(61), 1, 1, 1).await;
    sample(&db, alice.team_id, Utc::now() - Duration::days(59), 1, 1, 1).await;
    metrics::prune_samples(&db, 60).await.expect("prune");
    let oldest: DateTime<Utc> =
        sqlx::query_scalar("SELECT min(sampled_at) FROM sandbox_metrics_snapshots")
            .fetch_one(&db)
            .await
            .expect("oldest");
    assert!(oldest > Utc::now() - Duration::days(60));
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn paused_capsules_show_the_points_flushed_at_pause(db: PgPool) {
    let t = TestApp::start_quiet(db.clone()).await;
    let alice = t.tenant("alice").await;
    let bob = t.tenant("bob").await;
    let id = capsule(&db, alice.team_id, "paused", 1, 512, None).await;
    let uuid = ids::decode(IdKind::Capsule, &id).expect("id");
    let end = 1_800_000_000;
    let flushed = pb::FlushSandboxMetricsResponse {
        points_10m: (0..8)
            .map(|i| point(end - 700 + 100 * i, i as f64))
            .collect(),
        points_2h: vec![point(end - 5000, 10.0), point(end - 30, 20.0)],
        points_24h: vec![point(end - 80_000, 30.0)],
    };
    // Flushing twice (a retried pause) stores each point once.
    for _ in 0..2 {
        metrics::persist_flush(&t.app, uuid, &flushed)
            .await
            .expect("persist");
    }
    let five: CapsuleMetrics =
        get_json(&t, &alice, &format!("/v1/capsules/{id}/metrics?range=5m")).await;
    assert_eq!(five.sandbox_id, id);
    assert_eq!(five.range, "5m");
    let ts: Vec<i64> = five.points.iter().map(|p| p.timestamp_unix).collect();
    assert_eq!(ts, vec![end - 300, end - 200, end - 100, end]);
    assert_eq!(five.points[3].mem_bytes, end * 10);
    assert_eq!(five.points[3].cpu_pct, 7.0);
    let default: CapsuleMetrics = get_json(&t, &alice, &format!("/v1/capsules/{id}/metrics")).await;
    assert_eq!((default.range.as_str(), default.points.len()), ("10m", 7));
    let hour: CapsuleMetrics =
        get_json(&t, &alice, &format!("/v1/capsules/{id}/metrics?range=1h")).await;
    assert_eq!(
        hour.points.iter().map(|p| p.cpu_pct).collect::<Vec<_>>(),
        vec![20.0]
    );
    let two: CapsuleMetrics =
        get_json(&t, &alice, &format!("/v1/capsules/{id}/metrics?range=2h")).await;
    assert_eq!(two.points.len(), 2);
    let day: CapsuleMetrics =
        get_json(&t, &alice, &format!("/v1/capsules/{id}/metrics?range=24h")).await;
    assert_eq!(day.points.len(), 1);

    assert_error(
        &t,
        &alice,
        &format!("/v1/capsules/{id}/metrics?range=3h"),
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        &t,
        &bob,
        &format!("/v1/capsules/{id}/metrics"),
        404,
        "not_found",
    )
    .await;
    assert_error(&t, &alice, "/v1/capsules/cl-nope/metrics", 404, "not_found").await;
    let stopped = capsule(&db, alice.team_id, "stopped", 1, 512, None).await;
    assert_error(
        &t,
        &alice,
        &format!("/v1/capsules/{stopped}/metrics"),
        404,
        "not_found",
    )
    .await;

    // Destroying keeps only the 24-hour tier.
    metrics::discard_fine_points(&t.app, uuid)
        .await
        .expect("discard");
    let tiers: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT tier FROM sandbox_metric_points WHERE sandbox_id = $1")
            .bind(uuid)
            .fetch_all(&db)
            .await
            .expect("tiers");
    assert_eq!(tiers, vec!["24h".to_string()]);
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn running_capsules_are_read_from_their_agent(db: PgPool) {
    let t = TestApp::start_quiet(db.clone()).await;
    let alice = t.tenant("alice").await;
    let asked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let seen = asked.clone();
    let router = fake_agent::unary(
        Router::new(),
        "GetSandboxMetrics",
        move |req: pb::GetSandboxMetricsRequest| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("lock").push((req.sandbox_id, req.range));
                Ok(pb::GetSandboxMetricsResponse {
                    points: vec![point(100, 12.5), point(130, 50.0)],
                })
            }
        },
    );
    let agent = FakeAgent::start(&db, router).await;
    let id = capsule(&db, alice.team_id, "running", 1, 512, Some(agent.host_id)).await;
    let m: CapsuleMetrics =
        get_json(&t, &alice, &format!("/v1/capsules/{id}/metrics?range=2h")).await;
    assert_eq!(m.range, "2h");
    assert_eq!(
        m.points.iter().map(|p| p.cpu_pct).collect::<Vec<_>>(),
        vec![12.5, 50.0]
    );
    assert_eq!(
        *asked.lock().expect("lock"),
        vec![(id.clone(), "2h".to_string())]
    );

    // An agent that no longer knows the capsule: not_found, not a server error.
    let gone = fake_agent::unary(
        Router::new(),
        "GetSandboxMetrics",
        |_: pb::GetSandboxMetricsRequest| async {
            Err::<pb::GetSandboxMetricsResponse, _>(wrenn_protocol::connect::Error::new(
                wrenn_protocol::connect::Code::NotFound,
                "no such sandbox",
            ))
        },
    );
    let agent2 = FakeAgent::start(&db, gone).await;
    let lost = capsule(&db, alice.team_id, "running", 1, 512, Some(agent2.host_id)).await;
    assert_error(
        &t,
        &alice,
        &format!("/v1/capsules/{lost}/metrics"),
        404,
        "not_found",
    )
    .await;
}

const SDK_SCRIPT: &str = r#"
import json, sys
from wrenn import WrennClient

client = WrennClient()
out = {
    "stats": client.capsules.stats(range="1h").model_dump(mode="json"),
    "stats_30d": client.capsules.stats(range="30d").model_dump(mode="json"),
    "usage": client.capsules.usage().model_dump(mode="json", by_alias=True),
    "metrics": client.capsules.metrics(sys.argv[1], range="10m").model_dump(mode="json"),
}
print(json.dumps(out))
"#;

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn the_python_sdk_accepts_stats_usage_and_metrics(db: PgPool) {
    let Ok(python) = std::env::var("WRENN_SDK_PYTHON") else {
        eprintln!(
            "SKIP the_python_sdk_accepts_stats_usage_and_metrics: WRENN_SDK_PYTHON is not set"
        );
        return;
    };
    let t = TestApp::start_quiet(db.clone()).await;
    let alice = t.tenant("alice").await;
    capsule(&db, alice.team_id, "running", 2, 1024, None).await;
    let id = capsule(&db, alice.team_id, "paused", 1, 512, None).await;
    let uuid = ids::decode(IdKind::Capsule, &id).expect("id");
    let flushed = pb::FlushSandboxMetricsResponse {
        points_10m: vec![point(1000, 1.5), point(1001, 99.0)],
        ..Default::default()
    };
    metrics::persist_flush(&t.app, uuid, &flushed)
        .await
        .expect("persist");
    sample(
        &db,
        alice.team_id,
        Utc::now() - Duration::minutes(5),
        1,
        2,
        1024,
    )
    .await;
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(python)
            .arg("-c")
            .arg(SDK_SCRIPT)
            .arg(&id)
            .env("WRENN_API_KEY", &alice.api_key)
            .env("WRENN_BASE_URL", &t.base)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the SDK finishes within 60 s")
    .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["stats"]["range"], "1h");
    assert_eq!(v["stats"]["current"]["running_count"], 1);
    assert_eq!(v["stats"]["current"]["memory_mb_reserved"], 1024 + 256);
    assert!(
        v["stats"]["series"]["labels"][0]
            .as_str()
            .is_some_and(|l| l.ends_with('Z'))
    );
    assert_eq!(v["stats_30d"]["range"], "30d");
    assert_eq!(v["usage"]["points"].as_array().map(Vec::len), Some(30));
    assert_eq!(v["usage"]["to"], today().to_string());
    assert_eq!(v["metrics"]["sandbox_id"], id);
    assert_eq!(v["metrics"]["range"], "10m");
    assert_eq!(v["metrics"]["points"][1]["cpu_pct"], 99.0);
    assert_eq!(v["metrics"]["points"][1]["timestamp_unix"], 1001);
}
