//! `GET /v1/snapshots` and `DELETE /v1/snapshots/{name}`.

mod fake_agent;
mod support;

use axum::Router;
use fake_agent::FakeAgent;
use serde_json::Value;
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use support::{Tenant, TestApp};
use uuid::Uuid;
use wrenn_api_types::snapshots::{Template, TemplateType};
use wrenn_protocol::connect::{Code, Error};
use wrenn_protocol::hostagent as pb;

async fn template(db: &PgPool, team: Uuid, name: &str, kind: &str, host: Option<Uuid>) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO templates (name, type, team_id, host_id, vcpus, memory_mb, size_bytes, metadata)
         VALUES ($1, $2, $3, $4, 2, 1024, 4096, '{\"source\": \"cl-1\"}') RETURNING id",
    )
    .bind(name)
    .bind(kind)
    .bind(team)
    .bind(host)
    .fetch_one(db)
    .await
    .expect("template")
}

async fn list(t: &TestApp, tenant: &Tenant, query: &str) -> Vec<Template> {
    let resp = t
        .http
        .get(t.url(&format!("/v1/snapshots{query}")))
        .header("X-API-Key", &tenant.api_key)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("a bare array of templates")
}

async fn delete(t: &TestApp, tenant: &Tenant, name: &str) -> (u16, Value) {
    let resp = t
        .http
        .delete(t.url(&format!("/v1/snapshots/{name}")))
        .header("X-API-Key", &tenant.api_key)
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn exists(db: &PgPool, id: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM templates WHERE id = $1)")
        .bind(id)
        .fetch_one(db)
        .await
        .expect("exists")
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn listing_shows_the_team_and_platform_templates(db: PgPool) {
    let t = TestApp::start(db.clone()).await;
    let alice = t.tenant("alice").await;
    let bob = t.tenant("bob").await;
    template(&db, alice.team_id, "nightly", "snapshot", None).await;
    template(&db, alice.team_id, "python-base", "base", None).await;
    template(&db, bob.team_id, "bobs", "snapshot", None).await;

    let all = list(&t, &alice, "").await;
    let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for name in ["minimal", "minimal-ubuntu", "nightly", "python-base"] {
        assert!(names.contains(&name), "{names:?}");
    }
    let ubuntu = all
        .iter()
        .find(|t| t.name == "minimal-ubuntu")
        .expect("platform");
    assert!(ubuntu.platform && ubuntu.protected);
    assert_eq!(ubuntu.kind, TemplateType::Base);
    let nightly = all.iter().find(|t| t.name == "nightly").expect("snapshot");
    assert!(!nightly.platform && !nightly.protected);
    assert_eq!(nightly.kind, TemplateType::Snapshot);
    assert_eq!(
        (nightly.vcpus, nightly.memory_mb, nightly.size_bytes),
        (2, 1024, 4096)
    );
    assert_eq!(
        nightly.metadata.get("source").map(String::as_str),
        Some("cl-1")
    );

    let snapshots = list(&t, &alice, "?type=snapshot").await;
    assert_eq!(
        snapshots
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["nightly"]
    );
    let bases = list(&t, &alice, "?type=base").await;
    assert!(bases.iter().all(|t| t.kind == TemplateType::Base) && bases.len() == 3);

    let resp = t
        .http
        .get(t.url("/v1/snapshots?type=image"))
        .bearer_auth(&alice.jwt)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_request");
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn only_the_teams_unprotected_templates_can_be_deleted(db: PgPool) {
    let t = TestApp::start(db.clone()).await;
    let alice = t.tenant("alice").await;
    let bob = t.tenant("bob").await;
    let base = template(&db, alice.team_id, "python-base", "base", None).await;
    let guarded = template(&db, alice.team_id, "guarded", "base", None).await;
    sqlx::query("UPDATE templates SET protected = true WHERE id = $1")
        .bind(guarded)
        .execute(&db)
        .await
        .expect("protect");
    let bobs = template(&db, bob.team_id, "bobs", "snapshot", None).await;

    let (status, body) = delete(&t, &alice, "nope").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = delete(&t, &alice, "bobs").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    assert!(exists(&db, bobs).await);
    for name in ["minimal-ubuntu", "minimal", "guarded"] {
        let (status, body) = delete(&t, &alice, name).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{name}"
        );
    }
    assert!(exists(&db, guarded).await);

    let (status, _) = delete(&t, &alice, "python-base").await;
    assert_eq!(status, 204);
    assert!(!exists(&db, base).await);
    // A retried DELETE finds it gone.
    assert_eq!(delete(&t, &alice, "python-base").await.0, 404);

    let (kind, resource): (String, String) = sqlx::query_as(
        "SELECT payload->>'event', payload->'resource'->>'id' FROM events WHERE team_id = $1",
    )
    .bind(alice.team_id)
    .fetch_one(&db)
    .await
    .expect("one event");
    assert_eq!(
        (kind.as_str(), resource.as_str()),
        ("template.snapshot.delete", "python-base")
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs WHERE team_id = $1 AND resource_type = 'snapshot' AND action = 'delete'",
    )
    .bind(alice.team_id)
    .fetch_one(&db)
    .await
    .expect("audit");
    assert_eq!(audited, 1);
}

type Requests = Arc<Mutex<Vec<pb::DeleteSnapshotRequest>>>;

/// An agent whose `DeleteSnapshot` records the request and answers `answer`.
async fn snapshot_agent(db: &PgPool, answer: Option<Code>) -> (FakeAgent, Requests) {
    let requests: Requests = Arc::default();
    let seen = requests.clone();
    let router = fake_agent::unary(
        Router::new(),
        "DeleteSnapshot",
        move |req: pb::DeleteSnapshotRequest| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("lock").push(req);
                match answer {
                    None => Ok(pb::DeleteSnapshotResponse {}),
                    Some(code) => Err(Error::new(code, "as the test wants")),
                }
            }
        },
    );
    (FakeAgent::start(db, router).await, requests)
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn a_snapshots_files_are_deleted_on_its_host_first(db: PgPool) {
    let t = TestApp::start(db.clone()).await;
    let alice = t.tenant("alice").await;

    let (agent, requests) = snapshot_agent(&db, None).await;
    let id = template(
        &db,
        alice.team_id,
        "nightly",
        "snapshot",
        Some(agent.host_id),
    )
    .await;
    assert_eq!(delete(&t, &alice, "nightly").await.0, 204);
    assert!(!exists(&db, id).await);
    {
        let seen = requests.lock().expect("lock");
        assert_eq!(seen.len(), 1);
        #[allow(deprecated)]
        let name = seen[0].name.clone();
        assert_eq!(
            (
                name.as_str(),
                seen[0].team_id.as_str(),
                seen[0].template_id.as_str()
            ),
            (
                "nightly",
                alice.team_id.to_string().as_str(),
                id.to_string().as_str()
            )
        );
    }

    // The host no longer has the files: fine.
    let (gone, _) = snapshot_agent(&db, Some(Code::NotFound)).await;
    let id = template(&db, alice.team_id, "weekly", "snapshot", Some(gone.host_id)).await;
    assert_eq!(delete(&t, &alice, "weekly").await.0, 204);
    assert!(!exists(&db, id).await);

    // The host fails: the row stays so the delete can be retried.
    let (broken, _) = snapshot_agent(&db, Some(Code::Internal)).await;
    let id = template(
        &db,
        alice.team_id,
        "monthly",
        "snapshot",
        Some(broken.host_id),
    )
    .await;
    let (status, body) = delete(&t, &alice, "monthly").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("agent_error"))
    );
    assert!(exists(&db, id).await);

    // The host is offline: the row goes, the host is not called.
    let (offline, calls) = snapshot_agent(&db, None).await;
    sqlx::query("UPDATE hosts SET status = 'unreachable' WHERE id = $1")
        .bind(offline.host_id)
        .execute(&db)
        .await
        .expect("offline");
    let id = template(
        &db,
        alice.team_id,
        "yearly",
        "snapshot",
        Some(offline.host_id),
    )
    .await;
    assert_eq!(delete(&t, &alice, "yearly").await.0, 204);
    assert!(!exists(&db, id).await);
    assert!(calls.lock().expect("lock").is_empty());
}

