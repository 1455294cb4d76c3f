//! What the command, terminal and file RPCs ask of a sandbox's envd.
//!
//! Everything here takes an [`EnvdClient`] and nothing else, so it works against any envd: the one
//! inside a VM, or one running on the host in tests. The RPC handlers only find the sandbox and
//! translate messages.
//!
//! Results are Connect errors ([`OpResult`]) rather than [`AgentError`]s: several failures here
//! are the agent's own limits (output caps, the `ReadFile` size limit) that must reach the caller
//! as `resource_exhausted`, and envd's codes (`not_found`, `invalid_argument`, ...) must pass
//! through unchanged. `AgentError`s from [`EnvdClient`] convert with `?` (logging internal ones).
//!
//! [`AgentError`]: crate::error::AgentError
//!
//! Process streams are the envd `process.Start`/`Connect` streams reduced to [`ProcessEvent`]s,
//! always starting with [`ProcessEvent::Started`] and ending after [`ProcessEvent::Ended`] (or an
//! error), keepalives dropped.

use super::envd::{EnvdClient, UNARY_TIMEOUT};
use base64::Engine;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use wrenn_protocol::connect::MAX_MESSAGE_BYTES;
use wrenn_protocol::connect::{Code, ConnectClient, Error as RpcError, Message, ResponseStream};
use wrenn_protocol::envd::{filesystem as fs, process as proc, rpc_path};
use wrenn_protocol::hostagent as pb;

pub use wrenn_protocol::envd::process::Signal;
pub use wrenn_protocol::envd::process::process_selector::Selector;

/// What every operation here returns.
pub type OpResult<T> = Result<T, RpcError>;

/// A process's events, [`ProcessEvent::Started`] first.
pub type EventStream = Pin<Box<dyn Stream<Item = OpResult<ProcessEvent>> + Send>>;

/// A file's content, in chunks of at most [`STREAM_CHUNK`] bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = OpResult<Bytes>> + Send>>;

/// `Exec`'s limit when the caller gives none.
pub const EXEC_DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Room left in a Connect message for everything but the payload.
const MESSAGE_HEADROOM: usize = 64 * 1024;
/// `Exec` collects stdout and stderr in memory and answers with both in one Connect message, so
/// together they must fit one (16 MiB; a bigger reply would be refused by the caller's client).
/// Larger output is what `ExecStream` is for.
pub const EXEC_OUTPUT_LIMIT: usize = (MAX_MESSAGE_BYTES - MESSAGE_HEADROOM) / 2;
/// `ReadFile` answers with the whole file in one Connect message; larger files go through
/// `ReadFileStream` (the control plane's buffered 100 MB reads use it).
pub const READ_FILE_LIMIT: u64 = (MAX_MESSAGE_BYTES - MESSAGE_HEADROOM) as u64;
/// Chunk size of `ReadFileStream`.
pub const STREAM_CHUNK: usize = 64 * 1024;
/// Largest terminal side accepted, in columns or rows.
pub const PTY_MAX_SIZE: u32 = 1000;
/// Terminal size when a PTY is started without one.
pub const PTY_DEFAULT_SIZE: (u32, u32) = (80, 24);
/// Upload chunks queued between the caller and envd: the only upload data the agent holds.
const UPLOAD_IN_FLIGHT: usize = 8;
/// Most of an envd error body worth reading.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// `/files` query values: everything but unreserved characters and `/` is escaped.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// A command to start: the same fields every process RPC carries.
#[derive(Debug, Clone, Default)]
pub struct ProcessSpec {
    /// Run as given: no shell is involved unless `cmd` is one.
    pub cmd: String,
    pub args: Vec<String>,
    pub envs: HashMap<String, String>,
    /// Empty: envd's default working directory.
    pub cwd: String,
    /// Empty: envd's default user.
    pub user: String,
}

/// One event of a process stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    Started {
        pid: u32,
    },
    Stdout(Bytes),
    Stderr(Bytes),
    /// Terminal output (PTY processes only).
    Pty(Bytes),
    Ended(Exit),
}

/// How a process ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or -1 when the process was killed by a signal.
    pub exit_code: i32,
    /// Empty after a normal exit; otherwise why it ended (`signal: killed`, ...).
    pub error: String,
}

