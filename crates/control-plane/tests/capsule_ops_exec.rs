//! Commands, processes, the exec and process streams, and terminals, end to end: the control
//! plane's routes against a real agent running a real VM (one capsule for the whole file; each
//! area is a function of checks on it).

mod capsule_ops_support;
mod support;

use base64::Engine;
use capsule_ops_support::{
    Frame, Ws, frames_until_close, next_frame, send_json, set_status, ws_connect, ws_url,
};
use futures::SinkExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::Tenant;
use support::platform::Platform;
use tokio_tungstenite::tungstenite::Message;

const FRAME_WAIT: Duration = Duration::from_secs(60);

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn exec_processes_streams_and_terminals(db: sqlx::PgPool) {
    wrenn_testing::require_vm!();
    let p = Platform::start(db).await;
    let alice = p.cp.tenant("alice").await;
    let id = p.create_capsule(&alice).await;
    let c = Ctx {
        p: &p,
        key: alice.api_key.clone(),
        id: id.clone(),
    };
    foreground_exec(&c).await;
    background_processes(&c).await;
    exec_stream(&c, &alice).await;
    terminals(&c).await;
    scope_and_state(&c).await;
}

struct Ctx<'a> {
    p: &'a Platform,
    key: String,
    id: String,
}

impl Ctx<'_> {
    async fn exec(&self, body: Value) -> (u16, Value) {
        let resp = self
            .p
            .cp
            .http
            .post(self.p.cp.url(&format!("/v1/capsules/{}/exec", self.id)))
            .header("X-API-Key", &self.key)
            .json(&body)
            .send()
            .await
            .expect("exec request");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("exec JSON"))
    }

    /// `sh -c script` in the foreground; its stdout.
    async fn sh(&self, script: &str) -> String {
        let (status, body) = self
            .exec(json!({"cmd": "/bin/sh", "args": ["-c", script], "background": false}))
            .await;
        assert_eq!(status, 200, "{script}: {body}");
        body["stdout"].as_str().expect("stdout").to_string()
    }

    async fn processes(&self) -> Vec<Value> {
        let resp = self
            .p
            .cp
            .http
            .get(
                self.p
                    .cp
                    .url(&format!("/v1/capsules/{}/processes", self.id)),
            )
            .header("X-API-Key", &self.key)
            .send()
            .await
            .expect("list");
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.expect("json");
        body["processes"]
            .as_array()
            .expect("processes array")
            .clone()
    }

    async fn kill(&self, selector: &str, query: &str) -> (u16, Value) {
        let resp = self
            .p
            .cp
            .http
            .delete(self.p.cp.url(&format!(
                "/v1/capsules/{}/processes/{selector}{query}",
                self.id
            )))
            .header("X-API-Key", &self.key)
            .send()
            .await
            .expect("kill");
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn ws(&self, path: &str) -> Ws {
        ws_connect(
            &ws_url(&self.p.cp, &format!("/v1/capsules/{}{path}", self.id)),
            Some(&self.key),
        )
        .await
        .expect("WebSocket upgrade")
    }
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

async fn foreground_exec(c: &Ctx<'_>) {
    // envs and an absolute cwd apply in the foreground.
    let (status, body) = c
        .exec(
            json!({"cmd": "/bin/sh", "args": ["-c", "echo $FOO; pwd"], "background": false,
                     "envs": {"FOO": "bar baz"}, "cwd": "/tmp"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stdout"], "bar baz\n/tmp\n");
    assert_eq!(body["encoding"], "utf-8");
    assert_eq!(body["exit_code"], 0);
    assert_eq!(body["sandbox_id"], c.id.as_str());
    assert!(body["duration_ms"].as_i64().expect("duration") >= 0);

    // The default working directory is the home; a relative cwd is relative to it.
    let home = c.sh("printf %s \"$HOME\"").await;
    assert!(home.starts_with('/'), "{home}");
    assert_eq!(c.sh("pwd").await, format!("{home}\n"));
    c.sh("mkdir -p repo/sub").await;
    let (status, body) = c
        .exec(json!({"cmd": "/bin/sh", "args": ["-c", "pwd"], "cwd": "repo/sub"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stdout"], format!("{home}/repo/sub\n"));

    // A non-zero exit is a result; stdout and stderr stay apart.
    let (status, body) = c
        .exec(json!({"cmd": "/bin/sh", "args": ["-c", "echo out; echo err >&2; exit 42"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["stdout"], &body["stderr"], &body["exit_code"]),
        (&json!("out\n"), &json!("err\n"), &json!(42))
    );

    // Output that is not UTF-8 comes back in base64, both streams.
    let (status, body) = c
        .exec(json!({"cmd": "/bin/sh", "args": ["-c", "printf '\\377\\376'; printf 'é' >&2"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["encoding"], "base64");
    let b64 = base64::engine::general_purpose::STANDARD;
    let stdout = b64
        .decode(body["stdout"].as_str().expect("stdout"))
        .expect("b64");
    let stderr = b64
        .decode(body["stderr"].as_str().expect("stderr"))
        .expect("b64");
    assert_eq!(stdout, vec![0xff, 0xfe]);
    assert_eq!(stderr, "é".as_bytes());

    // A command over its limit is killed and the call answers within limit + 10 s.
    let started = Instant::now();
    let (status, body) = c
        .exec(json!({"cmd": "/bin/sh", "args": ["-c", "sleep 120 # timeout-probe"], "timeout_sec": 2}))
        .await;
    let took = started.elapsed();
    assert_eq!(status, 502, "{body}");
    assert_eq!(error_code(&body), "agent_error");
    assert!(took < Duration::from_secs(12), "took {took:?}");
    let left = c.processes().await;
    assert!(
        !left.iter().any(|p| p.to_string().contains("timeout-probe")),
        "the timed-out command still runs: {left:?}"
    );

    // Refusals.
    for (body, why) in [
        (json!({"cmd": ""}), "empty cmd"),
        (json!({"args": ["x"]}), "missing cmd"),
        (
            json!({"cmd": "/bin/true", "timeout_sec": -1}),
            "negative timeout",
        ),
        (
            json!({"cmd": "/bin/true", "timeout_sec": 86_401}),
            "timeout over a day",
        ),
        (
            json!({"cmd": "/bin/true", "cwd": "/does/not/exist"}),
            "missing cwd",
        ),
    ] {
        let (status, resp) = c.exec(body).await;
        assert_eq!(status, 400, "{why}: {resp}");
        assert_eq!(error_code(&resp), "invalid_request", "{why}");
    }
}

async fn background_processes(c: &Ctx<'_>) {
    // Start, with envs and cwd applied.
    let (status, started) = c
        .exec(json!({"cmd": "/bin/sh", "args": ["-c", "echo \"$X\" > bg-out; pwd >> bg-out; sleep 300"],
                     "background": true, "envs": {"X": "from-bg"}, "cwd": "/tmp"}))
        .await;
    assert_eq!(status, 202, "{started}");
    let pid = started["pid"].as_u64().expect("pid");
    let tag = started["tag"].as_str().expect("tag").to_string();
    assert!(pid > 0);
    assert!(tag.starts_with("proc-") && tag.len() == 13, "{tag}");
    assert_eq!(started["sandbox_id"], c.id.as_str());
    let listed = c.processes().await;
    let me = listed
        .iter()
        .find(|p| p["pid"] == json!(pid))
        .unwrap_or_else(|| panic!("pid {pid} not listed: {listed:?}"));
    assert_eq!(me["tag"], tag.as_str());
    assert_eq!(me["cmd"], "/bin/sh");
    assert_eq!(me["args"][0], "-c");
    wait_for(|| async { c.sh("cat /tmp/bg-out 2>/dev/null").await == "from-bg\n/tmp\n" }).await;

    // Kill by pid: 204, gone from the list; again: 404.
    assert_eq!(c.kill(&pid.to_string(), "").await.0, 204);
    wait_for(|| async { !c.processes().await.iter().any(|p| p["pid"] == json!(pid)) }).await;
    let (status, body) = c.kill(&pid.to_string(), "").await;
    assert_eq!((status, error_code(&body)), (404, "not_found"), "{body}");
    let (status, body) = c.kill("999999", "").await;
    assert_eq!((status, error_code(&body)), (404, "not_found"), "{body}");
    let (status, body) = c.kill("1", "?signal=SIGHUP").await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "invalid_request"),
        "{body}"
    );

    // SIGTERM by tag.
    let (_, term) = c
        .exec(json!({"cmd": "/bin/sleep", "args": ["300"], "background": true, "tag": "term-me"}))
        .await;
    assert_eq!(term["tag"], "term-me");
    assert_eq!(c.kill("term-me", "?signal=SIGTERM").await.0, 204);
    wait_for(|| async { !c.processes().await.iter().any(|p| p["tag"] == "term-me") }).await;

    // Re-attach by pid: output from now on, then the real exit code, then close.
    let (_, ticker) = c
        .exec(json!({"cmd": "/bin/sh", "background": true,
                     "args": ["-c", "sleep 1; for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.3; done; exit 7"]}))
        .await;
    let ticker_pid = ticker["pid"].as_u64().expect("pid");
    let mut ws = c.ws(&format!("/processes/{ticker_pid}/stream")).await;
    let frames = frames_until_close(&mut ws, FRAME_WAIT).await;
    assert_eq!(
        frames.first(),
        Some(&Frame::Json(json!({"type": "start", "pid": ticker_pid}))),
        "{frames:?}"
    );
    let stdout: String = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Json(v) if v["type"] == "stdout" => v["data"].as_str().map(str::to_string),
            _ => None,
        })
        .collect();
    assert!(stdout.contains("tick 6\n"), "{frames:?}");
    assert_eq!(
        frames.last(),
        Some(&Frame::Json(json!({"type": "exit", "exit_code": 7}))),
        "{frames:?}"
    );

    // Attaching to a process that has exited (or never existed) fails at once, never silently.
    for selector in [
        ticker_pid.to_string(),
        "999999".to_string(),
        "no-such-tag".to_string(),
    ] {
        let mut ws = c.ws(&format!("/processes/{selector}/stream")).await;
        let frames = frames_until_close(&mut ws, Duration::from_secs(20)).await;
        assert_eq!(frames.len(), 1, "{selector}: {frames:?}");
        assert_eq!(
            frames[0].clone().json()["type"],
            "error",
            "{selector}: {frames:?}"
        );
    }

    // Re-attach by tag, then a kill ends the stream with an exit.
    let (_, sleeper) = c
        .exec(json!({"cmd": "/bin/sleep", "args": ["300"], "background": true, "tag": "sleeper"}))
        .await;
    let mut ws = c.ws("/processes/sleeper/stream").await;
    assert_eq!(
        next_frame(&mut ws, FRAME_WAIT).await,
        Frame::Json(json!({"type": "start", "pid": sleeper["pid"]}))
    );
    assert_eq!(c.kill("sleeper", "").await.0, 204);
    let frames = frames_until_close(&mut ws, FRAME_WAIT).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].clone().json()["type"], "exit");
}

impl Frame {
    fn json(self) -> Value {
        match self {
            Frame::Json(v) => v,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }
}

/// Runs `script` over the exec stream with header auth; all frames.
async fn stream_frames(c: &Ctx<'_>, script: &str) -> Vec<Frame> {
    let mut ws = c.ws("/exec/stream").await;
    send_json(
        &mut ws,
        json!({"type": "start", "cmd": "/bin/sh", "args": ["-c", script]}),
    )
    .await;
    frames_until_close(&mut ws, FRAME_WAIT).await
}

fn collect(frames: &[Frame], kind: &str) -> String {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Json(v) if v["type"] == kind => v["data"].as_str().map(str::to_string),
            _ => None,
        })
        .collect()
}

async fn exec_stream(c: &Ctx<'_>, alice: &Tenant) {
    // Frame order: start, output, one exit, close; stdout and stderr apart.
    let frames = stream_frames(c, "echo a; echo b >&2; printf 'é'; exit 3").await;
    assert!(
        matches!(&frames[0], Frame::Json(v) if v["type"] == "start" && v["pid"].as_u64() > Some(0)),
        "{frames:?}"
    );
    assert_eq!(
        frames.last(),
        Some(&Frame::Json(json!({"type": "exit", "exit_code": 3})))
    );
    let finals = frames
        .iter()
        .filter(|f| matches!(f, Frame::Json(v) if v["type"] == "exit" || v["type"] == "error"))
        .count();
    assert_eq!(finals, 1, "{frames:?}");
    assert!(
        frames.iter().all(|f| matches!(f, Frame::Json(_))),
        "binary frame: {frames:?}"
    );
    assert_eq!(collect(&frames, "stdout"), "a\né");
    assert_eq!(collect(&frames, "stderr"), "b\n");

    // Multi-byte characters are never split across frames (output arrives in many chunks).
    let frames = stream_frames(
        c,
        "i=0; while [ $i -lt 4000 ]; do printf '€🦀€🦀€'; i=$((i+1)); done",
    )
    .await;
    let stdout = collect(&frames, "stdout");
    assert!(!stdout.contains('\u{fffd}'), "a character was split");
    assert_eq!(stdout, "€🦀€🦀€".repeat(4000));
    assert!(
        frames.len() > 3,
        "expected several output frames: {}",
        frames.len()
    );

    // `stop` kills the command: exit follows.
    let mut ws = c.ws("/exec/stream").await;
    send_json(
        &mut ws,
        json!({"type": "start", "cmd": "/bin/sleep", "args": ["300"]}),
    )
    .await;
    assert_eq!(
        next_frame(&mut ws, FRAME_WAIT).await.json()["type"],
        "start"
    );
    send_json(&mut ws, json!({"type": "stop"})).await;
    let frames = frames_until_close(&mut ws, FRAME_WAIT).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].clone().json()["type"], "exit");

    // Leaving the socket kills the command it started (nobody could read its output).
    let mut ws = c.ws("/exec/stream").await;
    send_json(
        &mut ws,
        json!({"type": "start", "cmd": "/bin/sh", "args": ["-c", "sleep 300 # orphan-probe"]}),
    )
    .await;
    assert_eq!(
        next_frame(&mut ws, FRAME_WAIT).await.json()["type"],
        "start"
    );
    assert!(
        c.processes()
            .await
            .iter()
            .any(|p| p.to_string().contains("orphan-probe"))
    );
    drop(ws);
    wait_for(|| async {
        !c.processes()
            .await
            .iter()
            .any(|p| p.to_string().contains("orphan-probe"))
    })
    .await;

    // A wrong first message: one error frame, then close.
    let mut ws = c.ws("/exec/stream").await;
    send_json(&mut ws, json!({"type": "kill"})).await;
    let frames = frames_until_close(&mut ws, FRAME_WAIT).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].clone().json()["type"], "error");

    // A command that cannot start is an error frame too.
    let frames = {
        let mut ws = c.ws("/exec/stream").await;
        send_json(&mut ws, json!({"type": "start", "cmd": "/no/such/binary"})).await;
        frames_until_close(&mut ws, FRAME_WAIT).await
    };
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].clone().json()["type"], "error");

    // Authentication by first message (API key or session token) instead of a header.
    let url = ws_url(&c.p.cp, &format!("/v1/capsules/{}/exec/stream", c.id));
    for token in [alice.api_key.as_str(), alice.jwt.as_str()] {
        let mut ws = ws_connect(&url, None)
            .await
            .expect("upgrade without credentials");
        send_json(&mut ws, json!({"type": "auth", "token": token})).await;
        send_json(
            &mut ws,
            json!({"type": "start", "cmd": "/bin/echo", "args": ["hi"]}),
        )
        .await;
        let frames = frames_until_close(&mut ws, FRAME_WAIT).await;
        assert_eq!(collect(&frames, "stdout"), "hi\n", "{frames:?}");
    }
    // Wrong header credentials: refused before the upgrade.
    let refused = ws_connect(&url, Some("wrn_00000000000000000000000000000000")).await;
    let err = refused.expect_err("refused").to_string();
    assert!(err.contains("401"), "{err}");
    // A bad token, or none within 5 s: error frame, close.
    let mut ws = ws_connect(&url, None).await.expect("upgrade");
    send_json(&mut ws, json!({"type": "auth", "token": "wrn_bad"})).await;
    let frames = frames_until_close(&mut ws, FRAME_WAIT).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].clone().json()["type"], "error");
    let mut ws = ws_connect(&url, None).await.expect("upgrade");
    let started = Instant::now();
    let frames = frames_until_close(&mut ws, Duration::from_secs(15)).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].clone().json()["type"], "error");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Reads binary output until it contains `needle` (ignoring control frames); all of it.
