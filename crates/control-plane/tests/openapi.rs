//! The OpenAPI document stays honest: every route the router serves under `/v1` is in it (read
//! from the `.route(...)` calls in `src/api/`), every operation in it is served, every security
//! scheme it names is defined, and `/docs` works without anything from outside.

mod support;

use serde_json::Value;
use std::collections::BTreeSet;
use support::TestApp;

/// Routes deliberately left out of the document, as `(METHOD, /v1/path)`. Keep this empty unless
/// a route truly cannot be described; WebSocket routes are documented as GET + 101.
const UNDOCUMENTED: &[(&str, &str)] = &[];

const METHODS: [&str; 7] = ["get", "post", "put", "delete", "patch", "head", "options"];

/// `(method, path)` of every `.route("/path", get(..).post(..))` in `src/api/*.rs` but the root
/// module and the docs module (their routes are outside `/v1`).
fn routes_in_source() -> BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("src/api") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.ends_with(".rs") || name == "mod.rs" || name == "docs.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source");
        assert!(
            !text.contains(".nest("),
            "{name} nests routes; teach routes_in_source the prefix"
        );
        for (pos, _) in text.match_indices(".route(") {
            let call = balanced_call(&text[pos + ".route".len()..]);
            let route = call
                .split('"')
                .nth(1)
                .unwrap_or_else(|| panic!("{name}: a .route( without a path literal"));
            let mut found = false;
            for method in METHODS {
                if has_call(call, method) {
                    routes.insert((method.to_string(), format!("/v1{route}")));
                    found = true;
                }
            }
            assert!(found, "{name}: no method router found for {route}");
        }
    }
    routes
}

/// The text of a parenthesised call starting at `s` (which begins with `(`).
fn balanced_call(s: &str) -> &str {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &s[..=i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced route call");
}

/// Whether `text` calls `name(` as a word (so `delete(` but not `undelete(`).
fn has_call(text: &str, name: &str) -> bool {
    let pattern = format!("{name}(");
    text.match_indices(&pattern).any(|(i, _)| {
        text[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    })
}

async fn spec_json(t: &TestApp) -> Value {
    let resp = t
        .http
        .get(t.url("/openapi.json"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("the spec is JSON")
}

fn operations(spec: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                ops.insert((method.to_string(), path.clone()));
            }
        }
    }
    ops
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn the_spec_documents_every_route_and_only_served_ones(db: sqlx::PgPool) {
    let t = TestApp::start(db).await;
    let spec = spec_json(&t).await;
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    let documented = operations(&spec);
    assert!(documented.contains(&("post".to_string(), "/v1/capsules".to_string())));
    assert!(documented.contains(&("get".to_string(), "/v1/events/stream".to_string())));

    let served = routes_in_source();
    assert!(
        served.len() > 20,
        "the route scan found too little: {served:?}"
    );
    let undocumented: Vec<_> = served
        .iter()
        .filter(|(m, p)| !documented.contains(&(m.clone(), p.clone())))
        .filter(|(m, p)| !UNDOCUMENTED.contains(&(m.to_uppercase().as_str(), p.as_str())))
        .collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the OpenAPI document (annotate the handler with #[utoipa::path] and \
         list it in src/api/docs.rs): {undocumented:?}"
    );

    // And everything documented is really served: a request (without credentials) never falls
    // through to the unknown-route or wrong-method answer.
    for (method, path) in &documented {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x1" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let resp = t
            .http
            .request(method.clone(), t.url(&concrete))
            .send()
            .await
            .expect("send");
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message != "no such route" && message != "method not allowed on this route",
            "{method} {path} is documented but not served ({status}: {body})"
        );
    }
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn security_schemes_are_defined_and_used_consistently(db: sqlx::PgPool) {
    let t = TestApp::start(db).await;
    let spec = spec_json(&t).await;
    let schemes = &spec["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["type"], "apiKey");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["bearer"]["bearerFormat"], "JWT");
    assert_eq!(schemes["host_token"]["name"], "X-Host-Token");
    let mut unknown = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            for requirement in op["security"].as_array().into_iter().flatten() {
                for name in requirement.as_object().expect("requirement").keys() {
                    if schemes.get(name).is_none() {
                        unknown.push(format!("{method} {path}: {name}"));
                    }
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "operations name security schemes the document does not define (use api_key, bearer or \
         host_token): {unknown:#?}"
    );
    // The SDK's routes accept an API key.
    for path in [
        "/v1/capsules",
        "/v1/capsules/stats",
        "/v1/snapshots",
        "/v1/events/stream",
    ] {
        let security = &spec["paths"][path]["get"]["security"];
        assert!(
            security
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r.get("api_key").is_some()),
            "{path}: {security}"
        );
    }
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn yaml_matches_json_and_schemas_are_included(db: sqlx::PgPool) {
    let t = TestApp::start(db).await;
    let json = spec_json(&t).await;
    let resp = t
        .http
        .get(t.url("/openapi.yaml"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("yaml"))
    );
    let yaml: Value =
        serde_norway::from_str(&resp.text().await.expect("text")).expect("the spec is YAML");
    assert_eq!(yaml, json);
    let schemas = &json["components"]["schemas"];
    for name in [
        "Capsule",
        "CapsuleStats",
        "UsageResponse",
        "CapsuleMetrics",
        "Template",
        "Event",
        "ErrorBody",
    ] {
        assert!(schemas.get(name).is_some(), "schema {name} missing");
    }
    // The SDK's closed enums are spelled as it expects.
    let kinds = &schemas["EventKind"]["enum"];
    assert!(
        kinds
            .as_array()
            .is_some_and(|k| k.len() == 10 && k.contains(&Value::from("capsule.state.changed")))
    );
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn docs_page_is_self_contained(db: sqlx::PgPool) {
    let t = TestApp::start(db).await;
    // `/docs` redirects to `/docs/` so the page's relative asset links resolve.
    let resp = t.http.get(t.url("/docs")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.url().path(), "/docs/");
    let html = resp.text().await.expect("html");
    assert!(html.contains("swagger-ui"), "{html}");
    for tag in html
        .split("<script")
        .skip(1)
        .chain(html.split("<link").skip(1))
    {
        let tag = tag.split('>').next().unwrap_or_default();
        assert!(
            !tag.contains("http://") && !tag.contains("https://") && !tag.contains("src=\"//"),
            "the page loads something from elsewhere: {tag}"
        );
    }
    for asset in [
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "swagger-initializer.js",
    ] {
        let resp = t
            .http
            .get(t.url(&format!("/docs/{asset}")))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200, "{asset}");
        let body = resp.text().await.expect("asset");
        assert!(body.len() > 100, "{asset}");
        if asset == "swagger-initializer.js" {
            assert!(body.contains("/openapi.json"), "{body}");
        }
    }
}

#[test]
fn the_route_scan_reads_method_routers() {
    let call = balanced_call(r#"("/x/{id}", get(a).delete(b).layer(DefaultBodyLimit::max(3)))"#);
    assert!(call.ends_with(")))"));
    assert!(has_call(call, "get") && has_call(call, "delete"));
    assert!(!has_call(call, "post") && !has_call("undelete(x)", "delete"));
    assert!(has_call("axum::routing::delete(kill)", "delete"));
}
