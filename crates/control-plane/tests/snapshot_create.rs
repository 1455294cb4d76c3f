//! `POST /v1/snapshots` and capsules created from a snapshot, against a scripted host agent:
//! validation, name conflicts, overwrite, the `snapshotting` state, failures, and placement on
//! the snapshot's host.

mod fake_agent;
mod scripted_agent;
mod support;

use scripted_agent::{ScriptedAgent, capsule, eventually, status};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;
use support::{Tenant, TestApp};
use uuid::Uuid;
use wrenn_control_plane::ids::{self, IdKind};
use wrenn_protocol::connect::Code;

/// A snapshot template row of the team on `host`.
async fn snapshot_row(db: &PgPool, team: Uuid, name: &str, host: Option<Uuid>) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO templates (name, type, team_id, host_id, vcpus, memory_mb, disk_size_mb)
         VALUES ($1, 'snapshot', $2, $3, 2, 1024, 4096) RETURNING id",
    )
    .bind(name)
    .bind(team)
    .bind(host)
    .fetch_one(db)
    .await
    .expect("template")
}

async fn give_room(db: &PgPool, host: Uuid, memory_mb: i32) {
    sqlx::query("UPDATE hosts SET cpu_cores = 8, memory_mb = $2, disk_gb = 200 WHERE id = $1")
        .bind(host)
        .bind(memory_mb)
        .execute(db)
        .await
        .expect("capacity");
}

