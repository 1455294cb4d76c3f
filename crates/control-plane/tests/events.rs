//! `GET /v1/events/stream`: team scoping, order, frame format, fan-out across instances, and the
//! official Python SDK reading it.

mod support;

use bytes::Bytes;
use chrono::Utc;
use futures::{Stream, StreamExt};
use serde_json::Value;
use std::pin::Pin;
use std::time::Duration;
use support::{Tenant, TestApp};
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;
use wrenn_api_types::Metadata;
use wrenn_api_types::capsule::{Capsule, CapsuleStatus};
use wrenn_api_types::events::{Actor, ActorType, Event, EventKind, Outcome, Resource};
use wrenn_control_plane::events;

/// One SSE frame: its `event:` line, its joined `data:` lines, its comments.
#[derive(Debug, Default)]
struct Frame {
    event: Option<String>,
    data: Option<String>,
    comments: Vec<String>,
}

/// Reads frames off a streaming response the way the SDK does (split on blank lines).
struct SseReader {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: String,
}

impl SseReader {
    fn new(resp: reqwest::Response) -> Self {
        Self {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next frame, keepalive comments included.
    async fn next_frame(&mut self) -> Frame {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut frame = Frame::default();
                let mut data = Vec::new();
                for line in raw.lines().filter(|l| !l.is_empty()) {
                    if let Some(c) = line.strip_prefix(':') {
                        frame.comments.push(c.trim().to_string());
                    } else if let Some(e) = line.strip_prefix("event:") {
                        frame.event = Some(e.trim().to_string());
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push(d.trim_start().to_string());
                    } else {
                        panic!("unexpected SSE line {line:?}");
                    }
                }
                if !data.is_empty() {
                    frame.data = Some(data.join("\n"));
                }
                return frame;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an SSE frame within 10 s")
                .expect("the stream stays open")
                .expect("stream chunk");
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("SSE is UTF-8"));
        }
    }

    /// The next data frame as the typed event (the SDK's model), checking the `event:` line.
    async fn next_event(&mut self) -> Event {
        loop {
            let frame = self.next_frame().await;
            let Some(data) = frame.data else { continue };
            let event: Event = serde_json::from_str(&data).expect("frame is an Event");
            assert_eq!(frame.event.as_deref(), Some(event.event.as_str()));
            return event;
        }
    }
}

