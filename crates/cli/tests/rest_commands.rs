//! The REST commands against an in-test control plane: the exact requests they send (paths,
//! bodies, headers) and what they print.

mod support;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use support::{TEST_KEY, TestServer, reject_bad_key, wrenn};

#[derive(Debug, Default)]
struct Fake {
    create_bodies: Vec<serde_json::Value>,
    polls: usize,
    files: BTreeMap<String, Vec<u8>>,
    upload_headers: Vec<HeaderMap>,
    logs_queries: Vec<HashMap<String, String>>,
    api_key_requests: Vec<(Option<String>, serde_json::Value)>,
    /// `POST /v1/snapshots`: the query string and the body.
    snapshot_requests: Vec<(Option<String>, serde_json::Value)>,
    snapshot_list_queries: Vec<HashMap<String, String>>,
    snapshot_deletes: Vec<String>,
}

type Shared = Arc<Mutex<Fake>>;

fn capsule(id: &str, status: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "status": status, "template": "minimal-ubuntu", "vcpus": 2, "memory_mb": 512,
        "timeout_sec": 0, "created_at": "2026-01-02T03:04:05Z",
        "last_updated": "2026-01-02T03:04:05Z", "disk_size_mb": 4096, "metadata": {}
    })
}

fn not_found(what: &str) -> Response {
    let body =
        serde_json::json!({"error": {"code": "not_found", "message": format!("{what} not found")}});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn create(
    State(fake): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    if let Some(rejection) = reject_bad_key(&headers) {
        return rejection;
    }
    fake.lock().expect("lock").create_bodies.push(body);
    (StatusCode::CREATED, Json(capsule("cl-new", "starting"))).into_response()
}

async fn list(headers: HeaderMap) -> Response {
    if let Some(rejection) = reject_bad_key(&headers) {
        return rejection;
    }
    Json(serde_json::json!([
        capsule("cl-one", "running"),
        capsule("cl-two", "paused")
    ]))
    .into_response()
}

/// `cl-new` is `starting` on the first poll and `running` afterwards.
async fn get_capsule(State(fake): State<Shared>, Path(id): Path<String>) -> Response {
    if id != "cl-new" {
        return not_found(&format!("capsule {id}"));
    }
    let mut fake = fake.lock().expect("lock");
    fake.polls += 1;
    let status = if fake.polls < 2 {
        "starting"
    } else {
        "running"
    };
    Json(capsule(&id, status)).into_response()
}

/// The SDK sends bodyless POSTs without a content type; so must we.
async fn pause(Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    if headers.contains_key(header::CONTENT_TYPE) || !body.is_empty() {
        return (StatusCode::BAD_REQUEST, "pause takes no body").into_response();
    }
    Json(capsule(&id, "paused")).into_response()
}

async fn destroy(Path(id): Path<String>) -> Response {
    match id.as_str() {
        "cl-new" => StatusCode::NO_CONTENT.into_response(),
        _ => not_found(&format!("capsule {id}")),
    }
}

/// Parses the multipart body and insists on the SDK's part order: `path` first, then `file`.
async fn stream_write(
    State(fake): State<Shared>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    let mut path = None;
    let mut content = None;
    while let Ok(Some(field)) = form.next_field().await {
        match (field.name(), &path) {
            (Some("path"), None) => path = field.text().await.ok(),
            (Some("file"), Some(_)) => content = field.bytes().await.ok(),
            _ => return (StatusCode::BAD_REQUEST, "unexpected part").into_response(),
        }
    }
    let (Some(path), Some(content)) = (path, content) else {
        return (StatusCode::BAD_REQUEST, "missing part").into_response();
    };
    let mut fake = fake.lock().expect("lock");
    fake.files.insert(path, content.to_vec());
    fake.upload_headers.push(headers);
    StatusCode::NO_CONTENT.into_response()
}

/// Streams the stored file in 64 KiB chunks (no Content-Length).
async fn stream_read(State(fake): State<Shared>, Json(body): Json<serde_json::Value>) -> Response {
    let path = body["path"].as_str().unwrap_or_default().to_owned();
    let Some(content) = fake.lock().expect("lock").files.get(&path).cloned() else {
        return not_found(&format!("file {path}"));
    };
    let chunks: Vec<Result<Bytes, std::io::Error>> = content
        .chunks(64 * 1024)
        .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
        .collect();
    Body::from_stream(futures::stream::iter(chunks)).into_response()
}

async fn logs(
    State(fake): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    fake.lock().expect("lock").logs_queries.push(query);
    Json(serde_json::json!({"lines": ["first line", "second line"]})).into_response()
}

async fn login(Json(body): Json<serde_json::Value>) -> Response {
    if body != serde_json::json!({"email": "a@example.com", "password": "s3cret pass"}) {
        let error = serde_json::json!({"error": {"code": "unauthorized", "message": "wrong email or password"}});
        return (StatusCode::UNAUTHORIZED, Json(error)).into_response();
    }
    Json(serde_json::json!({
        "token": "jwt-123", "user_id": "usr-1", "team_id": "team-1", "email": "a@example.com", "name": "A"
    }))
    .into_response()
}

async fn create_api_key(
    State(fake): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    fake.lock()
        .expect("lock")
        .api_key_requests
        .push((authorization, body));
    (
        StatusCode::CREATED,
        Json(serde_json::json!({
            "id": "key-1", "team_id": "team-1", "name": "cli", "key_prefix": "wrn_test",
            "created_at": "2026-01-02T03:04:05Z", "key": TEST_KEY
        })),
    )
        .into_response()
}

fn template(name: &str, kind: &str, platform: bool) -> serde_json::Value {
    serde_json::json!({
        "name": name, "type": kind, "vcpus": 1, "memory_mb": 512, "size_bytes": 1536,
        "created_at": "2026-01-02T03:04:05Z", "platform": platform, "protected": platform,
        "metadata": {}
    })
}

async fn create_snapshot(
    State(fake): State<Shared>,
    uri: axum::http::Uri,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let name = body["name"]
        .as_str()
        .unwrap_or("template-0a1b2c3d")
        .to_owned();
    fake.lock()
        .expect("lock")
        .snapshot_requests
        .push((uri.query().map(str::to_owned), body));
    (
        StatusCode::CREATED,
        Json(template(&name, "snapshot", false)),
    )
        .into_response()
}

async fn list_snapshots(
    State(fake): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    fake.lock().expect("lock").snapshot_list_queries.push(query);
    Json(serde_json::json!([
        template("minimal-ubuntu", "base", true),
        template("golden", "snapshot", false)
    ]))
    .into_response()
}

async fn delete_snapshot(State(fake): State<Shared>, Path(name): Path<String>) -> Response {
    if name != "golden" {
        return not_found(&format!("snapshot {name}"));
    }
    fake.lock().expect("lock").snapshot_deletes.push(name);
    StatusCode::NO_CONTENT.into_response()
}

fn start_server() -> (TestServer, Shared) {
    let fake = Shared::default();
    let router = Router::new()
        .route("/v1/capsules", post(create).get(list))
        .route("/v1/capsules/{id}", get(get_capsule).delete(destroy))
        .route("/v1/capsules/{id}/pause", post(pause))
        .route("/v1/capsules/{id}/files/stream/write", post(stream_write))
        .route("/v1/capsules/{id}/files/stream/read", post(stream_read))
        .route("/v1/admin/logs", get(logs))
        .route("/v1/auth/login", post(login))
        .route("/v1/api-keys", post(create_api_key))
        .route("/v1/snapshots", post(create_snapshot).get(list_snapshots))
        .route(
            "/v1/snapshots/{name}",
            axum::routing::delete(delete_snapshot),
        )
        .layer(DefaultBodyLimit::disable())
        .with_state(Arc::clone(&fake));
    (TestServer::start(router), fake)
}

fn run(server: &TestServer, args: &[&str]) -> Output {
    let (mut command, _config) = wrenn(&server.base_url());
    command.args(args).output().expect("run wrenn")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn create_wait_sends_only_given_fields_and_polls_until_running() {
    let (server, fake) = start_server();
    let output = run(
        &server,
        &["create", "--template", "python", "--vcpus", "2", "--wait"],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr {}",
        text(&output.stderr)
    );
    assert_eq!(text(&output.stdout), "cl-new\n");
    let fake = fake.lock().expect("lock");
    assert_eq!(
        fake.create_bodies,
        vec![serde_json::json!({"template": "python", "vcpus": 2})]
    );
    assert_eq!(fake.polls, 2);
}

#[test]
fn list_prints_a_table_and_json() {
    let (server, _fake) = start_server();
    let output = run(&server, &["list"]);
    let stdout = text(&output.stdout);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert_eq!(
        rows[0],
        ["ID", "STATUS", "TEMPLATE", "VCPUS", "MEM", "CREATED"]
    );
    assert_eq!(rows[1][..3], ["cl-one", "running", "minimal-ubuntu"]);
    assert_eq!(rows[2][..2], ["cl-two", "paused"]);

    let output = run(&server, &["list", "--json"]);
    let parsed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json output");
    assert_eq!(parsed[1]["id"], "cl-two");
}

#[test]
fn api_errors_print_message_and_code() {
    let (server, _fake) = start_server();
    let output = run(&server, &["info", "cl-gone"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        "error: capsule cl-gone not found (not_found)\n"
    );
}

#[test]
fn pause_is_a_bodyless_post() {
    let (server, _fake) = start_server();
    let output = run(&server, &["pause", "cl-new"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr {}",
        text(&output.stderr)
    );
    assert_eq!(text(&output.stdout), "cl-new paused\n");
}

#[test]
fn destroy_tries_every_id_and_fails_if_one_fails() {
    let (server, _fake) = start_server();
    let output = run(&server, &["destroy", "cl-gone", "cl-new"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stdout), "cl-new\n");
    assert_eq!(
        text(&output.stderr),
        "error: cl-gone: capsule cl-gone not found (not_found)\n"
    );
}

#[test]
fn cp_uploads_chunked_multipart_and_downloads_into_a_directory() {
    let (server, fake) = start_server();
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("data.bin");
    let content: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(&source, &content).expect("write source");

    let output = run(
        &server,
        &["cp", source.to_str().expect("utf-8"), "cl-new:/root/"],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr {}",
        text(&output.stderr)
    );
    {
        let fake = fake.lock().expect("lock");
        assert!(
            fake.files.get("/root/data.bin") == Some(&content),
            "uploaded bytes differ"
        );
        let headers = &fake.upload_headers[0];
        assert_eq!(
            headers.get(header::TRANSFER_ENCODING).map(|v| v.as_bytes()),
            Some(&b"chunked"[..])
        );
        assert!(!headers.contains_key(header::CONTENT_LENGTH));
        assert_eq!(
            headers.get("x-api-key").map(|v| v.as_bytes()),
            Some(TEST_KEY.as_bytes())
        );
    }

    let download_dir = dir.path().join("down");
    std::fs::create_dir(&download_dir).expect("mkdir");
    let output = run(
        &server,
        &[
            "cp",
            "cl-new:/root/data.bin",
            download_dir.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr {}",
        text(&output.stderr)
    );
    assert!(std::fs::read(download_dir.join("data.bin")).expect("read") == content);

    // A missing remote file fails without leaving anything behind.
    let output = run(
        &server,
        &[
            "cp",
            "cl-new:/nope",
            download_dir.join("x").to_str().expect("utf-8"),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        std::fs::read_dir(&download_dir).expect("read_dir").count(),
        1
    );
}

#[test]
fn cp_streams_stdin_and_stdout() {
    let (server, fake) = start_server();
    let (mut command, _config) = wrenn(&server.base_url());
    let mut child = command
        .args(["cp", "-", "cl-new:/tmp/piped.txt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"from stdin\n")
        .expect("write stdin");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr {}",
        text(&output.stderr)
    );
    assert_eq!(
        fake.lock()
            .expect("lock")
            .files
            .get("/tmp/piped.txt")
            .map(Vec::as_slice),
        Some(&b"from stdin\n"[..])
    );

    let output = run(&server, &["cp", "cl-new:/tmp/piped.txt", "-"]);
    assert_eq!(text(&output.stdout), "from stdin\n");
}

#[test]
fn logs_query_the_admin_route() {
    let (server, fake) = start_server();
    let output = run(&server, &["logs", "host", "h-1", "--lines", "2"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr {}",
        text(&output.stderr)
    );
    assert_eq!(text(&output.stdout), "first line\nsecond line\n");
    let query = fake.lock().expect("lock").logs_queries[0].clone();
    assert_eq!(query.get("source").map(String::as_str), Some("host:h-1"));
    assert_eq!(query.get("lines").map(String::as_str), Some("2"));
}

#[test]
fn login_with_email_stores_a_new_key_that_later_commands_use() {
    let (server, fake) = start_server();
    let (mut command, config_home) = wrenn(&server.base_url());
    let mut child = command
        .env_remove("WRENN_API_KEY")
        .args(["login", "--email", "a@example.com", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"s3cret pass\n")
        .expect("write password");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr {}",
        text(&output.stderr)
    );

    let (authorization, body) = fake.lock().expect("lock").api_key_requests[0].clone();
    assert_eq!(authorization.as_deref(), Some("Bearer jwt-123"));
    assert!(
        body["name"]
            .as_str()
            .is_some_and(|name| name.starts_with("wrenn-cli@"))
    );

    let config_file = config_home.path().join("wrenn").join("config.json");
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_file).expect("config written"))
            .expect("json");
    assert_eq!(stored["api_key"], TEST_KEY);
    assert_eq!(stored["base_url"], server.base_url());

    // No flag, no environment: the stored URL and key are used.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wrenn"))
        .env_clear()
        .env("XDG_CONFIG_HOME", config_home.path())
        .arg("list")
        .output()
        .expect("run list");
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr {}",
        text(&output.stderr)
    );

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wrenn"))
        .env_clear()
        .env("XDG_CONFIG_HOME", config_home.path())
        .arg("logout")
        .output()
        .expect("run logout");
    assert_eq!(output.status.code(), Some(0));
    assert!(!config_file.exists());
}

#[test]
fn snapshot_create_list_and_delete() {
    let (server, fake) = start_server();
    let output = run(&server, &["snapshot", "create", "cl-new"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr {}",
        text(&output.stderr)
    );
    assert_eq!(text(&output.stdout), "template-0a1b2c3d\n");
    let output = run(
        &server,
        &[
            "snapshot",
            "create",
            "cl-new",
            "--name",
            "golden",
            "--overwrite",
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr {}",
        text(&output.stderr)
    );
    assert_eq!(text(&output.stdout), "golden\n");
    {
        let fake = fake.lock().expect("lock");
        assert_eq!(
            fake.snapshot_requests,
            vec![
                (None, serde_json::json!({"sandbox_id": "cl-new"})),
                (
                    Some("overwrite=true".to_owned()),
                    serde_json::json!({"sandbox_id": "cl-new", "name": "golden"})
                ),
            ]
        );
    }

    let output = run(&server, &["snapshot", "list", "--type", "snapshot"]);
    let stdout = text(&output.stdout);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["NAME", "TYPE", "VCPUS", "MEM", "SIZE", "CREATED"]);
    assert_eq!(rows[1][..3], ["minimal-ubuntu", "base", "(platform)"]);
    assert_eq!(rows[2][..5], ["golden", "snapshot", "1", "512", "MiB"]);
    assert_eq!(rows[2][5..7], ["1.5", "KiB"]);
    let output = run(&server, &["snapshot", "list"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        fake.lock().expect("lock").snapshot_list_queries,
        vec![
            HashMap::from([("type".to_owned(), "snapshot".to_owned())]),
            HashMap::new()
        ]
    );
    let output = run(&server, &["snapshot", "list", "--type", "image"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "clap refuses an unknown type"
    );

    let output = run(&server, &["snapshot", "delete", "golden"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr {}",
        text(&output.stderr)
    );
    assert_eq!(text(&output.stdout), "golden\n");
    let output = run(&server, &["snapshot", "delete", "nope"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        "error: snapshot nope not found (not_found)\n"
    );
    assert_eq!(fake.lock().expect("lock").snapshot_deletes, vec!["golden"]);
}
