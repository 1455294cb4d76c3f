//! [`PageServer`]: its lifecycle (connect, serve, stop) and the reader thread that owns the uffd.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::regions::{BASE_PAGE, GuestRegion, PageBits, RegionTable, validate_regions};
use super::stop::StopSignal;
use super::{
    EventCounts, FatalCallback, PageServerOptions, PageServerStats, PageServerTuning, PageSource,
    handshake,
};
use crate::error::{AgentError, AgentResult};

/// How long `stop` waits for each thread before leaving it behind (a source read can block).
const JOIN_GRACE: Duration = Duration::from_secs(3);

/// Serves one VM's memory over userfaultfd. Stops (and removes its socket) on [`stop`](Self::stop)
/// or drop.
pub struct PageServer {
    shared: Arc<Shared>,
    main: Mutex<Option<JoinHandle<()>>>,
    socket: Mutex<Option<PathBuf>>,
}

impl std::fmt::Debug for PageServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageServer")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What the reader thread shares with the workers and the prefetcher.
pub(super) struct Serving {
    /// `None` once serving ended: the fd is closed by dropping it here (and the reader's clone).
    pub uffd: Option<Arc<OwnedFd>>,
    pub table: RegionTable,
}

#[derive(Debug)]
pub(super) enum Connection {
    Waiting,
    Connected,
    Failed(AgentError),
    StoppedEarly,
}

#[derive(Debug)]
struct Status {
    connection: Connection,
    prefetch_done: bool,
    fatal: Option<String>,
    vm_gone: bool,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub faults_served: AtomicU64,
    pub zero_pages: AtomicU64,
    pub bytes_copied: AtomicU64,
    pub prefetched_pages: AtomicU64,
    pub unknown_address_faults: AtomicU64,
    pub ev_pagefault: AtomicU64,
    pub ev_remove: AtomicU64,
    pub ev_unmap: AtomicU64,
    pub ev_remap: AtomicU64,
    pub ev_fork: AtomicU64,
    pub ev_unknown: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl PageServerTuning {
    /// The same tuning with out-of-range values brought into range.
    fn normalised(self) -> Self {
        PageServerTuning {
            workers: self.workers.clamp(1, 64),
            queue_depth: self.queue_depth.max(1),
            prefetch_chunk: self.prefetch_chunk.max(BASE_PAGE),
            ..self
        }
    }
}

pub(super) struct Shared {
    pub source: Arc<dyn PageSource>,
    pub opts: PageServerTuning,
    /// Workers and prefetch hold the read lock around "is this range freed?" + the ioctl; the
    /// reader holds the write lock while it reads messages and applies REMOVE/UNMAP/REMAP. So a
    /// copy either lands before the kernel zaps a freed range, or sees it marked freed.
    pub state: RwLock<Serving>,
    /// Pages installed (by fault or prefetch), by memory offset.
    pub present: PageBits,
    /// Pages the guest freed (REMOVE): they read as zeros, never as snapshot data.
    pub removed: PageBits,
    pub counters: Counters,
    pub stop: StopSignal,
    /// Faults queued or being served, so prefetch can step aside.
    pub pending_faults: AtomicUsize,
    /// Faults read but not yet resolved: id → (read at, address), for the deadline watchdog.
    pub inflight: Mutex<HashMap<u64, (Instant, u64)>>,
    pub next_fault: AtomicU64,
    on_fatal: Mutex<Option<FatalCallback>>,
    status: Mutex<Status>,
    status_changed: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn read_state(&self) -> std::sync::RwLockReadGuard<'_, Serving> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives up on the VM: records `reason`, calls `on_fatal` (first caller only), stops.
    pub fn fatal(&self, reason: String) {
        {
            let mut status = lock(&self.status);
            if status.fatal.is_some() {
                return;
            }
            status.fatal = Some(reason.clone());
        }
        tracing::error!(%reason, "uffd page server failed; the VM cannot be served");
        if let Some(callback) = lock(&self.on_fatal).take() {
            callback(reason);
        }
        self.stop.trigger();
        self.status_changed.notify_all();
    }

    /// The VMM's address space is gone (it exited): nothing left to serve.
    pub fn vm_gone(&self) {
        let first = !std::mem::replace(&mut lock(&self.status).vm_gone, true);
        if first {
            tracing::info!("the VM's memory is gone (VMM exited); uffd serving ends");
        }
        self.stop.trigger();
        self.status_changed.notify_all();
    }

