//! The sandbox's identity, read from the VMM's metadata service.
//!
//! Firecracker serves it over MMDS (version 2: a session token first, then the data). envd polls
//! it at boot, and again after every fresh `/init`, which is how a VM restored from a snapshot
//! learns its new identity.

use crate::error::EnvdError;
use crate::state::EnvdState;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Firecracker's MMDS address.
pub const DEFAULT_MMDS_ADDRESS: &str = "http://169.254.169.254";
/// How long a fresh `/init` keeps re-polling.
pub const REPOLL_CAP: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Each request (connect, response, body) gets this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
const TOKEN_TTL_HEADER: &str = "X-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-metadata-token";
const MAX_BODY: usize = 64 * 1024;

/// What the host tells the guest about itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Metadata {
    #[serde(rename = "instanceID")]
    pub instance_id: String,
    #[serde(rename = "envID")]
    pub env_id: String,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(rename = "accessTokenHash", default)]
    pub access_token_hash: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata request failed: {0}")]
    Request(String),
    #[error("metadata request timed out after {0:?}")]
    Timeout(Duration),
    #[error("metadata service answered {0}")]
    Status(u16),
    #[error("malformed metadata: {0}")]
    Malformed(String),
}

pub type FetchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Metadata, MetadataError>> + Send + 'a>>;

/// Where metadata comes from: Firecracker's MMDS today; a QEMU host will provide the same JSON
/// another way, hence a trait (boxed future, so it works as `Arc<dyn MetadataSource>`).
pub trait MetadataSource: Send + Sync {
    fn fetch(&self) -> FetchFuture<'_>;
}

/// Firecracker's MMDS, version 2.
#[derive(Debug, Clone)]
pub struct Mmds {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Mmds {
    /// `base` is e.g. `http://169.254.169.254` (tests point it at a local server).
    pub fn new(base: impl Into<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(ATTEMPT_TIMEOUT));
        connector.set_nodelay(true);
        // No pooled connections: after a snapshot restore they would point at a dead peer.
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Self {
            base: base.into().trim_end_matches('/').to_string(),
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request and reads its body, all within `ATTEMPT_TIMEOUT`.
    async fn exchange(&self, req: http::Request<Full<Bytes>>) -> Result<Bytes, MetadataError> {
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| MetadataError::Request(format!("{}: {e}", self.base)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| MetadataError::Request(format!("reading the answer: {e}")))?
                .to_bytes();
            if !status.is_success() {
                return Err(MetadataError::Status(status.as_u16()));
            }
            Ok(body)
        };
        tokio::time::timeout(ATTEMPT_TIMEOUT, exchange)
            .await
            .map_err(|_| MetadataError::Timeout(ATTEMPT_TIMEOUT))?
    }

    async fn fetch_once(&self) -> Result<Metadata, MetadataError> {
        let bad_request = |e: http::Error| MetadataError::Request(format!("{}: {e}", self.base));
        let req = http::Request::put(format!("{}/latest/api/token", self.base))
            .header(TOKEN_TTL_HEADER, "60")
            .body(Full::new(Bytes::new()))
            .map_err(bad_request)?;
        let token = self.exchange(req).await?;
        let token = std::str::from_utf8(&token)
            .map_err(|_| MetadataError::Malformed("token is not UTF-8".into()))?
            .trim();
        let req = http::Request::get(format!("{}/", self.base))
            .header(TOKEN_HEADER, token)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(bad_request)?;
        let body = self.exchange(req).await?;
        let md: Metadata =
            serde_json::from_slice(&body).map_err(|e| MetadataError::Malformed(e.to_string()))?;
        validate(&md)?;
        Ok(md)
    }
}

impl MetadataSource for Mmds {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(self.fetch_once())
    }
}

/// The ids end up in environment variables and file contents: no empty id, no NUL bytes.
fn validate(md: &Metadata) -> Result<(), MetadataError> {
    if md.instance_id.is_empty() {
        return Err(MetadataError::Malformed("instanceID is empty".into()));
    }
    if md.instance_id.contains('\0') || md.env_id.contains('\0') {
        return Err(MetadataError::Malformed("an id contains a NUL byte".into()));
    }
    Ok(())
}

