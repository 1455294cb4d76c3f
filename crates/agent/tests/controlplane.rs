//! The agent's side of the control-plane link against a small axum app standing in for the
//! control plane: registration, the credentials file, heartbeats, refresh with certificate
//! hot-swap, host deletion, and outages. No VM needed.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use wrenn_agent::controlplane::credentials::{self, CREDENTIALS_FILE};
use wrenn_agent::controlplane::{ControlPlaneLink, HostHooks, LinkEnd, LinkOptions};
use wrenn_api_types::hosts::HostCredentials;
use wrenn_http::pki::Ca;
use wrenn_http::server::{self, ServerLimits};
use wrenn_http::tls::Pem;

const REGISTRATION_TOKEN: &str = "reg-token-0123";

/// One request the fake control plane received.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    path: String,
    host_token: Option<String>,
    body: Value,
}

/// The control plane's side: issues credentials from a real CA, rotates them on refresh, and
/// answers heartbeats from a script (204 once the script is empty).
struct FakeCp {
    ca: Ca,
    seen: Mutex<Vec<Seen>>,
    /// JWT, refresh token and serial of the current credentials.
    generation: Mutex<u32>,
    heartbeat_script: Mutex<VecDeque<StatusCode>>,
    refresh_status: Mutex<Option<StatusCode>>,
    cert_ttl: Duration,
}

impl FakeCp {
    fn new(cert_ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            ca: Ca::generate("fake control plane CA").expect("ca"),
            seen: Mutex::default(),
            generation: Mutex::new(0),
            heartbeat_script: Mutex::default(),
            refresh_status: Mutex::default(),
            cert_ttl,
        })
    }

    fn record(&self, path: &str, headers: &HeaderMap, body: Value) {
        self.seen.lock().expect("lock").push(Seen {
            path: path.to_owned(),
            host_token: headers
                .get("x-host-token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body,
        });
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    fn script(&self, statuses: &[StatusCode]) {
        self.heartbeat_script
            .lock()
            .expect("lock")
            .extend(statuses.iter().copied());
    }

    /// Credentials of generation `n`: `jwt-n`, `refresh-n`, a fresh certificate.
    fn issue(&self, n: u32, address: &str) -> HostCredentials {
        let leaf = self
            .ca
            .issue_server_cert("host-1", address, self.cert_ttl)
            .expect("issue");
        HostCredentials {
            host_id: "host-1".into(),
            token: format!("jwt-{n}"),
            refresh_token: format!("refresh-{n}"),
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
            ca_cert_pem: self.ca.cert_pem().to_owned(),
        }
    }

    fn current_jwt(&self) -> String {
        format!("jwt-{}", self.generation.lock().expect("lock"))
    }
}

fn api_error(status: StatusCode, code: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": format!("fake says {code}")}})),
    )
        .into_response()
}

