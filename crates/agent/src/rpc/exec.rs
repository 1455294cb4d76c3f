//! Command RPCs: run to completion, stream, start in the background, list, kill, re-attach. The
//! work is in [`envd_ops`]; these find the sandbox and translate messages.

use super::{RpcResult, RpcState, rpc_err};
use crate::sandbox::Sandbox;
use crate::sandbox::envd_ops::{self, EXEC_DEFAULT_TIMEOUT, EventStream, ProcessEvent, Selector};
use futures::{Stream, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use wrenn_protocol::connect::Error as RpcError;
use wrenn_protocol::connect::server::{CallInfo, ResponseStream};
use wrenn_protocol::hostagent as pb;

/// The running sandbox `id`, counting the call as activity for its idle timer (file operations
/// too, unlike upstream: a client busy moving files is not idle).
pub(super) fn active(st: &RpcState, id: &str) -> RpcResult<Arc<Sandbox>> {
    if id.is_empty() {
        return Err(RpcError::invalid_argument("sandbox_id is required"));
    }
    st.manager.get_active(id).map_err(rpc_err)
}

/// Passes a stream through, marking the sandbox active at each item: output flowing to a client
/// is activity, so a long build being watched is not paused as idle.
pub(super) fn touching<T: Send + 'static>(
    sb: Arc<Sandbox>,
    stream: impl Stream<Item = T> + Send + 'static,
) -> impl Stream<Item = T> + Send + 'static {
    stream.inspect(move |_| sb.touch())
}

/// `timeout_sec`: 0 is none given.
fn timeout(secs: i32) -> RpcResult<Option<Duration>> {
    match secs {
        0 => Ok(None),
        s if s > 0 => Ok(Some(Duration::from_secs(s as u64))),
        _ => Err(RpcError::invalid_argument(
            "timeout_sec must not be negative",
        )),
    }
}

fn exec_event(ev: ProcessEvent, tag: &str) -> pb::ExecStreamResponse {
    use pb::exec_stream_data::Output;
    use pb::exec_stream_response::Event;
    let event = match ev {
        ProcessEvent::Started { pid } => Event::Start(pb::ExecStreamStart {
            pid,
            tag: tag.to_string(),
        }),
        ProcessEvent::Stdout(b) | ProcessEvent::Pty(b) => Event::Data(pb::ExecStreamData {
            output: Some(Output::Stdout(b)),
        }),
        ProcessEvent::Stderr(b) => Event::Data(pb::ExecStreamData {
            output: Some(Output::Stderr(b)),
        }),
        ProcessEvent::Ended(exit) => Event::End(pb::ExecStreamEnd {
            exit_code: exit.exit_code,
            error: exit.error,
        }),
    };
    pb::ExecStreamResponse { event: Some(event) }
}

fn exec_events(
    sb: Arc<Sandbox>,
    events: EventStream,
    tag: String,
) -> ResponseStream<pb::ExecStreamResponse> {
    Box::pin(touching(
        sb,
        events.map(move |r| r.map(|ev| exec_event(ev, &tag))),
    ))
}

pub async fn exec(st: RpcState, _: CallInfo, req: pb::ExecRequest) -> RpcResult<pb::ExecResponse> {
    let sb = active(&st, &req.sandbox_id)?;
    let limit = timeout(req.timeout_sec)?.unwrap_or(EXEC_DEFAULT_TIMEOUT);
    let spec = super::process_spec!(req);
    let out = envd_ops::exec(&sb.envd, &spec, limit).await?;
    Ok(pb::ExecResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit.exit_code,
        error: out.exit.error,
    })
}

/// Streams a command's output. The command is killed if the client goes away before it ends
/// (see [`envd_ops::exec_stream`] for why).
pub async fn exec_stream(
    st: RpcState,
    _: CallInfo,
    req: pb::ExecStreamRequest,
) -> RpcResult<ResponseStream<pb::ExecStreamResponse>> {
    let sb = active(&st, &req.sandbox_id)?;
    let limit = timeout(req.timeout_sec)?;
    let spec = super::process_spec!(req);
    let events = envd_ops::exec_stream(&sb.envd, &spec, limit).await?;
    Ok(exec_events(sb, events, String::new()))
}

pub async fn start_background(
    st: RpcState,
    _: CallInfo,
    req: pb::StartBackgroundRequest,
) -> RpcResult<pb::StartBackgroundResponse> {
    let sb = active(&st, &req.sandbox_id)?;
    let spec = super::process_spec!(req);
    let pid = envd_ops::start_background(&sb.envd, &spec, &req.tag).await?;
    Ok(pb::StartBackgroundResponse { pid, tag: req.tag })
}

pub async fn list_processes(
    st: RpcState,
    _: CallInfo,
    req: pb::ListProcessesRequest,
) -> RpcResult<pb::ListProcessesResponse> {
    let sb = active(&st, &req.sandbox_id)?;
    Ok(pb::ListProcessesResponse {
        processes: envd_ops::list_processes(&sb.envd).await?,
    })
}

fn required_selector<S>(s: Option<S>, convert: impl FnOnce(S) -> Selector) -> RpcResult<Selector> {
    s.map(convert)
        .ok_or_else(|| RpcError::invalid_argument("a process selector (pid or tag) is required"))
}

pub async fn kill_process(
    st: RpcState,
    _: CallInfo,
    req: pb::KillProcessRequest,
) -> RpcResult<pb::KillProcessResponse> {
    use pb::kill_process_request::Selector as S;
    let sb = active(&st, &req.sandbox_id)?;
    let selector = required_selector(req.selector, |s| match s {
        S::Pid(p) => Selector::Pid(p),
        S::Tag(t) => Selector::Tag(t),
    })?;
    let signal = envd_ops::parse_signal(&req.signal)?;
    envd_ops::signal(&sb.envd, selector, signal).await?;
    Ok(pb::KillProcessResponse {})
}

/// Follows a running process's output from now on; leaving does not stop the process.
pub async fn connect_process(
    st: RpcState,
    _: CallInfo,
    req: pb::ConnectProcessRequest,
) -> RpcResult<ResponseStream<pb::ExecStreamResponse>> {
    use pb::connect_process_request::Selector as S;
    let sb = active(&st, &req.sandbox_id)?;
    let selector = required_selector(req.selector, |s| match s {
        S::Pid(p) => Selector::Pid(p),
        S::Tag(t) => Selector::Tag(t),
    })?;
    let tag = match &selector {
        Selector::Tag(t) => t.clone(),
        Selector::Pid(_) => String::new(),
    };
    let events = envd_ops::connect(&sb.envd, selector).await?;
    Ok(exec_events(sb, events, tag))
}
