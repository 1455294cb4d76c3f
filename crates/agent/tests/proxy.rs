//! The port proxy against "guest" servers on 127.0.0.1: no VM needed.

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use wrenn_agent::proxy::{PortProxy, ProxyOptions, ProxyRefusal, ProxyTargets};
use wrenn_http::server::{self, ServerLimits};

const SANDBOX: &str = "sb-test";
const DIAL_RETRY_FOR: Duration = Duration::from_millis(1500);

#[derive(Default)]
struct FakeTargets {
    entries: Mutex<HashMap<String, Result<IpAddr, ProxyRefusal>>>,
    touches: Mutex<HashMap<String, usize>>,
}

impl ProxyTargets for FakeTargets {
    fn resolve(&self, sandbox_id: &str) -> Result<IpAddr, ProxyRefusal> {
        self.entries
            .lock()
            .expect("lock")
            .get(sandbox_id)
            .cloned()
            .unwrap_or(Err(ProxyRefusal::NotFound))
    }

    fn touch(&self, sandbox_id: &str) {
        *self
            .touches
            .lock()
            .expect("lock")
            .entry(sandbox_id.to_owned())
            .or_default() += 1;
    }
}

impl FakeTargets {
    fn touches(&self, id: &str) -> usize {
        self.touches
            .lock()
            .expect("lock")
            .get(id)
            .copied()
            .unwrap_or(0)
    }
}

async fn serve_on(listener: TcpListener, router: Router) {
    server::serve(
        listener,
        router,
        None,
        ServerLimits::default(),
        std::future::pending(),
    )
    .await;
}

async fn spawn_server(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve_on(listener, router));
    addr
}

struct Harness {
    proxy: PortProxy,
    targets: Arc<FakeTargets>,
    addr: SocketAddr,
    http: reqwest::Client,
    /// The guest server.
    guest: Guest,
}

struct Guest {
    port: u16,
    /// `/big` sends its first MiB, then waits for this.
    big_gate: Arc<Notify>,
    big_done: Arc<AtomicBool>,
}

impl Harness {
    async fn new() -> Self {
        let targets = Arc::new(FakeTargets::default());
        targets.entries.lock().expect("lock").extend([
            (SANDBOX.to_owned(), Ok(IpAddr::V4(Ipv4Addr::LOCALHOST))),
            (
                "sb-paused".to_owned(),
                Err(ProxyRefusal::NotRunning("paused".to_owned())),
            ),
        ]);
        let proxy = PortProxy::new(
            targets.clone(),
            ProxyOptions {
                dial_retry_for: DIAL_RETRY_FOR,
                ..ProxyOptions::default()
            },
        );
        let addr = spawn_server(proxy.router()).await;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("client");
        let guest = Guest::start().await;
        Self {
            proxy,
            targets,
            addr,
            http,
            guest,
        }
    }

    fn url(&self, rest: &str) -> String {
        self.url_for(SANDBOX, &self.guest.port.to_string(), rest)
    }

    fn url_for(&self, id: &str, port: &str, rest: &str) -> String {
        format!("http://{}/proxy/{id}/{port}{rest}", self.addr)
    }

    async fn wait_in_flight(&self, n: usize) {
        let started = Instant::now();
        while self.proxy.in_flight(SANDBOX) != n {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "in_flight stayed at {} (want {n})",
                self.proxy.in_flight(SANDBOX)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

const CHUNK: usize = 64 * 1024;
const BIG_CHUNKS: usize = 200 * 16; // 200 MiB
static ZEROS: [u8; CHUNK] = [0u8; CHUNK];

impl Guest {
    async fn start() -> Self {
        let big_gate = Arc::new(Notify::new());
        let big_done = Arc::new(AtomicBool::new(false));
        let (gate, done) = (big_gate.clone(), big_done.clone());
        let router = Router::new()
            .route("/redirect/abs", get(redirect_abs))
            .route("/redirect/rel", get(|| async { redirect("/target") }))
            .route(
                "/redirect/ext",
                get(|| async { redirect("https://example.com/x") }),
            )
            .route("/hang", get(std::future::pending::<()>))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "slow"
                }),
            )
            .route("/stream-hang", get(stream_hang))
            .route("/infinite", get(infinite))
            .route("/ws", any(websocket_echo))
            .route("/big", get(move || big(gate.clone(), done.clone())))
            .fallback(echo);
        let port = spawn_server(router).await.port();
        Self {
            port,
            big_gate,
            big_done,
        }
    }
}