/// What `Exec` collected.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Bytes,
    pub stderr: Bytes,
    pub exit: Exit,
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An error envd answered with: its code passes through, so `not_found` stays `not_found`.
fn envd_error(e: RpcError) -> RpcError {
    RpcError::new(e.code, format!("envd: {}", e.message))
}

fn invalid(message: impl Into<String>) -> RpcError {
    RpcError::invalid_argument(message)
}

/// Rejects an empty required field.
pub fn require(name: &str, value: &str) -> OpResult<()> {
    if value.is_empty() {
        Err(invalid(format!("{name} is required")))
    } else {
        Ok(())
    }
}

/// The Connect code for an HTTP status from envd's plain HTTP routes (`/files`).
pub fn code_for_status(status: StatusCode) -> Code {
    match status.as_u16() {
        400 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        412 => Code::FailedPrecondition,
        413 | 507 => Code::ResourceExhausted,
        416 => Code::OutOfRange,
        429 | 502..=504 => Code::Unavailable,
        500..=599 => Code::Internal,
        _ => Code::Unknown,
    }
}

/// Turns a failed `/files` answer into a Connect error carrying envd's message
/// (`{"code": 404, "message": "..."}`).
async fn http_error(resp: http::Response<Incoming>) -> RpcError {
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), ERROR_BODY_LIMIT)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
    let message = if message.is_empty() {
        format!("envd answered HTTP {status}")
    } else {
        format!("envd: {message}")
    };
    RpcError::new(code_for_status(status), message)
}

// ---------------------------------------------------------------------------------------------
// Processes

