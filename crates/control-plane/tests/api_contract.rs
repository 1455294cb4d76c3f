//! Every route refuses the wrong credentials, and bad input gets the reference's error codes.
//!
//! The operations come from the served OpenAPI document (which `tests/openapi.rs` keeps equal to
//! the router), so a new route is covered without touching this file. No route may treat an
//! `Upgrade` header as a reason to skip authentication (the WebSocket bypass the seeds warn of).

mod support;

use serde_json::{Value, json};
use support::TestApp;
use uuid::Uuid;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// A concrete URL for a templated path (`{id}` → a well-formed but unknown id).
fn concrete(path: &str) -> String {
    path.replace("{id}", "cl-0000000000000000000000000")
        .replace("{pid}", "1")
        .replace("{selector}", "1")
        .replace("{name}", "nope")
        .replace("{tag}", "nope")
        .replace("{uid}", "usr-0000000000000000000000000")
}

/// `(method, path, schemes)` of every operation that declares a security requirement.
fn secured_operations(spec: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let schemes: Vec<String> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_object())
                .flat_map(|r| r.keys().cloned())
                .collect();
            if !schemes.is_empty() {
                ops.push((method.to_string(), path.clone(), schemes));
            }
        }
    }
    ops
}

async fn send(t: &TestApp, method: &str, url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = t
        .http
        .request(method.to_uppercase().parse().expect("method"), t.url(url));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if matches!(method, "post" | "put" | "patch") {
        req = req.json(&json!({}));
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn every_secured_route_refuses_missing_wrong_and_misplaced_credentials(db: sqlx::PgPool) {
    let t = TestApp::start(db).await;
    let spec: Value = t
        .http
        .get(t.url("/openapi.json"))
        .send()
        .await
        .expect("spec")
        .json()
        .await
        .expect("json");
    let tenant = t.tenant("auth").await;
    let ops = secured_operations(&spec);
    assert!(
        ops.len() > 50,
        "only {} secured operations found",
        ops.len()
    );
    let mut failures = Vec::new();
    for (method, path, schemes) in &ops {
        let url = concrete(path);
        // The same path under the /api prefix the SDK's production base URL carries.
        for prefix in ["", "/api"] {
            let url = format!("{prefix}{url}");
            let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
                ("no credentials", vec![]),
                (
                    "no credentials, WebSocket upgrade headers",
                    vec![
                        ("Connection", "upgrade"),
                        ("Upgrade", "websocket"),
                        ("Sec-WebSocket-Version", "13"),
                        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                    ],
                ),
                (
                    "a wrong API key",
                    vec![("X-API-Key", "wrn_00000000000000000000000000000000")],
                ),
                (
                    "a forged bearer token",
                    vec![("Authorization", "Bearer not.a.jwt")],
                ),
                ("a host token of nobody", vec![("X-Host-Token", "x.y.z")]),
            ];
            for (case, headers) in cases {
                let (status, body) = send(&t, method, &url, &headers).await;
                // A WebSocket route may complete the upgrade to authenticate by first message,
                // and only then: a 101 must carry no data before that message (checked in the
                // capsule_ops tests); anything else must be a 401 in the error shape.
                let websocket = path.ends_with("/stream") || path.ends_with("/pty");
                if websocket && status == 101 && case.contains("upgrade") {
                    continue;
                }
                // Without credentials a WebSocket route may first say the request is not an
                // upgrade at all (400): refused either way, and nothing is revealed.
                if websocket
                    && !case.contains("upgrade")
                    && !headers
                        .iter()
                        .any(|(k, _)| *k == "X-API-Key" || *k == "Authorization")
                    && status == 400
                    && body["error"]["code"] == "invalid_request"
                {
                    continue;
                }
                if status != 401 || body["error"]["code"] != "unauthorized" {
                    failures.push(format!("{method} {url} with {case}: {status} {body}"));
                }
            }
            // A JWT-only or admin route must refuse a valid API key.
            if !schemes.iter().any(|s| s == "api_key") {
                let (status, body) =
                    send(&t, method, &url, &[("X-API-Key", &tenant.api_key)]).await;
                if !(status == 401 || status == 403) || body["error"]["code"].is_null() {
                    failures.push(format!("{method} {url} with an API key: {status} {body}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} refusals missing:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Sends `method path` with the tenant's key and an optional raw JSON body; asserts the status
/// and error code of the answer (and that the message says something).
async fn expect_error(
    t: &TestApp,
    key: &str,
    (method, path, body): (&str, &str, Option<&[u8]>),
    status: u16,
    code: &str,
) {
    let mut req = t
        .http
        .request(method.parse().expect("method"), t.url(path))
        .header("X-API-Key", key);
    if let Some(body) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(body.to_vec());
    }
    let resp = req.send().await.expect("send");
    let got = resp.status().as_u16();
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_eq!(
        (got, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{method} {path}: {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn bad_input_gets_the_reference_error_codes(db: sqlx::PgPool) {
    let t = TestApp::start(db).await;
    let tenant = t.tenant("input").await;
    let key = tenant.api_key.as_str();
    let create = |body: &'static [u8]| ("POST", "/v1/capsules", Some(body));

    // Malformed JSON, wrong types, out-of-range values, reserved or unsafe names.
    for body in [
        &b"{not json"[..],
        br#"{"vcpus":"two"}"#,
        br#"{"memory_mb":-5}"#,
        br#"{"timeout_sec":-1}"#,
        br#"{"metadata":{"kernel_version":"x"}}"#,
        br#"{"template":"../etc"}"#,
    ] {
        expect_error(&t, key, create(body), 400, "invalid_request").await;
    }
    expect_error(
        &t,
        key,
        create(br#"{"template":"no-such-template"}"#),
        404,
        "not_found",
    )
    .await;
    // No host is registered: no capacity is `host_unavailable`, never a 500.
    expect_error(&t, key, create(b"{}"), 503, "host_unavailable").await;
    // An oversized body.
    let big = format!(r#"{{"template":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
    expect_error(
        &t,
        key,
        ("POST", "/v1/capsules", Some(big.as_bytes())),
        413,
        "too_large",
    )
    .await;

    // Unknown ids: malformed and well-formed alike are 404.
    for id in [
        "cl-0000000000000000000000000",
        "nope",
        "cl-..%2F..%2Fetc",
        "cl-ZZZ",
    ] {
        expect_error(
            &t,
            key,
            ("GET", &format!("/v1/capsules/{id}"), None),
            404,
            "not_found",
        )
        .await;
        let exec = format!("/v1/capsules/{id}/exec");
        expect_error(
            &t,
            key,
            ("POST", &exec, Some(br#"{"cmd":"true"}"#)),
            404,
            "not_found",
        )
        .await;
    }

    // Bad states: a stopped capsule cannot be paused, resumed, pinged or exec'd; a running one
    // cannot be resumed. Destroying a stopped one is idempotent.
    let stopped = Uuid::new_v4();
    let running = Uuid::new_v4();
    for (id, status) in [(stopped, "stopped"), (running, "running")] {
        sqlx::query("INSERT INTO sandboxes (id, team_id, status) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(tenant.team_id)
            .bind(status)
            .execute(&t.app.db)
            .await
            .expect("seed");
    }
    let stopped = wrenn_control_plane::ids::capsule(stopped);
    let running = wrenn_control_plane::ids::capsule(running);
    for action in ["pause", "resume", "ping"] {
        let path = format!("/v1/capsules/{stopped}/{action}");
        expect_error(&t, key, ("POST", &path, None), 409, "invalid_state").await;
    }
    let path = format!("/v1/capsules/{running}/resume");
    expect_error(&t, key, ("POST", &path, None), 409, "invalid_state").await;
    let path = format!("/v1/capsules/{stopped}/exec");
    expect_error(
        &t,
        key,
        ("POST", &path, Some(br#"{"cmd":"true"}"#)),
        409,
        "invalid_state",
    )
    .await;
    let get = |path: String| t.http.get(t.url(&path)).header("X-API-Key", key).send();
    let resp = t
        .http
        .delete(t.url(&format!("/v1/capsules/{stopped}")))
        .header("X-API-Key", key)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 204);
    let got: Value = get(format!("/v1/capsules/{stopped}"))
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(got["status"], "stopped");
    // Stopped capsules are not listed; the running one is.
    let list: Value = get("/v1/capsules".into())
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(ids, vec![running.as_str()]);
    // A wrong method on a known route is an error in the API's shape, not a bare 405.
    expect_error(
        &t,
        key,
        ("PUT", "/v1/capsules", None),
        400,
        "invalid_request",
    )
    .await;
}
