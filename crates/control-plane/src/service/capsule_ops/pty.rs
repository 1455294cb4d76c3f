//! Terminals. A PTY process is named by its tag and outlives any one attachment: leaving only
//! detaches, and a later attach by tag finds the same process (only kill, its exit or the
//! capsule's end stop it).

use super::Target;
use crate::auth::secrets::random_hex;
use crate::error::{ApiError, ApiResult};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use wrenn_api_types::ErrorCode;
use wrenn_protocol::connect::ResponseStream;
use wrenn_protocol::hostagent as pb;

/// Terminal size when the client gives none.
pub const DEFAULT_SIZE: (u16, u16) = (80, 24);
/// The shell a terminal runs when the client names none.
pub const DEFAULT_CMD: &str = "/bin/bash";
/// Most input bytes sent in one `PtySendInput` call when queued keystrokes are merged.
pub const MAX_INPUT_BATCH: usize = 256 * 1024;
/// Input, resize and kill calls are small; a host slower than this is in trouble.
const PTY_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A tag for a new terminal (upstream's form); later attaches name it.
pub fn new_pty_tag() -> String {
    format!("pty-{}", random_hex(4))
}

/// What a client's `start` asks for.
#[derive(Debug, Clone, Default)]
pub struct PtyCommand {
    pub cmd: Option<String>,
    pub args: Vec<String>,
    pub envs: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub cols: Option<u16>,
    pub rows: Option<u16>,
}

/// A terminal's events after its start: output, then its exit.
pub type PtyEvents = ResponseStream<pb::PtyAttachResponse>;

/// An attachment: the process and its tag, and the stream of what follows.
#[derive(Debug)]
pub struct Attached {
    pub pid: u32,
    pub tag: String,
    pub events: PtyEvents,
}

/// Starts `command` on a new terminal tagged `tag`.
pub async fn start(target: &Target, command: PtyCommand, tag: &str) -> ApiResult<Attached> {
    let cmd = command
        .cmd
        .filter(|c| !c.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_CMD.to_string());
    let cols = command.cols.filter(|c| *c > 0).unwrap_or(DEFAULT_SIZE.0);
    let rows = command.rows.filter(|r| *r > 0).unwrap_or(DEFAULT_SIZE.1);
    let call = pb::PtyAttachRequest {
        sandbox_id: target.sandbox_id.clone(),
        tag: tag.to_string(),
        cmd,
        args: command.args,
        cols: cols.into(),
        rows: rows.into(),
        envs: command.envs.into_iter().collect(),
        cwd: command.cwd.unwrap_or_default(),
        // The capsule's default user, as for every other command (upstream ignored `user` too).
        user: String::new(),
    };
    open(target, call, None).await
}

/// Re-attaches to the live terminal `tag`; `not_found` if there is none.
pub async fn reattach(target: &Target, tag: &str) -> ApiResult<Attached> {
    if tag.is_empty() {
        return Err(ApiError::invalid(
            "connect needs the tag of a running terminal",
        ));
    }
    let call = pb::PtyAttachRequest {
        sandbox_id: target.sandbox_id.clone(),
        tag: tag.to_string(),
        ..Default::default()
    };
    open(target, call, Some(tag)).await
}

async fn open(
    target: &Target,
    call: pb::PtyAttachRequest,
    existing: Option<&str>,
) -> ApiResult<Attached> {
    use pb::pty_attach_response::Event;
    let tag = call.tag.clone();
    let map = |e| match existing {
        Some(t) => target.agent_error_about(e, &format!("terminal {t:?} (it may have exited)")),
        None => target.agent_error(e),
    };
    let mut events = target
        .agent
        .server_stream::<_, pb::PtyAttachResponse>("PtyAttach", &call)
        .await
        .map_err(map)?;
    // Errors opening a stream arrive as its first message; the first event is the start.
    match events.message().await {
        Some(Ok(pb::PtyAttachResponse {
            event: Some(Event::Started(s)),
        })) => Ok(Attached {
            pid: s.pid,
            tag: if s.tag.is_empty() { tag } else { s.tag },
            events,
        }),
        Some(Ok(_)) => Err(ApiError::internal(
            "the agent's terminal stream did not begin with a start event",
        )),
        Some(Err(e)) => Err(map(e)),
        None => Err(ApiError::new(
            ErrorCode::AgentError,
            format!(
                "the agent ended the terminal stream of {} at once",
                target.what()
            ),
        )),
    }
}

/// What a client asks of an attached terminal, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyOp {
    Input(Bytes),
    Resize { cols: u16, rows: u16 },
    Kill,
}

