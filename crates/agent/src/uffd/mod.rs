//! The userfaultfd page server: feeds a Firecracker VM restored with the `Uffd` memory backend
//! its memory, page by page, from a snapshot ([`PageSource`]).
//!
//! Flow: [`PageServer::start`] binds the socket named in `PUT /snapshot/load`; Firecracker
//! connects and sends its memory regions plus the userfaultfd ([`handshake`]). From then on a
//! reader thread polls the uffd: page faults go to a small worker pool that reads the page from
//! the source and installs it with `UFFDIO_COPY` (`UFFDIO_ZEROPAGE` for known-zero pages);
//! memory-layout events (REMOVE from balloon inflation / `MADV_DONTNEED`, UNMAP, REMAP, FORK)
//! update the region table instead of killing the server, as upstream's did. A prefetch thread
//! copies every page not yet present, yielding to faults.
//!
//! A fault that cannot be resolved (source error after retries, or still pending after
//! [`PageServerOptions::fault_deadline`]) is fatal: the guest would hang forever otherwise.
//! [`PageServerOptions::on_fatal`] is called, and serving stops.
//!
//! Kernel answers and what they mean here: `EEXIST` (page already present: prefetch or another
//! fault won) is success; `EAGAIN` (an event is pending, the layout is changing) is retried;
//! `ESRCH` (the VMM's address space is gone) ends serving quietly; `ENOENT` (the target range
//! was unmapped or moved meanwhile) skips that range only, since it also happens on a plain
//! `munmap`/`mremap` race. A fault outside every known region is served a zero page (and
//! counted): that is what a grown `mremap` range holds.
//!
//! Blocking API: [`PageServer::wait_connected`], [`PageServer::wait_prefetch`] and
//! [`PageServer::stop`] (also run on drop, up to a few seconds if a source read is stuck) block
//! the calling thread; call them from `spawn_blocking` in async code.

mod fill;
pub mod handshake;
mod prefetch;
mod reader;
pub mod regions;
mod server;
pub mod source;
mod stop;
pub mod sys;

#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::Serialize;

pub use regions::GuestRegion;
pub use server::PageServer;
pub use source::{PageContent, PageSource};

/// Called once, with the reason, when the server gives up on the VM. It runs on a page-server
/// thread *before* the uffd is closed: it must kill the VM at once (closing the uffd releases
/// faulting vCPUs, which would then read zero pages), and must not call [`PageServer::stop`].
pub type FatalCallback = Box<dyn FnOnce(String) + Send + 'static>;

/// Tuning of a [`PageServer`]. The defaults suit a Firecracker restore.
#[derive(Debug, Clone, Copy)]
pub struct PageServerTuning {
    /// How long Firecracker gets to connect and finish the handshake after `start`.
    pub connect_timeout: Duration,
    /// A page fault still unresolved after this long is fatal.
    pub fault_deadline: Duration,
    /// Threads serving faults concurrently, so one slow read does not hold up the others.
    pub workers: usize,
    /// Faults queued for the workers before the reader holds them back.
    pub queue_depth: usize,
    /// Copy every page in the background after the handshake.
    pub prefetch: bool,
    /// Largest single prefetch `UFFDIO_COPY`, in bytes.
    pub prefetch_chunk: u64,
    /// Source reads are retried this many times after the first failure.
    pub read_retries: u32,
    /// First retry backoff; it grows ×4 per retry up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
}

/// How a [`PageServer`] runs, and what it calls when it gives up.
#[derive(Default)]
pub struct PageServerOptions {
    pub tuning: PageServerTuning,
    pub on_fatal: Option<FatalCallback>,
}

impl Default for PageServerTuning {
    fn default() -> Self {
        PageServerTuning {
            connect_timeout: Duration::from_secs(10),
            fault_deadline: Duration::from_secs(10),
            workers: 4,
            queue_depth: 256,
            prefetch: true,
            prefetch_chunk: 256 * 1024,
            read_retries: 3,
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_millis(500),
        }
    }
}

impl std::fmt::Debug for PageServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageServerOptions")
            .field("tuning", &self.tuning)
            .field("on_fatal", &self.on_fatal.is_some())
            .finish()
    }
}

/// Userfaultfd messages received, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    pub pagefault: u64,
    pub remove: u64,
    pub unmap: u64,
    pub remap: u64,
    pub fork: u64,
    pub unknown: u64,
}

/// What a [`PageServer`] has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PageServerStats {
    /// The VMM completed the handshake.
    pub connected: bool,
    /// Page faults resolved (installed, or found already present).
    pub faults_served: u64,
    /// 4 KiB pages installed as zeros (known-zero in the source, or freed by the guest).
    pub zero_pages: u64,
    /// Bytes installed from the source with `UFFDIO_COPY`.
    pub bytes_copied: u64,
    /// 4 KiB pages installed by prefetch.
    pub prefetched_pages: u64,
    pub prefetch_done: bool,
    pub events: EventCounts,
    /// Faults at addresses outside every known region (served as zeros).
    pub unknown_address_faults: u64,
    /// Why the server gave up, if it did.
    pub fatal: Option<String>,
    /// The VM's address space is gone (the VMM exited); serving ended quietly.
    pub vm_gone: bool,
}