/// Opens a stream, checks its headers and the `connected` sentinel.
async fn open_stream(req: reqwest::RequestBuilder) -> SseReader {
    let resp = req.send().await.expect("open stream");
    assert_eq!(resp.status(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(header("x-accel-buffering").as_deref(), Some("no"));
    let mut reader = SseReader::new(resp);
    let first = reader.next_frame().await;
    assert_eq!(first.event.as_deref(), Some("connected"));
    let data: Value = serde_json::from_str(first.data.as_deref().expect("data")).expect("json");
    assert_eq!(data["event"], "connected");
    assert_eq!(data["message"], "connected");
    let ts = data["timestamp"].as_str().expect("timestamp string");
    chrono::DateTime::parse_from_rfc3339(ts).expect("an RFC 3339 timestamp with an offset");
    reader
}

fn stream_with_key(t: &TestApp, tenant: &Tenant) -> reqwest::RequestBuilder {
    t.http
        .get(t.url("/v1/events/stream"))
        .header("X-API-Key", &tenant.api_key)
}

/// Waits until `t`'s event listener delivers: it starts asynchronously, and an event stored
/// before it reads its starting point would not be replayed.
async fn wait_for_listener(t: &TestApp) {
    let mut rx = t.app.events.subscribe();
    let probe_team = Uuid::new_v4();
    for _ in 0..40 {
        events::publish(
            &t.app.db,
            probe_team,
            &host_event(EventKind::HostUp, "probe"),
        )
        .await;
        let got = tokio::time::timeout(Duration::from_millis(250), async {
            loop {
                match rx.recv().await {
                    Ok(e) if e.team_id == probe_team => return true,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return false,
                }
            }
        })
        .await;
        if got == Ok(true) {
            return;
        }
    }
    panic!("the event listener never delivered");
}

fn host_event(kind: EventKind, id: &str) -> Event {
    Event {
        event: kind,
        outcome: None,
        resource: Some(Resource {
            id: id.to_string(),
            kind: "host".into(),
        }),
        actor: Some(Actor::system()),
        metadata: Metadata::new(),
        error: None,
        sandbox: None,
        timestamp: Utc::now(),
    }
}

fn capsule_event(kind: EventKind, id: &str) -> Event {
    let now = Utc::now();
    Event {
        event: kind,
        outcome: kind.has_outcome().then_some(Outcome::Success),
        resource: Some(Resource {
            id: id.to_string(),
            kind: "sandbox".into(),
        }),
        actor: Some(Actor {
            kind: ActorType::ApiKey,
            id: "key-1".into(),
            name: "ci".into(),
        }),
        metadata: Metadata::from([("from".to_string(), "starting".to_string())]),
        error: None,
        sandbox: Some(Capsule {
            id: id.to_string(),
            status: CapsuleStatus::Running,
            template: "minimal-ubuntu".into(),
            vcpus: 2,
            memory_mb: 1024,
            timeout_sec: 300,
            created_at: now,
            started_at: Some(now),
            last_active_at: None,
            last_updated: now,
            metadata: Metadata::from([("envd_version".to_string(), "0.1.0".to_string())]),
            disk_size_mb: 5120,
            disk_used_mb: None,
            host_id: None,
        }),
        timestamp: now,
    }
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn each_team_sees_only_its_events_in_order(db: sqlx::PgPool) {
    let t = TestApp::start(db).await;
    let alice = t.tenant("alice").await;
    let bob = t.tenant("bob").await;
    wait_for_listener(&t).await;
    let mut a = open_stream(stream_with_key(&t, &alice)).await;
    // Bob signs in as a dashboard user: the JWT path gets the same feed.
    let mut b = open_stream(
        t.http
            .get(t.url("/api/v1/events/stream"))
            .bearer_auth(&bob.jwt),
    )
    .await;

    let a1 = capsule_event(EventKind::CapsuleCreate, "cl-a1");
    let b1 = capsule_event(EventKind::CapsulePause, "cl-b1");
    let mut a2 = capsule_event(EventKind::CapsuleStateChanged, "cl-a1");
    a2.outcome = None;
    let a3 = host_event(EventKind::HostDown, "host-1");
    let b2 = host_event(EventKind::HostUp, "host-2");
    for (team, event) in [
        (alice.team_id, &a1),
        (bob.team_id, &b1),
        (alice.team_id, &a2),
        (alice.team_id, &a3),
        (bob.team_id, &b2),
    ] {
        events::publish(&t.app.db, team, event).await;
    }
    for expected in [&a1, &a2, &a3] {
        assert_eq!(&a.next_event().await, expected);
    }
    // Bob's two arrive back to back: none of Alice's came between them.
    assert_eq!(b.next_event().await, b1);
    assert_eq!(b.next_event().await, b2);
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn the_stream_needs_credentials(db: sqlx::PgPool) {
    let t = TestApp::start(db).await;
    let resp = t
        .http
        .get(t.url("/v1/events/stream"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unauthorized");
    let resp = t
        .http
        .get(t.url("/v1/events/stream"))
        .header("X-API-Key", "wrn_00000000000000000000000000000000")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn events_raised_on_another_instance_reach_this_one(db: sqlx::PgPool) {
    let first = TestApp::start(db.clone()).await;
    let second = TestApp::start(db).await;
    let alice = first.tenant("alice").await;
    wait_for_listener(&first).await;
    let mut stream = open_stream(stream_with_key(&first, &alice)).await;

    // A snapshot deleted through the second instance's API.
    sqlx::query("INSERT INTO templates (name, type, team_id) VALUES ('nightly', 'snapshot', $1)")
        .bind(alice.team_id)
        .execute(&second.app.db)
        .await
        .expect("template");
    let resp = second
        .http
        .delete(second.url("/v1/snapshots/nightly"))
        .header("X-API-Key", &alice.api_key)
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    let event = stream.next_event().await;
    assert_eq!(event.event, EventKind::SnapshotDelete);
    assert_eq!(event.outcome, Some(Outcome::Success));
    assert_eq!(
        event.resource,
        Some(Resource {
            id: "nightly".into(),
            kind: "template".into()
        })
    );
    assert_eq!(event.actor.map(|a| a.kind), Some(ActorType::ApiKey));

    // And one published straight from the second instance's state.
    let down = host_event(EventKind::HostDown, "host-9");
    events::publish(&second.app.db, alice.team_id, &down).await;
    assert_eq!(stream.next_event().await, down);
}

/// The interpreter of the virtualenv holding the `wrenn` SDK (`scripts/lib.sh ensure_wrenn_sdk`).
async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the SDK answers within 30 s")
        .expect("read")
        .expect("a line")
}

fn sdk_python(test: &str) -> Option<String> {
    let python = std::env::var("WRENN_SDK_PYTHON").ok();
    if python.is_none() {
        eprintln!("SKIP {test}: WRENN_SDK_PYTHON is not set (scripts/test.sh sets it)");
    }
    python
}

const SDK_STREAM_SCRIPT: &str = r#"
import json, sys
from wrenn import WrennClient

client = WrennClient()
seen = []
for ev in client.events.stream():
    seen.append(ev.model_dump(mode="json", exclude_none=True))
    if len(seen) == 1:
        print("ready", flush=True)
    if len(seen) == 3:
        break
print(json.dumps(seen), flush=True)
"#;

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn the_python_sdk_reads_the_stream(db: sqlx::PgPool) {
    let Some(python) = sdk_python("the_python_sdk_reads_the_stream") else {
        return;
    };
    let t = TestApp::start(db).await;
    let alice = t.tenant("alice").await;
    wait_for_listener(&t).await;
    let mut child = tokio::process::Command::new(python)
        .arg("-c")
        .arg(SDK_STREAM_SCRIPT)
        .env("WRENN_API_KEY", &alice.api_key)
        .env("WRENN_BASE_URL", &t.base)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(next_line(&mut lines).await, "ready");
    let create = capsule_event(EventKind::CapsuleCreate, "cl-sdk1");
    let delete = Event {
        event: EventKind::SnapshotDelete,
        outcome: Some(Outcome::Success),
        resource: Some(Resource {
            id: "nightly".into(),
            kind: "template".into(),
        }),
        actor: Some(Actor::system()),
        metadata: Metadata::new(),
        error: None,
        sandbox: None,
        timestamp: Utc::now(),
    };
    events::publish(&t.app.db, alice.team_id, &create).await;
    events::publish(&t.app.db, alice.team_id, &delete).await;
    let seen: Value = serde_json::from_str(&next_line(&mut lines).await).expect("json");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("python exits")
        .expect("wait");
    assert!(status.success());

    let seen = seen.as_array().expect("array");
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0]["event"], "connected");
    assert!(seen[0]["timestamp"].is_string());
    assert_eq!(seen[1]["event"], "capsule.create");
    assert_eq!(seen[1]["outcome"], "success");
    assert_eq!(seen[1]["resource"]["id"], "cl-sdk1");
    assert_eq!(seen[1]["actor"]["type"], "api_key");
    assert_eq!(seen[1]["sandbox"]["id"], "cl-sdk1");
    assert_eq!(seen[1]["sandbox"]["status"], "running");
    assert_eq!(seen[1]["sandbox"]["vcpus"], 2);
    assert_eq!(seen[1]["sandbox"]["metadata"]["envd_version"], "0.1.0");
    assert_eq!(seen[2]["event"], "template.snapshot.delete");
    assert_eq!(seen[2]["resource"]["type"], "template");
    assert_eq!(seen[2]["actor"]["type"], "system");
}