async fn read_until(ws: &mut Ws, needle: &str) -> String {
    let mut seen = Vec::new();
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_frame(ws, left).await {
            Frame::Binary(b) => seen.extend_from_slice(&b),
            Frame::Json(v) => assert_ne!(v["type"], "error", "{v}"),
            Frame::Closed => panic!(
                "closed before {needle:?}: {}",
                String::from_utf8_lossy(&seen)
            ),
        }
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains(needle) {
            return text;
        }
    }
}

async fn send_bytes(ws: &mut Ws, bytes: &[u8]) {
    ws.send(Message::Binary(bytes.to_vec().into()))
        .await
        .expect("send");
}

async fn terminals(c: &Ctx<'_>) {
    let mut ws = c.ws("/pty").await;
    send_json(&mut ws, json!({"type": "start", "cols": 80, "rows": 24})).await;
    let started = next_frame(&mut ws, FRAME_WAIT).await.json();
    assert_eq!(started["type"], "started", "{started}");
    let pid = started["pid"].clone();
    let tag = started["tag"].as_str().expect("tag").to_string();
    assert!(tag.starts_with("pty-"), "{tag}");

    send_bytes(&mut ws, b"echo hello-$((6*7))\n").await;
    read_until(&mut ws, "hello-42").await;
    send_bytes(&mut ws, b"stty size\n").await;
    read_until(&mut ws, "24 80").await;
    send_json(&mut ws, json!({"type": "resize", "cols": 100, "rows": 30})).await;
    send_bytes(&mut ws, b"stty size\n").await;
    read_until(&mut ws, "30 100").await;
    // The 0.1.x base64 input still works.
    let b64 = base64::engine::general_purpose::STANDARD.encode("echo legacy-$((2+3))\n");
    send_json(&mut ws, json!({"type": "input", "data": b64})).await;
    read_until(&mut ws, "legacy-5").await;

    // Input sent right before leaving still reaches the terminal; leaving does not end it.
    send_bytes(&mut ws, b"echo persisted > /tmp/pty-marker\n").await;
    ws.close(None).await.expect("close");
    drop(ws);
    wait_for(|| async { c.sh("cat /tmp/pty-marker 2>/dev/null").await == "persisted\n" }).await;

    // Re-attach by tag: `started` again (same process), then the same terminal.
    let mut ws = c.ws("/pty").await;
    send_json(&mut ws, json!({"type": "connect", "tag": tag})).await;
    let again = next_frame(&mut ws, FRAME_WAIT).await.json();
    assert_eq!(
        (&again["type"], &again["pid"], &again["tag"]),
        (&json!("started"), &pid, &json!(tag))
    );
    send_bytes(&mut ws, b"stty size; echo back-$((1+1))\n").await;
    let out = read_until(&mut ws, "back-2").await;
    assert!(
        out.contains("30 100"),
        "the size set before leaving is kept: {out}"
    );

    // Kill: exit, then close; the tag is gone.
    send_json(&mut ws, json!({"type": "kill"})).await;
    let frames = frames_until_close(&mut ws, FRAME_WAIT).await;
    let last = frames.last().cloned().expect("a frame").json();
    assert_eq!(last["type"], "exit", "{frames:?}");
    let mut ws = c.ws("/pty").await;
    send_json(&mut ws, json!({"type": "connect", "tag": tag})).await;
    let frames = frames_until_close(&mut ws, FRAME_WAIT).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    let err = frames[0].clone().json();
    assert_eq!(
        (&err["type"], &err["fatal"]),
        (&json!("error"), &json!(true)),
        "{err}"
    );

    // An idle terminal gets a JSON ping every 30 s (answered with pong), and stays open.
    let mut ws = c.ws("/pty").await;
    send_json(&mut ws, json!({"type": "start", "cmd": "/bin/cat"})).await;
    assert_eq!(
        next_frame(&mut ws, FRAME_WAIT).await.json()["type"],
        "started"
    );
    let ping = next_frame(&mut ws, Duration::from_secs(45)).await;
    assert_eq!(ping, Frame::Json(json!({"type": "ping"})));
    send_json(&mut ws, json!({"type": "pong"})).await;
    send_bytes(&mut ws, b"still-here\n").await;
    read_until(&mut ws, "still-here").await;
    send_json(&mut ws, json!({"type": "kill"})).await;
    let frames = frames_until_close(&mut ws, FRAME_WAIT).await;
    assert_eq!(frames.last().cloned().expect("exit").json()["type"], "exit");

    // A process that exits by itself: exit with its code, then close.
    let mut ws = c.ws("/pty").await;
    send_json(
        &mut ws,
        json!({"type": "start", "cmd": "/bin/sh", "args": ["-c", "exit 5"]}),
    )
    .await;
    let frames = frames_until_close(&mut ws, FRAME_WAIT).await;
    assert_eq!(
        frames.first().cloned().expect("started").json()["type"],
        "started"
    );
    assert_eq!(
        frames.last().cloned().expect("exit").json(),
        json!({"type": "exit", "exit_code": 5})
    );
}

