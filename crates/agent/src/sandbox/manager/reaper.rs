//! The idle reaper: sandboxes idle past their `timeout_sec` are paused, or destroyed when they
//! cannot be paused, and the control plane learns which through `ListSandboxes`.
//!
//! Each outcome is reported for [`REPORT_WINDOW`], on every `ListSandboxes`, not once: the
//! control plane polls, and a poll whose answer is lost (timeout, restart) must not lose the
//! news. The control plane applies repeats idempotently.

use super::{SandboxManager, SandboxStatus, lock, now_unix};
use crate::error::{AgentError, error_chain};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the reaper looks for expired sandboxes (upstream: 2 s).
const REAPER_INTERVAL: Duration = Duration::from_secs(2);
/// How long a reaper outcome is reported.
pub const REPORT_WINDOW: Duration = Duration::from_secs(3600);

/// Sandbox ids with when they were recorded, reported until [`REPORT_WINDOW`] has passed.
#[derive(Debug, Default)]
pub(super) struct RecentIds {
    entries: Mutex<Vec<(String, Instant)>>,
}

impl RecentIds {
    pub(super) fn record(&self, id: &str) {
        self.record_at(id, Instant::now());
    }

    fn record_at(&self, id: &str, at: Instant) {
        let mut entries = lock(&self.entries);
        entries.retain(|(known, _)| known != id);
        entries.push((id.to_owned(), at));
    }

    /// Stops reporting `id` (a sandbox with this id runs again).
    pub(super) fn forget(&self, id: &str) {
        lock(&self.entries).retain(|(known, _)| known != id);
    }

    pub(super) fn current(&self) -> Vec<String> {
        self.current_at(Instant::now())
    }

    fn current_at(&self, now: Instant) -> Vec<String> {
        let mut entries = lock(&self.entries);
        entries.retain(|(_, at)| now.saturating_duration_since(*at) < REPORT_WINDOW);
        entries.iter().map(|(id, _)| id.clone()).collect()
    }
}

/// Releases a sandbox from the reaper's in-progress set when its expiry is handled.
struct Reaping {
    manager: Arc<SandboxManager>,
    id: String,
}

impl Drop for Reaping {
    fn drop(&mut self) {
        lock(&self.manager.reaping).remove(&self.id);
    }
}

impl SandboxManager {
    /// Starts the idle reaper; it stops with [`SandboxManager::shutdown`].
    pub fn spawn_reaper(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let token = self.shutdown.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(REAPER_INTERVAL);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = interval.tick() => {}
                }
                let Some(manager) = me.upgrade() else { return };
                // Each expiry runs on its own: one slow pause must not hold up the others.
                drop(manager.reap_once());
            }
        });
    }

    /// Starts handling every sandbox that is running and idle past its timeout (and not being
    /// handled already); returns the tasks.
    pub(super) fn reap_once(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let now = now_unix();
        let expired: Vec<String> = self
            .list()
            .into_iter()
            .filter(|sb| {
                let timeout = i64::from(sb.record().timeout_sec);
                timeout > 0
                    && sb.status() == SandboxStatus::Running
                    && now - sb.last_active_unix() >= timeout
            })
            .map(|sb| sb.id.clone())
            .filter(|id| lock(&self.reaping).insert(id.clone()))
            .collect();
        expired
            .into_iter()
            .map(|id| {
                let guard = Reaping {
                    manager: self.clone(),
                    id,
                };
                tokio::spawn(async move { guard.manager.expire(&guard.id).await })
            })
            .collect()
    }

    /// Pauses an expired sandbox, or destroys it when it cannot be paused, and records which.
    async fn expire(&self, id: &str) {
        let pause_error = match self.pause(id).await {
            Ok(_) => {
                tracing::info!(sandbox = %id, "idle timeout: paused");
                self.auto_paused.record(id);
                return;
            }
            Err(AgentError::SandboxNotFound(_)) => return,
            Err(e) => e,
        };
        tracing::info!(sandbox = %id, reason = %error_chain(&pause_error), "idle timeout: cannot pause; destroying");
        match self.destroy(id).await {
            Ok(()) => {}
            // Destroyed by someone else meanwhile (the control plane): not ours to report.
            Err(AgentError::SandboxNotFound(_)) => return,
            // The sandbox is out of the map whatever failed in the teardown: it is gone for
            // the control plane too.
            Err(e) => {
                tracing::error!(sandbox = %id, error = %error_chain(&e), "idle destroy failed part-way");
            }
        }
        self.ttl_destroyed.record(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_reported_for_the_window_and_forgotten_on_request() {
        let ids = RecentIds::default();
        let start = Instant::now();
        ids.record_at("a", start);
        ids.record_at("b", start + Duration::from_secs(10));
        assert_eq!(ids.current_at(start), ["a", "b"]);
        // Reported again and again, not drained.
        assert_eq!(ids.current_at(start + Duration::from_secs(60)), ["a", "b"]);
        // Recording again restarts the window and does not duplicate.
        ids.record_at("a", start + Duration::from_secs(20));
        assert_eq!(ids.current_at(start + Duration::from_secs(30)), ["b", "a"]);
        assert_eq!(
            ids.current_at(start + REPORT_WINDOW + Duration::from_secs(15)),
            ["a"]
        );
        ids.forget("a");
        assert!(ids.current_at(start).is_empty());
    }

    fn add(manager: &Arc<SandboxManager>, id: &str, slot: u32, timeout_sec: u32, idle_for: i64) {
        manager.add_test_sandbox(id, slot, timeout_sec, idle_for, None);
    }

    #[tokio::test]
    async fn expired_sandboxes_are_destroyed_when_pause_fails_and_reported_for_an_hour() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (manager, vmm) = crate::testing::fake_manager(dir.path());
        add(&manager, "sb-expired", 1, 60, 120);
        add(&manager, "sb-busy", 2, 60, 5);
        add(&manager, "sb-no-timeout", 3, 0, 100_000);

        for task in manager.reap_once() {
            task.await.expect("reaper task");
        }
        let left: Vec<String> = manager.list().iter().map(|sb| sb.id.clone()).collect();
        assert_eq!(left, ["sb-busy", "sb-no-timeout"]);
        assert_eq!(
            *lock(&vmm.stopped),
            [1],
            "the expired sandbox's VM was stopped"
        );
        assert!(!dir.path().join("sandboxes/sb-expired").exists());
        // Pausing is not implemented yet, so the outcome is a destroy, reported on every call.
        assert!(manager.auto_paused_ids().is_empty());
        assert_eq!(manager.ttl_destroyed_ids(), ["sb-expired"]);
        assert_eq!(manager.ttl_destroyed_ids(), ["sb-expired"]);
        assert!(lock(&manager.reaping).is_empty());

        // Nothing else expired: no new work, same report.
        assert!(manager.reap_once().is_empty());
        assert_eq!(manager.ttl_destroyed_ids(), ["sb-expired"]);

        // A sandbox with that id running again ends the report.
        add(&manager, "sb-expired", 4, 60, 0);
        assert!(manager.ttl_destroyed_ids().is_empty());
        manager.shutdown();
    }
}
