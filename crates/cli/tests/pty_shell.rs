//! `wrenn shell` in a real pseudo-terminal against an in-test server speaking the PTY WebSocket
//! protocol (contract §6.4). The server echoes input bytes back as binary output, records resize
//! and pong frames, pings once after `started`, and answers `exit 7` once it has read `exit\r`.

mod support;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use std::process::Command;
use std::sync::{Arc, Mutex};
use support::{STEP_TIMEOUT, TestServer, reject_bad_key, wrenn};
use wrenn_testing::pty::{PtyProcess, wait_until};

const SESSION_TAG: &str = "pty-test-tag";

/// What the fake control plane saw.
#[derive(Debug, Default)]
struct Seen {
    capsule_id: Option<String>,
    first_frame: Option<serde_json::Value>,
    input: Vec<u8>,
    resizes: Vec<(u64, u64)>,
    pongs: usize,
}

type Shared = Arc<Mutex<Seen>>;

fn with_seen<T>(seen: &Shared, read: impl FnOnce(&Seen) -> T) -> T {
    read(&seen.lock().expect("seen lock"))
}

async fn pty_route(
    State(seen): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some(rejection) = reject_bad_key(&headers) {
        return rejection;
    }
    seen.lock().expect("seen lock").capsule_id = Some(id);
    upgrade.on_upgrade(move |socket| pty_session(socket, seen))
}