    pub fn set_prefetch_done(&self) {
        lock(&self.status).prefetch_done = true;
        self.status_changed.notify_all();
    }

    pub fn set_connection(&self, connection: Connection) {
        lock(&self.status).connection = connection;
        self.status_changed.notify_all();
    }

    pub fn finish_fault(&self, id: u64) {
        lock(&self.inflight).remove(&id);
        self.pending_faults.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn spawn(self: &Arc<Self>, name: String, body: impl FnOnce(Arc<Shared>) + Send + 'static) {
        let shared = Arc::clone(self);
        match std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || body(shared))
        {
            Ok(handle) => lock(&self.threads).push(handle),
            Err(e) => self.fatal(format!("cannot start the {name} thread: {e}")),
        }
    }
}

impl PageServer {
    /// Binds `socket_path` (replacing a stale socket) and, on its own thread, waits up to
    /// `opts.connect_timeout` for the VMM to connect and hand over its regions and userfaultfd,
    /// then serves. Returns at once; see [`wait_connected`](Self::wait_connected).
    pub fn start(
        socket_path: &Path,
        source: Arc<dyn PageSource>,
        opts: PageServerOptions,
    ) -> AgentResult<PageServer> {
        let listener = handshake::bind(socket_path)?;
        let path = socket_path.to_path_buf();
        let server = PageServer::new(source, opts)?;
        *lock(&server.socket) = Some(path.clone());
        server.launch(move |shared| match connect(&shared, &listener, &path) {
            Ok(Some((uffd, regions))) => {
                drop(listener);
                super::reader::serve(&shared, uffd, &regions);
            }
            Ok(None) => shared.set_connection(Connection::StoppedEarly),
            Err(e) => {
                tracing::warn!(error = %e, socket = %path.display(), "uffd handshake failed");
                shared.set_connection(Connection::Failed(e));
            }
        })?;
        Ok(server)
    }

    /// Serves an already-received userfaultfd and its regions (the handshake done elsewhere).
    pub fn serve(
        uffd: OwnedFd,
        regions: Vec<GuestRegion>,
        source: Arc<dyn PageSource>,
        opts: PageServerOptions,
    ) -> AgentResult<PageServer> {
        validate_regions(&regions, source.size())?;
        let server = PageServer::new(source, opts)?;
        server.launch(move |shared| super::reader::serve(&shared, uffd, &regions))?;
        Ok(server)
    }

    fn new(source: Arc<dyn PageSource>, opts: PageServerOptions) -> AgentResult<PageServer> {
        let PageServerOptions { tuning, on_fatal } = opts;
        let opts = tuning.normalised();
        let size = source.size();
        let stop = StopSignal::new().map_err(|e| AgentError::Internal(format!("eventfd: {e}")))?;
        let shared = Shared {
            source,
            opts,
            state: RwLock::new(Serving {
                uffd: None,
                table: RegionTable::default(),
            }),
            present: PageBits::new(size),
            removed: PageBits::new(size),
            counters: Counters::default(),
            stop,
            pending_faults: AtomicUsize::new(0),
            inflight: Mutex::new(HashMap::new()),
            next_fault: AtomicU64::new(0),
            on_fatal: Mutex::new(on_fatal),
            status: Mutex::new(Status {
                connection: Connection::Waiting,
                prefetch_done: false,
                fatal: None,
                vm_gone: false,
            }),
            status_changed: Condvar::new(),
            threads: Mutex::new(Vec::new()),
        };
        Ok(PageServer {
            shared: Arc::new(shared),
            main: Mutex::new(None),
            socket: Mutex::new(None),
        })
    }

    fn launch(&self, body: impl FnOnce(Arc<Shared>) + Send + 'static) -> AgentResult<()> {
        let shared = Arc::clone(&self.shared);
        let handle = std::thread::Builder::new()
            .name("uffd-serve".into())
            .spawn(move || body(shared))
            .map_err(|e| AgentError::Internal(format!("cannot start the uffd thread: {e}")))?;
        *lock(&self.main) = Some(handle);
        Ok(())
    }

