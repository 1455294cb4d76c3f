//! Directory watchers over inotify (through `notify`): a stream per `WatchDir` call, or a
//! registry of polled watchers for `CreateWatcher`/`GetWatcherEvents`.

use super::entry::entry_info;
use crate::error::{EnvdError, Result};
use futures::StreamExt;
use notify::event::{EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use wrenn_protocol::connect::Error as RpcError;
use wrenn_protocol::connect::server::ResponseStream;
use wrenn_protocol::envd::filesystem::{
    EventType, FilesystemEvent, WatchDirResponse, watch_dir_response,
};

/// Events a polled watcher keeps between two polls; older ones are dropped first.
const MAX_BUFFERED_EVENTS: usize = 10_000;
/// Polled watchers alive at once.
const MAX_WATCHERS: usize = 256;
/// Events in flight to one streaming client.
const STREAM_BUFFER: usize = 1024;
const KEEPALIVE: Duration = Duration::from_secs(50);

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub path: PathBuf,
    pub recursive: bool,
    pub include_entry: bool,
}

/// Filesystem magic numbers on which inotify sees no remote changes.
const NETWORK_FS: [i64; 5] = [0x6969, 0xFF53_4D42, 0x517B, 0xFE53_4D42, 0x6573_5546];

fn check_watchable(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| EnvdError::io(format!("watch {}", path.display()), e))?;
    if !meta.is_dir() {
        return Err(EnvdError::InvalidArgument(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    if let Ok(fs) = nix::sys::statfs::statfs(path) {
        #[allow(clippy::unnecessary_cast)] // The field's width differs between libcs.
        let magic = fs.filesystem_type().0 as i64;
        if NETWORK_FS.contains(&magic) {
            return Err(EnvdError::FailedPrecondition(format!(
                "{} is on a network file system, where changes cannot be watched",
                path.display()
            )));
        }
    }
    Ok(())
}

fn event_type(kind: &EventKind) -> Option<EventType> {
    match kind {
        EventKind::Create(_) => Some(EventType::Create),
        EventKind::Remove(_) => Some(EventType::Remove),
        EventKind::Modify(ModifyKind::Name(_)) => Some(EventType::Rename),
        EventKind::Modify(ModifyKind::Metadata(_)) => Some(EventType::Chmod),
        EventKind::Modify(_) => Some(EventType::Write),
        _ => None,
    }
}

fn to_events(spec: &WatchSpec, event: notify::Event) -> Vec<FilesystemEvent> {
    let Some(kind) = event_type(&event.kind) else {
        return Vec::new();
    };
    event
        .paths
        .iter()
        .map(|p| {
            let name = p
                .strip_prefix(&spec.path)
                .unwrap_or(p)
                .display()
                .to_string();
            let entry = if spec.include_entry && kind != EventType::Remove {
                entry_info(p, p).ok()
            } else {
                None
            };
            FilesystemEvent {
                name,
                r#type: kind as i32,
                entry,
            }
        })
        .collect()
}

fn start_watcher(
    spec: WatchSpec,
    mut sink: impl FnMut(FilesystemEvent) + Send + 'static,
) -> Result<notify::RecommendedWatcher> {
    check_watchable(&spec.path)?;
    let root = spec.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            for e in to_events(&root, event) {
                sink(e);
            }
        }
    })
    .map_err(|e| EnvdError::Internal(format!("creating a watcher: {e}")))?;
    let mode = if spec.recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    watcher
        .watch(&spec.path, mode)
        .map_err(|e| EnvdError::Internal(format!("watching {}: {e}", spec.path.display())))?;
    Ok(watcher)
}

/// A `WatchDir` stream: `start`, then events as they happen, keepalives when quiet. The watcher
/// lives exactly as long as the stream.
pub fn watch_stream(spec: WatchSpec) -> Result<ResponseStream<WatchDirResponse>> {
    use watch_dir_response::{Event, KeepAlive, StartEvent};
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let watcher = start_watcher(spec, move |e| {
        if tx.try_send(e).is_err() {
            tracing::debug!("watch stream client is slow; dropping an event");
        }
    })?;
    let start = WatchDirResponse {
        event: Some(Event::Start(StartEvent {})),
    };
    let rest = futures::stream::unfold((rx, watcher), |(mut rx, watcher)| async move {
        let event = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Ok(Some(e)) => Event::Filesystem(e),
            Ok(None) => return None,
            Err(_) => Event::Keepalive(KeepAlive {}),
        };
        Some((WatchDirResponse { event: Some(event) }, (rx, watcher)))
    });
    Ok(Box::pin(
        futures::stream::once(async move { start })
            .chain(rest)
            .map(Ok::<_, RpcError>),
    ))
}

struct Polled {
    _watcher: notify::RecommendedWatcher,
    events: Arc<Mutex<VecDeque<FilesystemEvent>>>,
}

/// Watchers created by `CreateWatcher`, drained by `GetWatcherEvents`.
#[derive(Default)]
pub struct WatcherRegistry {
    watchers: Mutex<HashMap<String, Polled>>,
}

impl WatcherRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Polled>> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn create(&self, spec: WatchSpec) -> Result<String> {
        if self.lock().len() >= MAX_WATCHERS {
            return Err(EnvdError::FailedPrecondition(format!(
                "too many watchers ({MAX_WATCHERS}); remove some first"
            )));
        }
        let events = Arc::new(Mutex::new(VecDeque::new()));
        let sink = events.clone();
        let watcher = start_watcher(spec, move |e| {
            let mut q = sink.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= MAX_BUFFERED_EVENTS {
                q.pop_front();
            }
            q.push_back(e);
        })?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let id = format!("w-{nanos:x}");
        self.lock().insert(
            id.clone(),
            Polled {
                _watcher: watcher,
                events,
            },
        );
        Ok(id)
    }

    pub fn drain(&self, id: &str) -> Result<Vec<FilesystemEvent>> {
        let table = self.lock();
        let w = table
            .get(id)
            .ok_or_else(|| EnvdError::NotFound(format!("watcher {id:?} not found")))?;
        let mut q = w.events.lock().unwrap_or_else(|p| p.into_inner());
        Ok(q.drain(..).collect())
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        self.lock()
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| EnvdError::NotFound(format!("watcher {id:?} not found")))
    }
}