async fn register(
    State(cp): State<Arc<FakeCp>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    cp.record("/v1/hosts/register", &headers, body.clone());
    if body["token"] != REGISTRATION_TOKEN {
        return api_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let address = body["address"].as_str().unwrap_or_default().to_owned();
    let mut generation = cp.generation.lock().expect("lock");
    *generation += 1;
    (StatusCode::CREATED, Json(cp.issue(*generation, &address))).into_response()
}

async fn refresh(
    State(cp): State<Arc<FakeCp>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    cp.record("/v1/hosts/auth/refresh", &headers, body.clone());
    if let Some(status) = *cp.refresh_status.lock().expect("lock") {
        return api_error(status, "unauthorized");
    }
    let mut generation = cp.generation.lock().expect("lock");
    if body["refresh_token"] != format!("refresh-{generation}") {
        return api_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    *generation += 1;
    (StatusCode::OK, Json(cp.issue(*generation, "127.0.0.1:1"))).into_response()
}

async fn heartbeat(
    State(cp): State<Arc<FakeCp>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    cp.record(&format!("/v1/hosts/{id}/heartbeat"), &headers, body);
    let token = headers.get("x-host-token").and_then(|v| v.to_str().ok());
    if token != Some(cp.current_jwt().as_str()) {
        return api_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let next = cp.heartbeat_script.lock().expect("lock").pop_front();
    match next.unwrap_or(StatusCode::NO_CONTENT) {
        StatusCode::NO_CONTENT => StatusCode::NO_CONTENT.into_response(),
        status => api_error(status, "scripted"),
    }
}

async fn start_cp(cp: Arc<FakeCp>) -> String {
    let router = Router::new()
        .route("/v1/hosts/register", post(register))
        .route("/v1/hosts/auth/refresh", post(refresh))
        .route("/v1/hosts/{id}/heartbeat", post(heartbeat))
        .with_state(cp);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::serve(
        listener,
        router,
        None,
        ServerLimits::default(),
        std::future::pending(),
    ));
    format!("http://{addr}/")
}

#[derive(Default)]
struct Hooks {
    pauses: AtomicU32,
    deletions: AtomicU32,
}

#[async_trait::async_trait]
impl HostHooks for Hooks {
    fn running_sandboxes(&self) -> u32 {
        3
    }

    async fn pause_all(&self) {
        self.pauses.fetch_add(1, Ordering::SeqCst);
    }

    async fn host_deleted(&self) {
        self.deletions.fetch_add(1, Ordering::SeqCst);
    }
}

fn fast() -> LinkOptions {
    LinkOptions {
        interval: Duration::from_millis(100),
        ..LinkOptions::default()
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// The certificate a TLS client sees on `addr` (the agent's listener, built from `link.tls`).
async fn served_certificate(addr: SocketAddr, ca: &Ca) -> CertificateDer<'static> {
    let issued = ca
        .issue_client_cert("wrenn-cp", Duration::from_secs(3600))
        .expect("client cert");
    let identity = wrenn_http::tls::ReloadableCert::load(
        &Pem::text("cert", issued.cert_pem),
        &Pem::text("key", issued.key_pem),
    )
    .expect("identity");
    let config =
        wrenn_http::tls::client_config(&Pem::text("ca", ca.cert_pem()), Some(Arc::new(identity)))
            .expect("client");
    let mut config = (*config).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .expect("client side of the handshake");
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .expect("server certificate")
}

fn der(pem: &str) -> CertificateDer<'static> {
    Pem::text("cert", pem.to_owned())
        .certificates("certificate")
        .expect("der")
        .remove(0)
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn register_heartbeat_refresh_and_deletion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = FakeCp::new(Duration::from_secs(7 * 86400));
    let url = start_cp(cp.clone()).await;
    // The agent's listener: bound first, so its address goes into the registration.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let agent_addr = listener.local_addr().expect("addr");

    let link = ControlPlaneLink::connect(
        &url,
        dir.path(),
        Some(REGISTRATION_TOKEN),
        &agent_addr.to_string(),
    )
    .await
    .expect("registration");
    assert_eq!(link.credentials.host_id, "host-1");
    let seen = cp.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/hosts/register");
    let body = &seen[0].body;
    assert_eq!(body["token"], REGISTRATION_TOKEN);
    assert_eq!(body["address"], agent_addr.to_string());
    assert_eq!(
        body["arch"],
        if cfg!(target_arch = "x86_64") {
            "amd64"
        } else {
            std::env::consts::ARCH
        }
    );
    assert!(
        body["cpu_cores"].as_i64().expect("cpu_cores") >= 1,
        "{body}"
    );
    assert!(body["memory_mb"].as_i64().expect("memory_mb") > 0, "{body}");
    assert!(body["disk_gb"].as_i64().expect("disk_gb") > 0, "{body}");

    let path = dir.path().join(CREDENTIALS_FILE);
    assert_eq!(mode(&path), 0o600);
    let saved = credentials::load(&path).expect("load").expect("saved");
    assert_eq!(saved.token, "jwt-1");
    assert_eq!(saved.refresh_token, "refresh-1");

    tokio::spawn(server::serve(
        listener,
        axum::Router::new(),
        Some(link.tls.acceptor()),
        ServerLimits::default(),
        std::future::pending(),
    ));
    let first_cert = served_certificate(agent_addr, &cp.ca).await;
    assert_eq!(first_cert, der(&saved.cert_pem));

    // 204, then the JWT is refused once (refresh), then 204 with the new JWT, then deletion.
    cp.script(&[StatusCode::NO_CONTENT, StatusCode::UNAUTHORIZED]);
    let hooks = Arc::new(Hooks::default());
    let run = tokio::spawn(
        link.heartbeat(hooks.clone(), fast())
            .run(CancellationToken::new()),
    );

    eventually("the refresh and a heartbeat with the new token", || {
        cp.seen()
            .iter()
            .any(|s| s.host_token.as_deref() == Some("jwt-2"))
    })
    .await;
    let rotated = credentials::load(&path).expect("load").expect("rotated");
    assert_eq!(
        rotated.refresh_token, "refresh-2",
        "rotated refresh token saved"
    );
    assert_eq!(mode(&path), 0o600, "still private after the rotation");
    let second_cert = served_certificate(agent_addr, &cp.ca).await;
    assert_eq!(
        second_cert,
        der(&rotated.cert_pem),
        "new certificate served without a restart"
    );
    assert_ne!(second_cert, first_cert);

    cp.script(&[StatusCode::NOT_FOUND]);
    let end = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the loop ends")
        .expect("join");
    assert_eq!(end, LinkEnd::HostDeleted);
    assert!(!path.exists(), "credentials removed");
    assert_eq!(hooks.deletions.load(Ordering::SeqCst), 1);
    assert_eq!(hooks.pauses.load(Ordering::SeqCst), 0);

    // The exact conversation.
    let seen = cp.seen();
    let calls: Vec<(&str, Option<&str>)> = seen
        .iter()
        .map(|s| (s.path.as_str(), s.host_token.as_deref()))
        .collect();
    let heartbeat = "/v1/hosts/host-1/heartbeat";
    assert_eq!(
        calls[..4],
        [
            ("/v1/hosts/register", None),
            (heartbeat, Some("jwt-1")),
            (heartbeat, Some("jwt-1")),
            ("/v1/hosts/auth/refresh", None),
        ]
    );
    assert_eq!(seen[3].body, json!({"refresh_token": "refresh-1"}));
    assert!(
        calls[4..].iter().all(|c| *c == (heartbeat, Some("jwt-2"))),
        "{calls:?}"
    );
    assert_eq!(seen[1].body["running_sandboxes"], 3);
    assert_eq!(seen[1].body["agent_version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn saved_credentials_are_reused_and_missing_ones_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = FakeCp::new(Duration::from_secs(7 * 86400));
    let url = start_cp(cp.clone()).await;
    let err = ControlPlaneLink::connect(&url, dir.path(), None, "127.0.0.1:1")
        .await
        .expect_err("never registered")
        .to_string();
    assert!(err.contains("--register"), "{err}");
    let err = ControlPlaneLink::connect(&url, dir.path(), Some("wrong"), "127.0.0.1:1")
        .await
        .expect_err("bad token")
        .to_string();
    assert!(
        err.contains("401") && err.contains("fake says unauthorized"),
        "{err}"
    );
    assert!(!dir.path().join(CREDENTIALS_FILE).exists());

    ControlPlaneLink::connect(&url, dir.path(), Some(REGISTRATION_TOKEN), "127.0.0.1:1")
        .await
        .expect("register");
    let again = ControlPlaneLink::connect(&url, dir.path(), None, "127.0.0.1:1")
        .await
        .expect("reuse");
    assert_eq!(again.credentials.token, "jwt-1");
    // The refused registration and the good one; loading the file asks nothing.
    assert_eq!(cp.seen().len(), 2, "no new registration without --register");
    // --register always registers again.
    let fresh =
        ControlPlaneLink::connect(&url, dir.path(), Some(REGISTRATION_TOKEN), "127.0.0.1:1")
            .await
            .expect("re-register");
    assert_eq!(fresh.credentials.token, "jwt-2");
}

#[tokio::test]
async fn certificate_close_to_expiry_is_refreshed_before_heartbeating() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One day of validity: inside the two-day renewal margin.
    let cp = FakeCp::new(Duration::from_secs(86400));
    let url = start_cp(cp.clone()).await;
    let link = ControlPlaneLink::connect(&url, dir.path(), Some(REGISTRATION_TOKEN), "127.0.0.1:1")
        .await
        .expect("register");
    let stop = CancellationToken::new();
    let run = tokio::spawn(
        link.heartbeat(Arc::new(Hooks::default()), fast())
            .run(stop.clone()),
    );
    eventually("a heartbeat", || {
        cp.seen().iter().any(|s| s.path.ends_with("/heartbeat"))
    })
    .await;
    stop.cancel();
    assert_eq!(run.await.expect("join"), LinkEnd::Stopped);
    let paths: Vec<String> = cp.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths[1], "/v1/hosts/auth/refresh", "{paths:?}");
    assert_eq!(cp.seen()[2].host_token.as_deref(), Some("jwt-2"));
}

#[tokio::test]
async fn refused_refresh_ends_the_link_and_outages_only_pause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = FakeCp::new(Duration::from_secs(7 * 86400));
    let url = start_cp(cp.clone()).await;
    let link = ControlPlaneLink::connect(&url, dir.path(), Some(REGISTRATION_TOKEN), "127.0.0.1:1")
        .await
        .expect("register");

    *cp.refresh_status.lock().expect("lock") = Some(StatusCode::UNAUTHORIZED);
    cp.script(&[StatusCode::FORBIDDEN]);
    let hooks = Arc::new(Hooks::default());
    let end = tokio::time::timeout(
        Duration::from_secs(10),
        link.heartbeat(hooks.clone(), fast())
            .run(CancellationToken::new()),
    )
    .await
    .expect("the loop ends");
    assert_eq!(end, LinkEnd::RefreshRefused);
    assert_eq!(hooks.pauses.load(Ordering::SeqCst), 1);
    assert_eq!(hooks.deletions.load(Ordering::SeqCst), 0);
    assert!(
        dir.path().join(CREDENTIALS_FILE).exists(),
        "kept for a later --register"
    );

    // An unreachable control plane (nothing listens on the port): the loop keeps trying and
    // pauses once after three failures; nothing is destroyed and nothing removed.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let mut creds = credentials::load(&dir.path().join(CREDENTIALS_FILE))
        .expect("load")
        .expect("creds");
    creds.token = "jwt-1".into();
    let offline = ControlPlaneLink {
        client: wrenn_agent::controlplane::ControlPlaneClient::new(&dead_url).expect("client"),
        credentials: creds,
        credentials_path: dir.path().join(CREDENTIALS_FILE),
        tls: link.tls.clone(),
    };
    let hooks = Arc::new(Hooks::default());
    let stop = CancellationToken::new();
    let run = tokio::spawn(
        offline
            .heartbeat(
                hooks.clone(),
                LinkOptions {
                    interval: Duration::from_millis(30),
                    ..LinkOptions::default()
                },
            )
            .run(stop.clone()),
    );
    eventually("a pause after three failures", || {
        hooks.pauses.load(Ordering::SeqCst) == 1
    })
    .await;
    // Several more failures: still one pause, no deletion.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    assert_eq!(run.await.expect("join"), LinkEnd::Stopped);
    assert_eq!(hooks.pauses.load(Ordering::SeqCst), 1);
    assert_eq!(hooks.deletions.load(Ordering::SeqCst), 0);
    assert!(dir.path().join(CREDENTIALS_FILE).exists());
}

/// Stops the agent process if a test fails while it runs.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Why the agent binary cannot serve here (it prepares host networking at start).
fn serve_prerequisites_missing() -> Option<String> {
    let mut missing = Vec::new();
    if !nix::unistd::Uid::effective().is_root() {
        missing.push("root".to_owned());
    }
    for tool in ["qemu-system-x86_64", "ip", "nft"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            missing.push(format!("{tool} on PATH"));
        }
    }
    if missing.is_empty() {
        return None;
    }
    let reason = missing.join(", ");
    assert!(
        std::env::var("WRENN_REQUIRE_VM_TESTS").as_deref() != Ok("1"),
        "prerequisites missing: {reason}"
    );
    Some(reason)
}