async fn scope_and_state(c: &Ctx<'_>) {
    // Another team's key sees no such capsule, on REST and on sockets.
    let bob = c.p.cp.tenant("bob").await;
    let resp =
        c.p.cp
            .http
            .post(c.p.cp.url(&format!("/v1/capsules/{}/exec", c.id)))
            .header("X-API-Key", &bob.api_key)
            .json(&json!({"cmd": "/bin/true"}))
            .send()
            .await
            .expect("exec");
    assert_eq!(resp.status(), 404);
    let mut ws = ws_connect(
        &ws_url(&c.p.cp, &format!("/v1/capsules/{}/pty", c.id)),
        Some(&bob.api_key),
    )
    .await
    .expect("upgrade");
    send_json(&mut ws, json!({"type": "start"})).await;
    let frames = frames_until_close(&mut ws, FRAME_WAIT).await;
    let err = frames.first().cloned().expect("error").json();
    assert_eq!(
        (&err["type"], &err["fatal"]),
        (&json!("error"), &json!(true)),
        "{err}"
    );

    // A capsule that cannot run (a paused one would be woken): 409 invalid_state; error frames
    // on sockets.
    set_status(&c.p.cp, &c.id, "error").await;
    let (status, body) = c.exec(json!({"cmd": "/bin/true"})).await;
    assert_eq!(
        (status, error_code(&body)),
        (409, "invalid_state"),
        "{body}"
    );
    let mut ws = c.ws("/exec/stream").await;
    send_json(&mut ws, json!({"type": "start", "cmd": "/bin/true"})).await;
    let frames = frames_until_close(&mut ws, FRAME_WAIT).await;
    let err = frames.first().cloned().expect("error").json();
    assert_eq!(err["type"], "error");
    assert!(
        err["data"]
            .as_str()
            .unwrap_or_default()
            .contains("not running"),
        "{err}"
    );
    set_status(&c.p.cp, &c.id, "running").await;
}

/// Polls `check` for up to 30 s.
async fn wait_for<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "condition not reached in 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
