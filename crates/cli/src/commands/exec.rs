//! `wrenn exec <id> [--cwd D] [--env K=V]... [--timeout S] -- <cmd> [args...]`
//!
//! Foreground: WebSocket `/v1/capsules/{id}/exec/stream`, one `start` frame, then `stdout` and
//! `stderr` frames are copied to the local stdout and stderr as they arrive and the remote exit
//! code becomes ours. Background (`--background`): `POST /v1/capsules/{id}/exec` with
//! `background: true`, printing the pid and tag.

use crate::cli::Context;
use crate::error::{CliError, CliResult, error_chain};
use crate::output::{print_json, print_line};
use crate::quoting::{EnvVar, stream_command};
use crate::ws::{self, KEEPALIVE_INTERVAL, WsStream};
use futures::{SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio_tungstenite::tungstenite::Message;
use wrenn_api_types::exec::{BackgroundExecResponse, ExecRequest};
use wrenn_api_types::ws::{ClientMessage, StreamMessage};

/// Exit code when `--timeout` expires (as coreutils `timeout`).
pub const TIMEOUT_EXIT_CODE: i32 = 124;
/// Exit code after Ctrl-C (128 + SIGINT).
pub const INTERRUPTED_EXIT_CODE: i32 = 130;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Capsule id.
    pub id: String,
    /// Working directory inside the capsule (absolute, or relative to the home directory).
    #[arg(long)]
    pub cwd: Option<String>,
    /// Environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub envs: Vec<EnvVar>,
    /// Stop the command after this many seconds (exit code 124).
    #[arg(long, value_name = "SECONDS", conflicts_with = "background")]
    pub timeout: Option<u64>,
    /// Start the command in the background and print its pid and tag.
    #[arg(long)]
    pub background: bool,
    /// Tag for a background process (the server generates one otherwise).
    #[arg(long, requires = "background")]
    pub tag: Option<String>,
    /// The command and its arguments (put them after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub async fn run(args: Args, context: &Context) -> CliResult<i32> {
    if args.background {
        return run_background(args, context).await;
    }
    let (program, program_args) = stream_command(&args.command, args.cwd.as_deref(), &args.envs)?;
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|error| CliError::io("installing the SIGINT handler", error))?;
    let (mut socket, url) = ws::connect(
        &context.client,
        &["v1", "capsules", &args.id, "exec", "stream"],
    )
    .await?;
    let start = ClientMessage::Start {
        cmd: Some(program),
        args: program_args,
        cols: None,
        rows: None,
        envs: BTreeMap::new(),
        cwd: None,
        user: None,
    };
    socket
        .send(ws::text_frame(&start))
        .await
        .map_err(|error| ws_error(&url, &error))?;

    let deadline = args.timeout.map(Duration::from_secs);
    let outcome = tokio::select! {
        outcome = relay_output(&mut socket, &url) => outcome,
        () = sleep_or_forever(deadline) => {
            let seconds = deadline.map(|limit| limit.as_secs()).unwrap_or_default();
            eprintln!("error: command timed out after {seconds} s");
            Ok(Ending::Stopped(TIMEOUT_EXIT_CODE))
        }
        _ = interrupt.recv() => Ok(Ending::Stopped(INTERRUPTED_EXIT_CODE)),
    }?;
    let code = match outcome {
        Ending::Exited(code) => code,
        Ending::Stopped(code) => {
            // Ask the server to kill the process rather than leave it running unattended.
            let _ = socket.send(ws::text_frame(&ClientMessage::Stop)).await;
            code
        }
    };
    close_quietly(socket).await;
    Ok(code)
}

/// How the stream ended.
enum Ending {
    /// The command exited (or the server reported an error: code 1).
    Exited(i32),
    /// We stopped waiting (timeout, Ctrl-C).
    Stopped(i32),
}