/// The `Authorization` header envd reads the user from: Basic with an empty password.
fn basic_auth(user: &str) -> OpResult<HeaderValue> {
    if user.contains(':') {
        return Err(invalid(format!("user {user:?} must not contain ':'")));
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
    HeaderValue::from_str(&format!("Basic {encoded}"))
        .map_err(|_| invalid(format!("user {user:?} is not a valid header value")))
}

/// `client`, sending as `user` when one is given.
fn as_user(client: &ConnectClient, user: &str) -> OpResult<ConnectClient> {
    if user.is_empty() {
        Ok(client.clone())
    } else {
        Ok(client
            .clone()
            .with_header(header::AUTHORIZATION, basic_auth(user)?))
    }
}

fn selector(s: Selector) -> Option<proc::ProcessSelector> {
    Some(proc::ProcessSelector { selector: Some(s) })
}

/// Checks a selector's tag is not empty (envd would answer `not_found`, which misleads).
fn checked(s: Selector) -> OpResult<Selector> {
    match &s {
        Selector::Tag(t) if t.is_empty() => Err(invalid("tag is required")),
        _ => Ok(s),
    }
}

fn start_request(
    spec: &ProcessSpec,
    tag: Option<&str>,
    pty: Option<(u32, u32)>,
) -> OpResult<proc::StartRequest> {
    require("cmd", &spec.cmd)?;
    Ok(proc::StartRequest {
        process: Some(proc::ProcessConfig {
            cmd: spec.cmd.clone(),
            args: spec.args.clone(),
            envs: spec.envs.clone(),
            cwd: (!spec.cwd.is_empty()).then(|| spec.cwd.clone()),
        }),
        pty: pty.map(|(cols, rows)| proc::Pty {
            size: Some(proc::pty::Size { cols, rows }),
        }),
        tag: tag.filter(|t| !t.is_empty()).map(str::to_string),
        // No RPC here writes to a pipe process's stdin, so it gets none (a command that reads
        // stdin sees EOF instead of waiting forever). A PTY's input is the terminal.
        stdin: Some(pty.is_some()),
    })
}

fn convert(ev: proc::process_event::Event) -> Option<ProcessEvent> {
    use proc::process_event::Event;
    use proc::process_event::data_event::Output;
    match ev {
        Event::Start(s) => Some(ProcessEvent::Started { pid: s.pid }),
        Event::Data(d) => match d.output? {
            Output::Stdout(b) => Some(ProcessEvent::Stdout(b)),
            Output::Stderr(b) => Some(ProcessEvent::Stderr(b)),
            Output::Pty(b) => Some(ProcessEvent::Pty(b)),
        },
        Event::End(e) => {
            let error = match e.error.filter(|s| !s.is_empty()) {
                Some(err) => err,
                // Killed by a signal: envd's status says which (`signal: killed`).
                None if !e.exited => e.status,
                None => String::new(),
            };
            Some(ProcessEvent::Ended(Exit {
                exit_code: e.exit_code,
                error,
            }))
        }
        Event::Keepalive(_) => None,
    }
}

/// envd's `Start` or `Connect` stream as [`ProcessEvent`]s. Ends after `Ended`; a stream that
/// stops before it yields an error, so callers never mistake a lost connection for an exit.
fn events<M: Message>(
    stream: ResponseStream<M>,
    event_of: fn(M) -> Option<proc::ProcessEvent>,
) -> EventStream {
    Box::pin(futures::stream::unfold(
        Some(stream),
        move |state| async move {
            let mut stream = state?;
            loop {
                let ev = match stream.message().await {
                    Some(Ok(m)) => event_of(m).and_then(|e| e.event).and_then(convert),
                    Some(Err(e)) => return Some((Err(envd_error(e)), None)),
                    None => {
                        let e = RpcError::unavailable(
                            "envd ended the process stream before the process ended",
                        );
                        return Some((Err(e), None));
                    }
                };
                if let Some(ev) = ev {
                    let done = matches!(ev, ProcessEvent::Ended(_));
                    return Some((Ok(ev), (!done).then_some(stream)));
                }
            }
        },
    ))
}

/// Reads the `Started` event, so failures to start (no such command, bad user) are the call's
/// error rather than a stream that ends at once.
async fn first_start(mut events: EventStream) -> OpResult<(u32, EventStream)> {
    match events.next().await {
        Some(Ok(ProcessEvent::Started { pid })) => Ok((pid, events)),
        Some(Ok(_)) => Err(RpcError::internal(
            "envd's process stream did not begin with a start event",
        )),
        Some(Err(e)) => Err(e),
        None => Err(RpcError::unavailable(
            "envd ended the process stream before the process started",
        )),
    }
}

/// Starts a process; the stream after its `Started` event.
async fn open_start(
    envd: &EnvdClient,
    spec: &ProcessSpec,
    tag: Option<&str>,
    pty: Option<(u32, u32)>,
) -> OpResult<(u32, EventStream)> {
    let req = start_request(spec, tag, pty)?;
    let client = as_user(&envd.stream, &spec.user)?;
    let stream = client
        .server_stream::<_, proc::StartResponse>(&rpc_path(proc::SERVICE, "Start"), &req)
        .await
        .map_err(envd_error)?;
    first_start(events(stream, |m| m.event)).await
}

/// Re-attaches to a running process; the stream after its `Started` event.
async fn open_connect(envd: &EnvdClient, s: Selector) -> OpResult<(u32, EventStream)> {
    let req = proc::ConnectRequest {
        process: selector(checked(s)?),
    };
    let stream = envd
        .stream
        .server_stream::<_, proc::ConnectResponse>(&rpc_path(proc::SERVICE, "Connect"), &req)
        .await
        .map_err(envd_error)?;
    first_start(events(stream, |m| m.event)).await
}

fn with_started(pid: u32, rest: EventStream) -> EventStream {
    Box::pin(futures::stream::once(async move { Ok(ProcessEvent::Started { pid }) }).chain(rest))
}

/// Sends a signal to a process.
pub async fn signal(envd: &EnvdClient, s: Selector, signal: Signal) -> OpResult<()> {
    let req = proc::SendSignalRequest {
        process: selector(checked(s)?),
        signal: signal as i32,
    };
    envd.unary
        .unary::<_, proc::SendSignalResponse>(&rpc_path(proc::SERVICE, "SendSignal"), &req)
        .await
        .map_err(envd_error)?;
    Ok(())
}

/// `KillProcess`'s signal names: SIGKILL (also when empty) or SIGTERM.
pub fn parse_signal(name: &str) -> OpResult<Signal> {
    match name.to_ascii_uppercase().as_str() {
        "" | "SIGKILL" => Ok(Signal::Sigkill),
        "SIGTERM" => Ok(Signal::Sigterm),
        _ => Err(invalid(format!(
            "unsupported signal {name:?}: use \"SIGKILL\" or \"SIGTERM\""
        ))),
    }
}

/// SIGKILL, where the process having ended already is no failure.
async fn kill_quietly(envd: &EnvdClient, pid: u32) {
    match signal(envd, Selector::Pid(pid), Signal::Sigkill).await {
        Ok(()) => tracing::debug!(pid, "killed a foreground process nobody waits for"),
        Err(e) if e.code == Code::NotFound => {}
        Err(e) => tracing::warn!(pid, error = %e, "could not kill a foreground process"),
    }
}

/// Kills a foreground process if its caller stops waiting before it ends (timeout, output cap,
/// disconnect). Dropping it kills from a spawned task; [`kill_now`](Self::kill_now) waits.
struct KillOnDrop {
    envd: Option<EnvdClient>,
    pid: u32,
}

impl KillOnDrop {
    fn new(envd: &EnvdClient, pid: u32) -> Self {
        Self {
            envd: Some(envd.clone()),
            pid,
        }
    }

    /// The process ended on its own: nothing to kill.
    fn disarm(&mut self) {
        self.envd = None;
    }

    async fn kill_now(mut self) {
        if let Some(envd) = self.envd.take() {
            kill_quietly(&envd, self.pid).await;
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(envd) = self.envd.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let pid = self.pid;
            rt.spawn(async move { kill_quietly(&envd, pid).await });
        }
    }
}

/// Collects one output stream up to [`EXEC_OUTPUT_LIMIT`].
struct Capped {
    name: &'static str,
    buf: Vec<u8>,
}

impl Capped {
    fn push(&mut self, b: &[u8]) -> OpResult<()> {
        if self.buf.len() + b.len() > EXEC_OUTPUT_LIMIT {
            return Err(RpcError::resource_exhausted(format!(
                "the command's {} exceeded {} MiB, so it was killed; use ExecStream for large output",
                self.name,
                EXEC_OUTPUT_LIMIT >> 20
            )));
        }
        self.buf.extend_from_slice(b);
        Ok(())
    }
}

/// Runs a command to completion and collects its output. On timeout the process is killed and
/// the call fails with `deadline_exceeded`; so it is when the caller goes away (the future is
/// dropped), since nobody would read the result.
pub async fn exec(
    envd: &EnvdClient,
    spec: &ProcessSpec,
    timeout: Duration,
) -> OpResult<ExecOutput> {
    let (pid, mut events) = open_start(envd, spec, None, None).await?;
    let mut guard = KillOnDrop::new(envd, pid);
    let mut stdout = Capped {
        name: "stdout",
        buf: Vec::new(),
    };
    let mut stderr = Capped {
        name: "stderr",
        buf: Vec::new(),
    };
    let collected = tokio::time::timeout(timeout, async {
        while let Some(ev) = events.next().await {
            match ev? {
                ProcessEvent::Stdout(b) | ProcessEvent::Pty(b) => stdout.push(&b)?,
                ProcessEvent::Stderr(b) => stderr.push(&b)?,
                ProcessEvent::Ended(exit) => return Ok(exit),
                ProcessEvent::Started { .. } => {}
            }
        }
        Err(RpcError::unavailable("envd's process stream ended early"))
    })
    .await;
    match collected {
        Ok(Ok(exit)) => {
            guard.disarm();
            Ok(ExecOutput {
                stdout: stdout.buf.into(),
                stderr: stderr.buf.into(),
                exit,
            })
        }
        Ok(Err(e)) => {
            guard.kill_now().await;
            Err(e)
        }
        Err(_) => {
            guard.kill_now().await;
            Err(RpcError::new(
                Code::DeadlineExceeded,
                format!(
                    "`{}` did not finish within {}s and was killed",
                    spec.cmd,
                    timeout.as_secs_f64()
                ),
            ))
        }
    }
}

/// Starts a command and streams its events. `timeout` (if any) kills it and ends the stream with
/// `deadline_exceeded`.
///
/// Dropping the stream before the process ends kills the process. The upstream agent leaves it
/// running, but a foreground command whose caller is gone has nobody to read its output or exit
/// code, and it has no tag to be found by again: it would only hold the sandbox's CPU and memory.
/// Commands meant to outlive their caller use `StartBackground` (and `ConnectProcess`).
pub async fn exec_stream(
    envd: &EnvdClient,
    spec: &ProcessSpec,
    timeout: Option<Duration>,
) -> OpResult<EventStream> {
    let (pid, events) = open_start(envd, spec, None, None).await?;
    struct State {
        events: EventStream,
        guard: Option<KillOnDrop>,
        deadline: Option<tokio::time::Instant>,
    }
    let state = State {
        events,
        guard: Some(KillOnDrop::new(envd, pid)),
        deadline: timeout.map(|t| tokio::time::Instant::now() + t),
    };
    let cmd = spec.cmd.clone();
    let rest = futures::stream::unfold(Some(state), move |state| {
        let cmd = cmd.clone();
        async move {
            let mut st = state?;
            let next = match st.deadline {
                Some(d) => match tokio::time::timeout_at(d, st.events.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        if let Some(g) = st.guard.take() {
                            g.kill_now().await;
                        }
                        let e = RpcError::new(
                            Code::DeadlineExceeded,
                            format!("`{cmd}` did not finish within its timeout and was killed"),
                        );
                        return Some((Err(e), None));
                    }
                },
                None => st.events.next().await,
            };
            match next {
                Some(Ok(ev)) => {
                    if matches!(ev, ProcessEvent::Ended(_))
                        && let Some(g) = st.guard.as_mut()
                    {
                        g.disarm();
                    }
                    Some((Ok(ev), Some(st)))
                }
                // The connection to envd broke: nobody can follow the process any more.
                Some(Err(e)) => {
                    if let Some(g) = st.guard.take() {
                        g.kill_now().await;
                    }
                    Some((Err(e), None))
                }
                None => None,
            }
        }
    });
    Ok(with_started(pid, Box::pin(rest)))
}

