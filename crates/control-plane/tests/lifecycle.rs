//! Pause, resume and wake against a scripted host agent: the order of agent calls, the answers
//! within the time limit, concurrent wakes, damaged snapshots, what does not wake, and the host
//! monitor's reconciliation of paused sandboxes.

mod fake_agent;
mod scripted_agent;
mod support;

use scripted_agent::{capsule, eventually, status};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use support::{Tenant, TestApp};
use uuid::Uuid;
use wrenn_control_plane::ids::{self, IdKind};
use wrenn_control_plane::state::Settings;
use wrenn_protocol::connect::Code;
use wrenn_protocol::hostagent as pb;

async fn quiet(db: PgPool, answer_within: Duration) -> TestApp {
    TestApp::start_quiet_with(
        db,
        Settings {
            answer_within,
            ..Settings::default()
        },
    )
    .await
}

async fn set_status(db: &PgPool, id: &str, status: &str) {
    sqlx::query("UPDATE sandboxes SET status = $2 WHERE id = $1")
        .bind(ids::decode(IdKind::Capsule, id).expect("id"))
        .bind(status)
        .execute(db)
        .await
        .expect("set status");
}

/// The team's events of `kind` about capsule `id`.
async fn events(db: &PgPool, team: Uuid, kind: &str, id: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT payload FROM events WHERE team_id = $1 AND payload->>'event' = $2
            AND payload->'resource'->>'id' = $3 ORDER BY id",
    )
    .bind(team)
    .bind(kind)
    .bind(id)
    .fetch_all(db)
    .await
    .expect("events")
}