/// Reports what the guest saw.
async fn echo(req: Request) -> axum::Json<Value> {
    let (parts, body) = req.into_parts();
    let h = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    axum::Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "host": h("host"),
        "x_forwarded_for": h("x-forwarded-for"),
        "x_forwarded_host": h("x-forwarded-host"),
        "x_forwarded_proto": h("x-forwarded-proto"),
        "x_private": h("x-private"),
        "content_type": h("content-type"),
        "body_len": body.len(),
        "body": if body.len() <= 1024 { String::from_utf8_lossy(&body).into_owned() } else { String::new() },
    }))
}

fn redirect(location: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, location.to_owned())]).into_response()
}

async fn redirect_abs(req: Request) -> Response {
    // The proxy sets Host to the address it dialled, so this is `http://<ip>:<port>/…`.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut response = redirect(&format!("http://{host}/target?x=1"));
    response.headers_mut().insert(
        header::CONTENT_LOCATION,
        header::HeaderValue::from_static("/content"),
    );
    response
}

async fn stream_hang() -> Response {
    let stream = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"first"))])
        .chain(futures::stream::pending());
    Body::from_stream(stream).into_response()
}

async fn infinite() -> Response {
    let stream =
        futures::stream::repeat_with(|| Ok::<_, std::io::Error>(Bytes::from_static(&ZEROS)));
    Body::from_stream(stream).into_response()
}

