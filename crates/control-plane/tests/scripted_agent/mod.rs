//! A stand-in host agent for lifecycle and snapshot tests: it answers the lifecycle RPCs the way
//! its [`Script`] says (delays, error codes, listings), records every request, and serves
//! `/proxy/{id}/{port}/…` with a fixed page so port-proxy traffic can be observed.
#![allow(dead_code)]

use crate::fake_agent::{self, FakeAgent};
use axum::Router;
use axum::http::Uri;
use sqlx::PgPool;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wrenn_protocol::connect::{Code, Error, Message};
use wrenn_protocol::hostagent as pb;

/// What the agent does, and what it was asked.
#[derive(Debug, Default)]
pub struct Script {
    /// `"Method sandbox-or-template"`, in arrival order.
    pub calls: Vec<String>,
    pub pause_delay: Duration,
    pub pause_error: Option<Code>,
    pub resume_delay: Duration,
    pub resume_error: Option<Code>,
    pub snapshot_delay: Duration,
    pub snapshot_error: Option<Code>,
    pub snapshot_size: i64,
    pub create_error: Option<Code>,
    /// What `ListSandboxes` answers.
    pub listing: pb::ListSandboxesResponse,
    pub creates: Vec<pb::CreateSandboxRequest>,
    pub resumes: Vec<pb::ResumeSandboxRequest>,
    pub snapshots: Vec<pb::CreateSnapshotRequest>,
    pub snapshot_deletes: Vec<pb::DeleteSnapshotRequest>,
    /// Paths the port proxy forwarded.
    pub proxied: Vec<String>,
}

pub type Shared = Arc<Mutex<Script>>;

pub struct ScriptedAgent {
    pub agent: FakeAgent,
    pub script: Shared,
}

impl ScriptedAgent {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().expect("script lock")
    }

    /// How many calls of `method` arrived.
    pub fn count(&self, method: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.split(' ').next() == Some(method))
            .count()
    }

    /// The method names called, in order.
    pub fn methods(&self) -> Vec<String> {
        self.lock()
            .calls
            .iter()
            .filter_map(|c| c.split(' ').next().map(str::to_string))
            .collect()
    }
}

fn fail(code: Option<Code>) -> Result<(), Error> {
    match code {
        None => Ok(()),
        Some(code) => Err(Error::new(code, format!("scripted {code:?}"))),
    }
}

/// Registers `method`: records the call (and the request via `keep`), then runs `answer` with
/// the script locked and sleeps the delay it returns before replying.
fn route<Req, Resp, K, A>(
    router: Router,
    script: &Shared,
    method: &'static str,
    keep: K,
    answer: A,
) -> Router
where
    Req: Message + Clone + 'static,
    Resp: Message + 'static,
    K: Fn(&mut Script, &Req) -> String + Clone + Send + Sync + 'static,
    A: Fn(&mut Script) -> (Duration, Result<Resp, Error>) + Clone + Send + Sync + 'static,
{
    let script = script.clone();
    fake_agent::unary(router, method, move |req: Req| {
        let script = script.clone();
        let keep = keep.clone();
        let answer = answer.clone();
        async move {
            let (delay, result) = {
                let mut s = script.lock().expect("script lock");
                let subject = keep(&mut s, &req);
                s.calls.push(format!("{method} {subject}"));
                answer(&mut s)
            };
            tokio::time::sleep(delay).await;
            result
        }
    })
}

fn now<T>(value: T) -> (Duration, Result<T, Error>) {
    (Duration::ZERO, Ok(value))
}

fn point(ts: i64) -> pb::MetricPoint {
    pb::MetricPoint {
        timestamp_unix: ts,
        cpu_pct: 12.5,
        mem_bytes: 1 << 20,
        disk_bytes: 1 << 21,
    }
}

