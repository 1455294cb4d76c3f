//! File routes end to end against a real agent and VM (one capsule for the file): round trips,
//! size limits, streamed transfers in constant memory, truncated uploads, directories, errors.

mod capsule_ops_support;
mod support;

use bytes::Bytes;
use capsule_ops_support::rss_bytes;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::platform::Platform;

const MIB: u64 = 1024 * 1024;
const BOUNDARY: &str = "0123456789abcdef0123456789abcdef";

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn files_round_trip_stream_and_refuse(db: sqlx::PgPool) {
    wrenn_testing::require_vm!();
    let p = Platform::start(db).await;
    let alice = p.cp.tenant("alice").await;
    let id = p.create_capsule(&alice).await;
    let c = Ctx {
        p: &p,
        key: alice.api_key.clone(),
        id,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .expect("client"),
    };
    let home = c.sh("printf %s \"$HOME\"").await;
    round_trips(&c, &home).await;
    directories(&c).await;
    size_limits(&c, &home).await;
    streams(&c, &home).await;
}

struct Ctx<'a> {
    p: &'a Platform,
    key: String,
    id: String,
    http: reqwest::Client,
}

impl Ctx<'_> {
    fn url(&self, route: &str) -> String {
        self.p.cp.url(&format!("/v1/capsules/{}/{route}", self.id))
    }

    async fn post(&self, route: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(route))
            .header("X-API-Key", &self.key)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    /// `(status, JSON body or Null)`.
    async fn post_json(&self, route: &str, body: Value) -> (u16, Value) {
        let resp = self.post(route, body).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn sh(&self, script: &str) -> String {
        let (status, body) = self
            .post_json(
                "exec",
                json!({"cmd": "/bin/sh", "args": ["-c", script], "timeout_sec": 120}),
            )
            .await;
        assert_eq!(status, 200, "{script}: {body}");
        body["stdout"].as_str().expect("stdout").to_string()
    }

    /// `files/write` the way the SDK does it (a form with a Content-Length).
    async fn write(&self, path: &str, content: Vec<u8>) -> (u16, Value) {
        let form = reqwest::multipart::Form::new()
            .text("path", path.to_string())
            .part(
                "file",
                reqwest::multipart::Part::bytes(content).file_name("upload"),
            );
        let resp = self
            .http
            .post(self.url("files/write"))
            .header("X-API-Key", &self.key)
            .multipart(form)
            .send()
            .await
            .expect("write");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn read(&self, path: &str) -> (u16, Option<String>, Bytes) {
        let resp = self.post("files/read", json!({"path": path})).await;
        let status = resp.status().as_u16();
        let kind = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (status, kind, resp.bytes().await.expect("body"))
    }

    /// `files/stream/write` with a hand-built chunked multipart body, as the SDK sends it.
    async fn stream_write<S>(&self, path: &str, content: S) -> Result<(u16, Value), reqwest::Error>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        let body = multipart_stream(path, content, true);
        self.send_stream(body).await
    }

    async fn send_stream<S>(&self, body: S) -> Result<(u16, Value), reqwest::Error>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        let resp = self
            .http
            .post(self.url("files/stream/write"))
            .header("X-API-Key", &self.key)
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// `files/stream/read`: status, and the SHA-256 and length of the body.
    async fn stream_read(&self, path: &str) -> (u16, String, u64) {
        let resp = self.post("files/stream/read", json!({"path": path})).await;
        let status = resp.status().as_u16();
        let mut body = resp.bytes_stream();
        let mut hash = Sha256::new();
        let mut len = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.expect("download chunk");
            len += chunk.len() as u64;
            hash.update(&chunk);
        }
        (status, hex(&hash.finalize()), len)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

/// `path` part, `file` part (streamed), and the closing boundary when `close`.
fn multipart_stream<S>(
    path: &str,
    content: S,
    close: bool,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
{
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n{path}\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"upload.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let tail = if close {
        format!("\r\n--{BOUNDARY}--\r\n")
    } else {
        String::new()
    };
    futures::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(content)
        .chain(futures::stream::once(async move { Ok(Bytes::from(tail)) }))
}

/// `len` deterministic pseudo-random bytes in 64 KiB chunks, hashed as they are made.
fn generated(
    len: u64,
    hash: Arc<std::sync::Mutex<Sha256>>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut left = len;
    futures::stream::iter(std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(64 * 1024) as usize;
        let mut chunk = Vec::with_capacity(n);
        while chunk.len() < n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.extend_from_slice(&state.to_le_bytes());
        }
        chunk.truncate(n);
        left -= n as u64;
        hash.lock().expect("hash").update(&chunk);
        Some(Ok(Bytes::from(chunk)))
    }))
}