/// Starts a command that outlives this call: reads its `Started` event and detaches. envd keeps
/// the process running and discards its output until someone connects.
pub async fn start_background(envd: &EnvdClient, spec: &ProcessSpec, tag: &str) -> OpResult<u32> {
    let (pid, _detached) = open_start(envd, spec, Some(tag), None).await?;
    Ok(pid)
}

/// The processes envd started and that are still running.
pub async fn list_processes(envd: &EnvdClient) -> OpResult<Vec<pb::ProcessInfo>> {
    let resp: proc::ListResponse = envd
        .unary
        .unary(&rpc_path(proc::SERVICE, "List"), &proc::ListRequest {})
        .await
        .map_err(envd_error)?;
    Ok(resp
        .processes
        .into_iter()
        .map(|p| {
            let config = p.config.unwrap_or_default();
            pb::ProcessInfo {
                pid: p.pid,
                tag: p.tag.unwrap_or_default(),
                cmd: config.cmd,
                args: config.args,
            }
        })
        .collect())
}

/// Follows a running process from now on (nothing is replayed). Dropping the stream detaches
/// and leaves the process running.
pub async fn connect(envd: &EnvdClient, s: Selector) -> OpResult<EventStream> {
    let (pid, rest) = open_connect(envd, s).await?;
    Ok(with_started(pid, rest))
}