const SDK_SCRIPT: &str = r#"
import json
from wrenn import WrennClient
from wrenn.exceptions import WrennForbiddenError, WrennNotFoundError

client = WrennClient()
out = {"all": [t.model_dump(mode="json") for t in client.snapshots.list()],
       "snapshots": [t.name for t in client.snapshots.list(type="snapshot")]}
try:
    client.snapshots.delete("minimal-ubuntu")
except WrennForbiddenError as e:
    out["platform"] = e.code
try:
    client.snapshots.delete("nope")
except WrennNotFoundError as e:
    out["unknown"] = e.code
client.snapshots.delete("nightly")
out["after"] = [t.name for t in client.snapshots.list(type="snapshot")]
print(json.dumps(out))
"#;

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn the_python_sdk_lists_and_deletes(db: PgPool) {
    let Ok(python) = std::env::var("WRENN_SDK_PYTHON") else {
        eprintln!("SKIP the_python_sdk_lists_and_deletes: WRENN_SDK_PYTHON is not set");
        return;
    };
    let t = TestApp::start(db.clone()).await;
    let alice = t.tenant("alice").await;
    template(&db, alice.team_id, "nightly", "snapshot", None).await;
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(python)
            .arg("-c")
            .arg(SDK_SCRIPT)
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
    let all = v["all"].as_array().expect("array");
    assert_eq!(all.len(), 3);
    let ubuntu = all
        .iter()
        .find(|t| t["name"] == "minimal-ubuntu")
        .expect("platform");
    assert_eq!(
        (ubuntu["platform"].as_bool(), ubuntu["protected"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(ubuntu["type"], "base");
    assert!(
        ubuntu["created_at"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );
    assert_eq!(v["snapshots"], serde_json::json!(["nightly"]));
    assert_eq!(v["platform"], "forbidden");
    assert_eq!(v["unknown"], "not_found");
    assert_eq!(v["after"], serde_json::json!([]));
}
