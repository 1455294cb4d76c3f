//! The reader thread: the only owner and closer of the uffd. It reads messages, hands page
//! faults to the workers, applies memory-layout events, and watches the fault deadline.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::fill::{self, Fault, FaultTarget};
use super::regions::{GuestRegion, RegionTable};
use super::server::{Connection, Shared, bump, lock};
use super::sys::{self, UFFD_MSG_SIZE, UffdEvent};
use crate::error::AgentError;

/// The poll tick: how often the fault deadline is checked.
const WATCHDOG_TICK: Duration = Duration::from_millis(100);

/// The reader thread: installs the uffd, starts workers and prefetch, then reads messages until
/// stopped. It is the only closer of the uffd.
pub fn serve(shared: &Arc<Shared>, uffd: OwnedFd, regions: &[GuestRegion]) {
    if let Err(e) = sys::set_nonblocking(uffd.as_fd()) {
        shared.set_connection(Connection::Failed(AgentError::Internal(format!(
            "cannot make the userfaultfd non-blocking: {e}"
        ))));
        return;
    }
    let uffd = Arc::new(uffd);
    {
        let mut state = shared.state.write().unwrap_or_else(PoisonError::into_inner);
        state.uffd = Some(Arc::clone(&uffd));
        state.table = RegionTable::new(regions);
    }
    let total: u64 = regions.iter().map(|r| r.size).sum();
    tracing::info!(
        regions = regions.len(),
        bytes = total,
        "uffd page server connected"
    );
    shared.set_connection(Connection::Connected);

    let (queue, faults) = mpsc::sync_channel::<Fault>(shared.opts.queue_depth);
    let faults = Arc::new(Mutex::new(faults));
    for n in 0..shared.opts.workers {
        let faults = Arc::clone(&faults);
        shared.spawn(format!("uffd-worker-{n}"), move |shared| {
            fill::worker(&shared, &faults)
        });
    }
    if shared.opts.prefetch {
        shared.spawn("uffd-prefetch".into(), |shared| {
            super::prefetch::run(&shared)
        });
    } else {
        shared.set_prefetch_done();
    }

    read_loop(shared, &uffd, &queue);

    drop(queue);
    shared
        .state
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .uffd = None;
    drop(uffd);
    tracing::debug!("uffd closed");
}

fn read_loop(shared: &Shared, uffd: &OwnedFd, queue: &SyncSender<Fault>) {
    let mut buf = vec![0u8; UFFD_MSG_SIZE * 64];
    let mut backlog: VecDeque<Fault> = VecDeque::new();
    loop {
        while let Some(fault) = backlog.pop_front() {
            match queue.try_send(fault) {
                Ok(()) => {}
                Err(TrySendError::Full(fault)) => {
                    backlog.push_front(fault);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    shared.fatal("every uffd worker has exited".into());
                    return;
                }
            }
        }
        let tick = if backlog.is_empty() {
            WATCHDOG_TICK.min(shared.opts.fault_deadline / 4)
        } else {
            Duration::from_millis(2)
        };
        let ready = match shared.stop.poll(Some(uffd.as_fd()), tick) {
            Ok(ready) => ready,
            Err(e) => return shared.fatal(format!("poll on the userfaultfd failed: {e}")),
        };
        if ready.stopped {
            return;
        }
        if let Some(reason) = overdue_fault(shared) {
            return shared.fatal(reason);
        }
        if ready.broken {
            return shared.fatal("the userfaultfd reported an error (POLLERR)".into());
        }
        if ready.readable
            && let Err(reason) = read_messages(shared, uffd, &mut buf, &mut backlog)
        {
            return shared.fatal(reason);
        }
    }
}

fn overdue_fault(shared: &Shared) -> Option<String> {
    let deadline = shared.opts.fault_deadline;
    let inflight = lock(&shared.inflight);
    let (since, address) = inflight.values().min_by_key(|(since, _)| *since)?;
    (since.elapsed() > deadline).then(|| {
        format!(
            "page fault at host address 0x{address:x} unresolved after {deadline:?} ({} faults pending)",
            inflight.len()
        )
    })
}

/// Reads and applies every pending message under the write lock (see [`Shared::state`]).
fn read_messages(
    shared: &Shared,
    uffd: &OwnedFd,
    buf: &mut [u8],
    backlog: &mut VecDeque<Fault>,
) -> Result<(), String> {
    let c = &shared.counters;
    let mut state = shared.state.write().unwrap_or_else(PoisonError::into_inner);
    let events = sys::read_events(uffd.as_fd(), buf)
        .map_err(|e| format!("reading the userfaultfd failed: {e}"))?;
    for event in events {
        match event {
            UffdEvent::PageFault { address, .. } => {
                bump(&c.ev_pagefault, 1);
                let target = state.table.lookup(address).map(|m| {
                    let host = address & !(m.page_size - 1);
                    FaultTarget {
                        host,
                        len: m.page_size,
                        memory: m.memory + (host - m.host),
                        region: m.region,
                    }
                });
                let id = shared.next_fault.fetch_add(1, Ordering::Relaxed);
                let queued = Instant::now();
                lock(&shared.inflight).insert(id, (queued, address));
                shared.pending_faults.fetch_add(1, Ordering::AcqRel);
                backlog.push_back(Fault {
                    id,
                    address,
                    target,
                    queued,
                });
            }
            UffdEvent::Remove { start, end } => {
                bump(&c.ev_remove, 1);
                for m in state.table.clipped(start, end) {
                    shared.removed.set(m.memory, m.len);
                    shared.present.clear(m.memory, m.len);
                }
                tracing::debug!(start, end, "uffd REMOVE: range freed by the guest");
            }
            UffdEvent::Unmap { start, end } => {
                bump(&c.ev_unmap, 1);
                state.table.unmap(start, end);
                tracing::debug!(start, end, "uffd UNMAP");
            }
            UffdEvent::Remap { from, to, len } => {
                bump(&c.ev_remap, 1);
                state.table.remap(from, to, len);
                tracing::debug!(from, to, len, "uffd REMAP");
            }
            UffdEvent::Fork { child } => {
                bump(&c.ev_fork, 1);
                tracing::info!("uffd FORK: the VMM forked; closing the child's userfaultfd");
                drop(child);
            }
            UffdEvent::Unknown { event } => {
                bump(&c.ev_unknown, 1);
                tracing::warn!(event, "unknown userfaultfd event ignored");
            }
        }
    }
    Ok(())
}
