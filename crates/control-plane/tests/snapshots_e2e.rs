//! Pause, wake and snapshots end to end: control plane + PostgreSQL + a registered host agent
//! with real QEMU guests. A paused capsule is woken by exec, file reads and port-proxy traffic
//! with its memory and disk intact; an idle capsule is paused by its host and woken by traffic;
//! a snapshot template starts capsules that have the source's files and running processes.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use support::Tenant;
use support::platform::Platform;
use wrenn_testing::require_vm;

/// A guest web server on port 8000 serving `/tmp/site` (index.html = `page`), started in the
/// background with tag `web`; returns once the port proxy reaches it.
async fn serve(p: &Platform, who: &Tenant, id: &str, page: &str) {
    p.sh(
        who,
        id,
        &format!("mkdir -p /tmp/site && echo {page} > /tmp/site/index.html"),
    )
    .await;
    let (status, body) = p
        .api(
            who,
            Method::POST,
            &format!("/v1/capsules/{id}/exec"),
            Some(json!({
                "cmd": "/bin/sh",
                "args": ["-c", "cd /tmp/site && exec python3 -m http.server 8000 --bind 127.0.0.1"],
                "background": true,
                "tag": "web"
            })),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    for _ in 0..150 {
        let (status, text) = p.proxy_get(id, 8000, "/").await;
        if status == 200 {
            assert_eq!(text.trim(), page);
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the guest web server never answered through the proxy");
}

/// Pauses through the API and waits until the capsule is `paused`.
async fn pause(p: &Platform, who: &Tenant, id: &str) {
    let (status, body) = p
        .api(who, Method::POST, &format!("/v1/capsules/{id}/pause"), None)
        .await;
    assert_eq!(status, 200, "{body}\nagent log:\n{}", p.agent.log_tail());
    assert!(
        body["status"] == "paused" || body["status"] == "pausing",
        "{body}"
    );
    p.wait_capsule_status(who, id, "paused").await;
}

/// The team's events of `kind` about capsule `id`.
async fn events(p: &Platform, who: &Tenant, kind: &str, id: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT payload FROM events WHERE team_id = $1 AND payload->>'event' = $2
            AND payload->'resource'->>'id' = $3 ORDER BY id",
    )
    .bind(who.team_id)
    .bind(kind)
    .bind(id)
    .fetch_all(&p.cp.app.db)
    .await
    .expect("events")
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn a_paused_capsule_wakes_for_exec_files_and_proxy_traffic(db: sqlx::PgPool) {
    require_vm!();
    let p = Platform::start(db).await;
    let alice = p.cp.tenant("alice").await;
    let id = p.create_capsule(&alice).await;
    p.sh(&alice, &id, "echo kept-across-pause > /root/note.txt")
        .await;
    serve(&p, &alice, &id, "hello-after-pause").await;

    // Pause: the capsule reads back as paused, its metrics were kept, ping does not wake it.
    pause(&p, &alice, &id).await;
    let (status, _) = p
        .api(
            &alice,
            Method::GET,
            &format!("/v1/capsules/{id}/metrics"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = p
        .api(
            &alice,
            Method::POST,
            &format!("/v1/capsules/{id}/ping"),
            None,
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("invalid_state"))
    );

    // Exec wakes it: three at once, one resume, everyone gets the file written before.
    let exec_path = format!("/v1/capsules/{id}/exec");
    let exec = || {
        p.api(
            &alice,
            Method::POST,
            &exec_path,
            Some(json!({"cmd": "/bin/cat", "args": ["/root/note.txt"]})),
        )
    };
    let results = futures::future::join_all([exec(), exec(), exec()]).await;
    for (status, body) in results {
        assert_eq!(
            (status, body["stdout"].as_str()),
            (200, Some("kept-across-pause\n")),
            "{body}\nagent log:\n{}",
            p.agent.log_tail()
        );
    }
    assert_eq!(p.capsule(&alice, &id).await["status"], "running");
    let resumed = events(&p, &alice, "capsule.resume", &id).await;
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0]["metadata"]["reason"], "wake");

    // A file read wakes it too.
    pause(&p, &alice, &id).await;
    let resp =
        p.cp.http
            .post(p.cp.url(&format!("/v1/capsules/{id}/files/read")))
            .header("X-API-Key", &alice.api_key)
            .json(&json!({"path": "/root/note.txt"}))
            .send()
            .await
            .expect("read");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "kept-across-pause\n");

    // And so does traffic to its URL: the guest server started before the pauses still serves.
    pause(&p, &alice, &id).await;
    let (status, page) = p.proxy_get(&id, 8000, "/").await;
    assert_eq!(
        (status, page.trim()),
        (200, "hello-after-pause"),
        "agent log:\n{}",
        p.agent.log_tail()
    );
    assert_eq!(p.capsule(&alice, &id).await["status"], "running");
    assert_eq!(events(&p, &alice, "capsule.resume", &id).await.len(), 3);

    let (status, _) = p
        .api(&alice, Method::DELETE, &format!("/v1/capsules/{id}"), None)
        .await;
    assert_eq!(status, 204);
}

/// An idle capsule with an inactivity timeout is paused by its host (activity keeps it running
/// meanwhile); the control plane learns why, and traffic to its URL wakes it.
#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn an_idle_capsule_is_paused_and_traffic_wakes_it(db: sqlx::PgPool) {
    require_vm!();
    let p = Platform::start(db).await;
    let alice = p.cp.tenant("alice").await;
    let id = p
        .create_capsule_with(&alice, json!({"timeout_sec": 6}))
        .await;
    assert_eq!(p.capsule(&alice, &id).await["timeout_sec"], 6);
    serve(&p, &alice, &id, "served-after-idle").await;
    // Activity for twice the timeout: file operations count, not only exec.
    for _ in 0..6 {
        let (status, _) = p
            .api(
                &alice,
                Method::POST,
                &format!("/v1/capsules/{id}/files/list"),
                Some(json!({"path": "/", "depth": 1})),
            )
            .await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(p.capsule(&alice, &id).await["status"], "running");
    // Then idle: paused, by the system, for the timeout.
    p.wait_capsule_status(&alice, &id, "paused").await;
    let paused = events(&p, &alice, "capsule.pause", &id).await;
    assert!(
        paused
            .iter()
            .any(|e| e["metadata"]["reason"] == "ttl_expired" && e["actor"]["type"] == "system"),
        "{paused:?}"
    );
    let (status, page) = p.proxy_get(&id, 8000, "/").await;
    assert_eq!(
        (status, page.trim()),
        (200, "served-after-idle"),
        "agent log:\n{}",
        p.agent.log_tail()
    );
    assert_eq!(p.capsule(&alice, &id).await["status"], "running");
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn a_snapshot_starts_capsules_with_its_files_and_processes(db: sqlx::PgPool) {
    require_vm!();
    let p = Platform::start(db).await;
    let alice = p.cp.tenant("alice").await;
    let source = p.create_capsule(&alice).await;
    p.sh(&alice, &source, "echo from-the-source > /root/seed.txt")
        .await;
    serve(&p, &alice, &source, "served-by-the-snapshot").await;

    let (status, template) = p
        .api(
            &alice,
            Method::POST,
            "/v1/snapshots",
            Some(json!({"sandbox_id": source, "name": "golden"})),
        )
        .await;
    assert_eq!(
        status,
        201,
        "{template}\nagent log:\n{}",
        p.agent.log_tail()
    );
    assert_eq!(
        (
            &template["name"],
            &template["type"],
            &template["vcpus"],
            &template["memory_mb"]
        ),
        (&json!("golden"), &json!("snapshot"), &json!(1), &json!(512))
    );
    assert!(
        template["size_bytes"].as_i64().is_some_and(|n| n > 0),
        "{template}"
    );
    // The source carries on as it was.
    assert_eq!(p.capsule(&alice, &source).await["status"], "running");
    assert_eq!(
        p.sh(&alice, &source, "cat /root/seed.txt").await,
        "from-the-source\n"
    );

    // Two capsules from it: each has the file and the web server that ran before the snapshot.
    let mut clones = Vec::new();
    for _ in 0..2 {
        let clone = p
            .create_capsule_with(&alice, json!({"template": "golden"}))
            .await;
        let info = p.capsule(&alice, &clone).await;
        assert_eq!(
            (&info["template"], &info["vcpus"], &info["memory_mb"]),
            (&json!("golden"), &json!(1), &json!(512))
        );
        clones.push(clone);
    }
    for clone in &clones {
        assert_eq!(
            p.sh(&alice, clone, "cat /root/seed.txt").await,
            "from-the-source\n"
        );
        let (status, page) = p.proxy_get(clone, 8000, "/").await;
        assert_eq!((status, page.trim()), (200, "served-by-the-snapshot"));
        let (_, processes) = p
            .api(
                &alice,
                Method::GET,
                &format!("/v1/capsules/{clone}/processes"),
                None,
            )
            .await;
        assert!(
            processes["processes"]
                .as_array()
                .is_some_and(|list| list.iter().any(|p| p["tag"] == "web")),
            "{processes}"
        );
    }
    // The clones are independent of each other.
    p.sh(&alice, &clones[0], "echo mine > /root/only-first")
        .await;
    assert_eq!(
        p.sh(
            &alice,
            &clones[1],
            "test -e /root/only-first && echo yes || echo no"
        )
        .await,
        "no\n"
    );

    // Overwrite from the source once it is paused: it stays paused.
    pause(&p, &alice, &source).await;
    let (status, body) = p
        .api(
            &alice,
            Method::POST,
            "/v1/snapshots?overwrite=true",
            Some(json!({"sandbox_id": source, "name": "golden"})),
        )
        .await;
    assert_eq!(status, 201, "{body}\nagent log:\n{}", p.agent.log_tail());
    assert_eq!(p.capsule(&alice, &source).await["status"], "paused");

    // Delete it: gone from the list, and nothing more can start from it.
    let (status, _) = p
        .api(&alice, Method::DELETE, "/v1/snapshots/golden", None)
        .await;
    assert_eq!(status, 204);
    let (_, list) = p
        .api(&alice, Method::GET, "/v1/snapshots?type=snapshot", None)
        .await;
    assert_eq!(list, json!([]));
    let (status, _) = p
        .api(
            &alice,
            Method::POST,
            "/v1/capsules",
            Some(json!({"template": "golden"})),
        )
        .await;
    assert_eq!(status, 404);
    for id in clones.iter().chain([&source]) {
        let (status, _) = p
            .api(&alice, Method::DELETE, &format!("/v1/capsules/{id}"), None)
            .await;
        assert_eq!(status, 204);
    }
}