    /// Waits until the VMM completed the handshake. An error means the VM cannot be served
    /// (connect timeout, bad handshake) and must be killed.
    pub fn wait_connected(&self, timeout: Duration) -> AgentResult<()> {
        let deadline = Instant::now() + timeout;
        let mut status = lock(&self.shared.status);
        loop {
            match &status.connection {
                Connection::Connected => return Ok(()),
                Connection::Failed(e) => return Err(copy_error(e)),
                Connection::StoppedEarly => {
                    return Err(AgentError::Internal(
                        "the uffd page server was stopped before the VMM connected".into(),
                    ));
                }
                Connection::Waiting => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(AgentError::Timeout(format!(
                    "the VMM has not connected to the uffd page server after {timeout:?}"
                )));
            }
            status = self
                .shared
                .status_changed
                .wait_timeout(status, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Whether prefetch has installed every page it could.
    pub fn prefetch_done(&self) -> bool {
        lock(&self.shared.status).prefetch_done
    }

    /// Waits up to `timeout` for prefetch to finish; `false` if it has not (or serving ended).
    pub fn wait_prefetch(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut status = lock(&self.shared.status);
        while !status.prefetch_done {
            let left = deadline.saturating_duration_since(Instant::now());
            let ended = status.fatal.is_some() || status.vm_gone || self.shared.stop.is_set();
            if left.is_zero() || ended {
                return false;
            }
            status = self
                .shared
                .status_changed
                .wait_timeout(status, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    pub fn stats(&self) -> PageServerStats {
        let c = &self.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let status = lock(&self.shared.status);
        PageServerStats {
            connected: matches!(status.connection, Connection::Connected),
            faults_served: load(&c.faults_served),
            zero_pages: load(&c.zero_pages),
            bytes_copied: load(&c.bytes_copied),
            prefetched_pages: load(&c.prefetched_pages),
            prefetch_done: status.prefetch_done,
            events: EventCounts {
                pagefault: load(&c.ev_pagefault),
                remove: load(&c.ev_remove),
                unmap: load(&c.ev_unmap),
                remap: load(&c.ev_remap),
                fork: load(&c.ev_fork),
                unknown: load(&c.ev_unknown),
            },
            unknown_address_faults: load(&c.unknown_address_faults),
            fatal: status.fatal.clone(),
            vm_gone: status.vm_gone,
        }
    }

    /// Stops serving: closes the uffd, joins the threads (leaving behind any stuck in a source
    /// read after a grace period) and removes the socket. Idempotent.
    pub fn stop(&self) {
        self.shared.stop.trigger();
        self.shared.status_changed.notify_all();
        if let Some(main) = lock(&self.main).take() {
            join_bounded(main);
        }
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for handle in threads {
            join_bounded(handle);
        }
        if let Some(path) = lock(&self.socket).take()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(socket = %path.display(), error = %e, "cannot remove the uffd socket");
        }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn join_bounded(handle: JoinHandle<()>) {
    if handle.thread().id() == std::thread::current().id() {
        return;
    }
    let deadline = Instant::now() + JOIN_GRACE;
    while !handle.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    if handle.is_finished() {
        if handle.join().is_err() {
            tracing::error!("a uffd page server thread panicked");
        }
    } else {
        let name = handle.thread().name().unwrap_or("?").to_owned();
        tracing::warn!(thread = %name, "uffd thread still busy after stop (blocked source read); left behind");
    }
}

/// `AgentError` is not `Clone`; the variants a handshake produces are rebuilt, others flattened.
fn copy_error(e: &AgentError) -> AgentError {
    match e {
        AgentError::Timeout(m) => AgentError::Timeout(m.clone()),
        AgentError::InvalidArgument(m) => AgentError::InvalidArgument(m.clone()),
        other => AgentError::Internal(crate::error::error_chain(other)),
    }
}

fn connect(
    shared: &Shared,
    listener: &UnixListener,
    path: &Path,
) -> AgentResult<Option<(OwnedFd, Vec<GuestRegion>)>> {
    let started = Instant::now();
    let timeout = shared.opts.connect_timeout;
    let Some(stream) = handshake::accept(listener, path, timeout, &shared.stop)? else {
        return Ok(None);
    };
    let left = timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(1));
    handshake::receive(&stream, shared.source.size(), left, &shared.stop)
}
