//! Helpers shared by the CLI's integration tests: an in-test HTTP/WebSocket server acting as the
//! control plane, a `wrenn` command wired to it, and the PTY driver.
// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

/// The API key the test servers accept.
pub const TEST_KEY: &str = "wrn_test0123456789abcdef0123456789ab";

/// Longest any single step of a test may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(8);

/// An axum server on 127.0.0.1 with its own runtime thread; stopped and joined on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(router: Router) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("test server runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind test server");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        Self {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `wrenn` pointed at `base_url` with [`TEST_KEY`], and a private empty config directory (kept
/// alive by the returned guard) so the user's real config never leaks in.
pub fn wrenn(base_url: &str) -> (Command, tempfile::TempDir) {
    let config_home = tempfile::tempdir().expect("config dir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_wrenn"));
    command
        .env("WRENN_BASE_URL", base_url)
        .env("WRENN_API_KEY", TEST_KEY)
        .env("XDG_CONFIG_HOME", config_home.path())
        .env_remove("WRENN_PROXY_DOMAIN")
        .env_remove("WRENN_LOG");
    (command, config_home)
}

/// The 401 the control plane answers without the right key, or `None` when the key is right.
pub fn reject_bad_key(headers: &HeaderMap) -> Option<Response> {
    let key = headers
        .get("x-api-key")
        .and_then(|value| value.to_str().ok());
    (key != Some(TEST_KEY)).then(|| {
        let body =
            serde_json::json!({"error": {"code": "unauthorized", "message": "invalid API key"}});
        (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
    })
}
