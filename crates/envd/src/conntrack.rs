//! Connection tracking for snapshots.
//!
//! Before a VM freeze, idle connections are closed and keep-alive is turned off, so no client
//! holds a socket that will be dead after resume. After resume, every connection accepted before
//! the snapshot is closed (its peer is gone: a zombie TCP socket), while those made since (like
//! the `/init` request that triggered the restore) stay.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

/// The id of the connection a request arrived on (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId(pub u64);

struct Entry {
    epoch: u64,
    graceful: CancellationToken,
    abort: CancellationToken,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    epoch: u64,
    conns: HashMap<u64, Entry>,
}

pub struct ConnTracker {
    inner: Mutex<Inner>,
    keep_alive_off: AtomicBool,
}

impl Default for ConnTracker {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            keep_alive_off: AtomicBool::new(false),
        }
    }
}

/// A registered connection; unregisters itself when dropped.
pub struct ConnGuard<'a> {
    tracker: &'a ConnTracker,
    pub id: ConnId,
    /// Cancelled when the connection should finish its current request and close.
    pub graceful: CancellationToken,
    /// Cancelled when the connection must close now.
    pub abort: CancellationToken,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.tracker.lock().conns.remove(&self.id.0);
    }
}

impl ConnTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self) -> ConnGuard<'_> {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        let graceful = CancellationToken::new();
        let abort = CancellationToken::new();
        let epoch = inner.epoch;
        inner.conns.insert(
            id,
            Entry {
                epoch,
                graceful: graceful.clone(),
                abort: abort.clone(),
            },
        );
        ConnGuard {
            tracker: self,
            id: ConnId(id),
            graceful,
            abort,
        }
    }

    pub fn keep_alive(&self) -> bool {
        !self.keep_alive_off.load(Ordering::Acquire)
    }

    pub fn open_connections(&self) -> usize {
        self.lock().conns.len()
    }

    /// Before the freeze: every connection finishes what it is doing and closes (idle ones at
    /// once); keep-alive stays off until restore. Returns how many connections were asked to close.
    pub fn prepare(&self) -> usize {
        self.keep_alive_off.store(true, Ordering::Release);
        let mut inner = self.lock();
        inner.epoch += 1;
        for e in inner.conns.values() {
            e.graceful.cancel();
        }
        inner.conns.len()
    }

    /// After resume: closes every connection from before the snapshot except `current`, and turns
    /// keep-alive back on. Returns how many were closed.
    pub fn restore(&self, current: Option<ConnId>) -> usize {
        let inner = self.lock();
        let mut closed = 0;
        for (id, e) in &inner.conns {
            if e.epoch < inner.epoch && Some(ConnId(*id)) != current {
                e.abort.cancel();
                closed += 1;
            }
        }
        drop(inner);
        self.keep_alive_off.store(false, Ordering::Release);
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_then_restore_closes_only_old_connections() {
        let t = ConnTracker::default();
        let old = t.register();
        assert!(t.keep_alive());
        assert_eq!(t.prepare(), 1);
        assert!(old.graceful.is_cancelled());
        assert!(!t.keep_alive());
        // Accepted while preparing: served (without keep-alive), not closed before its request.
        let new = t.register();
        assert!(!new.graceful.is_cancelled());
        assert_eq!(t.restore(Some(new.id)), 1);
        assert!(old.abort.is_cancelled());
        assert!(!new.abort.is_cancelled());
        assert!(t.keep_alive());
        drop(old);
        assert_eq!(t.open_connections(), 1);
    }
}