async fn pty_session(mut socket: WebSocket, seen: Shared) {
    let Some(Ok(Message::Text(first))) = socket.recv().await else {
        return;
    };
    let first: serde_json::Value = serde_json::from_str(first.as_str()).unwrap_or_default();
    seen.lock().expect("seen lock").first_frame = Some(first);
    let started = serde_json::json!({"type": "started", "pid": 4242, "tag": SESSION_TAG});
    let ping = serde_json::json!({"type": "ping"});
    for frame in [started, ping] {
        if socket.send(Message::text(frame.to_string())).await.is_err() {
            return;
        }
    }
    while let Some(Ok(message)) = socket.recv().await {
        match message {
            Message::Binary(bytes) => {
                let done = {
                    let mut seen = seen.lock().expect("seen lock");
                    seen.input.extend_from_slice(&bytes);
                    seen.input.windows(5).any(|window| window == b"exit\r")
                };
                if socket.send(Message::Binary(bytes)).await.is_err() {
                    return;
                }
                if done {
                    let exit = serde_json::json!({"type": "exit", "exit_code": 7});
                    let _ = socket.send(Message::text(exit.to_string())).await;
                    let _ = socket.send(Message::Close(None)).await;
                    // Read until the client's close: dropping the TCP connection with its late
                    // input unread would reset it and could discard the exit frame in flight.
                    while let Some(Ok(_)) = socket.recv().await {}
                    return;
                }
            }
            Message::Text(text) => {
                let frame: serde_json::Value =
                    serde_json::from_str(text.as_str()).unwrap_or_default();
                let mut seen = seen.lock().expect("seen lock");
                match frame["type"].as_str() {
                    Some("resize") => {
                        let cols = frame["cols"].as_u64().unwrap_or_default();
                        let rows = frame["rows"].as_u64().unwrap_or_default();
                        seen.resizes.push((cols, rows));
                    }
                    Some("pong") => seen.pongs += 1,
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

fn start_server() -> (TestServer, Shared) {
    let seen = Shared::default();
    let router = Router::new()
        .route("/v1/capsules/{id}/pty", get(pty_route))
        .with_state(Arc::clone(&seen));
    (TestServer::start(router), seen)
}

fn spawn_shell(command: &mut Command) -> PtyProcess {
    PtyProcess::spawn(command, 100, 30).expect("spawn wrenn shell in a pty")
}

#[test]
fn shell_relays_bytes_resizes_pongs_and_exits_with_the_remote_code() {
    let (server, seen) = start_server();
    let (mut command, _config) = wrenn(&server.base_url());
    command.args(["shell", "cl-test1"]);
    let mut terminal = spawn_shell(&mut command);

    // The start frame carries the terminal's size.
    wait_until(STEP_TIMEOUT, || {
        with_seen(&seen, |seen| seen.first_frame.is_some())
    })
    .unwrap_or_else(|_| panic!("no start frame; output {:?}", terminal.output()));
    assert_eq!(
        with_seen(&seen, |seen| seen.first_frame.clone()),
        Some(serde_json::json!({"type": "start", "cmd": "/bin/bash", "cols": 100, "rows": 30}))
    );
    assert_eq!(
        with_seen(&seen, |seen| seen.capsule_id.clone()).as_deref(),
        Some("cl-test1")
    );

    // The session tag is announced so the user can re-attach.
    terminal
        .wait_for_output(&format!("--attach {SESSION_TAG}"), STEP_TIMEOUT)
        .expect("session tag printed");
    assert!(
        terminal.is_raw().expect("termios"),
        "terminal must be raw during the session"
    );

    // The server's JSON ping is answered with a pong.
    wait_until(STEP_TIMEOUT, || with_seen(&seen, |seen| seen.pongs >= 1)).expect("pong");

    // A resize of the pty reaches the server through the kernel's SIGWINCH.
    terminal.resize(132, 43).expect("resize pty");
    wait_until(STEP_TIMEOUT, || {
        with_seen(&seen, |seen| seen.resizes.contains(&(132, 43)))
    })
    .unwrap_or_else(|_| {
        panic!(
            "resize not seen: {:?}",
            with_seen(&seen, |s| s.resizes.clone())
        )
    });

    // Typed bytes go out verbatim and come back once (the server's echo; no local echo).
    terminal.write(b"hello\x03").expect("type");
    terminal
        .wait_for_output("hello", STEP_TIMEOUT)
        .expect("echo");
    terminal.write(b"exit\r").expect("type exit");
    let status = terminal.wait_exit(STEP_TIMEOUT).expect("wrenn shell exits");
    assert_eq!(status.code(), Some(7), "output {:?}", terminal.output());
    assert_eq!(terminal.output().matches("hello").count(), 1);
    // Ctrl-C and Enter went to the remote as bytes: raw mode (no ISIG, no ICRNL).
    assert_eq!(
        with_seen(&seen, |seen| seen.input.clone()),
        b"hello\x03exit\r".to_vec()
    );

    assert!(
        terminal.is_cooked().expect("termios"),
        "terminal not restored to cooked mode"
    );
}

#[test]
fn shell_attach_sends_connect_and_sigterm_restores_the_terminal() {
    let (server, seen) = start_server();
    let (mut command, _config) = wrenn(&server.base_url());
    command.args(["shell", "cl-test2", "--attach", "pty-old"]);
    let mut terminal = spawn_shell(&mut command);

    wait_until(STEP_TIMEOUT, || with_seen(&seen, |seen| seen.pongs >= 1))
        .unwrap_or_else(|_| panic!("no session; output {:?}", terminal.output()));
    assert_eq!(
        with_seen(&seen, |seen| seen.first_frame.clone()),
        Some(serde_json::json!({"type": "connect", "tag": "pty-old"}))
    );
    assert!(terminal.is_raw().expect("termios"));

    let pid = nix::unistd::Pid::from_raw(i32::try_from(terminal.pid()).expect("pid fits"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
    let status = terminal.wait_exit(STEP_TIMEOUT).expect("wrenn shell exits");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(
        terminal.is_cooked().expect("termios"),
        "terminal not restored after SIGTERM"
    );
}

#[test]
fn shell_rejected_key_reports_the_error_in_cooked_mode() {
    let (server, _seen) = start_server();
    let (mut command, _config) = wrenn(&server.base_url());
    command
        .env("WRENN_API_KEY", "wrong")
        .args(["shell", "cl-test3"]);
    let mut terminal = spawn_shell(&mut command);
    let status = terminal.wait_exit(STEP_TIMEOUT).expect("wrenn shell exits");
    assert_eq!(status.code(), Some(1));
    terminal
        .wait_for_output("error: invalid API key (unauthorized)", STEP_TIMEOUT)
        .expect("error message");
    assert!(terminal.is_cooked().expect("termios"));
}

#[test]
fn shell_without_a_terminal_forwards_piped_input_and_default_size() {
    use std::io::Write;
    use std::process::Stdio;

    let (server, seen) = start_server();
    let (mut command, _config) = wrenn(&server.base_url());
    let mut child = command
        .args(["shell", "cl-test4", "--cmd", "/bin/sh"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wrenn shell");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"piped\nexit\r")
        .expect("write stdin");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(
        output.status.code(),
        Some(7),
        "stderr {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, b"piped\nexit\r");
    assert!(String::from_utf8_lossy(&output.stderr).contains(SESSION_TAG));
    assert_eq!(
        with_seen(&seen, |seen| seen.first_frame.clone()),
        Some(serde_json::json!({"type": "start", "cmd": "/bin/sh", "cols": 80, "rows": 24}))
    );
}
