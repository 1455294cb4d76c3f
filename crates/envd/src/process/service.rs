//! The `process.Process` RPCs.

use super::{Output, SpawnRequest, spawn::spawn};
use crate::auth::basic_auth_user;
use crate::error::EnvdError;
use crate::state::SharedState;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use wrenn_protocol::connect::Error as RpcError;
use wrenn_protocol::connect::server::{CallInfo, RequestStream, ResponseStream};
use wrenn_protocol::envd::process::{
    CloseStdinRequest, CloseStdinResponse, ConnectRequest, ConnectResponse, ListRequest,
    ListResponse, ProcessEvent, SendInputRequest, SendInputResponse, SendSignalRequest,
    SendSignalResponse, Signal, StartRequest, StartResponse, StreamInputRequest,
    StreamInputResponse, UpdateRequest, UpdateResponse, process_event, process_input,
    stream_input_request,
};

type RpcResult<T> = Result<T, RpcError>;

/// Idle streams get a keepalive event this often, unless the client asks for another interval
/// with `Keepalive-Ping-Interval` (seconds), so proxies never close a quiet exec stream.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(50);

fn keepalive_interval(info: &CallInfo) -> Duration {
    info.headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_KEEPALIVE)
}

fn event_of(output: Output) -> ProcessEvent {
    use process_event::{DataEvent, EndEvent, Event, data_event::Output as D};
    let event = match output {
        Output::Stdout(b) => Event::Data(DataEvent {
            output: Some(D::Stdout(b)),
        }),
        Output::Stderr(b) => Event::Data(DataEvent {
            output: Some(D::Stderr(b)),
        }),
        Output::Pty(b) => Event::Data(DataEvent {
            output: Some(D::Pty(b)),
        }),
        Output::End(e) => Event::End(EndEvent {
            exit_code: e.exit_code,
            exited: e.exited,
            status: e.status,
            error: e.error,
        }),
    };
    ProcessEvent { event: Some(event) }
}

/// Turns a subscription into the event stream: `start`, then data and keepalives, then `end`.
fn event_stream(
    pid: u32,
    rx: mpsc::Receiver<Output>,
    keepalive: Duration,
) -> impl futures::Stream<Item = ProcessEvent> + Send + 'static {
    use process_event::{Event, KeepAlive, StartEvent};
    let start = ProcessEvent {
        event: Some(Event::Start(StartEvent { pid })),
    };
    let rest = futures::stream::unfold(Some(rx), move |state| async move {
        let mut rx = state?;
        match tokio::time::timeout(keepalive, rx.recv()).await {
            Ok(Some(out)) => {
                let done = matches!(out, Output::End(_));
                Some((event_of(out), if done { None } else { Some(rx) }))
            }
            Ok(None) => None,
            Err(_) => Some((
                ProcessEvent {
                    event: Some(Event::Keepalive(KeepAlive {})),
                },
                Some(rx),
            )),
        }
    });
    futures::stream::once(async move { start }).chain(rest)
}

pub async fn start(
    state: SharedState,
    info: CallInfo,
    req: StartRequest,
) -> RpcResult<ResponseStream<StartResponse>> {
    let config = req
        .process
        .ok_or_else(|| RpcError::invalid_argument("process is required"))?;
    let account = state.account(basic_auth_user(&info.headers).as_deref())?;
    let pty = req.pty.map(|p| {
        let size = p.size.unwrap_or_default();
        (clamp_u16(size.cols, 80), clamp_u16(size.rows, 24))
    });
    let spawn_req = SpawnRequest {
        config,
        pty,
        tag: req.tag.filter(|t| !t.is_empty()),
        stdin: req.stdin.unwrap_or(true),
        account,
        defaults: state.defaults(),
        cgroup: state.cgroups.procs_fd(if pty.is_some() {
            crate::cgroups::CgroupKind::Pty
        } else {
            crate::cgroups::CgroupKind::User
        }),
    };
    let (process, rx) = spawn(&state.processes, spawn_req, true).await?;
    let rx = rx.ok_or_else(|| RpcError::internal("process ended before it could be attached"))?;
    let stream = event_stream(process.pid, rx, keepalive_interval(&info))
        .map(|event| Ok(StartResponse { event: Some(event) }));
    Ok(Box::pin(stream))
}

fn clamp_u16(v: u32, default: u16) -> u16 {
    if v == 0 {
        default
    } else {
        v.min(u16::MAX as u32) as u16
    }
}