/// Samples this process's resident memory until stopped; the peak.
struct RssPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
}

impl RssPeak {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_bytes()));
        let (s, p) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self { stop, peak }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.peak.load(Ordering::Relaxed)
    }
}

async fn round_trips(c: &Ctx<'_>, home: &str) {
    // Binary content, missing parents created.
    let content: Vec<u8> = (0..=255u8).cycle().take(3 * MIB as usize + 7).collect();
    let (status, body) = c.write("/var/tmp/ops/a/b/bin.dat", content.clone()).await;
    assert_eq!(status, 204, "{body}");
    let (status, kind, got) = c.read("/var/tmp/ops/a/b/bin.dat").await;
    assert_eq!(status, 200);
    assert_eq!(kind.as_deref(), Some("application/octet-stream"));
    assert!(got == content, "content differs ({} bytes back)", got.len());
    // Replacing with something shorter leaves exactly the new content.
    assert_eq!(
        c.write("/var/tmp/ops/a/b/bin.dat", b"short".to_vec())
            .await
            .0,
        204
    );
    assert_eq!(&c.read("/var/tmp/ops/a/b/bin.dat").await.2[..], b"short");
    // An empty file.
    assert_eq!(c.write("/var/tmp/ops/empty", Vec::new()).await.0, 204);
    let (status, _, got) = c.read("/var/tmp/ops/empty").await;
    assert_eq!((status, got.len()), (200, 0));
    // A relative path is relative to the user's home.
    assert_eq!(c.write("rel-note.txt", b"relative".to_vec()).await.0, 204);
    assert_eq!(c.sh(&format!("cat {home}/rel-note.txt")).await, "relative");
    assert_eq!(&c.read("rel-note.txt").await.2[..], b"relative");

    // Refusals.
    let (status, _, body) = c.read("/var/tmp/ops/missing").await;
    let body: Value = serde_json::from_slice(&body).expect("error JSON");
    assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
    let (status, _, body) = c.read("/var/tmp/ops").await;
    let body: Value = serde_json::from_slice(&body).expect("error JSON");
    assert_eq!((status, code(&body)), (400, "invalid_request"), "{body}");
    let (status, body) = c.write("/var/tmp/ops/a", b"x".to_vec()).await;
    assert_eq!(
        (status, code(&body)),
        (400, "invalid_request"),
        "a directory: {body}"
    );
    for route in [
        "files/read",
        "files/list",
        "files/mkdir",
        "files/remove",
        "files/stream/read",
    ] {
        let (status, body) = c.post_json(route, json!({"path": ""})).await;
        assert_eq!(
            (status, code(&body)),
            (400, "invalid_request"),
            "{route}: {body}"
        );
    }
    let (status, body) = c.write("", b"x".to_vec()).await;
    assert_eq!((status, code(&body)), (400, "invalid_request"), "{body}");
    // `file` before `path`.
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(b"x".to_vec()))
        .text("path", "/var/tmp/ops/order");
    let resp = c
        .http
        .post(c.url("files/write"))
        .header("X-API-Key", &c.key)
        .multipart(form)
        .send()
        .await
        .expect("write");
    assert_eq!(resp.status(), 400);
    assert_eq!(c.read("/var/tmp/ops/order").await.0, 404);
}

