//! `WS /v1/capsules/{id}/exec/stream` (start a command, follow its output) and
//! `WS /v1/capsules/{id}/processes/{pid}/stream` (follow a running process by pid or tag).
//!
//! Server frames are JSON text only (the SDK cannot read binary frames here): `start`, then
//! `stdout`/`stderr` in production order, then exactly one `exit` or `error`, then close. Output
//! is decoded as UTF-8 without ever splitting a character across frames. Every failure after the
//! upgrade (authentication, unknown or stopped capsule, unknown process, bad first message) is
//! an `error` frame, so the client never waits on a silent socket.

use crate::api::extract::ApiPath;
use crate::api::ws::{self, CLOSE_NORMAL, CLOSE_POLICY, WsUpgrade};
use crate::auth::AuthContext;
use crate::auth::context::WsAuth;
use crate::error::{ApiError, ApiResult};
use crate::service::capsule_ops::Target;
use crate::service::capsule_ops::exec::{self, ProcessEvents, ProcessSelector, StreamCommand};
use crate::service::capsule_ops::utf8::Utf8Chunker;
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket};
use axum::response::Response;
use axum::routing::get;
use futures::StreamExt;
use futures::stream::{SplitSink, SplitStream};
use wrenn_api_types::ws::{ClientMessage, StreamMessage};
use wrenn_protocol::hostagent as pb;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/capsules/{id}/exec/stream", get(exec_stream))
        .route("/capsules/{id}/processes/{pid}/stream", get(process_stream))
}

/// Starts a command and streams its output. The client's first frame (after `auth`, when it
/// sent no header credentials) is `{"type":"start","cmd":…,"args":[…]}`; `{"type":"stop"}`
/// kills the command. Closing the socket kills it too.
#[utoipa::path(
    get,
    path = "/v1/capsules/{id}/exec/stream",
    tag = "exec",
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses(
        (status = 101, description = "WebSocket: client sends `start`; server sends `start`, \
                                      `stdout`/`stderr`, then `exit` or `error`"),
        (status = 401, description = "Wrong credentials on the upgrade", body = wrenn_api_types::ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []), ())
)]
pub async fn exec_stream(
    State(app): State<AppState>,
    WsAuth(auth): WsAuth,
    ApiPath(id): ApiPath<String>,
    WsUpgrade(ws): WsUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| session(app, auth, id, None, socket))
}

/// Follows a running process (by decimal pid, or by tag) from now on; leaving does not stop
/// it. An exited or unknown process gets an `error` frame at once.
#[utoipa::path(
    get,
    path = "/v1/capsules/{id}/processes/{pid}/stream",
    tag = "exec",
    params(
        ("id" = String, Path, description = "Capsule id (`cl-…`)"),
        ("pid" = String, Path, description = "Process id, or the process's tag"),
    ),
    responses(
        (status = 101, description = "WebSocket: server sends `start`, `stdout`/`stderr`, then \
                                      `exit` or `error`"),
        (status = 401, description = "Wrong credentials on the upgrade", body = wrenn_api_types::ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []), ())
)]
pub async fn process_stream(
    State(app): State<AppState>,
    WsAuth(auth): WsAuth,
    ApiPath((id, pid)): ApiPath<(String, String)>,
    WsUpgrade(ws): WsUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| session(app, auth, id, Some(pid), socket))
}

type Sink = SplitSink<WebSocket, Message>;
type Source = SplitStream<WebSocket>;

/// One stream: a new command (`process` is `None`) or an existing process.
async fn session(
    app: AppState,
    header_auth: Option<AuthContext>,
    id: String,
    process: Option<String>,
    socket: WebSocket,
) {
    let (mut sink, mut source) = socket.split();
    let auth = match ws::caller(&app, &mut source, header_auth).await {
        Ok(auth) => auth,
        Err(msg) => return fail(&mut sink, msg, CLOSE_POLICY).await,
    };
    let opened = async {
        let target = Target::resolve(&app, &auth, &id).await?;
        let (pid, events) = match &process {
            Some(selector) => exec::connect(&target, &ProcessSelector::parse(selector)?).await?,
            None => match read_start(&mut source).await? {
                Some(command) => exec::open_stream(&target, command).await?,
                None => return Ok(None),
            },
        };
        ApiResult::Ok(Some((target, pid, events)))
    };
    match opened.await {
        Ok(Some((target, pid, events))) => {
            forward(&target, pid, events, process.is_none(), sink, source).await;
        }
        // The client left before asking for anything.
        Ok(None) => {}
        Err(e) => fail(&mut sink, ws::public_message(&e), CLOSE_NORMAL).await,
    }
}

