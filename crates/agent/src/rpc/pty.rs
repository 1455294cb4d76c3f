//! Terminal RPCs: a PTY process is named by its tag, so a client can leave and re-attach (the
//! process keeps running when the attach stream ends; `PtyKill` ends it).

use super::exec::{active, touching};
use super::{RpcResult, RpcState};
use crate::sandbox::envd_ops::{self, ProcessEvent};
use futures::StreamExt;
use wrenn_protocol::connect::server::{CallInfo, ResponseStream};
use wrenn_protocol::hostagent as pb;

fn pty_event(ev: ProcessEvent, tag: &str) -> pb::PtyAttachResponse {
    use pb::pty_attach_response::Event;
    let event = match ev {
        ProcessEvent::Started { pid } => Event::Started(pb::PtyStarted {
            pid,
            tag: tag.to_string(),
        }),
        ProcessEvent::Pty(data) | ProcessEvent::Stdout(data) | ProcessEvent::Stderr(data) => {
            Event::Output(pb::PtyOutput { data })
        }
        ProcessEvent::Ended(exit) => Event::Exited(pb::PtyExited {
            exit_code: exit.exit_code,
            error: exit.error,
        }),
    };
    pb::PtyAttachResponse { event: Some(event) }
}

/// A tag for a terminal started without one, so later calls can name it.
fn new_tag() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("pty-{:016x}", h.finish())
}

/// With `cmd`: starts it on a new terminal (under `tag`, or a new tag the `started` event
/// reports). Without: re-attaches to the terminal `tag`, resized to `cols`x`rows` if given.
pub async fn pty_attach(
    st: RpcState,
    _: CallInfo,
    req: pb::PtyAttachRequest,
) -> RpcResult<ResponseStream<pb::PtyAttachResponse>> {
    let sb = active(&st, &req.sandbox_id)?;
    let (tag, events) = if req.cmd.is_empty() {
        let size = (req.cols != 0 || req.rows != 0).then_some((req.cols, req.rows));
        let events = envd_ops::pty_attach(&sb.envd, &req.tag, size).await?;
        (req.tag, events)
    } else {
        let tag = if req.tag.is_empty() {
            new_tag()
        } else {
            req.tag
        };
        let spec = super::process_spec!(req);
        let events = envd_ops::pty_start(&sb.envd, &spec, &tag, (req.cols, req.rows)).await?;
        (tag, events)
    };
    let events = events.map(move |r| r.map(|ev| pty_event(ev, &tag)));
    Ok(Box::pin(touching(sb, events)))
}

pub async fn pty_send_input(
    st: RpcState,
    _: CallInfo,
    req: pb::PtySendInputRequest,
) -> RpcResult<pb::PtySendInputResponse> {
    let sb = active(&st, &req.sandbox_id)?;
    envd_ops::pty_input(&sb.envd, &req.tag, req.data).await?;
    Ok(pb::PtySendInputResponse {})
}

pub async fn pty_resize(
    st: RpcState,
    _: CallInfo,
    req: pb::PtyResizeRequest,
) -> RpcResult<pb::PtyResizeResponse> {
    let sb = active(&st, &req.sandbox_id)?;
    envd_ops::pty_resize(&sb.envd, &req.tag, req.cols, req.rows).await?;
    Ok(pb::PtyResizeResponse {})
}

pub async fn pty_kill(
    st: RpcState,
    _: CallInfo,
    req: pb::PtyKillRequest,
) -> RpcResult<pb::PtyKillResponse> {
    let sb = active(&st, &req.sandbox_id)?;
    envd_ops::pty_kill(&sb.envd, &req.tag).await?;
    Ok(pb::PtyKillResponse {})
}
