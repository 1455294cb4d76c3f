//! Installing pages: reading them from the source (with retries) and filling them in with
//! `UFFDIO_COPY` / `UFFDIO_ZEROPAGE`, for faults (the worker pool) and prefetch alike.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::regions::BASE_PAGE;
use super::server::{Shared, bump};
use super::source::PageContent;
use super::sys;

/// Where a fault lands in guest memory (`None` in [`Fault`]: outside every known region).
#[derive(Debug, Clone, Copy)]
pub struct FaultTarget {
    /// Start of the faulting page (region page size) in the VMM's address space.
    pub host: u64,
    pub len: u64,
    pub memory: u64,
    pub region: usize,
}

#[derive(Debug)]
pub struct Fault {
    pub id: u64,
    pub address: u64,
    pub target: Option<FaultTarget>,
    pub queued: Instant,
}

/// A contiguous range to install: `units` pages of `unit` bytes each.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub host: u64,
    /// Memory offset of `host`; `None` for memory outside every region (zero-filled).
    pub memory: Option<u64>,
    pub len: u64,
    pub unit: u64,
    pub region: Option<usize>,
}

/// What to do with pages the guest freed (REMOVE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRemoved {
    /// Leave them missing (prefetch): a later fault fills them with zeros.
    Skip,
    /// Fill them with zeros (a fault is waiting on them).
    Zero,
}

/// How installing a run ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Done,
    /// The mapping went away under us (munmap/mremap race): nothing left to fill.
    Unmapped,
    /// The VMM's address space is gone.
    VmGone,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Zero,
    Removed,
}

impl Run {
    fn describe(&self, at: u64) -> String {
        let region = self
            .region
            .map_or_else(|| "no region".to_owned(), |r| format!("region {r}"));
        match self.memory {
            Some(m) => format!(
                "host 0x{:x} ({region}, memory offset 0x{:x})",
                self.host + at,
                m + at
            ),
            None => format!("host 0x{:x} ({region})", self.host + at),
        }
    }
}

/// A worker: serves faults from the queue until it closes or serving stops.
pub fn worker(shared: &Shared, faults: &Mutex<Receiver<Fault>>) {
    let mut buf = Vec::new();
    loop {
        let next = faults.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(fault) = next else { return };
        let outcome = if shared.stop.is_set() {
            Ok(())
        } else {
            serve_fault(shared, &fault, &mut buf)
        };
        shared.finish_fault(fault.id);
        if let Err(reason) = outcome {
            shared.fatal(reason);
        }
    }
}

fn serve_fault(shared: &Shared, fault: &Fault, buf: &mut Vec<u8>) -> Result<(), String> {
    let deadline = fault.queued + shared.opts.fault_deadline;
    let c = &shared.counters;
    let (run, zero) = match fault.target {
        Some(t) => {
            let run = Run {
                host: t.host,
                memory: Some(t.memory),
                len: t.len,
                unit: t.len,
                region: Some(t.region),
            };
            // Freed pages read as zeros; a page we installed before that faults again can only
            // have been zapped by the guest (there is no other way back to "missing"), so it is
            // zeros too. Only the rest needs the source.
            let needs_data =
                !shared.removed.any(t.memory, t.len) && !shared.present.all(t.memory, t.len);
            let zero = if needs_data {
                buf.resize(usize_len(t.len), 0);
                read_unit(shared, &run, 0, &mut buf[..], Some(deadline))? == PageContent::Zero
            } else {
                true
            };
            (run, zero)
        }
        None => {
            bump(&c.unknown_address_faults, 1);
            tracing::warn!(
                address = fault.address,
                "page fault outside every known region; serving zeros"
            );
            let host = fault.address & !(BASE_PAGE - 1);
            let run = Run {
                host,
                memory: None,
                len: BASE_PAGE,
                unit: BASE_PAGE,
                region: None,
            };
            (run, true)
        }
    };
    let (_, end) = populate(
        shared,
        &run,
        &buf[..],
        &[zero],
        OnRemoved::Zero,
        Some(deadline),
    )?;
    match end {
        RunEnd::Done => bump(&c.faults_served, 1),
        RunEnd::Unmapped => tracing::debug!(address = fault.address, "fault target unmapped"),
        RunEnd::VmGone => shared.vm_gone(),
        RunEnd::Stopped => {}
    }
    Ok(())
}

fn usize_len(len: u64) -> usize {
    usize::try_from(len).unwrap_or(usize::MAX)
}

