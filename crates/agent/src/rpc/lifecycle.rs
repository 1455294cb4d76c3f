//! Lifecycle RPCs: create, destroy, pause, resume, list, ping, terminate, snapshot templates,
//! metrics, the agent's logs.

use super::{RpcResult, RpcState, rpc_err};
use crate::error::AgentError;
use crate::sandbox::metrics::MetricPoint;
use crate::sandbox::{CreateRequest, PausedSandbox, ResumeOverrides, Sandbox};
use wrenn_protocol::connect::server::CallInfo;
use wrenn_protocol::hostagent as pb;

fn sandbox_info(sb: &Sandbox) -> pb::SandboxInfo {
    let r = sb.record();
    #[allow(deprecated)]
    pb::SandboxInfo {
        sandbox_id: r.sandbox_id,
        status: sb.status().as_str().into(),
        template: r.template,
        vcpus: r.vcpus as i32,
        memory_mb: r.memory_mb as i32,
        host_ip: r.host_ip,
        created_at_unix: r.created_at_unix,
        last_active_at_unix: sb.last_active_unix(),
        timeout_sec: r.timeout_sec as i32,
        team_id: r.team_id,
        template_id: r.template_id,
        metadata: r.metadata.into_iter().collect(),
    }
}

fn paused_info(p: &PausedSandbox) -> pb::SandboxInfo {
    let r = p.record.clone();
    #[allow(deprecated)]
    pb::SandboxInfo {
        sandbox_id: r.sandbox_id,
        status: "paused".into(),
        template: r.template,
        vcpus: r.vcpus as i32,
        memory_mb: r.memory_mb as i32,
        host_ip: String::new(),
        created_at_unix: r.created_at_unix,
        last_active_at_unix: 0,
        timeout_sec: r.timeout_sec as i32,
        team_id: r.team_id,
        template_id: r.template_id,
        metadata: r.metadata.into_iter().collect(),
    }
}

/// What the control plane shows as the capsule's system metadata, with the sandbox's own labels.
async fn system_metadata(st: &RpcState, sb: &Sandbox) -> std::collections::HashMap<String, String> {
    let r = sb.record();
    let mut metadata: std::collections::HashMap<String, String> = r.metadata.into_iter().collect();
    metadata.insert("kernel_version".into(), r.kernel_release.clone());
    metadata.insert("vmm_version".into(), st.manager.vmm().describe());
    metadata.insert("agent_version".into(), env!("CARGO_PKG_VERSION").into());
    if let Ok(v) = sb.envd.version().await {
        metadata.insert("envd_version".into(), v);
    }
    metadata
}

fn non_negative(name: &str, v: i32) -> Result<u32, AgentError> {
    u32::try_from(v)
        .map_err(|_| AgentError::InvalidArgument(format!("{name} must not be negative")))
}

pub async fn create_sandbox(
    st: RpcState,
    _: CallInfo,
    req: pb::CreateSandboxRequest,
) -> RpcResult<pb::CreateSandboxResponse> {
    #[allow(deprecated)]
    let create = CreateRequest {
        sandbox_id: req.sandbox_id,
        template: req.template,
        vcpus: non_negative("vcpus", req.vcpus).map_err(rpc_err)?,
        memory_mb: non_negative("memory_mb", req.memory_mb).map_err(rpc_err)?,
        timeout_sec: non_negative("timeout_sec", req.timeout_sec).map_err(rpc_err)?,
        disk_size_mb: non_negative("disk_size_mb", req.disk_size_mb).map_err(rpc_err)?,
        team_id: req.team_id,
        template_id: req.template_id,
        default_user: req.default_user,
        default_env: req.default_env.into_iter().collect(),
        metadata: req.metadata.into_iter().collect(),
    };
    let sb = st.manager.create(create).await.map_err(rpc_err)?;
    let metadata = system_metadata(&st, &sb).await;
    let r = sb.record();
    Ok(pb::CreateSandboxResponse {
        sandbox_id: r.sandbox_id,
        status: sb.status().as_str().into(),
        host_ip: r.host_ip,
        metadata,
    })
}

pub async fn destroy_sandbox(
    st: RpcState,
    _: CallInfo,
    req: pb::DestroySandboxRequest,
) -> RpcResult<pb::DestroySandboxResponse> {
    st.manager.destroy(&req.sandbox_id).await.map_err(rpc_err)?;
    Ok(pb::DestroySandboxResponse {})
}

pub async fn pause_sandbox(
    st: RpcState,
    _: CallInfo,
    req: pb::PauseSandboxRequest,
) -> RpcResult<pb::PauseSandboxResponse> {
    st.manager.pause(&req.sandbox_id).await.map_err(rpc_err)?;
    Ok(pb::PauseSandboxResponse {})
}