async fn big(gate: Arc<Notify>, done: Arc<AtomicBool>) -> Response {
    let stream = futures::stream::unfold(0usize, move |sent| {
        let (gate, done) = (gate.clone(), done.clone());
        async move {
            if sent == BIG_CHUNKS {
                return None;
            }
            if sent == 16 {
                gate.notified().await;
            }
            // With a Content-Length, hyper stops polling after the last chunk.
            if sent + 1 == BIG_CHUNKS {
                done.store(true, Ordering::SeqCst);
            }
            Some((
                Ok::<_, std::io::Error>(Bytes::from_static(&ZEROS)),
                sent + 1,
            ))
        }
    });
    (
        [(header::CONTENT_LENGTH, (BIG_CHUNKS * CHUNK).to_string())],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn websocket_echo(mut req: Request) -> Response {
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        .body(Body::empty())
        .expect("response")
}

use futures::StreamExt;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

async fn json_of(resp: reqwest::Response) -> Value {
    resp.json().await.expect("json body")
}

#[tokio::test]
async fn get_and_post_round_trip() {
    let h = Harness::new().await;
    let resp = h
        .http
        .get(h.url("/echo/path?a=1&b=two%20words"))
        .header("connection", "x-private")
        .header("x-private", "secret")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    let v = json_of(resp).await;
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/echo/path");
    assert_eq!(v["query"], "a=1&b=two%20words");
    assert_eq!(v["host"], format!("127.0.0.1:{}", h.guest.port));
    assert_eq!(v["x_forwarded_host"], h.addr.to_string());
    assert_eq!(v["x_forwarded_proto"], "http");
    assert_eq!(v["x_forwarded_for"], "127.0.0.1");
    assert_eq!(v["x_private"], Value::Null, "hop-by-hop header leaked");

    let resp = h
        .http
        .post(h.url("/submit?x=y"))
        .header("content-type", "text/plain")
        .body("hello world")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    let v = json_of(resp).await;
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/submit");
    assert_eq!(v["query"], "x=y");
    assert_eq!(v["body"], "hello world");
    assert_eq!(v["content_type"], "text/plain");

    // A streamed (chunked) upload of 16 MiB.
    let chunks = futures::stream::iter(
        (0..256).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(&ZEROS))),
    );
    let resp = h
        .http
        .put(h.url("/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 200);
    let v = json_of(resp).await;
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["body_len"], 256 * CHUNK);

    assert!(h.targets.touches(SANDBOX) >= 3, "touch not called");
}

#[tokio::test]
async fn trailing_slashes_are_kept() {
    let h = Harness::new().await;
    for (rest, want) in [
        ("", "/"),
        ("/", "/"),
        ("/a/", "/a/"),
        ("/a/b", "/a/b"),
        ("/a//b/", "/a//b/"),
    ] {
        let v = json_of(h.http.get(h.url(rest)).send().await.expect("get")).await;
        assert_eq!(v["path"], want, "for {rest:?}");
    }
    // Percent-encoding reaches the guest untouched.
    let v = json_of(h.http.get(h.url("/a%2Fb")).send().await.expect("get")).await;
    assert_eq!(v["path"], "/a%2Fb");
}

#[tokio::test]
async fn locations_are_rewritten() {
    let h = Harness::new().await;
    let prefix = format!("/proxy/{SANDBOX}/{}", h.guest.port);
    let location = |resp: &reqwest::Response, name: header::HeaderName| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };

    let resp = h
        .http
        .get(h.url("/redirect/abs"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 302);
    assert_eq!(
        location(&resp, header::LOCATION).as_deref(),
        Some(format!("{prefix}/target?x=1").as_str())
    );
    assert_eq!(
        location(&resp, header::CONTENT_LOCATION).as_deref(),
        Some(format!("{prefix}/content").as_str())
    );

    let resp = h
        .http
        .get(h.url("/redirect/rel"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        location(&resp, header::LOCATION).as_deref(),
        Some(format!("{prefix}/target").as_str())
    );

    let resp = h
        .http
        .get(h.url("/redirect/ext"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        location(&resp, header::LOCATION).as_deref(),
        Some("https://example.com/x")
    );
}

#[tokio::test]
async fn a_server_that_starts_late_is_still_reached() {
    let h = Harness::new().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("rebind");
        serve_on(listener, Router::new().fallback(echo)).await;
    });
    let started = Instant::now();
    let resp = h
        .http
        .get(h.url_for(SANDBOX, &port.to_string(), "/late"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(json_of(resp).await["path"], "/late");
}

#[tokio::test]
async fn nothing_listening_is_a_502_after_the_retry_window() {
    let h = Harness::new().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let started = Instant::now();
    let resp = h
        .http
        .get(h.url_for(SANDBOX, &port.to_string(), "/"))
        .send()
        .await
        .expect("get");
    let waited = started.elapsed();
    assert_eq!(resp.status(), 502);
    let v = json_of(resp).await;
    assert_eq!(v["error"]["code"], "port_unreachable");
    assert_eq!(
        v["error"]["message"],
        format!("nothing is listening on port {port} in sandbox {SANDBOX}")
    );
    assert!(
        waited >= DIAL_RETRY_FOR - Duration::from_millis(100),
        "{waited:?}"
    );
    assert!(
        waited < DIAL_RETRY_FOR + Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(h.proxy.in_flight(SANDBOX), 0);
}

#[tokio::test]
async fn refusals_and_bad_ports() {
    let h = Harness::new().await;
    let port = h.guest.port.to_string();

    let resp = h
        .http
        .get(h.url_for("sb-nope", &port, "/"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 404);
    assert_eq!(json_of(resp).await["error"]["code"], "not_found");

    let resp = h
        .http
        .get(h.url_for("sb-paused", &port, "/"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 409);
    let v = json_of(resp).await;
    assert_eq!(v["error"]["code"], "invalid_state");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("paused")
    );

    for bad in ["0", "65536", "70000", "http", "-1"] {
        let resp = h
            .http
            .get(h.url_for(SANDBOX, bad, "/x"))
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), 400, "port {bad}");
        assert_eq!(json_of(resp).await["error"]["code"], "invalid_argument");
    }
}

/// Sends a WebSocket handshake through the proxy and returns the socket after the 101.
async fn open_tunnel(h: &Harness) -> TcpStream {
    let mut s = TcpStream::connect(h.addr).await.expect("connect");
    let req = format!(
        "GET /proxy/{SANDBOX}/{}/ws HTTP/1.1\r\nHost: proxy\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        h.guest.port
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.expect("read head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("utf8").to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    s
}

#[tokio::test]
async fn websocket_echo_and_evict() {
    let h = Harness::new().await;
    let mut s = open_tunnel(&h).await;
    for msg in [&b"hello"[..], b"second message"] {
        s.write_all(msg).await.expect("write");
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.expect("echo");
        assert_eq!(back, msg);
    }
    h.wait_in_flight(1).await;

    h.proxy.evict(SANDBOX);
    let mut byte = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut byte))
        .await
        .expect("tunnel must close after evict");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert_eq!(h.proxy.in_flight(SANDBOX), 0);
}

#[tokio::test]
async fn large_download_streams() {
    let h = Harness::new().await;
    let mut resp = h.http.get(h.url("/big")).send().await.expect("get");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some((BIG_CHUNKS * CHUNK) as u64));
    let mut got = 0usize;
    while got < CHUNK {
        got += resp.chunk().await.expect("chunk").expect("more data").len();
    }
    // The first bytes arrived while the guest is still holding back the rest: not buffered.
    assert!(!h.guest.big_done.load(Ordering::SeqCst));
    h.guest.big_gate.notify_one();
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        assert!(chunk.iter().all(|b| *b == 0));
        got += chunk.len();
    }
    assert_eq!(got, BIG_CHUNKS * CHUNK);
    assert!(h.guest.big_done.load(Ordering::SeqCst));
    // Nothing held the 200 MiB: the process's peak memory stays far below it (about 10 MB when
    // this test runs alone; the margin covers the other tests running in parallel).
    let peak_kib = peak_rss_kib();
    assert!(peak_kib < 150 * 1024, "peak RSS {peak_kib} KiB");
    h.wait_in_flight(0).await;
}

#[tokio::test]
async fn evict_aborts_long_polls() {
    let h = Harness::new().await;
    // Waiting for the response head.
    let pending = tokio::spawn(h.http.get(h.url("/hang")).send());
    // Response head sent, body stalled.
    let mut streaming = h.http.get(h.url("/stream-hang")).send().await.expect("get");
    assert_eq!(
        streaming.chunk().await.expect("chunk").as_deref(),
        Some(&b"first"[..])
    );
    h.wait_in_flight(2).await;

    h.proxy.evict(SANDBOX);
    let resp = tokio::time::timeout(Duration::from_secs(2), pending)
        .await
        .expect("long poll must end")
        .expect("join")
        .expect("response");
    assert_eq!(resp.status(), 503);
    let next = tokio::time::timeout(Duration::from_secs(2), streaming.chunk())
        .await
        .expect("stalled body must end");
    assert!(
        next.is_err(),
        "the cut-short body must be an error: {next:?}"
    );
    assert_eq!(h.proxy.in_flight(SANDBOX), 0);

    // The sandbox still resolves (the fake says so), so new traffic flows again.
    let resp = h.http.get(h.url("/after")).send().await.expect("get");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn drain_waits_for_short_requests_and_force_closes_long_ones() {
    let h = Harness::new().await;
    let short = tokio::spawn(h.http.get(h.url("/slow")).send());
    let long = tokio::spawn(h.http.get(h.url("/hang")).send());
    h.wait_in_flight(2).await;

    let proxy = h.proxy.clone();
    let started = Instant::now();
    let drain = tokio::spawn(async move { proxy.drain(SANDBOX, Duration::from_millis(800)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;

    // New requests are turned away while draining.
    let resp = h.http.get(h.url("/new")).send().await.expect("get");
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(json_of(resp).await["error"]["code"], "unavailable");

    let short = short.await.expect("join").expect("short");
    assert_eq!(short.status(), 200);
    assert_eq!(short.text().await.expect("text"), "slow");

    let forced = drain.await.expect("join");
    assert_eq!(forced, 1);
    assert!(started.elapsed() >= Duration::from_millis(700));
    let long = long.await.expect("join").expect("long");
    assert_eq!(long.status(), 503);
    assert_eq!(h.proxy.in_flight(SANDBOX), 0);

    // Still draining until told otherwise.
    let resp = h.http.get(h.url("/new")).send().await.expect("get");
    assert_eq!(resp.status(), 503);
    h.proxy.undrain(SANDBOX);
    let resp = h.http.get(h.url("/new")).send().await.expect("get");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn drain_closes_a_response_the_client_stopped_reading() {
    let h = Harness::new().await;
    // A client that asks for an endless body and never reads it: hyper stops polling the body
    // once the socket buffers are full, so force-closing must not depend on that.
    let mut s = TcpStream::connect(h.addr).await.expect("connect");
    let req = format!(
        "GET /proxy/{SANDBOX}/{}/infinite HTTP/1.1\r\nHost: proxy\r\n\r\n",
        h.guest.port
    );
    s.write_all(req.as_bytes()).await.expect("write");
    h.wait_in_flight(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let forced = h.proxy.drain(SANDBOX, Duration::from_millis(100)).await;
    assert_eq!(forced, 1);
    assert_eq!(h.proxy.in_flight(SANDBOX), 0);
    drop(s);
}

#[tokio::test]
async fn drain_with_nothing_in_flight_returns_at_once() {
    let h = Harness::new().await;
    let started = Instant::now();
    assert_eq!(h.proxy.drain(SANDBOX, Duration::from_secs(5)).await, 0);
    assert!(started.elapsed() < Duration::from_secs(1));
    let resp = h.http.get(h.url("/x")).send().await.expect("get");
    assert_eq!(resp.status(), 503);
    // Eviction (the pause went through) clears the draining state.
    h.proxy.evict(SANDBOX);
    let resp = h.http.get(h.url("/x")).send().await.expect("get");
    assert_eq!(resp.status(), 200);
}