/// Reads one unit (`buf.len()` bytes at `at` inside `run`) block by block. Zero blocks are
/// zero-filled in `buf`; the unit is `Zero` only if every block was.
pub fn read_unit(
    shared: &Shared,
    run: &Run,
    at: u64,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> Result<PageContent, String> {
    let Some(memory) = run.memory else {
        return Ok(PageContent::Zero);
    };
    let block = shared.source.block_size().max(BASE_PAGE);
    let start = memory + at;
    let mut all_zero = true;
    let mut done = 0u64;
    let len = buf.len() as u64;
    while done < len {
        let offset = start + done;
        let piece = (block - offset % block).min(len - done);
        let slice = &mut buf[usize_len(done)..usize_len(done + piece)];
        match read_with_retry(shared, run, at + done, offset, slice, deadline)? {
            PageContent::Data => all_zero = false,
            PageContent::Zero => slice.fill(0),
        }
        done += piece;
    }
    Ok(if all_zero {
        PageContent::Zero
    } else {
        PageContent::Data
    })
}

fn read_with_retry(
    shared: &Shared,
    run: &Run,
    at: u64,
    offset: u64,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> Result<PageContent, String> {
    let opts = &shared.opts;
    let mut backoff = opts.retry_backoff;
    let mut attempt = 0;
    loop {
        let err = match shared.source.read(offset, buf) {
            Ok(content) => return Ok(content),
            Err(e) => e,
        };
        let failed = |retries: u32| {
            format!(
                "reading {} bytes of guest memory at offset 0x{offset:x} for {} failed after {retries} retries: {err}",
                buf.len(),
                run.describe(at)
            )
        };
        if attempt >= opts.read_retries {
            return Err(failed(attempt));
        }
        attempt += 1;
        tracing::warn!(offset, attempt, error = %err, "guest memory read failed; retrying");
        if deadline.is_some_and(|d| Instant::now() + backoff > d) || shared.stop.sleep(backoff) {
            return Err(failed(attempt));
        }
        backoff = (backoff * 4).min(opts.retry_backoff_max);
    }
}

/// Installs `run`: `data` holds its bytes (ignored where `zero[unit]` is set), and freed pages
/// are skipped or zero-filled per `on_removed`. Pages already present are left as they are.
/// Returns the bytes installed and how it ended; `Err` is fatal.
pub fn populate(
    shared: &Shared,
    run: &Run,
    data: &[u8],
    zero: &[bool],
    on_removed: OnRemoved,
    deadline: Option<Instant>,
) -> Result<(u64, RunEnd), String> {
    let c = &shared.counters;
    let huge = run.unit > BASE_PAGE;
    let units = usize_len(run.len / run.unit);
    let mut pos = 0u64;
    let mut installed = 0u64;
    while pos < run.len {
        if shared.stop.is_set() {
            return Ok((installed, RunEnd::Stopped));
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(format!(
                "page fault at {} unresolved before its deadline ({:?})",
                run.describe(pos),
                shared.opts.fault_deadline
            ));
        }
        let state = shared.read_state();
        let Some(uffd) = state.uffd.as_deref() else {
            return Ok((installed, RunEnd::Stopped));
        };
        let kind = |i: usize| {
            let removed = run
                .memory
                .is_some_and(|m| shared.removed.any(m + i as u64 * run.unit, run.unit));
            if removed {
                Kind::Removed
            } else if zero.get(i).copied().unwrap_or(true) {
                Kind::Zero
            } else {
                Kind::Data
            }
        };
        let first = usize_len(pos / run.unit);
        let this = kind(first);
        let mut end = first + 1;
        while end < units && kind(end) == this {
            end += 1;
        }
        let seg = (end - first) as u64 * run.unit;
        let dst = run.host + pos;
        let (filled, what) = match (this, on_removed) {
            (Kind::Removed, OnRemoved::Skip) => {
                pos += seg;
                continue;
            }
            (Kind::Data, _) => {
                let src = &data[usize_len(pos)..usize_len(pos + seg)];
                (sys::copy(uffd.as_fd(), dst, src), "UFFDIO_COPY")
            }
            // hugetlbfs has no UFFDIO_ZEROPAGE: copy zeros instead.
            _ if huge => (
                sys::copy(uffd.as_fd(), dst, &vec![0u8; usize_len(seg)]),
                "UFFDIO_COPY (zeros)",
            ),
            _ => (sys::zeropage(uffd.as_fd(), dst, seg), "UFFDIO_ZEROPAGE"),
        };
        let bytes = filled.bytes.min(seg);
        if bytes > 0 {
            if let Some(m) = run.memory {
                shared.present.set(m + pos, bytes);
            }
            if this == Kind::Data {
                bump(&c.bytes_copied, bytes);
            } else {
                bump(&c.zero_pages, bytes / BASE_PAGE);
            }
            installed += bytes;
            pos += bytes;
        }
        match filled.error {
            None if bytes == 0 => pos += seg,
            None => {}
            // Already there (prefetch or another fault won the race): skip that page.
            Some(Errno::EEXIST) => {
                if let Some(m) = run.memory {
                    shared.present.set(m + pos, run.unit);
                }
                pos += run.unit;
            }
            // The address space is changing (an event is pending): retry once it is read.
            Some(Errno::EAGAIN) | Some(Errno::EINTR) => {
                drop(state);
                if shared.stop.sleep(Duration::from_millis(1)) {
                    return Ok((installed, RunEnd::Stopped));
                }
            }
            Some(Errno::ESRCH) => return Ok((installed, RunEnd::VmGone)),
            Some(Errno::ENOENT) => return Ok((installed, RunEnd::Unmapped)),
            Some(errno) => {
                return Err(format!(
                    "{what} of {seg} bytes at {} failed: {errno}",
                    run.describe(pos)
                ));
            }
        }
    }
    Ok((installed, RunEnd::Done))
}

/// Faults come first: prefetch waits while any is pending. Returns `true` when stopped.
pub fn yield_to_faults(shared: &Shared) -> bool {
    while shared.pending_faults.load(Ordering::Acquire) > 0 {
        if shared.stop.sleep(Duration::from_micros(500)) {
            return true;
        }
    }
    shared.stop.is_set()
}