async fn post(t: &TestApp, who: &Tenant, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = t.http.post(t.url(path)).header("X-API-Key", &who.api_key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("send");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

async fn exec(t: &TestApp, who: &Tenant, id: &str) -> (u16, Value) {
    post(
        t,
        who,
        &format!("/v1/capsules/{id}/exec"),
        Some(json!({"cmd": "/bin/echo", "args": ["hi"]})),
    )
    .await
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn pause_flushes_metrics_first_and_resume_brings_it_back(db: PgPool) {
    let t = quiet(db.clone(), Duration::from_secs(20)).await;
    let alice = t.tenant("alice").await;
    let agent = scripted_agent::start(&db).await;
    let id = capsule(&db, alice.team_id, agent.agent.host_id, "running").await;

    let (code, body) = post(&t, &alice, &format!("/v1/capsules/{id}/pause"), None).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("paused")),
        "{body}"
    );
    assert_eq!(agent.methods(), ["FlushSandboxMetrics", "PauseSandbox"]);
    let points: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sandbox_metric_points WHERE sandbox_id = $1")
            .bind(ids::decode(IdKind::Capsule, &id).expect("id"))
            .fetch_one(&db)
            .await
            .expect("points");
    assert_eq!(points, 4, "every flushed tier is stored");
    let paused = events(&db, alice.team_id, "capsule.pause", &id).await;
    assert_eq!(paused.len(), 1);
    assert_eq!(
        (&paused[0]["outcome"], &paused[0]["actor"]["type"]),
        (&json!("success"), &json!("api_key"))
    );
    // Paused: a second pause and ping are refused; metrics come from what was flushed.
    let (code, body) = post(&t, &alice, &format!("/v1/capsules/{id}/pause"), None).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("invalid_state"))
    );
    let (code, body) = post(&t, &alice, &format!("/v1/capsules/{id}/ping"), None).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("invalid_state"))
    );
    let metrics: Value = t
        .http
        .get(t.url(&format!("/v1/capsules/{id}/metrics")))
        .header("X-API-Key", &alice.api_key)
        .send()
        .await
        .expect("metrics")
        .json()
        .await
        .expect("json");
    assert_eq!(
        metrics["points"].as_array().map(Vec::len),
        Some(2),
        "{metrics}"
    );
    assert_eq!(
        agent.count("ResumeSandbox"),
        0,
        "ping and metrics do not wake"
    );

    let (code, body) = post(&t, &alice, &format!("/v1/capsules/{id}/resume"), None).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("running")),
        "{body}"
    );
    assert_eq!(body["metadata"]["envd_version"], "9.9.9");
    {
        let script = agent.lock();
        let resume = &script.resumes[0];
        assert_eq!(
            (resume.timeout_sec, resume.default_user.as_str()),
            (120, "root")
        );
    }
    let host_ip: String = sqlx::query_scalar("SELECT host_ip FROM sandboxes WHERE id = $1")
        .bind(ids::decode(IdKind::Capsule, &id).expect("id"))
        .fetch_one(&db)
        .await
        .expect("host ip");
    assert_eq!(host_ip, "10.11.0.99", "a resumed VM may have a new address");
    // Running: resume is the wrong state.
    let (code, body) = post(&t, &alice, &format!("/v1/capsules/{id}/resume"), None).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("invalid_state"))
    );
    assert_eq!(agent.count("ResumeSandbox"), 1);
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn slow_pauses_and_resumes_answer_in_transition_and_finish_later(db: PgPool) {
    let t = quiet(db.clone(), Duration::from_millis(300)).await;
    let alice = t.tenant("alice").await;
    let agent = scripted_agent::start(&db).await;
    agent.lock().pause_delay = Duration::from_millis(1500);
    agent.lock().resume_delay = Duration::from_millis(1500);
    let id = capsule(&db, alice.team_id, agent.agent.host_id, "running").await;

    let started = Instant::now();
    let (code, body) = post(&t, &alice, &format!("/v1/capsules/{id}/pause"), None).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("pausing")),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_millis(1200));
    eventually("paused", || async { status(&db, &id).await == "paused" }).await;

    let (code, body) = post(&t, &alice, &format!("/v1/capsules/{id}/resume"), None).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("resuming")),
        "{body}"
    );
    // A second resume while resuming reports it rather than failing.
    let (code, body) = post(&t, &alice, &format!("/v1/capsules/{id}/resume"), None).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("resuming")),
        "{body}"
    );
    eventually("running", || async { status(&db, &id).await == "running" }).await;
    assert_eq!(agent.count("ResumeSandbox"), 1);
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn a_failed_pause_leaves_the_capsule_running(db: PgPool) {
    let t = quiet(db.clone(), Duration::from_secs(20)).await;
    let alice = t.tenant("alice").await;
    let agent = scripted_agent::start(&db).await;
    agent.lock().pause_error = Some(Code::Internal);
    let id = capsule(&db, alice.team_id, agent.agent.host_id, "running").await;
    let (code, body) = post(&t, &alice, &format!("/v1/capsules/{id}/pause"), None).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (502, Some("agent_error"))
    );
    assert_eq!(status(&db, &id).await, "running");
    let paused = events(&db, alice.team_id, "capsule.pause", &id).await;
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0]["outcome"], "error");
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn concurrent_calls_wake_a_paused_capsule_once(db: PgPool) {
    let t = quiet(db.clone(), Duration::from_secs(20)).await;
    let alice = t.tenant("alice").await;
    let agent = scripted_agent::start(&db).await;
    agent.lock().resume_delay = Duration::from_millis(400);
    let id = capsule(&db, alice.team_id, agent.agent.host_id, "paused").await;

    let calls = (0..4).map(|_| exec(&t, &alice, &id));
    for (code, body) in futures::future::join_all(calls).await {
        assert_eq!(
            (code, body["stdout"].as_str()),
            (200, Some("woken\n")),
            "{body}"
        );
    }
    assert_eq!(agent.count("ResumeSandbox"), 1, "{:?}", agent.methods());
    assert_eq!(agent.count("Exec"), 4);
    assert_eq!(status(&db, &id).await, "running");
    let resumed = events(&db, alice.team_id, "capsule.resume", &id).await;
    assert_eq!(resumed.len(), 1);
    assert_eq!(
        (
            &resumed[0]["metadata"]["reason"],
            &resumed[0]["actor"]["type"],
            &resumed[0]["outcome"]
        ),
        (&json!("wake"), &json!("api_key"), &json!("success"))
    );
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn a_wake_waits_for_a_pause_in_progress(db: PgPool) {
    let t = quiet(db.clone(), Duration::from_secs(20)).await;
    let alice = t.tenant("alice").await;
    let agent = scripted_agent::start(&db).await;
    let id = capsule(&db, alice.team_id, agent.agent.host_id, "pausing").await;
    let (db2, id2) = (db.clone(), id.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        set_status(&db2, &id2, "paused").await;
    });
    let (code, body) = exec(&t, &alice, &id).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(agent.methods(), ["ResumeSandbox", "Exec"]);
    // A capsule that cannot run is still refused.
    set_status(&db, &id, "missing").await;
    let (code, body) = exec(&t, &alice, &id).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("invalid_state"))
    );
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn a_damaged_snapshot_puts_the_capsule_in_error_until_destroyed(db: PgPool) {
    let t = quiet(db.clone(), Duration::from_secs(20)).await;
    let alice = t.tenant("alice").await;
    let agent = scripted_agent::start(&db).await;
    agent.lock().resume_error = Some(Code::DataLoss);
    let id = capsule(&db, alice.team_id, agent.agent.host_id, "paused").await;

    let (code, body) = exec(&t, &alice, &id).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (502, Some("agent_error"))
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("damaged") && message.contains("destroy"),
        "{message}"
    );
    assert_eq!(status(&db, &id).await, "error");
    let resumed = events(&db, alice.team_id, "capsule.resume", &id).await;
    assert_eq!(resumed[0]["outcome"], "error");
    // No further resume attempts.
    let (code, _) = post(&t, &alice, &format!("/v1/capsules/{id}/resume"), None).await;
    assert_eq!(code, 409);
    assert_eq!(agent.count("ResumeSandbox"), 1);
    // Destroying it removes it from the host too.
    let resp = t
        .http
        .delete(t.url(&format!("/v1/capsules/{id}")))
        .header("X-API-Key", &alice.api_key)
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    assert_eq!(agent.count("DestroySandbox"), 1);
    assert_eq!(status(&db, &id).await, "stopped");
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn the_explicit_resume_reports_a_damaged_snapshot_the_same_way(db: PgPool) {
    let t = quiet(db.clone(), Duration::from_secs(20)).await;
    let alice = t.tenant("alice").await;
    let agent = scripted_agent::start(&db).await;
    agent.lock().resume_error = Some(Code::DataLoss);
    let id = capsule(&db, alice.team_id, agent.agent.host_id, "paused").await;
    let (code, body) = post(&t, &alice, &format!("/v1/capsules/{id}/resume"), None).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (502, Some("agent_error"))
    );
    assert_eq!(status(&db, &id).await, "error");
    // Another failure leaves it paused.
    let other = capsule(&db, alice.team_id, agent.agent.host_id, "paused").await;
    agent.lock().resume_error = Some(Code::Internal);
    let (code, _) = post(&t, &alice, &format!("/v1/capsules/{other}/resume"), None).await;
    assert_eq!(code, 502);
    assert_eq!(status(&db, &other).await, "paused");
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn port_proxy_traffic_wakes_a_paused_capsule(db: PgPool) {
    let t = quiet(db.clone(), Duration::from_secs(20)).await;
    let alice = t.tenant("alice").await;
    let agent = scripted_agent::start(&db).await;
    let id = capsule(&db, alice.team_id, agent.agent.host_id, "paused").await;
    let resp = t
        .http
        .get(t.url("/index.html"))
        .header("Host", format!("8000-{id}.localhost"))
        .send()
        .await
        .expect("proxy");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.expect("body"),
        format!("proxied /proxy/{id}/8000/index.html")
    );
    assert_eq!(agent.count("ResumeSandbox"), 1);
    assert_eq!(status(&db, &id).await, "running");
    let resumed = events(&db, alice.team_id, "capsule.resume", &id).await;
    assert_eq!(resumed[0]["actor"]["name"], "port-proxy");
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn destroying_a_running_capsule_keeps_only_its_daily_metrics(db: PgPool) {
    let t = quiet(db.clone(), Duration::from_secs(20)).await;
    let alice = t.tenant("alice").await;
    let agent = scripted_agent::start(&db).await;
    let id = capsule(&db, alice.team_id, agent.agent.host_id, "running").await;
    let resp = t
        .http
        .delete(t.url(&format!("/v1/capsules/{id}")))
        .header("X-API-Key", &alice.api_key)
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    assert_eq!(agent.methods(), ["FlushSandboxMetrics", "DestroySandbox"]);
    let tiers: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT tier FROM sandbox_metric_points WHERE sandbox_id = $1")
            .bind(ids::decode(IdKind::Capsule, &id).expect("id"))
            .fetch_all(&db)
            .await
            .expect("tiers");
    assert_eq!(tiers, ["24h"]);
}