// ---------------------------------------------------------------------------------------------
// Terminals

/// Validates a terminal size; `0x0` means the default when `default_ok`.
pub fn pty_size(cols: u32, rows: u32, default_ok: bool) -> OpResult<(u32, u32)> {
    if default_ok && cols == 0 && rows == 0 {
        return Ok(PTY_DEFAULT_SIZE);
    }
    let ok = 1..=PTY_MAX_SIZE;
    if ok.contains(&cols) && ok.contains(&rows) {
        Ok((cols, rows))
    } else {
        Err(invalid(format!(
            "terminal size {cols}x{rows} out of range: cols and rows must be 1..={PTY_MAX_SIZE}"
        )))
    }
}

/// Starts a command on a new terminal under `tag` (which later calls use). The process keeps
/// running when the stream is dropped, so a client can re-attach with [`pty_attach`].
pub async fn pty_start(
    envd: &EnvdClient,
    spec: &ProcessSpec,
    tag: &str,
    size: (u32, u32),
) -> OpResult<EventStream> {
    require("tag", tag)?;
    let (cols, rows) = pty_size(size.0, size.1, true)?;
    let (pid, rest) = open_start(envd, spec, Some(tag), Some((cols, rows))).await?;
    Ok(with_started(pid, rest))
}

/// Re-attaches to the terminal process `tag`, resizing it first when a size is given (the new
/// client's window is likely not the old one's).
pub async fn pty_attach(
    envd: &EnvdClient,
    tag: &str,
    size: Option<(u32, u32)>,
) -> OpResult<EventStream> {
    require("tag", tag)?;
    if let Some((cols, rows)) = size {
        pty_resize(envd, tag, cols, rows).await?;
    }
    connect(envd, Selector::Tag(tag.to_string())).await
}

