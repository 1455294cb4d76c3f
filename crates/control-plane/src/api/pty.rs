//! `WS /v1/capsules/{id}/pty`: an interactive terminal.
//!
//! The client's first frame (after `auth`, without header credentials) is `start` (a new
//! terminal) or `connect` (re-attach by tag). Then terminal bytes travel as binary frames both
//! ways; text frames carry control messages: `resize`, `kill`, `pong`, and the legacy base64
//! `input`. The server sends `started{pid,tag}` before any output, `ping` every 30 s, and
//! `exit{exit_code}` then close when the process ends.
//!
//! Leaving (closing the socket, or losing the connection) only detaches: the terminal's process
//! keeps running for a later `connect`. Input the client sent before leaving is still
//! delivered.
//!
//! The session runs as independent loops, so a terminal that is not reading its input (its
//! output not drained) can never stall the forwarding of its output: a writer owns the socket's
//! sending half; a pump forwards the agent's events; a reader queues the client's operations;
//! a worker applies them in order, merging queued input into single calls.

use crate::api::extract::ApiPath;
use crate::api::ws::{self, CLOSE_NORMAL, CLOSE_POLICY, WsUpgrade};
use crate::auth::AuthContext;
use crate::auth::context::WsAuth;
use crate::error::{ApiError, ApiResult};
use crate::service::capsule_ops::Target;
use crate::service::capsule_ops::pty::{self, Attached, PtyCommand, PtyEvents, PtyOp};
use crate::service::capsules;
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket};
use axum::response::Response;
use axum::routing::get;
use base64::Engine;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::pin::pin;
use std::time::Duration;
use tokio::sync::mpsc;
use wrenn_api_types::ws::{ClientMessage, PtyMessage};
use wrenn_protocol::hostagent as pb;

/// The JSON `ping` the server sends (the SDK answers `pong`).
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// Frames queued for the client.
const OUT_QUEUE: usize = 32;
/// Operations queued for the terminal; a client sending faster waits (no input is dropped).
const OP_QUEUE: usize = 64;
/// How long input queued when the client left still has to reach the terminal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub fn routes() -> Router<AppState> {
    Router::new().route("/capsules/{id}/pty", get(pty))
}

/// An interactive terminal over a WebSocket.
#[utoipa::path(
    get,
    path = "/v1/capsules/{id}/pty",
    tag = "exec",
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses(
        (status = 101, description = "WebSocket: client sends `start` or `connect`, then binary \
                                      input and `resize`/`kill`; server sends `started`, binary \
                                      output, `ping`, then `exit`"),
        (status = 401, description = "Wrong credentials on the upgrade", body = wrenn_api_types::ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []), ())
)]
pub async fn pty(
    State(app): State<AppState>,
    WsAuth(auth): WsAuth,
    ApiPath(id): ApiPath<String>,
    WsUpgrade(ws): WsUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| session(app, auth, id, socket))
}

type Sink = SplitSink<WebSocket, Message>;
type Source = SplitStream<WebSocket>;

fn error_frame(data: String, fatal: bool) -> Message {
    ws::json_frame(&PtyMessage::Error { data, fatal })
}

async fn session(app: AppState, header_auth: Option<AuthContext>, id: String, socket: WebSocket) {
    let (mut sink, mut source) = socket.split();
    let auth = match ws::caller(&app, &mut source, header_auth).await {
        Ok(auth) => auth,
        Err(msg) => return ws::finish(&mut sink, error_frame(msg, true), CLOSE_POLICY, "").await,
    };
    let opened = async {
        let target = Target::resolve(&app, &auth, &id).await?;
        let attached = match ws::first_message(&mut source)
            .await
            .map_err(ApiError::invalid)?
        {
            None => return Ok(None),
            Some(ClientMessage::Start {
                cmd,
                args,
                cols,
                rows,
                envs,
                cwd,
                ..
            }) => {
                let command = PtyCommand {
                    cmd,
                    args,
                    envs,
                    cwd,
                    cols,
                    rows,
                };
                pty::start(&target, command, &pty::new_pty_tag()).await?
            }
            Some(ClientMessage::Connect { tag }) => pty::reattach(&target, &tag).await?,
            Some(_) => {
                return Err(ApiError::invalid(
                    "the first message must be {\"type\":\"start\",…} or {\"type\":\"connect\",\"tag\":…}",
                ));
            }
        };
        ApiResult::Ok(Some((target, attached)))
    };
    match opened.await {
        Ok(Some((target, attached))) => run(app, target, attached, sink, source).await,
        Ok(None) => {}
        Err(e) => {
            let frame = error_frame(ws::public_message(&e), true);
            ws::finish(&mut sink, frame, CLOSE_NORMAL, "").await;
        }
    }
}