fn info(id: &str, status: &str) -> pb::SandboxInfo {
    pb::SandboxInfo {
        sandbox_id: id.to_string(),
        status: status.to_string(),
        ..Default::default()
    }
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn the_host_monitor_follows_what_the_host_paused(db: PgPool) {
    let t = TestApp::start_quiet(db.clone()).await;
    let alice = t.tenant("alice").await;
    let agent = scripted_agent::start(&db).await;
    let host = agent.agent.host_id;
    let idle = capsule(&db, alice.team_id, host, "running").await;
    let shut_down = capsule(&db, alice.team_id, host, "running").await;
    let lost = capsule(&db, alice.team_id, host, "missing").await;
    let back = capsule(&db, alice.team_id, host, "paused").await;
    let quiet_paused = capsule(&db, alice.team_id, host, "paused").await;
    let busy = capsule(&db, alice.team_id, host, "snapshotting").await;
    let broken = capsule(&db, alice.team_id, host, "error").await;
    let gone = capsule(&db, alice.team_id, host, "stopped").await;
    let orphan = ids::capsule(Uuid::new_v4());
    agent.lock().listing = pb::ListSandboxesResponse {
        sandboxes: vec![
            info(&idle, "paused"),
            info(&shut_down, "paused"),
            info(&lost, "paused"),
            info(&back, "running"),
            info(&busy, "running"),
            info(&broken, "paused"),
            info(&gone, "running"),
            info(&orphan, "paused"),
        ],
        auto_paused_sandbox_ids: vec![idle.clone()],
        ..Default::default()
    };
    wrenn_control_plane::workers::host_monitor::tick(&t.app)
        .await
        .expect("tick");

    for (id, want) in [
        (&idle, "paused"),
        (&shut_down, "paused"),
        (&lost, "paused"),
        (&back, "running"),
        (&quiet_paused, "paused"),
        (&busy, "snapshotting"),
        (&broken, "error"),
        (&gone, "stopped"),
    ] {
        assert_eq!(status(&db, id).await, want, "{id}");
    }
    let reason = |e: &Vec<Value>| e[0]["metadata"]["reason"].clone();
    let idle_events = events(&db, alice.team_id, "capsule.pause", &idle).await;
    assert_eq!(reason(&idle_events), "ttl_expired");
    assert_eq!(idle_events[0]["actor"]["type"], "system");
    assert_eq!(
        reason(&events(&db, alice.team_id, "capsule.pause", &shut_down).await),
        "host_paused"
    );
    assert_eq!(
        events(&db, alice.team_id, "capsule.state.changed", &back).await[0]["metadata"]["to"],
        "running"
    );
    // Only sandboxes nobody owns are destroyed: the orphan and the stopped capsule's leftover.
    let mut destroyed: Vec<String> = agent
        .lock()
        .calls
        .iter()
        .filter_map(|c| c.strip_prefix("DestroySandbox ").map(str::to_string))
        .collect();
    destroyed.sort();
    let mut expected = vec![orphan.clone(), gone.clone()];
    expected.sort();
    assert_eq!(destroyed, expected);

    // Applying the same listing again changes nothing and raises nothing new.
    wrenn_control_plane::workers::host_monitor::tick(&t.app)
        .await
        .expect("tick");
    assert_eq!(
        events(&db, alice.team_id, "capsule.pause", &idle)
            .await
            .len(),
        1
    );
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn a_heartbeat_with_fewer_running_sandboxes_reconciles_at_once(db: PgPool) {
    let t = TestApp::start_quiet(db.clone()).await;
    let alice = t.tenant("alice").await;
    let agent = scripted_agent::start(&db).await;
    let host = agent.agent.host_id;
    let id = capsule(&db, alice.team_id, host, "running").await;
    // The agent paused it on its way down and came back: it runs nothing now.
    agent.lock().listing = pb::ListSandboxesResponse {
        sandboxes: vec![info(&id, "paused")],
        ..Default::default()
    };
    let public_host = ids::encode(IdKind::Host, host);
    let token = t.app.jwt.sign_host(&public_host).expect("host token");
    let resp = t
        .http
        .post(t.url(&format!("/v1/hosts/{public_host}/heartbeat")))
        .header("X-Host-Token", token)
        .json(&json!({ "running_sandboxes": 0 }))
        .send()
        .await
        .expect("heartbeat");
    assert_eq!(resp.status().as_u16(), 204);
    // No monitor round runs in this app: only the heartbeat can have triggered this.
    eventually("the capsule is seen paused", || async {
        status(&db, &id).await == "paused"
    })
    .await;
}