pub async fn resume_sandbox(
    st: RpcState,
    _: CallInfo,
    req: pb::ResumeSandboxRequest,
) -> RpcResult<pb::ResumeSandboxResponse> {
    let overrides = ResumeOverrides {
        timeout_sec: Some(non_negative("timeout_sec", req.timeout_sec).map_err(rpc_err)?),
        default_user: Some(req.default_user),
        default_env: Some(req.default_env.into_iter().collect()),
    };
    let sb = st
        .manager
        .resume(&req.sandbox_id, overrides)
        .await
        .map_err(rpc_err)?;
    let metadata = system_metadata(&st, &sb).await;
    let r = sb.record();
    Ok(pb::ResumeSandboxResponse {
        sandbox_id: r.sandbox_id,
        status: sb.status().as_str().into(),
        host_ip: r.host_ip,
        metadata,
    })
}

pub async fn list_sandboxes(
    st: RpcState,
    _: CallInfo,
    _: pb::ListSandboxesRequest,
) -> RpcResult<pb::ListSandboxesResponse> {
    Ok(pb::ListSandboxesResponse {
        sandboxes: st
            .manager
            .list()
            .iter()
            .map(|sb| sandbox_info(sb))
            .chain(st.manager.list_paused().iter().map(|p| paused_info(p)))
            .collect(),
        auto_paused_sandbox_ids: st.manager.auto_paused_ids(),
        ttl_destroyed_sandbox_ids: st.manager.ttl_destroyed_ids(),
    })
}

pub async fn ping_sandbox(
    st: RpcState,
    _: CallInfo,
    req: pb::PingSandboxRequest,
) -> RpcResult<pb::PingSandboxResponse> {
    st.manager.ping(&req.sandbox_id).map_err(rpc_err)?;
    Ok(pb::PingSandboxResponse {})
}

/// The host is being removed: destroy every sandbox, then shut the agent down.
pub async fn terminate(
    st: RpcState,
    _: CallInfo,
    _: pb::TerminateRequest,
) -> RpcResult<pb::TerminateResponse> {
    tracing::warn!("Terminate RPC: destroying all sandboxes and shutting down");
    let manager = st.manager.clone();
    let token = st.terminate.clone();
    tokio::spawn(async move {
        manager.destroy_all().await;
        token.cancel();
    });
    Ok(pb::TerminateResponse {})
}

/// A template from a running (frozen briefly, keeps running) or paused (stays paused) sandbox.
pub async fn create_snapshot(
    st: RpcState,
    _: CallInfo,
    req: pb::CreateSnapshotRequest,
) -> RpcResult<pb::CreateSnapshotResponse> {
    if req.template_id.is_empty() {
        return Err(rpc_err(AgentError::InvalidArgument(
            "template_id is required".into(),
        )));
    }
    let size = st
        .manager
        .create_template(&req.sandbox_id, &req.template_id)
        .await
        .map_err(rpc_err)?;
    Ok(pb::CreateSnapshotResponse {
        name: req.template_id,
        size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
    })
}

pub async fn delete_snapshot(
    st: RpcState,
    _: CallInfo,
    req: pb::DeleteSnapshotRequest,
) -> RpcResult<pb::DeleteSnapshotResponse> {
    st.manager
        .delete_template(&req.template_id)
        .await
        .map_err(rpc_err)?;
    Ok(pb::DeleteSnapshotResponse {})
}

pub async fn flatten_rootfs(
    _: RpcState,
    _: CallInfo,
    _: pb::FlattenRootfsRequest,
) -> RpcResult<pb::FlattenRootfsResponse> {
    Err(rpc_err(AgentError::Unimplemented("image templates")))
}

fn points(v: Vec<MetricPoint>) -> Vec<pb::MetricPoint> {
    v.into_iter()
        .map(|p| pb::MetricPoint {
            timestamp_unix: p.timestamp_unix,
            cpu_pct: p.cpu_pct,
            mem_bytes: p.mem_bytes,
            disk_bytes: p.disk_bytes,
        })
        .collect()
}

pub async fn get_sandbox_metrics(
    st: RpcState,
    _: CallInfo,
    req: pb::GetSandboxMetricsRequest,
) -> RpcResult<pb::GetSandboxMetricsResponse> {
    let range = if req.range.is_empty() {
        "10m"
    } else {
        &req.range
    };
    let v = st
        .manager
        .metrics(&req.sandbox_id, range)
        .map_err(rpc_err)?;
    Ok(pb::GetSandboxMetricsResponse { points: points(v) })
}

pub async fn flush_sandbox_metrics(
    st: RpcState,
    _: CallInfo,
    req: pb::FlushSandboxMetricsRequest,
) -> RpcResult<pb::FlushSandboxMetricsResponse> {
    let t = st.manager.flush_metrics(&req.sandbox_id).map_err(rpc_err)?;
    Ok(pb::FlushSandboxMetricsResponse {
        points_10m: points(t.points_10m),
        points_2h: points(t.points_2h),
        points_24h: points(t.points_24h),
    })
}

/// Lines `GetLogs` returns when the request names no count.
const DEFAULT_LOG_LINES: u32 = 200;

pub async fn get_logs(
    st: RpcState,
    _: CallInfo,
    req: pb::GetLogsRequest,
) -> RpcResult<pb::GetLogsResponse> {
    let lines = match req.lines {
        0 => DEFAULT_LOG_LINES,
        n => n,
    };
    Ok(pb::GetLogsResponse {
        lines: st.logs.tail(lines as usize),
    })
}
