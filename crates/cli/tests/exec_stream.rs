//! `wrenn exec` against an in-test server speaking the exec-stream WebSocket protocol
//! (contract §6.2): output separation, exit codes, error frames, the cwd/env wrapper, and how
//! upgrade and connection failures are reported.

mod support;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use std::process::Output;
use std::sync::{Arc, Mutex};
use support::{TestServer, reject_bad_key, wrenn};

type StartFrames = Arc<Mutex<Vec<serde_json::Value>>>;

async fn exec_route(
    State(starts): State<StartFrames>,
    Path(_id): Path<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some(rejection) = reject_bad_key(&headers) {
        return rejection;
    }
    upgrade.on_upgrade(move |socket| exec_session(socket, starts))
}

/// `produce N`: stdout, stderr, stdout, then exit N. `fail`: an error frame. When the command
/// was wrapped in `/bin/sh -c … sh CMD ARGS`, CMD and ARGS are what is acted on.
async fn exec_session(mut socket: WebSocket, starts: StartFrames) {
    let Some(Ok(Message::Text(first))) = socket.recv().await else {
        return;
    };
    let start: serde_json::Value = serde_json::from_str(first.as_str()).unwrap_or_default();
    starts.lock().expect("starts lock").push(start.clone());
    let mut words: Vec<String> = std::iter::once(start["cmd"].clone())
        .chain(start["args"].as_array().cloned().unwrap_or_default())
        .filter_map(|word| word.as_str().map(str::to_owned))
        .collect();
    if words.first().map(String::as_str) == Some("/bin/sh") {
        words.drain(..3.min(words.len())); // "/bin/sh", "-c", script
        words.drain(..1.min(words.len())); // "$0"
    }
    let frames = match words.first().map(String::as_str) {
        Some("produce") => {
            let code: i32 = words.get(1).and_then(|code| code.parse().ok()).unwrap_or(0);
            vec![
                serde_json::json!({"type": "start", "pid": 99}),
                serde_json::json!({"type": "stdout", "data": "out-1\n"}),
                serde_json::json!({"type": "stderr", "data": "err-1\n"}),
                serde_json::json!({"type": "stdout", "data": "out-2 ünïcode\n"}),
                serde_json::json!({"type": "exit", "exit_code": code}),
            ]
        }
        _ => vec![serde_json::json!({"type": "error", "data": "capsule cl-x is not running"})],
    };
    for frame in frames {
        if socket.send(Message::text(frame.to_string())).await.is_err() {
            return;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
    while let Some(Ok(_)) = socket.recv().await {}
}

fn start_server() -> (TestServer, StartFrames) {
    let starts = StartFrames::default();
    let router = Router::new()
        .route("/api/v1/capsules/{id}/exec/stream", get(exec_route))
        .with_state(Arc::clone(&starts));
    (TestServer::start(router), starts)
}

/// Runs `wrenn exec` against the server (base URL with the `/api` prefix).
fn run_exec(server: &TestServer, args: &[&str]) -> Output {
    let (mut command, _config) = wrenn(&format!("{}/api", server.base_url()));
    command
        .arg("exec")
        .args(args)
        .output()
        .expect("run wrenn exec")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn stdout_and_stderr_stay_separate_and_the_exit_code_is_the_remote_one() {
    let (server, starts) = start_server();
    let output = run_exec(&server, &["cl-x", "--", "produce", "3"]);
    assert_eq!(text(&output.stdout), "out-1\nout-2 ünïcode\n");
    assert_eq!(text(&output.stderr), "err-1\n");
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(
        starts.lock().expect("starts").first(),
        Some(&serde_json::json!({"type": "start", "cmd": "produce", "args": ["3"]}))
    );

    let output = run_exec(&server, &["cl-x", "--", "produce", "0"]);
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn cwd_and_env_wrap_the_command_in_a_shell() {
    let (server, starts) = start_server();
    let output = run_exec(
        &server,
        &[
            "cl-x",
            "--cwd",
            "/srv/my app",
            "--env",
            "GREETING=hi there",
            "--",
            "produce",
            "5",
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(5),
        "stderr {}",
        text(&output.stderr)
    );
    assert_eq!(
        starts.lock().expect("starts").first(),
        Some(&serde_json::json!({
            "type": "start",
            "cmd": "/bin/sh",
            "args": [
                "-c",
                "cd '/srv/my app' && export GREETING='hi there' && exec \"$@\"",
                "sh",
                "produce",
                "5"
            ]
        }))
    );
}

#[test]
fn error_frame_is_printed_and_exits_1() {
    let (server, _starts) = start_server();
    let output = run_exec(&server, &["cl-x", "--", "fail"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stdout).is_empty());
    assert_eq!(text(&output.stderr), "error: capsule cl-x is not running\n");
}

#[test]
fn rejected_upgrade_shows_the_error_envelope() {
    let (server, _starts) = start_server();
    let (mut command, _config) = wrenn(&format!("{}/api", server.base_url()));
    let output = command
        .env("WRENN_API_KEY", "wrong")
        .args(["exec", "cl-x", "--", "produce", "0"])
        .output()
        .expect("run wrenn exec");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        "error: invalid API key (unauthorized)\n"
    );
}

#[test]
fn unreachable_control_plane_names_the_url_and_the_variable() {
    // Bind then drop a listener: nothing listens on that port afterwards.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let (mut command, _config) = wrenn(&format!("http://127.0.0.1:{port}"));
    let output = command
        .args(["exec", "cl-x", "--", "true"])
        .output()
        .expect("run wrenn exec");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "ws://127.0.0.1:{port}/v1/capsules/cl-x/exec/stream"
        )) && stderr.contains("WRENN_BASE_URL"),
        "{stderr}"
    );
}
