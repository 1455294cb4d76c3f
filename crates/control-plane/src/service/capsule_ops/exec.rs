//! Commands: run to completion (foreground exec), start in the background, list, kill, and the
//! two output streams (a new command, or re-attaching to a running one).

use super::Target;
use crate::auth::secrets::random_hex;
use crate::error::{ApiError, ApiResult};
use base64::Engine;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use wrenn_api_types::ErrorCode;
use wrenn_api_types::exec::{
    BackgroundExecResponse, ExecRequest, ExecResponse, OutputEncoding, ProcessInfo, ProcessList,
};
use wrenn_protocol::connect::{Code, ResponseStream};
use wrenn_protocol::hostagent as pb;

/// A foreground command's limit when the caller gives none (the SDK's default too).
pub const DEFAULT_EXEC_TIMEOUT_SECS: i32 = 30;
/// The largest `timeout_sec` accepted; `0` ("no limit") runs with this one.
pub const MAX_EXEC_TIMEOUT_SECS: i32 = 86_400;
/// What the agent has beyond the command's own limit to kill it and answer, before the call
/// itself is abandoned (only when the agent is not answering at all).
const EXEC_CALL_GRACE: Duration = Duration::from_secs(15);
/// Unary process calls (start, list, kill) are quick; a host slower than this is in trouble.
const PROCESS_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest caller-chosen tag.
const MAX_TAG_LEN: usize = 128;

/// Checks an exec request before anything is started.
pub fn validate(req: &ExecRequest) -> ApiResult<()> {
    if req.cmd.trim().is_empty() {
        return Err(ApiError::invalid("cmd is required"));
    }
    if let Some(t) = req.timeout_sec
        && !(0..=MAX_EXEC_TIMEOUT_SECS).contains(&t)
    {
        return Err(ApiError::invalid(format!(
            "timeout_sec must be between 0 (no limit) and {MAX_EXEC_TIMEOUT_SECS}, got {t}"
        )));
    }
    if let Some(tag) = &req.tag {
        validate_tag(tag)?;
    }
    Ok(())
}

fn validate_tag(tag: &str) -> ApiResult<()> {
    if tag.is_empty() || tag.len() > MAX_TAG_LEN || tag.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "tag must be 1 to {MAX_TAG_LEN} printable characters"
        )));
    }
    Ok(())
}

/// The command's limit in seconds: absent → 30, `0` → no limit (the largest allowed).
pub fn effective_timeout(timeout_sec: Option<i32>) -> i32 {
    match timeout_sec {
        None => DEFAULT_EXEC_TIMEOUT_SECS,
        Some(0) => MAX_EXEC_TIMEOUT_SECS,
        Some(t) => t.clamp(1, MAX_EXEC_TIMEOUT_SECS),
    }
}

fn env_map(envs: Option<BTreeMap<String, String>>) -> HashMap<String, String> {
    envs.unwrap_or_default().into_iter().collect()
}

/// Runs a command to completion. A non-zero exit is a normal result; a command still running
/// at its limit is killed and the call fails.
pub async fn run(target: &Target, req: ExecRequest) -> ApiResult<ExecResponse> {
    validate(&req)?;
    let timeout = effective_timeout(req.timeout_sec);
    let call = pb::ExecRequest {
        sandbox_id: target.sandbox_id.clone(),
        cmd: req.cmd.clone(),
        args: req.args,
        timeout_sec: timeout,
        envs: env_map(req.envs),
        cwd: req.cwd.unwrap_or_default(),
        user: String::new(),
    };
    let limit = Duration::from_secs(u64::try_from(timeout).unwrap_or(0)) + EXEC_CALL_GRACE;
    let started = Instant::now();
    let out: pb::ExecResponse = target
        .agent
        .call_with_timeout("Exec", &call, limit)
        .await
        .map_err(|e| match e.code {
            Code::DeadlineExceeded => ApiError::new(
                ErrorCode::AgentError,
                format!(
                    "`{}` did not finish within {timeout}s and was killed",
                    req.cmd
                ),
            ),
            Code::ResourceExhausted => ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "{}; use the exec stream (WebSocket) for large output",
                    e.message
                ),
            ),
            _ => target.agent_error(e),
        })?;
    let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let (stdout, stderr, encoding) = encode_output(&out.stdout, &out.stderr);
    Ok(ExecResponse {
        sandbox_id: target.sandbox_id.clone(),
        cmd: req.cmd,
        stdout,
        stderr,
        exit_code: out.exit_code,
        duration_ms,
        encoding,
    })
}

/// Both streams as text when both are UTF-8, otherwise both in base64 (the SDK decodes both
/// when `encoding` says so).
pub fn encode_output(stdout: &[u8], stderr: &[u8]) -> (String, String, OutputEncoding) {
    match (std::str::from_utf8(stdout), std::str::from_utf8(stderr)) {
        (Ok(o), Ok(e)) => (o.to_string(), e.to_string(), OutputEncoding::Utf8),
        _ => {
            let b64 = base64::engine::general_purpose::STANDARD;
            (
                b64.encode(stdout),
                b64.encode(stderr),
                OutputEncoding::Base64,
            )
        }
    }
}