/// Starts the agent on a loopback port, registered as an online host.
pub async fn start(db: &PgPool) -> ScriptedAgent {
    let script: Shared = Arc::new(Mutex::new(Script {
        snapshot_size: 4096,
        ..Script::default()
    }));
    let mut r = Router::new();
    r = route(
        r,
        &script,
        "PauseSandbox",
        |_, q: &pb::PauseSandboxRequest| q.sandbox_id.clone(),
        |s| {
            (
                s.pause_delay,
                fail(s.pause_error).map(|_| pb::PauseSandboxResponse {}),
            )
        },
    );
    r = route(
        r,
        &script,
        "ResumeSandbox",
        |s, q: &pb::ResumeSandboxRequest| {
            s.resumes.push(q.clone());
            q.sandbox_id.clone()
        },
        |s| {
            let resp = pb::ResumeSandboxResponse {
                status: "running".into(),
                host_ip: "10.11.0.99".into(),
                metadata: HashMap::from([("envd_version".to_string(), "9.9.9".to_string())]),
                ..Default::default()
            };
            (s.resume_delay, fail(s.resume_error).map(|_| resp))
        },
    );
    r = route(
        r,
        &script,
        "CreateSnapshot",
        |s, q: &pb::CreateSnapshotRequest| {
            s.snapshots.push(q.clone());
            q.template_id.clone()
        },
        |s| {
            let resp = pb::CreateSnapshotResponse {
                size_bytes: s.snapshot_size,
                ..Default::default()
            };
            (s.snapshot_delay, fail(s.snapshot_error).map(|_| resp))
        },
    );
    r = route(
        r,
        &script,
        "DeleteSnapshot",
        |s, q: &pb::DeleteSnapshotRequest| {
            s.snapshot_deletes.push(q.clone());
            q.template_id.clone()
        },
        |_| now(pb::DeleteSnapshotResponse {}),
    );
    r = route(
        r,
        &script,
        "CreateSandbox",
        |s, q: &pb::CreateSandboxRequest| {
            s.creates.push(q.clone());
            q.sandbox_id.clone()
        },
        |s| {
            let resp = pb::CreateSandboxResponse {
                host_ip: "10.11.0.5".into(),
                ..Default::default()
            };
            (Duration::ZERO, fail(s.create_error).map(|_| resp))
        },
    );
    r = route(
        r,
        &script,
        "DestroySandbox",
        |_, q: &pb::DestroySandboxRequest| q.sandbox_id.clone(),
        |_| now(pb::DestroySandboxResponse {}),
    );
    r = route(
        r,
        &script,
        "ListSandboxes",
        |_, _: &pb::ListSandboxesRequest| String::new(),
        |s| now(s.listing.clone()),
    );
    r = route(
        r,
        &script,
        "FlushSandboxMetrics",
        |_, q: &pb::FlushSandboxMetricsRequest| q.sandbox_id.clone(),
        |_| {
            now(pb::FlushSandboxMetricsResponse {
                points_10m: vec![point(1_000), point(1_001)],
                points_2h: vec![point(990)],
                points_24h: vec![point(900)],
            })
        },
    );
    r = route(
        r,
        &script,
        "PingSandbox",
        |_, q: &pb::PingSandboxRequest| q.sandbox_id.clone(),
        |_| now(pb::PingSandboxResponse {}),
    );
    r = route(
        r,
        &script,
        "Exec",
        |_, q: &pb::ExecRequest| q.sandbox_id.clone(),
        |_| {
            now(pb::ExecResponse {
                stdout: b"woken\n".to_vec().into(),
                exit_code: 0,
                ..Default::default()
            })
        },
    );
    let proxied = script.clone();
    r = r.fallback(move |uri: Uri| {
        let proxied = proxied.clone();
        async move {
            let path = uri.path().to_string();
            proxied
                .lock()
                .expect("script lock")
                .proxied
                .push(path.clone());
            format!("proxied {path}")
        }
    });
    ScriptedAgent {
        agent: FakeAgent::start(db, r).await,
        script,
    }
}

/// Polls `check` every 50 ms for up to 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A capsule row of `team` on `host` in `status` (2 vCPUs, 1 GiB,
/// `minimal-ubuntu`, a 120 s idle timeout, one metadata label); returns its public id.
pub async fn capsule(db: &PgPool, team: uuid::Uuid, host: uuid::Uuid, status: &str) -> String {
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO sandboxes (id, team_id, host_id, status, vcpus, memory_mb, disk_size_mb,
                                template, template_id, timeout_sec, metadata)
         VALUES ($1, $2, $3, $4, 2, 1024, 4096, 'minimal-ubuntu',
                 '00000000-0000-0000-0000-000000000001', 120, '{\"project\": \"demo\"}')",
    )
    .bind(id)
    .bind(team)
    .bind(host)
    .bind(status)
    .execute(db)
    .await
    .expect("capsule");
    wrenn_control_plane::ids::capsule(id)
}

/// A capsule's status as stored.
pub async fn status(db: &PgPool, id: &str) -> String {
    use wrenn_control_plane::ids::{self, IdKind};
    sqlx::query_scalar("SELECT status FROM sandboxes WHERE id = $1")
        .bind(ids::decode(IdKind::Capsule, id).expect("id"))
        .fetch_one(db)
        .await
        .expect("status")
}
