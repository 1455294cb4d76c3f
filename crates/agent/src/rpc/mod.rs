//! `hostagent.v1.HostAgentService`: the Connect service the control plane calls.
//!
//! Handlers are thin: they turn protobuf messages into manager calls and [`AgentError`]s into
//! Connect errors. One file per area: [`lifecycle`] (create, destroy, list, metrics, ...),
//! [`exec`] (commands and processes), [`pty`] (terminals), [`files`].

pub mod exec;
pub mod files;
pub mod lifecycle;
pub mod pty;

use crate::error::AgentError;
use crate::sandbox::SandboxManager;
use axum::Router;
use axum::extract::Request;
use axum::routing::post;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use wrenn_logging::LogRing;
use wrenn_protocol::connect::Error as RpcError;
use wrenn_protocol::connect::server::{client_stream, server_stream, unary};
use wrenn_protocol::envd::rpc_path;
use wrenn_protocol::hostagent::SERVICE;

/// What every handler gets.
#[derive(Clone, Debug)]
pub struct RpcState {
    pub manager: Arc<SandboxManager>,
    /// Cancelled by the Terminate RPC: the agent shuts down.
    pub terminate: CancellationToken,
    /// The agent's recent log lines, for `GetLogs`.
    pub logs: LogRing,
}

/// Handlers return this; `?` on an [`AgentError`] converts it.
pub type RpcResult<T> = Result<T, RpcError>;

pub(crate) fn rpc_err(e: AgentError) -> RpcError {
    e.into_rpc()
}

/// The process a command request describes: `Exec`, `ExecStream`, `StartBackground` and
/// `PtyAttach` all carry the same five fields, as separate message types.
macro_rules! process_spec {
    ($req:ident) => {
        $crate::sandbox::envd_ops::ProcessSpec {
            cmd: $req.cmd,
            args: $req.args,
            envs: $req.envs,
            cwd: $req.cwd,
            user: $req.user,
        }
    };
}
pub(crate) use process_spec;

/// Registers one RPC: `rpc!(router, state, kind, "Method", handler)`.
macro_rules! rpc {
    ($router:expr, $state:expr, $kind:ident, $method:literal, $handler:path) => {{
        let st = $state.clone();
        $router.route(
            &rpc_path(SERVICE, $method),
            post(move |req: Request| {
                let st = st.clone();
                async move { $kind(req, move |info, msg| $handler(st, info, msg)).await }
            }),
        )
    }};
}

pub fn router(state: RpcState) -> Router {
    let mut r = Router::new();
    // Lifecycle.
    r = rpc!(r, state, unary, "CreateSandbox", lifecycle::create_sandbox);
    r = rpc!(
        r,
        state,
        unary,
        "DestroySandbox",
        lifecycle::destroy_sandbox
    );
    r = rpc!(r, state, unary, "PauseSandbox", lifecycle::pause_sandbox);
    r = rpc!(r, state, unary, "ResumeSandbox", lifecycle::resume_sandbox);
    r = rpc!(r, state, unary, "ListSandboxes", lifecycle::list_sandboxes);
    r = rpc!(r, state, unary, "PingSandbox", lifecycle::ping_sandbox);
    r = rpc!(r, state, unary, "Terminate", lifecycle::terminate);
    r = rpc!(
        r,
        state,
        unary,
        "CreateSnapshot",
        lifecycle::create_snapshot
    );
    r = rpc!(
        r,
        state,
        unary,
        "DeleteSnapshot",
        lifecycle::delete_snapshot
    );
    r = rpc!(r, state, unary, "FlattenRootfs", lifecycle::flatten_rootfs);
    r = rpc!(
        r,
        state,
        unary,
        "GetSandboxMetrics",
        lifecycle::get_sandbox_metrics
    );
    r = rpc!(
        r,
        state,
        unary,
        "FlushSandboxMetrics",
        lifecycle::flush_sandbox_metrics
    );
    r = rpc!(r, state, unary, "GetLogs", lifecycle::get_logs);
    // Commands and processes.
    r = rpc!(r, state, unary, "Exec", exec::exec);
    r = rpc!(r, state, server_stream, "ExecStream", exec::exec_stream);
    r = rpc!(r, state, unary, "StartBackground", exec::start_background);
    r = rpc!(r, state, unary, "ListProcesses", exec::list_processes);
    r = rpc!(r, state, unary, "KillProcess", exec::kill_process);
    r = rpc!(
        r,
        state,
        server_stream,
        "ConnectProcess",
        exec::connect_process
    );
    // Terminals.
    r = rpc!(r, state, server_stream, "PtyAttach", pty::pty_attach);
    r = rpc!(r, state, unary, "PtySendInput", pty::pty_send_input);
    r = rpc!(r, state, unary, "PtyResize", pty::pty_resize);
    r = rpc!(r, state, unary, "PtyKill", pty::pty_kill);
    // Files.
    r = rpc!(r, state, unary, "WriteFile", files::write_file);
    r = rpc!(r, state, unary, "ReadFile", files::read_file);
    r = rpc!(
        r,
        state,
        client_stream,
        "WriteFileStream",
        files::write_file_stream
    );
    r = rpc!(
        r,
        state,
        server_stream,
        "ReadFileStream",
        files::read_file_stream
    );
    r = rpc!(r, state, unary, "ListDir", files::list_dir);
    r = rpc!(r, state, unary, "MakeDir", files::make_dir);
    r = rpc!(r, state, unary, "RemovePath", files::remove_path);
    r
}
