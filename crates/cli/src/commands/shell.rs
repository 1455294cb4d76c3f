//! `wrenn shell <id> [--cmd /bin/bash] [--attach TAG]`: an interactive terminal over the PTY
//! WebSocket `/v1/capsules/{id}/pty` (contract §6.4).
//!
//! First frame `start` (with the local terminal size) or `connect` (re-attach by tag). Then stdin
//! bytes go out as binary frames and binary frames come back to stdout; SIGWINCH becomes a
//! `resize`; the server's JSON `ping` is answered with `pong`; `exit` ends the session with the
//! remote code. With stdin on a terminal, that terminal is in raw mode for the session and is
//! restored on every way out (return, error, SIGTERM/SIGHUP, panic).

use crate::cli::Context;
use crate::commands::exec::{close_quietly, ws_error};
use crate::error::{CliError, CliResult, error_chain};
use crate::terminal::{ModeGuard, window_size};
use crate::ws::{self, KEEPALIVE_INTERVAL, WsStream};
use futures::{SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use wrenn_api_types::ws::{ClientMessage, PtyMessage};

/// Size sent when there is no local terminal to measure (the SDK's defaults).
const DEFAULT_SIZE: (u16, u16) = (80, 24);
/// Ctrl-D: sent once when a non-terminal stdin ends, so the remote shell sees end of input.
const END_OF_TRANSMISSION: u8 = 0x04;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Capsule id.
    pub id: String,
    /// Program to run in the terminal.
    #[arg(long, default_value = "/bin/bash", conflicts_with = "attach")]
    pub cmd: String,
    /// Re-attach to a running session by the tag printed when it started.
    #[arg(long, value_name = "TAG")]
    pub attach: Option<String>,
}

/// A server text frame, reduced to what the session acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Started {
        pid: u32,
        tag: String,
    },
    Exit(i32),
    Error {
        message: String,
        fatal: bool,
    },
    /// JSON `ping`, or a frame without a `type` (the SDK treats both as ping).
    Ping,
    Ignore,
}

/// Parses a PTY control frame with the SDK's defaults: a missing `type` is a ping, a missing
/// `exit_code` is −1, unknown types are ignored.
pub fn parse_control(text: &str) -> Control {
    if let Ok(message) = serde_json::from_str::<PtyMessage>(text) {
        return match message {
            PtyMessage::Started { pid, tag } => Control::Started { pid, tag },
            PtyMessage::Exit { exit_code } => Control::Exit(exit_code),
            PtyMessage::Error { data, fatal } => Control::Error {
                message: data,
                fatal,
            },
            PtyMessage::Ping => Control::Ping,
        };
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return Control::Ignore;
    };
    let field = |name: &str| value.get(name).cloned().unwrap_or_default();
    match value
        .get("type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
    {
        "" | "ping" => Control::Ping,
        "exit" => Control::Exit(-1),
        "error" => Control::Error {
            message: field("data").as_str().unwrap_or_default().to_owned(),
            fatal: field("fatal").as_bool().unwrap_or(false),
        },
        "started" => Control::Started {
            pid: field("pid")
                .as_u64()
                .and_then(|pid| u32::try_from(pid).ok())
                .unwrap_or(0),
            tag: field("tag").as_str().unwrap_or_default().to_owned(),
        },
        _ => Control::Ignore,
    }
}

pub async fn run(args: Args, context: &Context) -> CliResult<i32> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let interactive = stdin.is_terminal();
    // The terminal whose size we report: stdin's, else stdout's.
    let sized: Option<BorrowedFd<'_>> = if interactive {
        Some(stdin.as_fd())
    } else if stdout.is_terminal() {
        Some(stdout.as_fd())
    } else {
        None
    };
    // Handlers first: once the server sees our `start`, a resize can no longer be missed.
    let mut signals = SessionSignals::install()?;
    let (socket, url) = ws::connect(&context.client, &["v1", "capsules", &args.id, "pty"]).await?;

    let raw_mode = if interactive {
        Some(ModeGuard::raw(stdin.as_fd())?)
    } else {
        None
    };
    let mut session = Session {
        socket,
        url,
        raw: raw_mode.is_some(),
        capsule_id: args.id.clone(),
        size: sized.and_then(window_size).unwrap_or(DEFAULT_SIZE),
        sized,
        send_failure: None,
    };
    let first = match args.attach {
        Some(tag) => ClientMessage::Connect { tag },
        None => ClientMessage::Start {
            cmd: Some(args.cmd),
            args: Vec::new(),
            cols: Some(session.size.0),
            rows: Some(session.size.1),
            envs: BTreeMap::new(),
            cwd: None,
            user: None,
        },
    };
    let result = match session.send(ws::text_frame(&first)).await {
        Ok(()) => session.relay(spawn_stdin_reader(), &mut signals).await,
        Err(error) => Err(error),
    };
    drop(raw_mode);
    close_quietly(session.socket).await;
    result
}

