//! Per-sandbox proxy state: the HTTP client (and so its connection pool), the in-flight count,
//! the draining flag and the cancellation that force-closes in-flight traffic.

use super::ProxyTargets;
use super::dial::RetryingConnector;
use hyper_util::client::legacy::Client;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub(super) type ProxyClient = Client<RetryingConnector, axum::body::Body>;

/// How often long-running traffic (a download, a WebSocket) renews the sandbox's activity.
const TOUCH_EVERY: Duration = Duration::from_secs(10);

pub(super) struct Sandbox {
    state: Mutex<SandboxState>,
    /// Requests and tunnels in flight; a watch so `drain` can wait for zero.
    in_flight: watch::Sender<usize>,
}

struct SandboxState {
    draining: bool,
    /// Cancelled (and replaced) to force-close everything in flight.
    cancel: CancellationToken,
    /// Created on first use and dropped by `drain`/`evict`, which closes its idle connections:
    /// a sandbox about to be snapshotted should hold no pooled TCP connections, and a slot
    /// address reused by the next sandbox must never get connections meant for the last one.
    client: Option<ProxyClient>,
}

impl Sandbox {
    fn new() -> Self {
        Self {
            state: Mutex::new(SandboxState {
                draining: false,
                cancel: CancellationToken::new(),
                client: None,
            }),
            in_flight: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SandboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn in_flight(&self) -> usize {
        *self.in_flight.borrow()
    }

    pub(super) fn set_draining(&self, draining: bool) {
        let mut state = self.lock();
        state.draining = draining;
        if draining {
            state.client = None;
        }
    }

    /// Cancels everything in flight; later requests get a fresh token.
    pub(super) fn force_close(&self) {
        let mut state = self.lock();
        let old = std::mem::take(&mut state.cancel);
        state.client = None;
        drop(state);
        old.cancel();
    }

    /// Waits until nothing is in flight, for at most `limit`. Returns whether it got there.
    pub(super) async fn wait_idle(&self, limit: Duration) -> bool {
        let mut rx = self.in_flight.subscribe();
        matches!(
            tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await,
            Ok(Ok(_))
        )
    }
}

/// A request let through to a sandbox.
pub(super) struct Admission {
    pub(super) client: ProxyClient,
    pub(super) cancel: CancellationToken,
    pub(super) in_flight: InFlight,
}

/// Counts one request or tunnel as in flight until dropped.
pub(super) struct InFlight(Arc<Sandbox>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// All sandboxes the proxy has seen traffic for (or was asked to drain).
#[derive(Default)]
pub(super) struct Registry {
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Sandbox>>> {
        self.sandboxes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.lock().get(id).cloned()
    }

    pub(super) fn get_or_insert(&self, id: &str) -> Arc<Sandbox> {
        self.lock()
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(Sandbox::new()))
            .clone()
    }

    pub(super) fn remove(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.lock().remove(id)
    }

    /// Lets a request through unless the sandbox is draining. The registry lock is held while
    /// the sandbox is checked and counted, so `evict` and `drain` never miss a request that
    /// slipped in between.
    pub(super) fn admit(
        &self,
        id: &str,
        new_client: impl FnOnce() -> ProxyClient,
    ) -> Option<Admission> {
        let mut map = self.lock();
        let sandbox = map
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(Sandbox::new()))
            .clone();
        let mut state = sandbox.lock();
        if state.draining {
            return None;
        }
        sandbox.in_flight.send_modify(|n| *n += 1);
        let client = state.client.get_or_insert_with(new_client).clone();
        let cancel = state.cancel.clone();
        drop(state);
        drop(map);
        Some(Admission {
            client,
            cancel,
            in_flight: InFlight(sandbox),
        })
    }
}

/// Renews a sandbox's activity at most every [`TOUCH_EVERY`] while traffic flows.
pub(super) struct Toucher {
    targets: Arc<dyn ProxyTargets>,
    id: String,
    last: Mutex<Instant>,
}

impl Toucher {
    /// Touches now (the request itself is activity) and returns the throttle for its traffic.
    pub(super) fn start(targets: Arc<dyn ProxyTargets>, id: &str) -> Arc<Self> {
        targets.touch(id);
        Arc::new(Self {
            targets,
            id: id.to_owned(),
            last: Mutex::new(Instant::now()),
        })
    }
}

impl wrenn_http::proxy::Traffic for Toucher {
    fn traffic(&self) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= TOUCH_EVERY {
            *last = Instant::now();
            drop(last);
            self.targets.touch(&self.id);
        }
    }
}