pub async fn connect(
    state: SharedState,
    info: CallInfo,
    req: ConnectRequest,
) -> RpcResult<ResponseStream<ConnectResponse>> {
    let selector = req.process.and_then(|p| p.selector);
    let process = state.processes.get(selector.as_ref())?;
    let rx = process.subscribe().ok_or_else(|| {
        RpcError::not_found(format!(
            "process with pid {} has already ended",
            process.pid
        ))
    })?;
    let stream = event_stream(process.pid, rx, keepalive_interval(&info))
        .map(|event| Ok(ConnectResponse { event: Some(event) }));
    Ok(Box::pin(stream))
}

pub async fn list(
    state: SharedState,
    _info: CallInfo,
    _req: ListRequest,
) -> RpcResult<ListResponse> {
    Ok(ListResponse {
        processes: state.processes.list(),
    })
}

pub async fn update(
    state: SharedState,
    _info: CallInfo,
    req: UpdateRequest,
) -> RpcResult<UpdateResponse> {
    let selector = req.process.and_then(|p| p.selector);
    let process = state.processes.get(selector.as_ref())?;
    if let Some(size) = req.pty.and_then(|p| p.size) {
        if size.cols > u16::MAX as u32 || size.rows > u16::MAX as u32 {
            return Err(RpcError::invalid_argument("terminal size out of range"));
        }
        process.resize(size.cols as u16, size.rows as u16)?;
    }
    Ok(UpdateResponse {})
}

async fn write_input(
    state: &SharedState,
    selector: Option<process_selector_t::Selector>,
    input: Option<process_input::Input>,
) -> Result<(), EnvdError> {
    let process = state.processes.get(selector.as_ref())?;
    match input {
        Some(process_input::Input::Stdin(b)) => process.write_input(b, false).await,
        Some(process_input::Input::Pty(b)) => process.write_input(b, true).await,
        None => Ok(()),
    }
}

use wrenn_protocol::envd::process::process_selector as process_selector_t;

pub async fn send_input(
    state: SharedState,
    _info: CallInfo,
    req: SendInputRequest,
) -> RpcResult<SendInputResponse> {
    let selector = req.process.and_then(|p| p.selector);
    write_input(&state, selector, req.input.and_then(|i| i.input)).await?;
    Ok(SendInputResponse {})
}

pub async fn stream_input(
    state: SharedState,
    _info: CallInfo,
    mut stream: RequestStream<StreamInputRequest>,
) -> RpcResult<StreamInputResponse> {
    use stream_input_request::Event;
    let mut target = None;
    while let Some(msg) = stream.next().await {
        match msg?.event {
            Some(Event::Start(s)) => {
                let selector = s.process.and_then(|p| p.selector);
                target = Some(state.processes.get(selector.as_ref())?);
            }
            Some(Event::Data(d)) => {
                let process: &Arc<super::Process> = target.as_ref().ok_or_else(|| {
                    RpcError::failed_precondition("the first message must be start{process}")
                })?;
                match d.input.and_then(|i| i.input) {
                    Some(process_input::Input::Stdin(b)) => process.write_input(b, false).await?,
                    Some(process_input::Input::Pty(b)) => process.write_input(b, true).await?,
                    None => {}
                }
            }
            Some(Event::Keepalive(_)) | None => {}
        }
    }
    Ok(StreamInputResponse {})
}

pub async fn send_signal(
    state: SharedState,
    _info: CallInfo,
    req: SendSignalRequest,
) -> RpcResult<SendSignalResponse> {
    let selector = req.process.and_then(|p| p.selector);
    let process = state.processes.get(selector.as_ref())?;
    let signal = match Signal::try_from(req.signal) {
        Ok(Signal::Sigterm) => nix::sys::signal::Signal::SIGTERM,
        Ok(Signal::Sigkill) => nix::sys::signal::Signal::SIGKILL,
        _ => {
            return Err(RpcError::invalid_argument(format!(
                "unsupported signal {}; use SIGNAL_SIGTERM or SIGNAL_SIGKILL",
                req.signal
            )));
        }
    };
    process.signal(signal)?;
    Ok(SendSignalResponse {})
}

pub async fn close_stdin(
    state: SharedState,
    _info: CallInfo,
    req: CloseStdinRequest,
) -> RpcResult<CloseStdinResponse> {
    let selector = req.process.and_then(|p| p.selector);
    state
        .processes
        .get(selector.as_ref())?
        .close_stdin()
        .await?;
    Ok(CloseStdinResponse {})
}