/// Makes the identity visible to processes: default env vars, and files in the run directory.
pub fn apply(state: &EnvdState, md: &Metadata) -> Result<(), EnvdError> {
    {
        let mut d = state.defaults.write().unwrap_or_else(|p| p.into_inner());
        d.env_vars
            .insert("WRENN_SANDBOX_ID".into(), md.instance_id.clone());
        d.env_vars
            .insert("WRENN_TEMPLATE_ID".into(), md.env_id.clone());
    }
    let dir = &state.settings.run_dir;
    for (name, value) in [
        (".WRENN_SANDBOX_ID", &md.instance_id),
        (".WRENN_TEMPLATE_ID", &md.env_id),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, value)
            .map_err(|e| EnvdError::io(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

/// Polls `source` every 50 ms until it answers (or `deadline` passes) and applies the answer.
/// Returns whether metadata was applied.
pub async fn poll_until(
    source: &dyn MetadataSource,
    state: &EnvdState,
    deadline: Option<Duration>,
) -> bool {
    let started = Instant::now();
    let mut attempts: u64 = 0;
    loop {
        attempts += 1;
        let fetched = match deadline {
            Some(d) => {
                let left = d.saturating_sub(started.elapsed());
                tokio::time::timeout(left, source.fetch())
                    .await
                    .unwrap_or(Err(MetadataError::Timeout(d)))
            }
            None => source.fetch().await,
        };
        match fetched {
            Ok(md) => {
                return match apply(state, &md) {
                    Ok(()) => {
                        tracing::info!(
                            sandbox = %md.instance_id,
                            template = %md.env_id,
                            attempts,
                            "sandbox metadata applied"
                        );
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot apply sandbox metadata");
                        false
                    }
                };
            }
            Err(e) => tracing::debug!(error = %e, attempts, "metadata not available yet"),
        }
        if deadline.is_some_and(|d| started.elapsed() + POLL_INTERVAL >= d) {
            tracing::warn!(attempts, "gave up polling the metadata service");
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Clears the "poll in flight" flag however the poll task ends.
struct InFlight(Arc<EnvdState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metadata_polling.store(false, Ordering::Release);
    }
}

/// Polls the configured source in the background. Does nothing without a source, or while a
/// poll is already running (it will see the same data), so repeated `/init`s don't pile up
/// pollers. Returns whether a poll was started.
pub fn spawn_poll(state: &Arc<EnvdState>, deadline: Option<Duration>) -> bool {
    let Some(source) = state.metadata.clone() else {
        return false;
    };
    if state
        .metadata_polling
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return false;
    }
    let guard = InFlight(state.clone());
    tokio::spawn(async move {
        poll_until(source.as_ref(), &guard.0, deadline).await;
        drop(guard);
    });
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cgroups::NoCgroups;
    use crate::port::{PortConfig, PortSubsystem};
    use crate::state::{Defaults, Settings};
    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, put};
    use std::sync::atomic::AtomicUsize;

    const TOKEN: &str = "tok-123";
    const BODY: &str = r#"{"instanceID":"sbx-1","envID":"tpl-2","address":"10.0.0.1:9","other":1}"#;

    #[derive(Clone)]
    struct Fake {
        /// GETs that answer 503 before the real answer.
        unavailable: Arc<AtomicUsize>,
        gets: Arc<AtomicUsize>,
    }

    async fn token(headers: HeaderMap) -> Response {
        match headers.get(TOKEN_TTL_HEADER).and_then(|v| v.to_str().ok()) {
            Some(ttl) if ttl.parse::<u32>().is_ok() => TOKEN.into_response(),
            _ => StatusCode::BAD_REQUEST.into_response(),
        }
    }

    async fn data(State(fake): State<Fake>, headers: HeaderMap) -> Response {
        fake.gets.fetch_add(1, Ordering::SeqCst);
        if headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) != Some(TOKEN) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let left = fake.unavailable.load(Ordering::SeqCst);
        if left > 0 {
            fake.unavailable.store(left - 1, Ordering::SeqCst);
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        ([(http::header::CONTENT_TYPE, "application/json")], BODY).into_response()
    }

    /// A local MMDS v2 look-alike; returns its base URL and its state.
    async fn fake_mmds(unavailable: usize) -> (String, Fake) {
        let fake = Fake {
            unavailable: Arc::new(AtomicUsize::new(unavailable)),
            gets: Arc::new(AtomicUsize::new(0)),
        };
        let app = Router::new()
            .route("/latest/api/token", put(token))
            .route("/", get(data))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        (format!("http://{addr}"), fake)
    }

    fn test_state(run_dir: &std::path::Path) -> EnvdState {
        EnvdState::new(
            Settings {
                in_vm: false,
                version: "test".into(),
                commit: "test".into(),
                run_dir: run_dir.to_path_buf(),
            },
            Defaults {
                env_vars: Default::default(),
                user: "root".into(),
                workdir: None,
            },
            PortSubsystem::new(PortConfig::default()),
            Arc::new(NoCgroups),
            None,
        )
    }

    fn expected() -> Metadata {
        Metadata {
            instance_id: "sbx-1".into(),
            env_id: "tpl-2".into(),
            address: Some("10.0.0.1:9".into()),
            access_token_hash: None,
        }
    }

    #[tokio::test]
    async fn fetch_follows_the_token_flow() {
        let (base, _) = fake_mmds(0).await;
        let md = Mmds::new(format!("{base}/")).fetch().await.unwrap();
        assert_eq!(md, expected());
    }

    #[tokio::test]
    async fn fake_rejects_missing_or_wrong_tokens() {
        let (base, _) = fake_mmds(0).await;
        let client = reqwest::Client::new();
        let no_token = client.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(no_token.status(), 401);
        let wrong = client
            .get(format!("{base}/"))
            .header(TOKEN_HEADER, "nope")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        let no_ttl = client
            .put(format!("{base}/latest/api/token"))
            .send()
            .await
            .unwrap();
        assert_eq!(no_ttl.status(), 400);
    }

    #[tokio::test]
    async fn fetch_reports_status_errors() {
        let (base, _) = fake_mmds(1).await;
        let err = Mmds::new(base).fetch().await.unwrap_err();
        assert!(matches!(err, MetadataError::Status(503)), "{err}");
    }

    #[tokio::test]
    async fn fetch_rejects_bad_urls() {
        let err = Mmds::new("not a url").fetch().await.unwrap_err();
        assert!(matches!(err, MetadataError::Request(_)), "{err}");
    }

    #[tokio::test]
    async fn poll_retries_until_the_service_answers() {
        let run = tempfile::tempdir().unwrap();
        let state = test_state(run.path());
        let (base, fake) = fake_mmds(3).await;
        let ok = poll_until(&Mmds::new(base), &state, Some(Duration::from_secs(10))).await;
        assert!(ok);
        assert_eq!(fake.gets.load(Ordering::SeqCst), 4);
        assert_eq!(
            state.defaults().env_vars.get("WRENN_SANDBOX_ID").unwrap(),
            "sbx-1"
        );
    }

    #[tokio::test]
    async fn poll_gives_up_at_the_deadline() {
        let run = tempfile::tempdir().unwrap();
        let state = test_state(run.path());
        // A port nobody listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let started = Instant::now();
        let ok = poll_until(
            &Mmds::new(format!("http://{addr}")),
            &state,
            Some(Duration::from_millis(300)),
        )
        .await;
        assert!(!ok);
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(!state.defaults().env_vars.contains_key("WRENN_SANDBOX_ID"));
        assert!(!run.path().join(".WRENN_SANDBOX_ID").exists());
    }

    #[tokio::test]
    async fn apply_sets_env_vars_and_files() {
        let run = tempfile::tempdir().unwrap();
        let state = test_state(run.path());
        apply(&state, &expected()).unwrap();
        let env = state.defaults().env_vars;
        assert_eq!(env.get("WRENN_SANDBOX_ID").unwrap(), "sbx-1");
        assert_eq!(env.get("WRENN_TEMPLATE_ID").unwrap(), "tpl-2");
        let read = |n: &str| std::fs::read_to_string(run.path().join(n)).unwrap();
        assert_eq!(read(".WRENN_SANDBOX_ID"), "sbx-1");
        assert_eq!(read(".WRENN_TEMPLATE_ID"), "tpl-2");

        // A restored VM gets a new identity over the old one.
        let mut next = expected();
        next.instance_id = "sbx-9".into();
        apply(&state, &next).unwrap();
        assert_eq!(read(".WRENN_SANDBOX_ID"), "sbx-9");
        assert_eq!(
            state.defaults().env_vars.get("WRENN_SANDBOX_ID").unwrap(),
            "sbx-9"
        );
    }

    #[tokio::test]
    async fn apply_reports_an_unwritable_run_dir() {
        let run = tempfile::tempdir().unwrap();
        let state = test_state(&run.path().join("missing"));
        assert!(apply(&state, &expected()).is_err());
    }

    #[test]
    fn metadata_json() {
        let md: Metadata =
            serde_json::from_str(r#"{"instanceID":"a","envID":"b","accessTokenHash":"h"}"#)
                .unwrap();
        assert_eq!(md.access_token_hash.as_deref(), Some("h"));
        assert_eq!(md.address, None);
        assert!(serde_json::from_str::<Metadata>(r#"{"envID":"b"}"#).is_err());
        let mut empty = md.clone();
        empty.instance_id.clear();
        assert!(validate(&empty).is_err());
        let mut nul = md;
        nul.env_id = "a\0b".into();
        assert!(validate(&nul).is_err());
    }

    #[tokio::test]
    async fn spawn_poll_needs_a_source_and_runs_once_at_a_time() {
        let run = tempfile::tempdir().unwrap();
        let state = Arc::new(test_state(run.path()));
        assert!(!spawn_poll(&state, Some(REPOLL_CAP)));

        let (base, _) = fake_mmds(0).await;
        let mut with_source = test_state(run.path());
        with_source.metadata = Some(Arc::new(Mmds::new(base)));
        let state = Arc::new(with_source);
        assert!(spawn_poll(&state, Some(REPOLL_CAP)));
        assert!(
            !spawn_poll(&state, Some(REPOLL_CAP)),
            "second poll while one runs"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !run.path().join(".WRENN_SANDBOX_ID").exists()
            || state.metadata_polling.load(Ordering::Acquire)
        {
            assert!(Instant::now() < deadline, "poll did not finish");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            spawn_poll(&state, Some(REPOLL_CAP)),
            "a finished poll can run again"
        );
    }
}