/// The real binary: `serve --cp-url … --register … --address …` registers, heartbeats, serves
/// the control plane (and only it) over mTLS, and exits when the host is deleted. Boots no VM.
#[tokio::test]
async fn agent_binary_joins_the_control_plane_and_leaves_when_deleted() {
    if let Some(reason) = serve_prerequisites_missing() {
        eprintln!("skipping: this test needs {reason}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = FakeCp::new(Duration::from_secs(7 * 86400));
    let url = start_cp(cp.clone()).await;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr").port()
    };
    let address = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log");
    let mut agent = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_wrenn-agent"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--slots", "32750-32751", "--metadata-port", "0"])
            .args(["--vmm", "qemu", "--accel", "tcg"])
            .args(["--listen", &address, "--address", &address])
            .args(["--cp-url", &url, "--register", REGISTRATION_TOKEN])
            .args(["--heartbeat-secs", "1"])
            .env("LOG_LEVEL", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start wrenn-agent"),
    );
    let stderr = || std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cp
        .seen()
        .iter()
        .any(|s| s.path == "/v1/hosts/host-1/heartbeat")
    {
        if let Ok(Some(status)) = agent.0.try_wait() {
            panic!("wrenn-agent exited with {status}:\n{}", stderr());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no heartbeat:\n{}",
            stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path = dir.path().join(CREDENTIALS_FILE);
    assert_eq!(mode(&path), 0o600);

    // The control plane's client: its certificate from the same CA.
    let issued = cp
        .ca
        .issue_client_cert("wrenn-cp", Duration::from_secs(3600))
        .expect("client cert");
    let identity = wrenn_http::tls::ReloadableCert::load(
        &Pem::text("cert", issued.cert_pem),
        &Pem::text("key", issued.key_pem),
    )
    .expect("identity");
    let ca_pem = Pem::text("ca", cp.ca.cert_pem());
    let config = wrenn_http::tls::client_config(&ca_pem, Some(Arc::new(identity))).expect("client");
    let rpc =
        wrenn_protocol::connect::ConnectClient::with_tls(format!("https://{address}"), config);
    let logs: wrenn_protocol::hostagent::GetLogsResponse = rpc
        .unary(
            &wrenn_protocol::envd::rpc_path(wrenn_protocol::hostagent::SERVICE, "GetLogs"),
            &wrenn_protocol::hostagent::GetLogsRequest { lines: 100 },
        )
        .await
        .expect("GetLogs over mTLS");
    assert!(
        logs.lines.iter().any(|l| l.contains("registered")),
        "{:?}",
        logs.lines
    );
    // Anyone else is turned away at the handshake.
    let anonymous = wrenn_http::tls::client_config(&ca_pem, None).expect("client");
    assert!(
        wrenn_protocol::connect::ConnectClient::with_tls(format!("https://{address}"), anonymous)
            .unary::<_, wrenn_protocol::hostagent::GetLogsResponse>(
                &wrenn_protocol::envd::rpc_path(wrenn_protocol::hostagent::SERVICE, "GetLogs"),
                &wrenn_protocol::hostagent::GetLogsRequest { lines: 1 },
            )
            .await
            .is_err()
    );

    cp.script(&[StatusCode::NOT_FOUND]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(status)) = agent.0.try_wait() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent did not exit after the host was deleted:\n{}",
            stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}:\n{}", stderr());
    assert!(!path.exists(), "credentials removed");
}
