//! The `filesystem.Filesystem` RPCs. Paths are resolved for the calling user (`~`, relative to
//! home); blocking file system work runs off the async runtime.

use super::entry::entry_info;
use super::watcher::{self, WatchSpec};
use crate::auth::basic_auth_user;
use crate::error::{EnvdError, Result};
use crate::state::SharedState;
use crate::user::{Account, chown, create_dir_all_owned};
use std::path::{Path, PathBuf};
use wrenn_protocol::connect::Error as RpcError;
use wrenn_protocol::connect::server::{CallInfo, ResponseStream};
use wrenn_protocol::envd::filesystem::*;

type RpcResult<T> = std::result::Result<T, RpcError>;

fn caller(state: &SharedState, info: &CallInfo) -> Result<Account> {
    state.account(basic_auth_user(&info.headers).as_deref())
}

fn resolve(account: &Account, path: &str) -> Result<PathBuf> {
    if path.is_empty() {
        return Err(EnvdError::InvalidArgument("path is required".into()));
    }
    account.resolve_path(path)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EnvdError::Internal(format!("file system worker: {e}")))?
}

pub async fn stat(state: SharedState, info: CallInfo, req: StatRequest) -> RpcResult<StatResponse> {
    let path = resolve(&caller(&state, &info)?, &req.path)?;
    let entry = blocking(move || entry_info(&path, &path)).await?;
    Ok(StatResponse { entry: Some(entry) })
}

pub async fn make_dir(
    state: SharedState,
    info: CallInfo,
    req: MakeDirRequest,
) -> RpcResult<MakeDirResponse> {
    let account = caller(&state, &info)?;
    let path = resolve(&account, &req.path)?;
    let entry = blocking(move || {
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                return Err(EnvdError::AlreadyExists(format!(
                    "directory {} already exists",
                    path.display()
                )));
            }
            Ok(_) => {
                return Err(EnvdError::InvalidArgument(format!(
                    "{} exists and is not a directory",
                    path.display()
                )));
            }
            Err(_) => {}
        }
        create_dir_all_owned(&path, &account)?;
        entry_info(&path, &path)
    })
    .await?;
    Ok(MakeDirResponse { entry: Some(entry) })
}

pub async fn r#move(
    state: SharedState,
    info: CallInfo,
    req: MoveRequest,
) -> RpcResult<MoveResponse> {
    let account = caller(&state, &info)?;
    let source = resolve(&account, &req.source)?;
    let destination = resolve(&account, &req.destination)?;
    let entry = blocking(move || {
        std::fs::symlink_metadata(&source)
            .map_err(|e| EnvdError::io(format!("move source {}", source.display()), e))?;
        if let Some(parent) = destination.parent() {
            create_dir_all_owned(parent, &account)?;
        }
        std::fs::rename(&source, &destination).map_err(|e| {
            EnvdError::io(
                format!("moving {} to {}", source.display(), destination.display()),
                e,
            )
        })?;
        entry_info(&destination, &destination)
    })
    .await?;
    Ok(MoveResponse { entry: Some(entry) })
}

pub async fn remove(
    state: SharedState,
    info: CallInfo,
    req: RemoveRequest,
) -> RpcResult<RemoveResponse> {
    let path = resolve(&caller(&state, &info)?, &req.path)?;
    blocking(move || {
        if path == Path::new("/") {
            return Err(EnvdError::InvalidArgument("refusing to remove /".into()));
        }
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| EnvdError::io(format!("remove {}", path.display()), e))?;
        let r = if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        r.map_err(|e| EnvdError::io(format!("remove {}", path.display()), e))
    })
    .await?;
    Ok(RemoveResponse {})
}

pub async fn list_dir(
    state: SharedState,
    info: CallInfo,
    req: ListDirRequest,
) -> RpcResult<ListDirResponse> {
    let path = resolve(&caller(&state, &info)?, &req.path)?;
    let depth = req.depth.max(1);
    let entries = blocking(move || {
        // The requested path may itself be a symlink to a directory: list the target, report
        // paths under the name the client used.
        let real = std::fs::canonicalize(&path)
            .map_err(|e| EnvdError::io(format!("list {}", path.display()), e))?;
        if !real.is_dir() {
            return Err(EnvdError::InvalidArgument(format!(
                "{} is not a directory",
                path.display()
            )));
        }
        let mut out = Vec::new();
        walk(&real, &path, depth, &mut out)?;
        Ok(out)
    })
    .await?;
    Ok(ListDirResponse { entries })
}

/// Depth-first listing that never follows symlinks below the root.
fn walk(real: &Path, shown: &Path, depth: u32, out: &mut Vec<EntryInfo>) -> Result<()> {
    let rd = std::fs::read_dir(real)
        .map_err(|e| EnvdError::io(format!("list {}", shown.display()), e))?;
    let mut children: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let child_real = child.path();
        let child_shown = shown.join(child.file_name());
        // An entry that vanished between readdir and stat is skipped, not an error.
        let Ok(entry) = entry_info(&child_real, &child_shown) else {
            continue;
        };
        let is_dir = entry.r#type == FileType::Directory as i32;
        out.push(entry);
        if is_dir && depth > 1 {
            let _ = walk(&child_real, &child_shown, depth - 1, out);
        }
    }
    Ok(())
}

fn watch_spec(
    state: &SharedState,
    info: &CallInfo,
    path: &str,
    recursive: bool,
    include_entry: bool,
) -> Result<WatchSpec> {
    let path = resolve(&caller(state, info)?, path)?;
    Ok(WatchSpec {
        path,
        recursive,
        include_entry,
    })
}

pub async fn watch_dir(
    state: SharedState,
    info: CallInfo,
    req: WatchDirRequest,
) -> RpcResult<ResponseStream<WatchDirResponse>> {
    let spec = watch_spec(&state, &info, &req.path, req.recursive, req.include_entry)?;
    Ok(watcher::watch_stream(spec)?)
}

pub async fn create_watcher(
    state: SharedState,
    info: CallInfo,
    req: CreateWatcherRequest,
) -> RpcResult<CreateWatcherResponse> {
    let spec = watch_spec(&state, &info, &req.path, req.recursive, req.include_entry)?;
    let watcher_id = state.watchers.create(spec)?;
    Ok(CreateWatcherResponse { watcher_id })
}

pub async fn get_watcher_events(
    state: SharedState,
    _info: CallInfo,
    req: GetWatcherEventsRequest,
) -> RpcResult<GetWatcherEventsResponse> {
    let events = state.watchers.drain(&req.watcher_id)?;
    Ok(GetWatcherEventsResponse { events })
}

pub async fn remove_watcher(
    state: SharedState,
    _info: CallInfo,
    req: RemoveWatcherRequest,
) -> RpcResult<RemoveWatcherResponse> {
    state.watchers.remove(&req.watcher_id)?;
    Ok(RemoveWatcherResponse {})
}

/// Gives a file just written to its user (used by uploads).
pub fn give_to(path: &Path, account: &Account) -> Result<()> {
    chown(path, account)
}