/// Types into the terminal `tag`.
pub async fn pty_input(envd: &EnvdClient, tag: &str, data: Bytes) -> OpResult<()> {
    require("tag", tag)?;
    let req = proc::SendInputRequest {
        process: selector(Selector::Tag(tag.to_string())),
        input: Some(proc::ProcessInput {
            input: Some(proc::process_input::Input::Pty(data)),
        }),
    };
    envd.unary
        .unary::<_, proc::SendInputResponse>(&rpc_path(proc::SERVICE, "SendInput"), &req)
        .await
        .map_err(envd_error)?;
    Ok(())
}

/// Resizes the terminal `tag`.
pub async fn pty_resize(envd: &EnvdClient, tag: &str, cols: u32, rows: u32) -> OpResult<()> {
    require("tag", tag)?;
    let (cols, rows) = pty_size(cols, rows, false)?;
    let req = proc::UpdateRequest {
        process: selector(Selector::Tag(tag.to_string())),
        pty: Some(proc::Pty {
            size: Some(proc::pty::Size { cols, rows }),
        }),
    };
    envd.unary
        .unary::<_, proc::UpdateResponse>(&rpc_path(proc::SERVICE, "Update"), &req)
        .await
        .map_err(envd_error)?;
    Ok(())
}

/// Kills the terminal process `tag`.
pub async fn pty_kill(envd: &EnvdClient, tag: &str) -> OpResult<()> {
    require("tag", tag)?;
    signal(envd, Selector::Tag(tag.to_string()), Signal::Sigkill).await
}

// ---------------------------------------------------------------------------------------------
// Files

/// `/files?path=...`.
fn files_uri(path: &str) -> OpResult<String> {
    require("path", path)?;
    Ok(format!(
        "/files?path={}",
        utf8_percent_encode(path, QUERY_VALUE)
    ))
}

/// Upload bodies can fail: an error aborts the request, so envd discards the partial file
/// instead of committing a truncated one (a clean end of body would commit it).
type UploadBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// POSTs `body` as the content of `path`.
///
/// Uploads use their own connection rather than [`EnvdClient::send`], whose deadline covers the
/// whole exchange: envd answers an upload only after the last byte is on disk, so a large upload
/// would hit it. The caller's own deadline and disconnect still bound an upload.
async fn upload(envd: &EnvdClient, path: &str, body: UploadBody) -> OpResult<()> {
    let uri = format!("{}{}", envd.base(), files_uri(path)?);
    let req = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .map_err(|e| invalid(format!("bad upload request: {e}")))?;
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    // Not pooled: one connection per upload, gone with it.
    let client: Client<_, UploadBody> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let resp = match client.request(req).await {
        Ok(resp) => resp,
        Err(e) => {
            let cut = RpcError::unavailable(format!(
                "envd upload of {path}: {}",
                crate::error::error_chain(&e)
            ));
            return Err(if e.is_connect() {
                cut
            } else {
                explain_cut_upload(envd, path, cut).await
            });
        }
    };
    if !resp.status().is_success() {
        return Err(http_error(resp).await);
    }
    Ok(())
}