/// The `start` message; `None` if the client left first.
async fn read_start(source: &mut Source) -> ApiResult<Option<StreamCommand>> {
    match ws::first_message(source).await.map_err(ApiError::invalid)? {
        None => Ok(None),
        Some(ClientMessage::Start {
            cmd,
            args,
            envs,
            cwd,
            ..
        }) => Ok(Some(StreamCommand {
            cmd: cmd.unwrap_or_default(),
            args,
            envs,
            cwd,
        })),
        Some(_) => Err(ApiError::invalid(
            "the first message must be {\"type\":\"start\",\"cmd\":…,\"args\":[…]}",
        )),
    }
}

async fn fail(sink: &mut Sink, data: String, code: u16) {
    let frame = ws::json_frame(&StreamMessage::Error { data });
    ws::finish(sink, frame, code, "").await;
}

/// Output decoding per stream, so that stdout and stderr never share a partial character.
#[derive(Default)]
struct Decoders {
    stdout: Utf8Chunker,
    stderr: Utf8Chunker,
}

impl Decoders {
    fn frame(&mut self, stderr: bool, bytes: &[u8]) -> Option<StreamMessage> {
        let data = if stderr {
            self.stderr.push(bytes)
        } else {
            self.stdout.push(bytes)
        };
        (!data.is_empty()).then(|| output(stderr, data))
    }

    /// Whatever incomplete characters are left, lossily, before the final frame.
    fn flush(&mut self) -> Vec<StreamMessage> {
        [(false, self.stdout.finish()), (true, self.stderr.finish())]
            .into_iter()
            .filter(|(_, data)| !data.is_empty())
            .map(|(stderr, data)| output(stderr, data))
            .collect()
    }
}

fn output(stderr: bool, data: String) -> StreamMessage {
    if stderr {
        StreamMessage::Stderr { data }
    } else {
        StreamMessage::Stdout { data }
    }
}

/// Forwards the process's events until its end, or until the client leaves (which kills a
/// command started here and only detaches from an existing process).
async fn forward(
    target: &Target,
    pid: u32,
    mut events: ProcessEvents,
    stoppable: bool,
    mut sink: Sink,
    mut source: Source,
) {
    use pb::exec_stream_response::Event;
    if !ws::send_json(&mut sink, &StreamMessage::Start { pid }).await {
        return;
    }
    let mut decoders = Decoders::default();
    let mut stop_sent = false;
    let last = loop {
        tokio::select! {
            event = events.message() => match event {
                Some(Ok(pb::ExecStreamResponse { event: Some(Event::Data(data)) })) => {
                    let Some((stderr, bytes)) = exec::output_of(data) else { continue };
                    if let Some(frame) = decoders.frame(stderr, &bytes)
                        && !ws::send_json(&mut sink, &frame).await
                    {
                        return;
                    }
                }
                Some(Ok(pb::ExecStreamResponse { event: Some(Event::End(end)) })) => {
                    break StreamMessage::Exit { exit_code: end.exit_code };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    break StreamMessage::Error { data: ws::public_message(&target.agent_error(e)) };
                }
                None => {
                    break StreamMessage::Error {
                        data: "the process stream ended before the process did".to_string(),
                    };
                }
            },
            msg = ws::next_message(&mut source) => match msg {
                None => return,
                Some(msg) => {
                    if stoppable && !stop_sent && matches!(ws::parse_client_message(&msg), Ok(ClientMessage::Stop)) {
                        stop_sent = true;
                        // The exit frame follows when the agent reports the end.
                        if let Err(e) = exec::kill(target, &ProcessSelector::Pid(pid), "SIGKILL").await {
                            tracing::debug!(pid, error = %e, "stop of a streamed command failed");
                        }
                    }
                }
            },
        }
    };
    for frame in decoders.flush() {
        if !ws::send_json(&mut sink, &frame).await {
            return;
        }
    }
    ws::finish(&mut sink, ws::json_frame(&last), CLOSE_NORMAL, "").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_frames_keep_characters_whole_per_stream() {
        let mut d = Decoders::default();
        let euro = "€".as_bytes();
        assert_eq!(d.frame(false, &euro[..1]), None);
        // stderr's own bytes do not complete stdout's character.
        assert_eq!(
            d.frame(true, b"e"),
            Some(StreamMessage::Stderr { data: "e".into() })
        );
        assert_eq!(
            d.frame(false, &euro[1..]),
            Some(StreamMessage::Stdout { data: "€".into() })
        );
        assert_eq!(d.frame(true, b"\xe2"), None);
        assert_eq!(
            d.flush(),
            vec![StreamMessage::Stderr {
                data: "\u{fffd}".into()
            }]
        );
    }
}