/// The attached session, until the process exits or the client leaves.
async fn run(app: AppState, target: Target, attached: Attached, sink: Sink, source: Source) {
    let Attached { pid, tag, events } = attached;
    let (out_tx, out_rx) = mpsc::channel::<Message>(OUT_QUEUE);
    let (op_tx, op_rx) = mpsc::channel::<PtyOp>(OP_QUEUE);
    // `started` goes first, before any output.
    let started = ws::json_frame(&PtyMessage::Started {
        pid,
        tag: tag.clone(),
    });
    if out_tx.send(started).await.is_err() {
        return;
    }
    let mut writer = pin!(write_frames(sink, out_rx));
    let pump = forward_events(events, out_tx.clone(), target.clone());
    let pinger = ping(app, target.row.id, out_tx.clone());
    let mut client_side = pin!(reader_then_drain(
        read_client(source, op_tx, out_tx.clone()),
        apply_ops(target, tag, op_rx, out_tx),
    ));
    let exited = tokio::select! {
        exited = &mut writer => exited,
        () = &mut client_side => return,
        () = pump => return,
        () = pinger => return,
    };
    if !exited {
        // The connection broke while sending: the reader sees it too; let queued input land
        // (bounded, in case the reading half lingers).
        let _ = tokio::time::timeout(2 * DRAIN_TIMEOUT, client_side).await;
    }
}

/// Sends queued frames; `true` once the final close frame went out, `false` if the client is
/// gone.
async fn write_frames(mut sink: Sink, mut frames: mpsc::Receiver<Message>) -> bool {
    while let Some(frame) = frames.recv().await {
        let last = matches!(frame, Message::Close(_));
        if sink.send(frame).await.is_err() {
            return false;
        }
        if last {
            let _ = sink.close().await;
            return true;
        }
    }
    false
}

/// Output as binary frames; at the end, `exit` (or a fatal `error`) and close. Never returns:
/// the session ends when the writer has sent the close.
async fn forward_events(mut events: PtyEvents, out: mpsc::Sender<Message>, target: Target) {
    use pb::pty_attach_response::Event;
    let last = loop {
        match events.message().await {
            Some(Ok(pb::PtyAttachResponse {
                event: Some(Event::Output(o)),
            })) => {
                if out.send(Message::Binary(o.data)).await.is_err() {
                    return std::future::pending().await;
                }
            }
            Some(Ok(pb::PtyAttachResponse {
                event: Some(Event::Exited(x)),
            })) => {
                break PtyMessage::Exit {
                    exit_code: x.exit_code,
                };
            }
            // A repeated start, or an empty event.
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                break PtyMessage::Error {
                    data: ws::public_message(&target.agent_error(e)),
                    fatal: true,
                };
            }
            None => {
                break PtyMessage::Error {
                    data: "the terminal stream ended before its process did".to_string(),
                    fatal: true,
                };
            }
        }
    };
    if out.send(ws::json_frame(&last)).await.is_ok() {
        let _ = out.send(ws::close_frame(CLOSE_NORMAL, "")).await;
    }
    std::future::pending().await
}

/// `ping` every [`PING_INTERVAL`]; an attached terminal also counts as capsule activity.
async fn ping(app: AppState, capsule: uuid::Uuid, out: mpsc::Sender<Message>) {
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    loop {
        tick.tick().await;
        if out.send(ws::json_frame(&PtyMessage::Ping)).await.is_err() {
            return std::future::pending().await;
        }
        capsules::touch(&app, capsule).await;
    }
}

/// Runs the reader until the client leaves, then gives the worker [`DRAIN_TIMEOUT`] to apply
/// what was queued (the worker ends when the queue is closed and empty).
async fn reader_then_drain(reader: impl Future<Output = ()>, worker: impl Future<Output = ()>) {
    let mut reader = pin!(reader);
    let mut worker = pin!(worker);
    tokio::select! {
        () = &mut reader => {}
        () = &mut worker => return,
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, worker).await;
}