/// A tag for a background process started without one (upstream's form).
pub fn new_process_tag() -> String {
    format!("proc-{}", random_hex(4))
}

/// Starts a command that outlives the request.
pub async fn start_background(
    target: &Target,
    req: ExecRequest,
) -> ApiResult<BackgroundExecResponse> {
    validate(&req)?;
    let tag = req.tag.clone().unwrap_or_else(new_process_tag);
    let call = pb::StartBackgroundRequest {
        sandbox_id: target.sandbox_id.clone(),
        cmd: req.cmd.clone(),
        args: req.args,
        tag: tag.clone(),
        envs: env_map(req.envs),
        cwd: req.cwd.unwrap_or_default(),
        user: String::new(),
    };
    let resp: pb::StartBackgroundResponse = target
        .agent
        .call_with_timeout("StartBackground", &call, PROCESS_CALL_TIMEOUT)
        .await
        .map_err(|e| match e.code {
            Code::AlreadyExists => {
                ApiError::conflict(format!("a process with tag {tag:?} is already running"))
            }
            _ => target.agent_error(e),
        })?;
    Ok(BackgroundExecResponse {
        sandbox_id: target.sandbox_id.clone(),
        cmd: req.cmd,
        pid: resp.pid,
        tag: if resp.tag.is_empty() { tag } else { resp.tag },
    })
}

/// The processes envd started that are still running (background commands, terminals, and
/// foreground commands in flight), by pid.
pub async fn list(target: &Target) -> ApiResult<ProcessList> {
    let call = pb::ListProcessesRequest {
        sandbox_id: target.sandbox_id.clone(),
    };
    let resp: pb::ListProcessesResponse = target
        .agent
        .call_with_timeout("ListProcesses", &call, PROCESS_CALL_TIMEOUT)
        .await
        .map_err(|e| target.agent_error(e))?;
    let mut processes: Vec<ProcessInfo> = resp
        .processes
        .into_iter()
        .map(|p| ProcessInfo {
            pid: p.pid,
            tag: (!p.tag.is_empty()).then_some(p.tag),
            cmd: p.cmd,
            args: p.args,
        })
        .collect();
    processes.sort_by_key(|p| p.pid);
    Ok(ProcessList { processes })
}

/// A process named by pid (decimal) or tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessSelector {
    Pid(u32),
    Tag(String),
}

impl ProcessSelector {
    /// A path segment: digits are a pid, anything else a tag.
    pub fn parse(text: &str) -> ApiResult<Self> {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse::<u32>()
                .map(Self::Pid)
                .map_err(|_| ApiError::not_found(format!("process {text} not found")));
        }
        validate_tag(text)
            .map_err(|_| ApiError::not_found(format!("process {text:?} not found")))?;
        Ok(Self::Tag(text.to_string()))
    }

    fn describe(&self) -> String {
        match self {
            Self::Pid(p) => format!("process {p}"),
            Self::Tag(t) => format!("process with tag {t:?}"),
        }
    }
}

/// The signal names `DELETE …/processes/{pid}` accepts; SIGKILL when none is given.
pub fn parse_signal(name: Option<&str>) -> ApiResult<&'static str> {
    let name = name.unwrap_or("").trim().to_ascii_uppercase();
    match name.trim_start_matches("SIG") {
        "" | "KILL" | "9" => Ok("SIGKILL"),
        "TERM" | "15" => Ok("SIGTERM"),
        _ => Err(ApiError::invalid(format!(
            "unsupported signal {name:?}: use SIGKILL or SIGTERM"
        ))),
    }
}

/// Signals a process; `not_found` when no such process is running.
pub async fn kill(target: &Target, selector: &ProcessSelector, signal: &str) -> ApiResult<()> {
    use pb::kill_process_request::Selector as S;
    let call = pb::KillProcessRequest {
        sandbox_id: target.sandbox_id.clone(),
        selector: Some(match selector {
            ProcessSelector::Pid(p) => S::Pid(*p),
            ProcessSelector::Tag(t) => S::Tag(t.clone()),
        }),
        signal: signal.to_string(),
    };
    let _: pb::KillProcessResponse = target
        .agent
        .call_with_timeout("KillProcess", &call, PROCESS_CALL_TIMEOUT)
        .await
        .map_err(|e| target.agent_error_about(e, &selector.describe()))?;
    Ok(())
}

/// What the exec stream's `start` message asks for.
#[derive(Debug, Clone, Default)]
pub struct StreamCommand {
    pub cmd: String,
    pub args: Vec<String>,
    pub envs: BTreeMap<String, String>,
    pub cwd: Option<String>,
}

/// A process's events; the first one is its start.
pub type ProcessEvents = ResponseStream<pb::ExecStreamResponse>;

