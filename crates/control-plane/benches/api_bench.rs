//! API overhead, printed as figures (never asserted):
//!
//! 1. `GET /v1/capsules` throughput with 1,000 capsules in the caller's team (8 concurrent
//!    keep-alive clients for 5 s): requests per second and latency percentiles.
//! 2. Create latency minus VM boot: `POST /v1/capsules` (until 201 running) against the same
//!    agent's own `CreateSandbox` RPC, the difference being what the control plane adds
//!    (scheduling, database, mTLS hop, events). Needs root, QEMU and the guest image.
//!
//! Run: `DATABASE_URL=postgres://… cargo bench -p wrenn-control-plane --bench api_bench`
//! (the test script's private PostgreSQL works). Each run uses a fresh database.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use std::time::{Duration, Instant};
use support::TestApp;
use support::platform::Platform;
use wrenn_protocol::hostagent as pb;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn fresh_database(suffix: &str) -> sqlx::PgPool {
    let admin_url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must point at a PostgreSQL server (the test script starts one)");
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await
        .expect("connect to PostgreSQL");
    let name = format!("wrenn_bench_{suffix}_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}"
    )))
    .execute(&admin)
    .await
    .expect("drop");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create database");
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("DATABASE_URL has no database name"),
    };
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(&url)
        .await
        .expect("connect");
    wrenn_control_plane::db::migrate(&pool)
        .await
        .expect("migrate");
    pool
}

async fn list_throughput(t: &TestApp) {
    let tenant = t.tenant("bench").await;
    sqlx::query(
        "INSERT INTO sandboxes (id, team_id, template, status, started_at, last_active_at)
         SELECT gen_random_uuid(), $1, 'minimal-ubuntu', 'running', now(), now()
           FROM generate_series(1, 1000)",
    )
    .bind(tenant.team_id)
    .execute(&t.app.db)
    .await
    .expect("seed capsules");
    let url = t.url("/v1/capsules");
    let first: serde_json::Value = t
        .http
        .get(&url)
        .header("X-API-Key", &tenant.api_key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let bytes = serde_json::to_vec(&first).map(|v| v.len()).unwrap_or(0);
    assert_eq!(first.as_array().map(Vec::len), Some(1000));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let http = reqwest::Client::new();
        let url = url.clone();
        let key = tenant.api_key.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let start = Instant::now();
                let resp = http
                    .get(&url)
                    .header("X-API-Key", &key)
                    .send()
                    .await
                    .expect("list");
                let _ = resp.bytes().await.expect("body");
                lat.push(start.elapsed());
            }
            lat
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    let elapsed = started.elapsed();
    all.sort();
    println!(
        "GET /v1/capsules with 1000 capsules ({} KiB): {:.0} req/s over {:.1} s, 8 clients; p50 {:.1} ms, p99 {:.1} ms",
        bytes / 1024,
        all.len() as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
    );
}

async fn create_overhead(db: sqlx::PgPool) {
    if let Some(reason) = wrenn_testing::vm::prerequisites_missing() {
        println!("create overhead: skipped ({reason})");
        return;
    }
    let p = Platform::start(db).await;
    let tenant = p.cp.tenant("bench-create").await;
    let host = wrenn_control_plane::ids::decode(wrenn_control_plane::ids::IdKind::Host, &p.host_id)
        .expect("host id");
    let agent =
        p.cp.app
            .agents
            .client(&p.cp.app.db, host)
            .await
            .expect("agent client");
    let rounds = 5;
    let (mut api, mut direct) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let start = Instant::now();
        let resp =
            p.cp.http
                .post(p.cp.url("/v1/capsules"))
                .header("X-API-Key", &tenant.api_key)
                .json(&json!({}))
                .send()
                .await
                .expect("create");
        assert_eq!(resp.status(), 201);
        let body: serde_json::Value = resp.json().await.expect("json");
        api.push(start.elapsed());
        assert_eq!(body["status"], "running", "{body}");
        let id = body["id"].as_str().expect("id").to_string();
        // Destroyed before the direct create, so both boots have the machine to themselves.
        let resp =
            p.cp.http
                .delete(p.cp.url(&format!("/v1/capsules/{id}")))
                .header("X-API-Key", &tenant.api_key)
                .send()
                .await
                .expect("destroy");
        assert_eq!(resp.status(), 204);

        let sandbox_id = format!("cl-bench{i:017}");
        let start = Instant::now();
        let _: pb::CreateSandboxResponse = agent
            .call_with_timeout(
                "CreateSandbox",
                &pb::CreateSandboxRequest {
                    sandbox_id: sandbox_id.clone(),
                    vcpus: 1,
                    memory_mb: 512,
                    disk_size_mb: 5120,
                    ..Default::default()
                },
                Duration::from_secs(240),
            )
            .await
            .expect("direct create");
        direct.push(start.elapsed());
        let _: pb::DestroySandboxResponse = agent
            .call("DestroySandbox", &pb::DestroySandboxRequest { sandbox_id })
            .await
            .expect("destroy");
    }
    api.sort();
    direct.sort();
    let (a, d) = (percentile(&api, 0.5), percentile(&direct, 0.5));
    println!(
        "create: API median {:.0} ms, agent CreateSandbox median {:.0} ms, control-plane overhead {:.0} ms ({rounds} rounds)",
        a.as_secs_f64() * 1e3,
        d.as_secs_f64() * 1e3,
        (a.as_secs_f64() - d.as_secs_f64()) * 1e3,
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let db = fresh_database("list").await;
        let t = TestApp::start(db.clone()).await;
        list_throughput(&t).await;
        drop(t);
        // A second database keeps the 1000 seeded capsules out of the scheduler's view.
        create_overhead(fresh_database("create").await).await;
    });
}