/// Turns client frames into queued operations; returns when the client has gone.
async fn read_client(mut source: Source, ops: mpsc::Sender<PtyOp>, out: mpsc::Sender<Message>) {
    while let Some(msg) = ws::next_message(&mut source).await {
        let op = match client_op(msg) {
            Ok(Some(op)) => op,
            Ok(None) => continue,
            Err(problem) => {
                if out.send(error_frame(problem, false)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if ops.send(op).await.is_err() {
            return;
        }
    }
}

/// The operation a client frame asks for: `Ok(None)` for frames with nothing to do, `Err` for
/// frames that are wrong (answered with a non-fatal error).
fn client_op(msg: Message) -> Result<Option<PtyOp>, String> {
    if let Message::Binary(data) = msg {
        return Ok((!data.is_empty()).then_some(PtyOp::Input(data)));
    }
    match ws::parse_client_message(&msg)? {
        ClientMessage::Input { data } => base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .map(|bytes| (!bytes.is_empty()).then(|| PtyOp::Input(bytes.into())))
            .map_err(|e| format!("input data is not base64: {e}")),
        // A zero side is no size (as upstream): ignored.
        ClientMessage::Resize { cols, rows } if cols == 0 || rows == 0 => Ok(None),
        ClientMessage::Resize { cols, rows } => Ok(Some(PtyOp::Resize { cols, rows })),
        ClientMessage::Kill => Ok(Some(PtyOp::Kill)),
        ClientMessage::Pong | ClientMessage::Ping | ClientMessage::Auth { .. } => Ok(None),
        ClientMessage::Start { .. } | ClientMessage::Connect { .. } | ClientMessage::Stop => {
            Err("this socket is already attached to a terminal".to_string())
        }
    }
}

/// Applies queued operations in order, merging queued input; failures are reported to the
/// client as non-fatal errors (the terminal may simply have exited, which `exit` reports).
async fn apply_ops(
    target: Target,
    tag: String,
    mut ops: mpsc::Receiver<PtyOp>,
    out: mpsc::Sender<Message>,
) {
    let mut queue = VecDeque::new();
    while let Some(op) = ops.recv().await {
        queue.push_back(op);
        while queue.len() < OP_QUEUE
            && let Ok(more) = ops.try_recv()
        {
            queue.push_back(more);
        }
        while let Some(op) = pty::coalesce(&mut queue) {
            if let Err(e) = pty::apply(&target, &tag, op).await {
                // The client may be gone; nothing else to do with the failure then.
                let _ = out.try_send(error_frame(ws::public_message(&e), false));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_become_operations() {
        let text = |t: &str| Message::Text(t.into());
        assert_eq!(
            client_op(Message::Binary(b"ls\r".as_slice().into())),
            Ok(Some(PtyOp::Input(b"ls\r".as_slice().into())))
        );
        assert_eq!(
            client_op(text(r#"{"type":"input","data":"aGk="}"#)),
            Ok(Some(PtyOp::Input(b"hi".as_slice().into())))
        );
        assert_eq!(
            client_op(text(r#"{"type":"resize","cols":120,"rows":40}"#)),
            Ok(Some(PtyOp::Resize {
                cols: 120,
                rows: 40
            }))
        );
        assert_eq!(
            client_op(text(r#"{"type":"resize","cols":0,"rows":40}"#)),
            Ok(None)
        );
        assert_eq!(client_op(text(r#"{"type":"kill"}"#)), Ok(Some(PtyOp::Kill)));
        assert_eq!(client_op(text(r#"{"type":"pong"}"#)), Ok(None));
        assert!(client_op(text(r#"{"type":"input","data":"!!"}"#)).is_err());
        assert!(client_op(text(r#"{"type":"start"}"#)).is_err());
        assert!(client_op(text("not json")).is_err());
    }

    #[tokio::test]
    async fn input_queued_before_the_client_left_is_still_applied() {
        let (tx, rx) = mpsc::channel::<PtyOp>(8);
        let applied = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = applied.clone();
        let worker = async move {
            let mut rx = rx;
            while let Some(op) = rx.recv().await {
                tokio::time::sleep(Duration::from_millis(20)).await;
                sink.lock().expect("lock").push(op);
            }
        };
        let reader = async move {
            for s in ["a", "b", "c"] {
                tx.send(PtyOp::Input(s.as_bytes().to_vec().into()))
                    .await
                    .expect("queue");
            }
            // The client leaves here; `tx` is dropped.
        };
        reader_then_drain(reader, worker).await;
        assert_eq!(applied.lock().expect("lock").len(), 3);
    }
}