/// Why envd may have cut an upload off. envd answers a refused upload at once and closes the
/// connection without reading the rest of the body, so the agent, still sending, usually sees a
/// broken pipe rather than the answer. The common causes show on the target itself.
async fn explain_cut_upload(envd: &EnvdClient, path: &str, cut: RpcError) -> RpcError {
    let req = fs::StatRequest {
        path: path.to_string(),
    };
    match fs_call::<_, fs::StatResponse>(envd, "Stat", &req).await {
        Ok(fs::StatResponse { entry: Some(e) }) if e.r#type == fs::FileType::Directory as i32 => {
            invalid(format!("envd: {path} is a directory"))
        }
        // A parent that is a file, a path the user may not touch: envd's own words.
        Err(e) if matches!(e.code, Code::InvalidArgument | Code::PermissionDenied) => e,
        _ => cut,
    }
}

/// Writes a whole file (creating parent directories, replacing any file there).
pub async fn write_file(envd: &EnvdClient, path: &str, content: Bytes) -> OpResult<()> {
    let body = Full::new(content).map_err(|n| match n {}).boxed_unsync();
    tokio::time::timeout(UNARY_TIMEOUT, upload(envd, path, body))
        .await
        .unwrap_or_else(|_| {
            Err(RpcError::new(
                Code::DeadlineExceeded,
                format!(
                    "writing {path} took longer than {}s",
                    UNARY_TIMEOUT.as_secs()
                ),
            ))
        })
}

/// Writes a file from a stream of chunks in constant memory: chunks pass through a small bounded
/// channel into one upload, so a slow envd slows the caller down instead of filling the agent.
/// If `chunks` fails, the upload is aborted and envd keeps nothing. Returns the bytes written.
pub async fn write_file_stream<S>(envd: &EnvdClient, path: &str, chunks: S) -> OpResult<u64>
where
    S: Stream<Item = OpResult<Bytes>> + Send,
{
    files_uri(path)?;
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(UPLOAD_IN_FLIGHT);
    let frames = tokio_stream::wrappers::ReceiverStream::new(rx).map(|r| r.map(Frame::data));
    let upload = upload(envd, path, StreamBody::new(frames).boxed_unsync());
    let feed = async {
        let mut chunks = std::pin::pin!(chunks);
        let mut written = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx
                        .send(Err(std::io::Error::other("the upload's source failed")))
                        .await;
                    return Err(e);
                }
            };
            // An empty frame would read as the end of a chunked body.
            if chunk.is_empty() {
                continue;
            }
            written += chunk.len() as u64;
            if tx.send(Ok(chunk)).await.is_err() {
                // envd stopped reading: its answer says why.
                return Ok(None);
            }
        }
        Ok(Some(written))
    };
    let mut upload = std::pin::pin!(upload);
    let fed = tokio::select! {
        biased;
        fed = feed => fed,
        answer = &mut upload => {
            answer?;
            return Err(RpcError::internal(format!(
                "envd accepted {path} before the upload ended"
            )));
        }
    };
    let fed = match fed {
        Ok(f) => f,
        // Dropping the unfinished upload (with its failed body) aborts it.
        Err(e) => return Err(e),
    };
    drop(tx);
    upload.await?;
    fed.ok_or_else(|| {
        RpcError::internal(format!("envd stopped reading {path} but reported success"))
    })
}

/// `GET /files` for `path`, failing on an error status.
async fn download(envd: &EnvdClient, path: &str) -> OpResult<http::Response<Incoming>> {
    let empty = Full::new(Bytes::new())
        .map_err(|n| match n {})
        .boxed_unsync();
    let req = envd.request(Method::GET, &files_uri(path)?, empty)?;
    let resp = envd.send(req).await?;
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(http_error(resp).await)
    }
}

fn too_big(path: &str, len: Option<u64>) -> RpcError {
    let size = len.map(|l| format!(" ({l} bytes)")).unwrap_or_default();
    RpcError::resource_exhausted(format!(
        "{path}{size} is larger than ReadFile's {} MiB limit; use ReadFileStream",
        READ_FILE_LIMIT >> 20
    ))
}