/// Starts a command and returns its event stream, its start already checked: a command that
/// cannot start fails here. Dropping the stream before the end kills the command (the agent
/// does that: a foreground command nobody follows has no reason to run on).
pub async fn open_stream(
    target: &Target,
    command: StreamCommand,
) -> ApiResult<(u32, ProcessEvents)> {
    if command.cmd.trim().is_empty() {
        return Err(ApiError::invalid("cmd is required"));
    }
    let call = pb::ExecStreamRequest {
        sandbox_id: target.sandbox_id.clone(),
        cmd: command.cmd,
        args: command.args,
        timeout_sec: 0,
        envs: command.envs.into_iter().collect(),
        cwd: command.cwd.unwrap_or_default(),
        user: String::new(),
    };
    let stream = target
        .agent
        .server_stream("ExecStream", &call)
        .await
        .map_err(|e| target.agent_error(e))?;
    first_start(target, stream, None).await
}

/// Follows a running process from now on (nothing before is replayed); dropping the stream
/// leaves the process running. An exited or unknown process is `not_found`.
pub async fn connect(
    target: &Target,
    selector: &ProcessSelector,
) -> ApiResult<(u32, ProcessEvents)> {
    use pb::connect_process_request::Selector as S;
    let call = pb::ConnectProcessRequest {
        sandbox_id: target.sandbox_id.clone(),
        selector: Some(match selector {
            ProcessSelector::Pid(p) => S::Pid(*p),
            ProcessSelector::Tag(t) => S::Tag(t.clone()),
        }),
    };
    let stream = target
        .agent
        .server_stream("ConnectProcess", &call)
        .await
        .map_err(|e| target.agent_error_about(e, &selector.describe()))?;
    first_start(target, stream, Some(selector)).await
}

/// Reads the stream's first event, which must be the start (errors opening a stream arrive as
/// its first message).
async fn first_start(
    target: &Target,
    mut stream: ProcessEvents,
    selector: Option<&ProcessSelector>,
) -> ApiResult<(u32, ProcessEvents)> {
    use pb::exec_stream_response::Event;
    let map = |e| match selector {
        Some(s) => target.agent_error_about(e, &format!("{} (it may have exited)", s.describe())),
        None => target.agent_error(e),
    };
    match stream.message().await {
        Some(Ok(pb::ExecStreamResponse {
            event: Some(Event::Start(start)),
        })) => Ok((start.pid, stream)),
        Some(Ok(_)) => Err(ApiError::internal(
            "the agent's process stream did not begin with a start event",
        )),
        Some(Err(e)) => Err(map(e)),
        None => Err(ApiError::new(
            ErrorCode::AgentError,
            format!(
                "the agent ended the process stream of {} at once",
                target.what()
            ),
        )),
    }
}

/// Bytes of output, for the stream forwarders.
pub fn output_of(event: pb::ExecStreamData) -> Option<(bool, Bytes)> {
    use pb::exec_stream_data::Output;
    match event.output? {
        Output::Stdout(b) => Some((false, b)),
        Output::Stderr(b) => Some((true, b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_defaults_and_limits() {
        assert_eq!(effective_timeout(None), 30);
        assert_eq!(effective_timeout(Some(0)), MAX_EXEC_TIMEOUT_SECS);
        assert_eq!(effective_timeout(Some(300)), 300);
        let req = |t| ExecRequest {
            cmd: "/bin/sh".into(),
            timeout_sec: t,
            ..Default::default()
        };
        assert!(validate(&req(Some(-1))).is_err());
        assert!(validate(&req(Some(86_401))).is_err());
        assert!(validate(&req(Some(86_400))).is_ok());
        assert!(validate(&req(None)).is_ok());
        let empty = ExecRequest {
            cmd: " ".into(),
            ..Default::default()
        };
        assert_eq!(
            validate(&empty).map_err(|e| e.code()).err(),
            Some(ErrorCode::InvalidRequest)
        );
    }

    #[test]
    fn base64_for_both_streams_when_either_is_not_utf8() {
        let (o, e, enc) = encode_output(b"hi\n", "é".as_bytes());
        assert_eq!(
            (o.as_str(), e.as_str(), enc),
            ("hi\n", "é", OutputEncoding::Utf8)
        );
        let (o, e, enc) = encode_output(b"\xff", b"err");
        assert_eq!(enc, OutputEncoding::Base64);
        assert_eq!((o.as_str(), e.as_str()), ("/w==", "ZXJy"));
    }

    #[test]
    fn selectors_and_signals() {
        assert_eq!(
            ProcessSelector::parse("42").ok(),
            Some(ProcessSelector::Pid(42))
        );
        assert_eq!(
            ProcessSelector::parse("proc-ab12").ok(),
            Some(ProcessSelector::Tag("proc-ab12".into()))
        );
        assert!(ProcessSelector::parse("99999999999").is_err());
        assert_eq!(parse_signal(None).ok(), Some("SIGKILL"));
        assert_eq!(parse_signal(Some("sigterm")).ok(), Some("SIGTERM"));
        assert_eq!(parse_signal(Some("TERM")).ok(), Some("SIGTERM"));
        assert!(parse_signal(Some("SIGHUP")).is_err());
        let tag = new_process_tag();
        assert!(tag.starts_with("proc-") && tag.len() == 13, "{tag}");
    }
}