/// Takes the next operation off `queue`, merging consecutive inputs (up to
/// [`MAX_INPUT_BATCH`] bytes) into one, so a fast typist or a paste costs one call, not one per
/// frame. Order is kept: an input never jumps over a resize or a kill.
pub fn coalesce(queue: &mut VecDeque<PtyOp>) -> Option<PtyOp> {
    let first = queue.pop_front()?;
    let PtyOp::Input(first) = first else {
        return Some(first);
    };
    if !matches!(queue.front(), Some(PtyOp::Input(_))) {
        return Some(PtyOp::Input(first));
    }
    let mut merged = BytesMut::from(&first[..]);
    while let Some(PtyOp::Input(next)) = queue.front() {
        if merged.len() + next.len() > MAX_INPUT_BATCH {
            break;
        }
        merged.extend_from_slice(next);
        queue.pop_front();
    }
    Some(PtyOp::Input(merged.freeze()))
}

/// Applies one operation to the terminal `tag`.
pub async fn apply(target: &Target, tag: &str, op: PtyOp) -> ApiResult<()> {
    let sandbox_id = target.sandbox_id.clone();
    let what = format!("terminal {tag:?}");
    let tag = tag.to_string();
    let result = match op {
        PtyOp::Input(data) => {
            let call = pb::PtySendInputRequest {
                sandbox_id,
                tag,
                data,
            };
            target
                .agent
                .call_with_timeout::<_, pb::PtySendInputResponse>(
                    "PtySendInput",
                    &call,
                    PTY_CALL_TIMEOUT,
                )
                .await
                .map(drop)
        }
        PtyOp::Resize { cols, rows } => {
            let call = pb::PtyResizeRequest {
                sandbox_id,
                tag,
                cols: cols.into(),
                rows: rows.into(),
            };
            target
                .agent
                .call_with_timeout::<_, pb::PtyResizeResponse>("PtyResize", &call, PTY_CALL_TIMEOUT)
                .await
                .map(drop)
        }
        PtyOp::Kill => {
            let call = pb::PtyKillRequest { sandbox_id, tag };
            target
                .agent
                .call_with_timeout::<_, pb::PtyKillResponse>("PtyKill", &call, PTY_CALL_TIMEOUT)
                .await
                .map(drop)
        }
    };
    result.map_err(|e| target.agent_error_about(e, &what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(s: &str) -> PtyOp {
        PtyOp::Input(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn merges_queued_input_but_keeps_order_around_other_operations() {
        let mut q: VecDeque<PtyOp> = [
            input("l"),
            input("s"),
            input("\r"),
            PtyOp::Resize {
                cols: 100,
                rows: 40,
            },
            input("x"),
            PtyOp::Kill,
            input("y"),
            input("z"),
        ]
        .into();
        let mut out = Vec::new();
        while let Some(op) = coalesce(&mut q) {
            out.push(op);
        }
        assert_eq!(
            out,
            vec![
                input("ls\r"),
                PtyOp::Resize {
                    cols: 100,
                    rows: 40
                },
                input("x"),
                PtyOp::Kill,
                input("yz"),
            ]
        );
    }

    #[test]
    fn a_merged_input_stays_under_the_batch_limit() {
        let big = PtyOp::Input(Bytes::from(vec![b'a'; MAX_INPUT_BATCH - 1]));
        let mut q: VecDeque<PtyOp> = [big.clone(), input("bc"), input("d")].into();
        assert_eq!(coalesce(&mut q), Some(big));
        assert_eq!(coalesce(&mut q), Some(input("bcd")));
        assert_eq!(coalesce(&mut q), None);
    }
}