/// The live session and what it needs to remember.
struct Session<'fd> {
    socket: WsStream,
    url: String,
    raw: bool,
    capsule_id: String,
    size: (u16, u16),
    sized: Option<BorrowedFd<'fd>>,
    /// The first failed send inside the session. Sending stops there, but reading goes on: the
    /// server may have sent `exit` just before closing, and that exit code is what counts.
    send_failure: Option<CliError>,
}

impl Session<'_> {
    async fn send(&mut self, message: Message) -> CliResult<()> {
        self.socket
            .send(message)
            .await
            .map_err(|error| ws_error(&self.url, &error))
    }

    /// Sends within the session: a failure is remembered (see `send_failure`), not returned.
    async fn send_or_defer(&mut self, message: Message) {
        if self.send_failure.is_some() {
            return;
        }
        if let Err(error) = self.send(message).await {
            tracing::debug!(%error, "send failed; reading what the server sent before closing");
            self.send_failure = Some(error);
        }
    }

    /// How a session that ended without `exit` is reported: the earlier send failure if any.
    fn ended_without_exit(&mut self, detail: String) -> CliError {
        self.send_failure
            .take()
            .unwrap_or_else(|| CliError::WebSocket {
                url: self.url.clone(),
                detail,
            })
    }

    /// Moves bytes both ways until the remote process exits, the session fails, or a signal
    /// tells us to stop.
    async fn relay(
        &mut self,
        mut input: mpsc::Receiver<Vec<u8>>,
        signals: &mut SessionSignals,
    ) -> CliResult<i32> {
        let mut stdout = std::io::stdout();
        let mut input_open = true;
        let mut keepalive = tokio::time::interval_at(
            tokio::time::Instant::now() + KEEPALIVE_INTERVAL,
            KEEPALIVE_INTERVAL,
        );
        loop {
            tokio::select! {
                frame = self.socket.next() => match frame {
                    Some(Ok(Message::Binary(bytes))) => {
                        stdout
                            .write_all(&bytes)
                            .and_then(|()| stdout.flush())
                            .map_err(|error| CliError::io("writing terminal output", error))?;
                    }
                    Some(Ok(Message::Text(text))) => {
                        if let Some(code) = self.on_control(parse_control(&text)).await? {
                            return Ok(code);
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        return Err(self.ended_without_exit(
                            "the server closed the session without an exit status".into(),
                        ));
                    }
                    Some(Ok(_ping_or_pong)) => {}
                    Some(Err(error)) => {
                        return Err(self.ended_without_exit(error_chain(&error)));
                    }
                },
                bytes = input.recv(), if input_open => match bytes {
                    Some(bytes) => self.send_or_defer(Message::binary(bytes)).await,
                    None => {
                        input_open = false;
                        if !self.raw {
                            self.send_or_defer(Message::binary(vec![END_OF_TRANSMISSION])).await;
                        }
                    }
                },
                _ = signals.window_change.recv() => self.send_size_if_changed().await,
                _ = keepalive.tick() => self.send_or_defer(Message::Ping(Default::default())).await,
                _ = signals.terminate.recv() => return Ok(128 + libc::SIGTERM),
                _ = signals.hangup.recv() => return Ok(128 + libc::SIGHUP),
                // Only reaches us without raw mode; in raw mode Ctrl-C is a byte for the remote.
                _ = signals.interrupt.recv() => return Ok(128 + libc::SIGINT),
            }
        }
    }

    /// Acts on a control frame; `Some(code)` ends the session.
    async fn on_control(&mut self, control: Control) -> CliResult<Option<i32>> {
        match control {
            Control::Started { pid, tag } => {
                self.notice(&format!(
                    "wrenn: session {tag} (pid {pid}); re-attach with: wrenn shell {} --attach {tag}",
                    self.capsule_id
                ));
                Ok(None)
            }
            Control::Exit(code) => Ok(Some(code)),
            Control::Error {
                message,
                fatal: true,
            } => Err(CliError::Remote(message)),
            Control::Error {
                message,
                fatal: false,
            } => {
                self.notice(&format!("wrenn: {message}"));
                Ok(None)
            }
            Control::Ping => {
                self.send_or_defer(ws::text_frame(&ClientMessage::Pong))
                    .await;
                Ok(None)
            }
            Control::Ignore => Ok(None),
        }
    }

    async fn send_size_if_changed(&mut self) {
        let Some(size) = self.sized.and_then(window_size) else {
            return;
        };
        if size == self.size {
            return;
        }
        self.size = size;
        let (cols, rows) = size;
        self.send_or_defer(ws::text_frame(&ClientMessage::Resize { cols, rows }))
            .await;
    }

    /// A line of our own on stderr; raw mode needs the explicit `\r`.
    fn notice(&self, text: &str) {
        let ending = if self.raw { "\r\n" } else { "\n" };
        let mut stderr = std::io::stderr();
        let _ = write!(stderr, "{text}{ending}").and_then(|()| stderr.flush());
    }
}