/// Copies output frames until `exit` or `error`; sends keepalive pings meanwhile.
async fn relay_output(socket: &mut WsStream, url: &str) -> CliResult<Ending> {
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + KEEPALIVE_INTERVAL,
        KEEPALIVE_INTERVAL,
    );
    loop {
        let frame = tokio::select! {
            frame = socket.next() => frame,
            _ = keepalive.tick() => {
                // A failed ping is not fatal: the read side reports how the stream ended, and
                // may still hold the `exit` frame the server sent before closing.
                if let Err(error) = socket.send(Message::Ping(Default::default())).await {
                    tracing::debug!(%error, "keepalive ping failed");
                }
                continue;
            }
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => {
                return Err(CliError::WebSocket {
                    url: url.to_owned(),
                    detail: "the server closed the stream before the command exited".into(),
                });
            }
            Some(Ok(_binary_or_control)) => continue,
            Some(Err(error)) => return Err(ws_error(url, &error)),
        };
        match parse_stream_frame(&text) {
            Some(StreamMessage::Stdout { data }) => write_out(&mut stdout, &data).await?,
            Some(StreamMessage::Stderr { data }) => write_out(&mut stderr, &data).await?,
            Some(StreamMessage::Exit { exit_code }) => return Ok(Ending::Exited(exit_code)),
            Some(StreamMessage::Error { data }) => {
                eprintln!("error: {data}");
                return Ok(Ending::Exited(1));
            }
            Some(StreamMessage::Start { pid }) => tracing::debug!(pid, "remote process started"),
            None => tracing::debug!(frame = %text, "ignoring unknown exec-stream frame"),
        }
    }
}

/// A server frame, with the SDK's defaults for missing fields (`exit` without a code is −1).
pub fn parse_stream_frame(text: &str) -> Option<StreamMessage> {
    if let Ok(message) = serde_json::from_str::<StreamMessage>(text) {
        return Some(message);
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let data = || {
        value
            .get("data")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match value.get("type")?.as_str()? {
        "exit" => Some(StreamMessage::Exit { exit_code: -1 }),
        "error" => Some(StreamMessage::Error { data: data() }),
        "stdout" => Some(StreamMessage::Stdout { data: data() }),
        "stderr" => Some(StreamMessage::Stderr { data: data() }),
        _ => None,
    }
}

async fn write_out(out: &mut (impl AsyncWrite + Unpin), data: &str) -> CliResult<()> {
    let written = async {
        out.write_all(data.as_bytes()).await?;
        out.flush().await
    };
    written
        .await
        .map_err(|error| CliError::io("writing command output", error))
}

async fn sleep_or_forever(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

/// Sends a close frame, waiting at most a second for it to go out.
pub(crate) async fn close_quietly(mut socket: WsStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
}

pub(crate) fn ws_error(url: &str, error: &tokio_tungstenite::tungstenite::Error) -> CliError {
    CliError::WebSocket {
        url: url.to_owned(),
        detail: error_chain(error),
    }
}

async fn run_background(args: Args, context: &Context) -> CliResult<i32> {
    let (program, program_args) = args
        .command
        .split_first()
        .ok_or_else(|| CliError::Usage("missing command to run".into()))?;
    let envs: BTreeMap<String, String> = args
        .envs
        .into_iter()
        .map(|var| (var.key, var.value))
        .collect();
    let request = ExecRequest {
        cmd: program.clone(),
        args: program_args.to_vec(),
        background: true,
        tag: args.tag,
        envs: (!envs.is_empty()).then_some(envs),
        cwd: args.cwd,
        timeout_sec: None,
    };
    let started: BackgroundExecResponse = context
        .client
        .post_json(&["v1", "capsules", &args.id, "exec"], &request)
        .await?;
    if context.json {
        print_json(&started)?;
    } else {
        print_line(&format!("pid={} tag={}", started.pid, started.tag))?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_frames_parse_with_sdk_defaults() {
        assert_eq!(
            parse_stream_frame(r#"{"type":"stdout","data":"hi"}"#),
            Some(StreamMessage::Stdout { data: "hi".into() })
        );
        assert_eq!(
            parse_stream_frame(r#"{"type":"exit","exit_code":3}"#),
            Some(StreamMessage::Exit { exit_code: 3 })
        );
        assert_eq!(
            parse_stream_frame(r#"{"type":"exit"}"#),
            Some(StreamMessage::Exit { exit_code: -1 })
        );
        assert_eq!(
            parse_stream_frame(r#"{"type":"stderr"}"#),
            Some(StreamMessage::Stderr {
                data: String::new()
            })
        );
        assert_eq!(parse_stream_frame(r#"{"type":"progress"}"#), None);
        assert_eq!(parse_stream_frame("garbage"), None);
    }
}