/// Reads a whole file of at most [`READ_FILE_LIMIT`] bytes.
pub async fn read_file(envd: &EnvdClient, path: &str) -> OpResult<Bytes> {
    let read = async {
        let resp = download(envd, path).await?;
        let len = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if len.is_some_and(|l| l > READ_FILE_LIMIT) {
            return Err(too_big(path, len));
        }
        match http_body_util::Limited::new(resp.into_body(), READ_FILE_LIMIT as usize)
            .collect()
            .await
        {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_big(path, None)),
            Err(e) => Err(RpcError::unavailable(format!(
                "reading {path} from envd: {e}"
            ))),
        }
    };
    tokio::time::timeout(UNARY_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err(RpcError::new(
                Code::DeadlineExceeded,
                format!(
                    "reading {path} took longer than {}s",
                    UNARY_TIMEOUT.as_secs()
                ),
            ))
        })
}

/// Streams a file of any size in chunks of at most [`STREAM_CHUNK`] bytes, as fast as the
/// caller reads (envd's response is read only as chunks are taken).
pub async fn read_file_stream(envd: &EnvdClient, path: &str) -> OpResult<ByteStream> {
    let body = download(envd, path).await?.into_body();
    let path = path.to_string();
    let state = Some((body, Bytes::new()));
    Ok(Box::pin(futures::stream::unfold(state, move |state| {
        let path = path.clone();
        async move {
            let (mut body, mut pending) = state?;
            loop {
                if !pending.is_empty() {
                    let chunk = pending.split_to(pending.len().min(STREAM_CHUNK));
                    return Some((Ok(chunk), Some((body, pending))));
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            pending = data;
                        }
                    }
                    Some(Err(e)) => {
                        let e = RpcError::unavailable(format!(
                            "reading {path} from envd broke off: {e}"
                        ));
                        return Some((Err(e), None));
                    }
                    None => return None,
                }
            }
        }
    })))
}

fn file_entry(e: fs::EntryInfo) -> pb::FileEntry {
    let kind = match fs::FileType::try_from(e.r#type) {
        Ok(fs::FileType::File) => "file",
        Ok(fs::FileType::Directory) => "directory",
        Ok(fs::FileType::Symlink) => "symlink",
        _ => "",
    };
    pb::FileEntry {
        name: e.name,
        path: e.path,
        r#type: kind.to_string(),
        size: e.size,
        mode: e.mode,
        permissions: e.permissions,
        owner: e.owner,
        group: e.group,
        modified_at_unix: e.modified_time.map(|t| t.seconds).unwrap_or_default(),
        symlink_target: e.symlink_target.unwrap_or_default(),
    }
}

async fn fs_call<Req: Message, Resp: Message>(
    envd: &EnvdClient,
    method: &str,
    req: &Req,
) -> OpResult<Resp> {
    envd.unary
        .unary(&rpc_path(fs::SERVICE, method), req)
        .await
        .map_err(envd_error)
}

/// Lists a directory `depth` levels deep (0 counts as 1).
pub async fn list_dir(envd: &EnvdClient, path: &str, depth: u32) -> OpResult<Vec<pb::FileEntry>> {
    require("path", path)?;
    let req = fs::ListDirRequest {
        path: path.to_string(),
        depth: depth.max(1),
    };
    let resp: fs::ListDirResponse = fs_call(envd, "ListDir", &req).await?;
    Ok(resp.entries.into_iter().map(file_entry).collect())
}

/// Creates a directory and its parents; `already_exists` if it is there.
pub async fn make_dir(envd: &EnvdClient, path: &str) -> OpResult<pb::FileEntry> {
    require("path", path)?;
    let req = fs::MakeDirRequest {
        path: path.to_string(),
    };
    let resp: fs::MakeDirResponse = fs_call(envd, "MakeDir", &req).await?;
    let entry = match resp.entry {
        Some(e) => e,
        // Older envds answer without the entry.
        None => {
            let req = fs::StatRequest {
                path: path.to_string(),
            };
            let stat: fs::StatResponse = fs_call(envd, "Stat", &req).await?;
            stat.entry
                .ok_or_else(|| RpcError::internal(format!("envd's Stat of {path} held no entry")))?
        }
    };
    Ok(file_entry(entry))
}

/// Removes a file, or a directory with everything in it.
pub async fn remove(envd: &EnvdClient, path: &str) -> OpResult<()> {
    require("path", path)?;
    let req = fs::RemoveRequest {
        path: path.to_string(),
    };
    let _: fs::RemoveResponse = fs_call(envd, "Remove", &req).await?;
    Ok(())
}