async fn directories(c: &Ctx<'_>) {
    let (status, body) = c
        .post_json("files/mkdir", json!({"path": "/var/tmp/tree/x/y"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let entry = &body["entry"];
    assert_eq!(
        (&entry["name"], &entry["type"], &entry["path"]),
        (
            &json!("y"),
            &json!("directory"),
            &json!("/var/tmp/tree/x/y")
        )
    );
    // An existing directory: conflict (the SDK then lists the parent).
    let (status, body) = c
        .post_json("files/mkdir", json!({"path": "/var/tmp/tree/x/y"}))
        .await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    // A file in the way: not an "already exists" answer.
    assert_eq!(
        c.write("/var/tmp/tree/x/f.txt", b"12345".to_vec()).await.0,
        204
    );
    let (status, body) = c
        .post_json("files/mkdir", json!({"path": "/var/tmp/tree/x/f.txt"}))
        .await;
    assert_eq!((status, code(&body)), (409, "invalid_state"), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !message.contains("already_exists") && !message.contains("already exists"),
        "{message}"
    );

    // Listing: base names, absolute paths, depth.
    let (status, body) = c
        .post_json("files/list", json!({"path": "/var/tmp/tree", "depth": 1}))
        .await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec!["x"]);
    let (_, body) = c
        .post_json("files/list", json!({"path": "/var/tmp/tree", "depth": 3}))
        .await;
    let mut paths: Vec<(String, String)> = body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["path"].as_str().expect("path").to_string(),
                e["name"].as_str().expect("name").to_string(),
            )
        })
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        vec![
            ("/var/tmp/tree/x".to_string(), "x".to_string()),
            ("/var/tmp/tree/x/f.txt".to_string(), "f.txt".to_string()),
            ("/var/tmp/tree/x/y".to_string(), "y".to_string()),
        ]
    );
    let file = body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["name"] == "f.txt")
        .expect("f.txt")
        .clone();
    assert_eq!((&file["type"], &file["size"]), (&json!("file"), &json!(5)));
    assert!(file["modified_at"].as_i64().expect("modified_at") > 1_600_000_000);
    assert!(
        file["permissions"]
            .as_str()
            .expect("permissions")
            .starts_with('-')
    );
    let (status, body) = c
        .post_json("files/list", json!({"path": "/var/tmp/nope", "depth": 1}))
        .await;
    assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
    let (status, body) = c
        .post_json(
            "files/list",
            json!({"path": "/var/tmp/tree/x/f.txt", "depth": 1}),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "invalid_request"), "{body}");

    // Remove, recursively; then it is gone.
    let resp = c
        .post("files/remove", json!({"path": "/var/tmp/tree"}))
        .await;
    assert_eq!(resp.status(), 204);
    let (status, body) = c
        .post_json("files/list", json!({"path": "/var/tmp/tree", "depth": 1}))
        .await;
    assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
    let (status, body) = c
        .post_json("files/remove", json!({"path": "/var/tmp/tree"}))
        .await;
    assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
}

async fn size_limits(c: &Ctx<'_>, home: &str) {
    // files/write refuses more than 100 MiB, and keeps nothing.
    let over = 100 * MIB + 1;
    let hash = Arc::new(std::sync::Mutex::new(Sha256::new()));
    let part = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(generated(over, hash)),
        over,
    )
    .file_name("upload");
    let form = reqwest::multipart::Form::new()
        .text("path", format!("{home}/too-big"))
        .part("file", part);
    let resp = c
        .http
        .post(c.url("files/write"))
        .header("X-API-Key", &c.key)
        .multipart(form)
        .send()
        .await;
    // The server may answer before reading the rest; then the client sees its 413 or a reset.
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 413);
        let body: Value = resp.json().await.expect("error JSON");
        assert_eq!(code(&body), "too_large", "{body}");
    }
    assert_eq!(
        c.read(&format!("{home}/too-big")).await.0,
        404,
        "a refused upload left a file"
    );

    // files/read refuses more than 100 MiB and points at the stream; the stream reads it.
    c.sh(&format!("head -c 105M /dev/zero > {home}/big105"))
        .await;
    let (status, _, body) = c.read(&format!("{home}/big105")).await;
    let body: Value = serde_json::from_slice(&body).expect("error JSON");
    assert_eq!((status, code(&body)), (413, "too_large"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("stream/read")
    );
    let (status, _, len) = c.stream_read(&format!("{home}/big105")).await;
    assert_eq!((status, len), (200, 105 * MIB));
    c.sh(&format!("rm -f {home}/big105")).await;
}

