//! Files: read (whole, or streamed), list, mkdir, remove. Writes are in [`super::upload`].
//!
//! The agent's unary `ReadFile` and `WriteFile` carry the whole file in one Connect message
//! (16 MiB at most), so even the buffered routes go through the streaming RPCs.

use super::Target;
use crate::error::{ApiError, ApiResult};
use bytes::{Bytes, BytesMut};
use futures::Stream;
use std::time::Duration;
use wrenn_api_types::ErrorCode;
use wrenn_api_types::files::{FileEntry, FileType, ListDirResponse, MakeDirResponse};
use wrenn_protocol::connect::{self, Code, ResponseStream};
use wrenn_protocol::hostagent as pb;

/// Unary file calls (list, mkdir, remove).
const FILE_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the next chunk of a file being read; a read that stalls longer fails (the
/// SDK itself gives up after 30 s without data).
pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Paths are required; envd resolves relative ones against the user's home.
pub fn check_path(path: &str) -> ApiResult<()> {
    if path.is_empty() {
        return Err(ApiError::invalid("path is required"));
    }
    if path.contains('\0') {
        return Err(ApiError::invalid("path must not contain NUL bytes"));
    }
    Ok(())
}

/// A file being read: the first chunk (already received, so errors opening the file are the
/// call's error), then the rest.
#[derive(Debug)]
pub struct FileRead {
    pub first: Option<Bytes>,
    rest: Option<ResponseStream<pb::ReadFileStreamResponse>>,
    what: String,
}

/// Opens `path` for reading; `not_found` if it does not exist.
pub async fn open_read(target: &Target, path: &str) -> ApiResult<FileRead> {
    check_path(path)?;
    let call = pb::ReadFileStreamRequest {
        sandbox_id: target.sandbox_id.clone(),
        path: path.to_string(),
    };
    let missing = format!("file {path}");
    let mut stream = target
        .agent
        .server_stream::<_, pb::ReadFileStreamResponse>("ReadFileStream", &call)
        .await
        .map_err(|e| target.agent_error_about(e, &missing))?;
    // Errors opening a stream arrive as its first message.
    let first = tokio::time::timeout(READ_IDLE_TIMEOUT, stream.message())
        .await
        .map_err(|_| stalled(path))?;
    match first {
        Some(Ok(m)) => Ok(FileRead {
            first: Some(m.chunk),
            rest: Some(stream),
            what: format!("{path} in {}", target.what()),
        }),
        Some(Err(e)) => Err(target.agent_error_about(e, &missing)),
        // An empty file.
        None => Ok(FileRead {
            first: None,
            rest: None,
            what: String::new(),
        }),
    }
}

fn stalled(path: &str) -> ApiError {
    ApiError::new(
        ErrorCode::AgentError,
        format!(
            "reading {path} stalled: no data for {}s",
            READ_IDLE_TIMEOUT.as_secs()
        ),
    )
}

impl FileRead {
    /// The next chunk after [`first`](Self::first); `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, String>> {
        let stream = self.rest.as_mut()?;
        let next = match tokio::time::timeout(READ_IDLE_TIMEOUT, stream.message()).await {
            Ok(n) => n,
            Err(_) => Some(Err(connect::Error::new(
                Code::DeadlineExceeded,
                format!("no data for {}s", READ_IDLE_TIMEOUT.as_secs()),
            ))),
        };
        match next {
            Some(Ok(m)) => Some(Ok(m.chunk)),
            Some(Err(e)) => {
                self.rest = None;
                Some(Err(format!(
                    "reading {} broke off: {}",
                    self.what, e.message
                )))
            }
            None => {
                self.rest = None;
                None
            }
        }
    }

    /// The whole file as a stream of chunks; an error after the start is an `Err` item (the
    /// HTTP layer then aborts the response instead of ending it cleanly).
    pub fn into_stream(mut self) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
        let first = self.first.take();
        futures::stream::unfold((first, self), |(first, mut read)| async move {
            if let Some(chunk) = first {
                return Some((Ok(chunk), (None, read)));
            }
            match read.next_chunk().await? {
                Ok(chunk) => Some((Ok(chunk), (None, read))),
                Err(e) => {
                    tracing::warn!(error = %e, "file download failed after it started");
                    Some((Err(std::io::Error::other(e)), (None, read)))
                }
            }
        })
    }

    /// Collects the whole file, refusing more than `limit` bytes with `too_large`.
    pub async fn collect(mut self, path: &str, limit: u64) -> ApiResult<Bytes> {
        let mut buf = BytesMut::new();
        let mut next = self.first.take().map(Ok);
        loop {
            let chunk = match next.take() {
                Some(c) => c,
                None => match self.next_chunk().await {
                    Some(c) => c,
                    None => break,
                },
            };
            let chunk = chunk.map_err(|e| ApiError::new(ErrorCode::AgentError, e))?;
            if (buf.len() + chunk.len()) as u64 > limit {
                return Err(ApiError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "{path} is larger than files/read's {} MiB limit; use files/stream/read",
                        limit >> 20
                    ),
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

/// The API form of an agent entry. `name` is always a base name (the SDK compares it with the
/// base name of the path it asked about); unknown kinds (sockets, devices) count as files.
pub fn entry(e: pb::FileEntry) -> FileEntry {
    let kind = match e.r#type.as_str() {
        "directory" => FileType::Directory,
        "symlink" => FileType::Symlink,
        _ => FileType::File,
    };
    let name = if e.name.is_empty() || e.name.contains('/') {
        let source = if e.name.is_empty() { &e.path } else { &e.name };
        source
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string()
    } else {
        e.name
    };
    FileEntry {
        name,
        path: e.path,
        kind,
        size: e.size,
        mode: e.mode,
        permissions: e.permissions,
        owner: e.owner,
        group: e.group,
        modified_at: e.modified_at_unix,
        symlink_target: (!e.symlink_target.is_empty()).then_some(e.symlink_target),
    }
}

/// Lists a directory `depth` levels deep (0 counts as 1); `not_found` if it does not exist.
pub async fn list(target: &Target, path: &str, depth: u32) -> ApiResult<ListDirResponse> {
    check_path(path)?;
    let call = pb::ListDirRequest {
        sandbox_id: target.sandbox_id.clone(),
        path: path.to_string(),
        depth: depth.max(1),
    };
    let resp: pb::ListDirResponse = target
        .agent
        .call_with_timeout("ListDir", &call, FILE_CALL_TIMEOUT)
        .await
        .map_err(|e| target.agent_error_about(e, &format!("directory {path}")))?;
    Ok(ListDirResponse {
        entries: resp.entries.into_iter().map(entry).collect(),
    })
}

/// Creates a directory and its parents. An existing directory is `conflict` (the SDK then
/// lists the parent); an existing file in the way is `invalid_state`, which must not read as
/// "already exists" or the SDK would hand back the file as the directory.
pub async fn mkdir(target: &Target, path: &str) -> ApiResult<MakeDirResponse> {
    check_path(path)?;
    let call = pb::MakeDirRequest {
        sandbox_id: target.sandbox_id.clone(),
        path: path.to_string(),
    };
    let resp: pb::MakeDirResponse = target
        .agent
        .call_with_timeout("MakeDir", &call, FILE_CALL_TIMEOUT)
        .await
        .map_err(|e| mkdir_error(target, path, e))?;
    let entry = resp.entry.map(entry).ok_or_else(|| {
        ApiError::internal(format!("the agent's MakeDir of {path} held no entry"))
    })?;
    Ok(MakeDirResponse { entry })
}

fn mkdir_error(target: &Target, path: &str, e: connect::Error) -> ApiError {
    match e.code {
        Code::AlreadyExists => ApiError::conflict(format!(
            "directory {path} already exists in {}",
            target.what()
        )),
        // envd: the path (or one of its parents) is a file.
        Code::InvalidArgument => ApiError::invalid_state(format!(
            "cannot create directory {path} in {}: {}",
            target.what(),
            e.message
        )),
        _ => target.agent_error_about(e, &format!("parent of {path}")),
    }
}

/// Removes a file, or a directory and everything in it; `not_found` if nothing is there.
pub async fn remove(target: &Target, path: &str) -> ApiResult<()> {
    check_path(path)?;
    let call = pb::RemovePathRequest {
        sandbox_id: target.sandbox_id.clone(),
        path: path.to_string(),
    };
    let _: pb::RemovePathResponse = target
        .agent
        .call_with_timeout("RemovePath", &call, FILE_CALL_TIMEOUT)
        .await
        .map_err(|e| target.agent_error_about(e, &format!("path {path}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_carry_base_names_and_known_kinds() {
        let e = entry(pb::FileEntry {
            name: "".into(),
            path: "/home/user/dir/".into(),
            r#type: "directory".into(),
            ..Default::default()
        });
        assert_eq!((e.name.as_str(), e.kind), ("dir", FileType::Directory));
        let e = entry(pb::FileEntry {
            name: "sock".into(),
            path: "/tmp/sock".into(),
            r#type: "".into(),
            symlink_target: "".into(),
            ..Default::default()
        });
        assert_eq!((e.name.as_str(), e.kind), ("sock", FileType::File));
        assert_eq!(e.symlink_target, None);
    }

    #[test]
    fn paths_must_be_given() {
        assert!(check_path("").is_err());
        assert!(check_path("a\0b").is_err());
        assert!(check_path("relative/ok").is_ok());
    }
}