async fn snapshot(t: &TestApp, who: &Tenant, query: &str, body: Value) -> (u16, Value) {
    let resp = t
        .http
        .post(t.url(&format!("/v1/snapshots{query}")))
        .header("X-API-Key", &who.api_key)
        .json(&body)
        .send()
        .await
        .expect("send");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

fn code_of(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn bad_requests_are_refused_before_the_host_is_asked(db: PgPool) {
    let t = TestApp::start_quiet(db.clone()).await;
    let alice = t.tenant("alice").await;
    let bob = t.tenant("bob").await;
    let agent = scripted_agent::start(&db).await;
    let host = agent.agent.host_id;
    let running = capsule(&db, alice.team_id, host, "running").await;
    let stopped = capsule(&db, alice.team_id, host, "stopped").await;
    let bobs = capsule(&db, bob.team_id, host, "running").await;
    snapshot_row(&db, alice.team_id, "nightly", Some(host)).await;

    for (body, want) in [
        (
            json!({"sandbox_id": running, "name": "-bad"}),
            (400, "invalid_request"),
        ),
        (
            json!({"sandbox_id": running, "name": "a b"}),
            (400, "invalid_request"),
        ),
        (
            json!({"sandbox_id": running, "name": "x".repeat(65)}),
            (400, "invalid_request"),
        ),
        (json!({"name": "x"}), (400, "invalid_request")),
        (json!({"sandbox_id": "cl-nope"}), (404, "not_found")),
        (json!({"sandbox_id": bobs}), (404, "not_found")),
        (json!({"sandbox_id": stopped}), (409, "invalid_state")),
        (
            json!({"sandbox_id": running, "name": "minimal-ubuntu"}),
            (409, "conflict"),
        ),
        (
            json!({"sandbox_id": running, "name": "nightly"}),
            (409, "conflict"),
        ),
    ] {
        let (code, resp) = snapshot(&t, &alice, "", body.clone()).await;
        assert_eq!(
            (code, code_of(&resp)),
            (want.0, Some(want.1)),
            "{body}: {resp}"
        );
    }
    // A platform name stays taken even with overwrite.
    let (code, resp) = snapshot(
        &t,
        &alice,
        "?overwrite=true",
        json!({"sandbox_id": running, "name": "minimal"}),
    )
    .await;
    assert_eq!((code, code_of(&resp)), (409, Some("conflict")));
    assert_eq!(agent.count("CreateSnapshot"), 0);
    assert_eq!(status(&db, &running).await, "running");
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn a_snapshot_becomes_a_template_on_the_capsules_host(db: PgPool) {
    let t = TestApp::start_quiet(db.clone()).await;
    let alice = t.tenant("alice").await;
    let agent = scripted_agent::start(&db).await;
    agent.lock().snapshot_delay = Duration::from_millis(800);
    let id = capsule(&db, alice.team_id, agent.agent.host_id, "running").await;

    // While the host works the capsule is `snapshotting`, then exactly what it was.
    let request = {
        let (t_http, url, key, id) = (
            t.http.clone(),
            t.url("/v1/snapshots"),
            alice.api_key.clone(),
            id.clone(),
        );
        tokio::spawn(async move {
            t_http
                .post(url)
                .header("X-API-Key", key)
                .json(&json!({"sandbox_id": id}))
                .send()
                .await
                .expect("send")
        })
    };
    eventually("snapshotting", || async {
        status(&db, &id).await == "snapshotting"
    })
    .await;
    let resp = request.await.expect("join");
    assert_eq!(resp.status(), 201);
    let template: Value = resp.json().await.expect("json");
    assert_eq!(status(&db, &id).await, "running");

    let name = template["name"].as_str().expect("name").to_string();
    assert!(name.starts_with("template-") && name.len() == 17, "{name}");
    assert_eq!(
        (
            &template["type"],
            &template["vcpus"],
            &template["memory_mb"],
            &template["size_bytes"],
            &template["platform"],
            &template["protected"],
            &template["metadata"]["project"],
        ),
        (
            &json!("snapshot"),
            &json!(2),
            &json!(1024),
            &json!(4096),
            &json!(false),
            &json!(false),
            &json!("demo")
        )
    );
    let (template_id, host, disk): (Uuid, Option<Uuid>, Option<i32>) = sqlx::query_as(
        "SELECT id, host_id, disk_size_mb FROM templates WHERE team_id = $1 AND name = $2",
    )
    .bind(alice.team_id)
    .bind(&name)
    .fetch_one(&db)
    .await
    .expect("row");
    assert_eq!((host, disk), (Some(agent.agent.host_id), Some(4096)));
    {
        let script = agent.lock();
        let sent = &script.snapshots[0];
        assert_eq!(
            (
                sent.sandbox_id.as_str(),
                sent.team_id.as_str(),
                sent.template_id.as_str()
            ),
            (
                id.as_str(),
                alice.team_id.to_string().as_str(),
                template_id.to_string().as_str()
            )
        );
    }
    let created: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE team_id = $1 AND payload->>'event' = 'template.snapshot.create'",
    )
    .bind(alice.team_id)
    .fetch_all(&db)
    .await
    .expect("events");
    assert_eq!(created.len(), 1);
    assert_eq!(
        (&created[0]["outcome"], &created[0]["resource"]["id"]),
        (&json!("success"), &json!(name))
    );

    // A paused capsule can be snapshotted too, and stays paused.
    let paused = capsule(&db, alice.team_id, agent.agent.host_id, "paused").await;
    let (code, body) = snapshot(&t, &alice, "", json!({"sandbox_id": paused, "name": "p1"})).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(status(&db, &paused).await, "paused");
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn overwrite_swaps_in_the_new_template_then_deletes_the_old_files(db: PgPool) {
    let t = TestApp::start_quiet(db.clone()).await;
    let alice = t.tenant("alice").await;
    let agent = scripted_agent::start(&db).await;
    let old_host = scripted_agent::start(&db).await;
    let id = capsule(&db, alice.team_id, agent.agent.host_id, "running").await;
    let old = snapshot_row(&db, alice.team_id, "nightly", Some(old_host.agent.host_id)).await;

    let (code, body) = snapshot(
        &t,
        &alice,
        "?overwrite=true",
        json!({"sandbox_id": id, "name": "nightly"}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let rows: Vec<(Uuid, Option<Uuid>)> =
        sqlx::query_as("SELECT id, host_id FROM templates WHERE team_id = $1 AND name = 'nightly'")
            .bind(alice.team_id)
            .fetch_all(&db)
            .await
            .expect("rows");
    assert_eq!(rows.len(), 1);
    assert_ne!(rows[0].0, old);
    assert_eq!(rows[0].1, Some(agent.agent.host_id));
    // The old files go, on the host that had them.
    eventually("old files deleted", || async {
        old_host.count("DeleteSnapshot") == 1
    })
    .await;
    assert_eq!(
        old_host.lock().snapshot_deletes[0].template_id,
        old.to_string()
    );
    assert_eq!(agent.count("DeleteSnapshot"), 0);

    // A protected template of the team cannot be replaced.
    let guarded = snapshot_row(&db, alice.team_id, "guarded", None).await;
    sqlx::query("UPDATE templates SET protected = true WHERE id = $1")
        .bind(guarded)
        .execute(&db)
        .await
        .expect("protect");
    let (code, body) = snapshot(
        &t,
        &alice,
        "?overwrite=true",
        json!({"sandbox_id": id, "name": "guarded"}),
    )
    .await;
    assert_eq!((code, code_of(&body)), (403, Some("forbidden")));
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn a_failed_snapshot_restores_the_capsule_and_stores_nothing(db: PgPool) {
    let t = TestApp::start_quiet(db.clone()).await;
    let alice = t.tenant("alice").await;
    let agent = scripted_agent::start(&db).await;
    agent.lock().snapshot_error = Some(Code::Internal);
    let id = capsule(&db, alice.team_id, agent.agent.host_id, "paused").await;
    let (code, body) = snapshot(&t, &alice, "", json!({"sandbox_id": id, "name": "x"})).await;
    assert_eq!((code, code_of(&body)), (502, Some("agent_error")));
    assert_eq!(status(&db, &id).await, "paused");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM templates WHERE team_id = $1")
        .bind(alice.team_id)
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(stored, 0);
    let outcome: String = sqlx::query_scalar(
        "SELECT payload->>'outcome' FROM events WHERE team_id = $1 AND payload->>'event' = 'template.snapshot.create'",
    )
    .bind(alice.team_id)
    .fetch_one(&db)
    .await
    .expect("event");
    assert_eq!(outcome, "error");
}

async fn create(t: &TestApp, who: &Tenant, body: Value) -> (u16, Value) {
    let resp = t
        .http
        .post(t.url("/v1/capsules"))
        .header("X-API-Key", &who.api_key)
        .json(&body)
        .send()
        .await
        .expect("send");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn capsules_from_a_snapshot_start_on_its_host_with_its_sizes(db: PgPool) {
    let t = TestApp::start_quiet(db.clone()).await;
    let alice = t.tenant("alice").await;
    let home: ScriptedAgent = scripted_agent::start(&db).await;
    let roomier = scripted_agent::start(&db).await;
    give_room(&db, home.agent.host_id, 8192).await;
    give_room(&db, roomier.agent.host_id, 65536).await;
    let template = snapshot_row(&db, alice.team_id, "nightly", Some(home.agent.host_id)).await;

    let (code, body) = create(&t, &alice, json!({"template": "nightly"})).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        (
            &body["status"],
            &body["template"],
            &body["vcpus"],
            &body["memory_mb"],
            &body["disk_size_mb"]
        ),
        (
            &json!("running"),
            &json!("nightly"),
            &json!(2),
            &json!(1024),
            &json!(4096)
        )
    );
    assert_eq!(
        roomier.count("CreateSandbox"),
        0,
        "only the snapshot's host has its files"
    );
    {
        let script = home.lock();
        let sent = &script.creates[0];
        assert_eq!(
            (
                sent.template_id.as_str(),
                sent.team_id.as_str(),
                sent.vcpus,
                sent.memory_mb
            ),
            (
                template.to_string().as_str(),
                alice.team_id.to_string().as_str(),
                2,
                1024
            )
        );
    }
    // The snapshot decides the sizes: the same value is fine, another one is not.
    let (code, _) = create(&t, &alice, json!({"template": "nightly", "vcpus": 2})).await;
    assert_eq!(code, 201);
    let (code, body) = create(&t, &alice, json!({"template": "nightly", "memory_mb": 512})).await;
    assert_eq!((code, code_of(&body)), (400, Some("invalid_request")));

    // The snapshot's host is down: 503, saying where the snapshot lives.
    sqlx::query("UPDATE hosts SET status = 'unreachable' WHERE id = $1")
        .bind(home.agent.host_id)
        .execute(&db)
        .await
        .expect("down");
    let (code, body) = create(&t, &alice, json!({"template": "nightly"})).await;
    assert_eq!((code, code_of(&body)), (503, Some("host_unavailable")));
    let host_name = ids::encode(IdKind::Host, home.agent.host_id);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&host_name)),
        "{body}"
    );
    // A snapshot whose host was removed cannot start anywhere.
    snapshot_row(&db, alice.team_id, "homeless", None).await;
    let (code, body) = create(&t, &alice, json!({"template": "homeless"})).await;
    assert_eq!((code, code_of(&body)), (503, Some("host_unavailable")));
    assert_eq!(roomier.count("CreateSandbox"), 0);
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn deleting_a_host_keeps_its_snapshots_rows(db: PgPool) {
    let t = TestApp::start_quiet(db.clone()).await;
    let alice = t.tenant("alice").await;
    let agent = scripted_agent::start(&db).await;
    let template = snapshot_row(&db, alice.team_id, "nightly", Some(agent.agent.host_id)).await;
    sqlx::query("DELETE FROM hosts WHERE id = $1")
        .bind(agent.agent.host_id)
        .execute(&db)
        .await
        .expect("delete host");
    let host: Option<Uuid> = sqlx::query_scalar("SELECT host_id FROM templates WHERE id = $1")
        .bind(template)
        .fetch_one(&db)
        .await
        .expect("template stays");
    assert_eq!(host, None);
}