/// The signals a session reacts to. Registered before connecting, so none is lost.
struct SessionSignals {
    window_change: Signal,
    terminate: Signal,
    hangup: Signal,
    interrupt: Signal,
}

impl SessionSignals {
    fn install() -> CliResult<Self> {
        let install = |kind: SignalKind| {
            signal(kind).map_err(|error| CliError::io("installing a signal handler", error))
        };
        Ok(Self {
            window_change: install(SignalKind::window_change())?,
            terminate: install(SignalKind::terminate())?,
            hangup: install(SignalKind::hangup())?,
            interrupt: install(SignalKind::interrupt())?,
        })
    }
}

/// Reads stdin on a plain thread (a blocking read must not sit in the runtime) and forwards
/// each chunk as it comes; the channel closes at end of input. The thread is not joined: `main`
/// exits the process while it may still be blocked in `read`.
fn spawn_stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel(16);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut buffer = vec![0u8; 8192];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(count) => {
                        if sender.blocking_send(buffer[..count].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        tracing::debug!(%error, "stdin read failed");
                        break;
                    }
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the stdin reader; input is disabled");
    }
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_frames_follow_the_sdk() {
        assert_eq!(
            parse_control(r#"{"type":"started","pid":42,"tag":"pty-1"}"#),
            Control::Started {
                pid: 42,
                tag: "pty-1".into()
            }
        );
        assert_eq!(
            parse_control(r#"{"type":"exit","exit_code":7}"#),
            Control::Exit(7)
        );
        assert_eq!(parse_control(r#"{"type":"exit"}"#), Control::Exit(-1));
        assert_eq!(parse_control(r#"{"type":"ping"}"#), Control::Ping);
        assert_eq!(parse_control(r#"{}"#), Control::Ping);
        assert_eq!(parse_control(r#"{"type":""}"#), Control::Ping);
        assert_eq!(
            parse_control(r#"{"type":"error","data":"no such capsule","fatal":true}"#),
            Control::Error {
                message: "no such capsule".into(),
                fatal: true
            }
        );
        assert_eq!(
            parse_control(r#"{"type":"error","data":"slow"}"#),
            Control::Error {
                message: "slow".into(),
                fatal: false
            }
        );
        assert_eq!(
            parse_control(r#"{"type":"output","data":"aGk="}"#),
            Control::Ignore
        );
    }
}
