//! What the capsule-operation tests share: WebSocket helpers, memory readings, and
//! `DevPlatform`, a stand-in for `support::platform::Platform` with the same shape (`cp`,
//! `create_capsule(&tenant)`) that needs neither agent registration nor the capsule lifecycle
//! routes: the host and capsule rows are inserted directly and the VM is created with the
//! agent's `CreateSandbox`. The tests use the shared `Platform`; `DevPlatform` is what
//! `WRENN_OPS_DEV_PLATFORM=1` selects, to exercise these routes while the rest is in flux.
#![allow(dead_code)]

use crate::support::platform::Platform;
use crate::support::{TestApp, Tenant};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;
use wrenn_control_plane::ids::{self, IdKind};
use wrenn_control_plane::state::Settings;
use wrenn_protocol::connect::ConnectClient;
use wrenn_protocol::envd::rpc_path;
use wrenn_protocol::hostagent::{self as pb, SERVICE};
use wrenn_testing::{AgentOptions, AgentProcess};

/// The control plane (plain HTTP to agents) with one agent registered as an online host.
pub struct DevPlatform {
    pub cp: TestApp,
    pub agent: AgentProcess,
    rpc: ConnectClient,
    host_id: Uuid,
}

impl DevPlatform {
    /// `slots` must not overlap another running test's.
    pub async fn start(db: PgPool, slots: &str) -> Self {
        let settings = Settings {
            // Nothing sends heartbeats: the host must not be marked unreachable mid-test.
            heartbeat_timeout: Duration::from_secs(24 * 3600),
            ..Settings::default()
        };
        let cp = TestApp::start_with(db, settings, false).await;
        let binary = std::env::var_os("WRENN_AGENT_BIN")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| wrenn_testing::workspace_binary("wrenn-agent"));
        let agent = AgentProcess::start(AgentOptions {
            binary,
            slots: slots.to_string(),
            port: None,
            extra_args: vec!["--destroy-on-exit".into()],
        });
        let host_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO hosts (id, address, status, last_heartbeat_at, cpu_cores, memory_mb)
             VALUES ($1, $2, 'online', now(), 2, 4096)",
        )
        .bind(host_id)
        .bind(agent.address())
        .execute(&cp.app.db)
        .await
        .expect("host row");
        let rpc = ConnectClient::new(format!("http://{}", agent.address()))
            .with_unary_timeout(Duration::from_secs(300));
        Self {
            cp,
            agent,
            rpc,
            host_id,
        }
    }

    /// A running capsule of `tenant`'s: its row, and its VM on the agent.
    pub async fn create_capsule(&self, tenant: &Tenant) -> String {
        let id = Uuid::new_v4();
        let public = ids::encode(IdKind::Capsule, id);
        sqlx::query(
            "INSERT INTO sandboxes (id, team_id, host_id, status, started_at, last_active_at)
             VALUES ($1, $2, $3, 'starting', now(), now())",
        )
        .bind(id)
        .bind(tenant.team_id)
        .bind(self.host_id)
        .execute(&self.cp.app.db)
        .await
        .expect("capsule row");
        let req = pb::CreateSandboxRequest {
            sandbox_id: public.clone(),
            vcpus: 1,
            memory_mb: 512,
            team_id: ids::encode(IdKind::Team, tenant.team_id),
            template_id: Uuid::nil().to_string(),
            ..Default::default()
        };
        let created: Result<pb::CreateSandboxResponse, _> = self
            .rpc
            .unary(&rpc_path(SERVICE, "CreateSandbox"), &req)
            .await;
        if let Err(e) = created {
            panic!("create {public}: {e:?}\nagent log:\n{}", self.agent.log_tail());
        }
        // Running only now: the host monitor stops "running" rows the agent does not know.
        set_status(&self.cp, &public, "running").await;
        public
    }
}

/// Sets a capsule's status in the database (to see the routes refuse a paused one).
pub async fn set_status(cp: &TestApp, capsule: &str, status: &str) {
    let id = ids::decode(IdKind::Capsule, capsule).expect("capsule id");
    sqlx::query("UPDATE sandboxes SET status = $2 WHERE id = $1")
        .bind(id)
        .bind(status)
        .execute(&cp.app.db)
        .await
        .expect("status");
}

/// `ws://…` for an API path.
pub fn ws_url(cp: &TestApp, path: &str) -> String {
    cp.url(path).replacen("http://", "ws://", 1)
}

/// The platform a test file runs on: the shared one, or [`DevPlatform`] when
/// `WRENN_OPS_DEV_PLATFORM=1`.
pub enum AnyPlatform {
    Shared(Box<Platform>),
    Dev(Box<DevPlatform>),
}

impl AnyPlatform {
    /// `None` (the test is skipped) when VMs cannot run here. `dev_slots` are the
    /// [`DevPlatform`]'s network slots.
    pub async fn start(db: PgPool, dev_slots: &str) -> Option<Self> {
        if let Some(reason) = wrenn_testing::vm::prerequisites_missing() {
            eprintln!("skipping: this test needs {reason}");
            return None;
        }
        Some(if std::env::var("WRENN_OPS_DEV_PLATFORM").as_deref() == Ok("1") {
            Self::Dev(Box::new(DevPlatform::start(db, dev_slots).await))
        } else {
            Self::Shared(Box::new(Platform::start(db).await))
        })
    }

    pub fn cp(&self) -> &TestApp {
        match self {
            Self::Shared(p) => &p.cp,
            Self::Dev(p) => &p.cp,
        }
    }

    pub async fn create_capsule(&self, tenant: &Tenant) -> String {
        match self {
            Self::Shared(p) => p.create_capsule(tenant).await,
            Self::Dev(p) => p.create_capsule(tenant).await,
        }
    }

    pub fn agent_log(&self) -> String {
        match self {
            Self::Shared(p) => p.agent.log_tail(),
            Self::Dev(p) => p.agent.log_tail(),
        }
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket, with `X-API-Key` when `api_key` is given.
pub async fn ws_connect(url: &str, api_key: Option<&str>) -> Result<Ws, Box<dyn std::error::Error>> {
    let mut req = url.into_client_request()?;
    if let Some(key) = api_key {
        req.headers_mut().insert("X-API-Key", key.parse()?);
    }
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(ws)
}

/// What came over a socket, for assertions.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Json(Value),
    Binary(Vec<u8>),
    Closed,
}

/// The next text or binary frame (protocol pings skipped), within `timeout`.
pub async fn next_frame(ws: &mut Ws, timeout: Duration) -> Frame {
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return Frame::Json(serde_json::from_str(t.as_str()).expect("JSON text frame"));
                }
                Some(Ok(Message::Binary(b))) => return Frame::Binary(b.to_vec()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Frame::Closed,
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .expect("a frame in time")
}

/// Every frame until the socket closes.
pub async fn frames_until_close(ws: &mut Ws, timeout: Duration) -> Vec<Frame> {
    let deadline = Instant::now() + timeout;
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_frame(ws, left).await {
            Frame::Closed => return frames,
            f => frames.push(f),
        }
    }
}

pub async fn send_json(ws: &mut Ws, value: Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .expect("send");
}

/// This process's resident memory now, in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
