//! File RPCs, over envd's `/files` HTTP route (content) and its `filesystem` service (listing,
//! directories, removal). Streams move any size in constant memory; the unary `ReadFile` is
//! capped (see [`envd_ops::READ_FILE_LIMIT`]).

use super::exec::{active, touching};
use super::{RpcResult, RpcState};
use crate::sandbox::envd_ops;
use futures::StreamExt;
use wrenn_protocol::connect::Error as RpcError;
use wrenn_protocol::connect::server::{CallInfo, RequestStream, ResponseStream};
use wrenn_protocol::hostagent as pb;

pub async fn write_file(
    st: RpcState,
    _: CallInfo,
    req: pb::WriteFileRequest,
) -> RpcResult<pb::WriteFileResponse> {
    let sb = active(&st, &req.sandbox_id)?;
    envd_ops::write_file(&sb.envd, &req.path, req.content).await?;
    Ok(pb::WriteFileResponse {})
}

pub async fn read_file(
    st: RpcState,
    _: CallInfo,
    req: pb::ReadFileRequest,
) -> RpcResult<pb::ReadFileResponse> {
    let sb = active(&st, &req.sandbox_id)?;
    let content = envd_ops::read_file(&sb.envd, &req.path).await?;
    Ok(pb::ReadFileResponse { content })
}

/// `meta{sandbox_id, path}` first, then chunks, piped into one upload as they arrive.
pub async fn write_file_stream(
    st: RpcState,
    _: CallInfo,
    mut stream: RequestStream<pb::WriteFileStreamRequest>,
) -> RpcResult<pb::WriteFileStreamResponse> {
    use pb::write_file_stream_request::Content;
    let meta = match stream.next().await {
        Some(Ok(pb::WriteFileStreamRequest {
            content: Some(Content::Meta(meta)),
        })) => meta,
        Some(Err(e)) => return Err(e),
        _ => {
            return Err(RpcError::invalid_argument(
                "the first message must be meta{sandbox_id, path}",
            ));
        }
    };
    let sb = active(&st, &meta.sandbox_id)?;
    let chunks = stream.filter_map(|msg| async move {
        match msg {
            Ok(pb::WriteFileStreamRequest {
                content: Some(Content::Chunk(chunk)),
            }) => Some(Ok(chunk)),
            Ok(pb::WriteFileStreamRequest {
                content: Some(Content::Meta(_)),
            }) => Some(Err(RpcError::invalid_argument(
                "meta may only be the first message",
            ))),
            Ok(pb::WriteFileStreamRequest { content: None }) => None,
            Err(e) => Some(Err(e)),
        }
    });
    let written =
        envd_ops::write_file_stream(&sb.envd, &meta.path, touching(sb.clone(), chunks)).await?;
    Ok(pb::WriteFileStreamResponse {
        bytes_written: i64::try_from(written).unwrap_or(i64::MAX),
    })
}

pub async fn read_file_stream(
    st: RpcState,
    _: CallInfo,
    req: pb::ReadFileStreamRequest,
) -> RpcResult<ResponseStream<pb::ReadFileStreamResponse>> {
    let sb = active(&st, &req.sandbox_id)?;
    let chunks = envd_ops::read_file_stream(&sb.envd, &req.path).await?;
    let messages = chunks.map(|r| r.map(|chunk| pb::ReadFileStreamResponse { chunk }));
    Ok(Box::pin(touching(sb, messages)))
}

pub async fn list_dir(
    st: RpcState,
    _: CallInfo,
    req: pb::ListDirRequest,
) -> RpcResult<pb::ListDirResponse> {
    let sb = active(&st, &req.sandbox_id)?;
    Ok(pb::ListDirResponse {
        entries: envd_ops::list_dir(&sb.envd, &req.path, req.depth).await?,
    })
}

pub async fn make_dir(
    st: RpcState,
    _: CallInfo,
    req: pb::MakeDirRequest,
) -> RpcResult<pb::MakeDirResponse> {
    let sb = active(&st, &req.sandbox_id)?;
    let entry = envd_ops::make_dir(&sb.envd, &req.path).await?;
    Ok(pb::MakeDirResponse { entry: Some(entry) })
}

pub async fn remove_path(
    st: RpcState,
    _: CallInfo,
    req: pb::RemovePathRequest,
) -> RpcResult<pb::RemovePathResponse> {
    let sb = active(&st, &req.sandbox_id)?;
    envd_ops::remove(&sb.envd, &req.path).await?;
    Ok(pb::RemovePathResponse {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::manager::now_unix;
    use tokio_util::sync::CancellationToken;
    use wrenn_protocol::connect::Codec;

    fn info() -> CallInfo {
        CallInfo {
            headers: Default::default(),
            codec: Codec::Proto,
            timeout: None,
        }
    }

    /// Every file RPC counts as activity, like exec does, whatever envd answers (here: nothing
    /// listens, so each call fails after finding the sandbox).
    #[tokio::test]
    async fn file_rpcs_reset_the_idle_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (manager, _) = crate::testing::fake_manager(dir.path());
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let envd = format!("http://{}", closed.local_addr().expect("addr"));
        drop(closed);
        let sb = manager.add_test_sandbox("sb-files", 1, 600, 500, Some(&envd));
        let st = RpcState {
            manager: manager.clone(),
            terminate: CancellationToken::new(),
            logs: wrenn_logging::LogRing::new(0),
        };
        let id = || "sb-files".to_owned();
        let path = || "/tmp/x".to_owned();
        let stale = || sb.set_idle_for(500);
        let fresh = |what: &str| {
            assert!(
                now_unix() - sb.last_active_unix() <= 1,
                "{what} did not count as activity"
            );
        };

        stale();
        let _ = write_file(
            st.clone(),
            info(),
            pb::WriteFileRequest {
                sandbox_id: id(),
                path: path(),
                content: Default::default(),
            },
        )
        .await;
        fresh("WriteFile");
        stale();
        let _ = read_file(
            st.clone(),
            info(),
            pb::ReadFileRequest {
                sandbox_id: id(),
                path: path(),
            },
        )
        .await;
        fresh("ReadFile");
        stale();
        let _ = read_file_stream(
            st.clone(),
            info(),
            pb::ReadFileStreamRequest {
                sandbox_id: id(),
                path: path(),
            },
        )
        .await;
        fresh("ReadFileStream");
        stale();
        let meta = pb::WriteFileStreamRequest {
            content: Some(pb::write_file_stream_request::Content::Meta(
                pb::WriteFileStreamMeta {
                    sandbox_id: id(),
                    path: path(),
                },
            )),
        };
        let _ = write_file_stream(
            st.clone(),
            info(),
            Box::pin(futures::stream::iter([Ok(meta)])),
        )
        .await;
        fresh("WriteFileStream");
        stale();
        let _ = list_dir(
            st.clone(),
            info(),
            pb::ListDirRequest {
                sandbox_id: id(),
                path: path(),
                depth: 1,
            },
        )
        .await;
        fresh("ListDir");
        stale();
        let _ = make_dir(
            st.clone(),
            info(),
            pb::MakeDirRequest {
                sandbox_id: id(),
                path: path(),
            },
        )
        .await;
        fresh("MakeDir");
        stale();
        let _ = remove_path(
            st.clone(),
            info(),
            pb::RemovePathRequest {
                sandbox_id: id(),
                path: path(),
            },
        )
        .await;
        fresh("RemovePath");
        manager.shutdown();
    }
}
