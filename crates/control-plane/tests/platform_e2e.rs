//! End to end through the real platform: control plane + PostgreSQL + a registered host agent
//! booting QEMU guests. Capsule lifecycle, tenant isolation, the port proxy, and an agent that
//! crashes and comes back. (Pause, inactivity and snapshots: `snapshots_e2e.rs`.)

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::platform::Platform;
use wrenn_testing::require_vm;

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn capsule_lifecycle_isolation_proxy_and_agent_crash(db: sqlx::PgPool) {
    require_vm!();
    let mut p = Platform::start(db).await;
    let alice = p.cp.tenant("alice").await;
    let bob = p.cp.tenant("bob").await;
    let http = p.cp.http.clone();

    // Create: 201 with a running capsule, system metadata filled in.
    let id = p.create_capsule(&alice).await;
    let capsule = p.capsule(&alice, &id).await;
    assert_eq!(capsule["status"], "running");
    assert_eq!(capsule["template"], "minimal-ubuntu");
    assert!(capsule["metadata"]["envd_version"].is_string(), "{capsule}");
    assert!(
        capsule["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{capsule}"
    );

    // Bob cannot see, use or destroy Alice's capsule.
    for (method, path) in [
        ("GET", format!("/v1/capsules/{id}")),
        ("DELETE", format!("/v1/capsules/{id}")),
        ("POST", format!("/v1/capsules/{id}/ping")),
        ("POST", format!("/v1/capsules/{id}/pause")),
    ] {
        let resp = http
            .request(method.parse().expect("method"), p.cp.url(&path))
            .header("X-API-Key", &bob.api_key)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 404, "{method} {path} as another team");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let bobs: Value = http
        .get(p.cp.url("/v1/capsules"))
        .header("X-API-Key", &bob.api_key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(bobs, json!([]));
    let alices: Value = http
        .get(p.cp.url("/v1/capsules"))
        .header("X-API-Key", &alice.api_key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(alices.as_array().map(Vec::len), Some(1));

    // Ping resets the timer.
    let ping = http
        .post(p.cp.url(&format!("/v1/capsules/{id}/ping")))
        .header("X-API-Key", &alice.api_key)
        .send()
        .await
        .expect("ping");
    assert_eq!(ping.status(), 204);

    // The port proxy: a web server in the guest, reached by Host header on the API listener.
    let serve = http
        .post(p.cp.url(&format!("/v1/capsules/{id}/exec")))
        .header("X-API-Key", &alice.api_key)
        .json(&json!({
            "cmd": "/bin/sh",
            "args": ["-c", "mkdir -p /tmp/site/sub && echo hello-from-guest > /tmp/site/index.html && cd /tmp/site && exec python3 -m http.server 8000 --bind 127.0.0.1"],
            "background": true
        }))
        .send()
        .await
        .expect("start server");
    assert_eq!(serve.status(), 202, "{:?}", serve.text().await);
    let proxy_host = format!("8000-{id}.localhost");
    let mut page = String::new();
    for _ in 0..100 {
        let resp = http
            .get(p.cp.url("/"))
            .header("Host", &proxy_host)
            .send()
            .await
            .expect("proxy");
        if resp.status() == 200 {
            page = resp.text().await.expect("body");
            break;
        }
        assert!(
            resp.status().is_server_error(),
            "before the server listens: 5xx, got {}",
            resp.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(page.trim(), "hello-from-guest");
    // A directory without its trailing slash redirects; the Location stays on the proxy host.
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(p.cp.url("/sub"))
        .header("Host", &proxy_host)
        .send()
        .await
        .expect("redirect");
    assert_eq!(redirect.status(), 301);
    assert_eq!(redirect.headers()["location"], "/sub/");
    // Unknown capsule → 404 from the proxy.
    let unknown = http
        .get(p.cp.url("/"))
        .header("Host", "8000-cl-0000000000000000000000000.localhost")
        .send()
        .await
        .expect("proxy");
    assert_eq!(unknown.status(), 404);

    // The agent crashes: the host goes unreachable and the capsule missing; when the agent comes
    // back it adopts the still-running VM and the capsule is running again, with its state.
    p.agent.crash();
    p.wait_host_status("unreachable").await;
    p.wait_capsule_status(&alice, &id, "missing").await;
    p.restart_agent().await;
    p.wait_host_status("online").await;
    p.wait_capsule_status(&alice, &id, "running").await;
    let exec: Value = http
        .post(p.cp.url(&format!("/v1/capsules/{id}/exec")))
        .header("X-API-Key", &alice.api_key)
        .json(&json!({"cmd": "/bin/sh", "args": ["-c", "cat /tmp/site/index.html"]}))
        .send()
        .await
        .expect("exec")
        .json()
        .await
        .expect("json");
    assert_eq!(exec["stdout"], "hello-from-guest\n", "{exec}");

    // Destroy: 204, idempotent, and the capsule stays readable as stopped.
    for _ in 0..2 {
        let resp = http
            .delete(p.cp.url(&format!("/v1/capsules/{id}")))
            .header("X-API-Key", &alice.api_key)
            .send()
            .await
            .expect("destroy");
        assert_eq!(resp.status(), 204);
    }
    assert_eq!(p.capsule(&alice, &id).await["status"], "stopped");
    let agent_list: Value = http
        .get(p.cp.url("/v1/capsules"))
        .header("X-API-Key", &alice.api_key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(agent_list, json!([]));
}