async fn streams(c: &Ctx<'_>, home: &str) {
    // 200 MiB up and back down, in constant memory.
    let size = 200 * MIB;
    let path = format!("{home}/stream.bin");
    let hash = Arc::new(std::sync::Mutex::new(Sha256::new()));
    let before = rss_bytes();
    let peak = RssPeak::start();
    let started = Instant::now();
    let (status, body) = c
        .stream_write(&path, generated(size, hash.clone()))
        .await
        .expect("upload");
    let peak_up = peak.stop();
    assert_eq!(status, 204, "{body}");
    let expected = hex(&hash.lock().expect("hash").clone().finalize());
    eprintln!(
        "uploaded {} MiB in {:?}; RSS {} MiB before, {} MiB peak",
        size / MIB,
        started.elapsed(),
        before / MIB,
        peak_up / MIB
    );
    assert!(
        peak_up.saturating_sub(before) < 64 * MIB,
        "memory grew by {} MiB during a {} MiB upload",
        peak_up.saturating_sub(before) / MIB,
        size / MIB
    );
    let inside = c.sh(&format!("sha256sum {path}")).await;
    assert!(inside.starts_with(&expected), "{inside} vs {expected}");
    let before = rss_bytes();
    let peak = RssPeak::start();
    let (status, got, len) = c.stream_read(&path).await;
    let peak_down = peak.stop();
    assert_eq!((status, len), (200, size));
    assert_eq!(got, expected);
    assert!(
        peak_down.saturating_sub(before) < 64 * MIB,
        "memory grew by {} MiB during a {} MiB download",
        peak_down.saturating_sub(before) / MIB,
        size / MIB
    );
    c.sh(&format!("rm -f {path}")).await;

    // An upload whose body breaks off leaves no file.
    let cut_path = format!("{home}/cut.bin");
    let hash = Arc::new(std::sync::Mutex::new(Sha256::new()));
    let failing = generated(20 * MIB, hash).chain(futures::stream::once(async {
        Err(std::io::Error::other("the client gave up"))
    }));
    let result = c.stream_write(&cut_path, failing).await;
    assert!(
        !matches!(result, Ok((204, _))),
        "a broken upload was reported written: {result:?}"
    );
    // The abort reaches the capsule asynchronously; give it a moment, then nothing is there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.read(&cut_path).await.0,
        404,
        "a broken upload left a file"
    );
    // A body that ends without its closing boundary: refused, nothing written.
    let hash = Arc::new(std::sync::Mutex::new(Sha256::new()));
    let body = multipart_stream(&cut_path, generated(MIB, hash), false);
    let (status, body) = c.send_stream(body).await.expect("send");
    assert_eq!((status, code(&body)), (400, "invalid_request"), "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        c.read(&cut_path).await.0,
        404,
        "an unterminated upload left a file"
    );
    // `path` must come first.
    let wrong = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nxx\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n{cut_path}\r\n\
         --{BOUNDARY}--\r\n"
    );
    let (status, body) = c
        .send_stream(futures::stream::once(async move { Ok(Bytes::from(wrong)) }))
        .await
        .expect("send");
    assert_eq!((status, code(&body)), (400, "invalid_request"), "{body}");

    // Downloading a missing file: a JSON error before any byte.
    let resp = c
        .post("files/stream/read", json!({"path": "/var/tmp/nope"}))
        .await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.expect("error JSON");
    assert_eq!(code(&body), "not_found");
}
