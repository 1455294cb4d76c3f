//! Page servers of Firecracker sandboxes restored from a snapshot: one per sandbox, serving its
//! memory from the snapshot's build files for as long as the VM lives.

use super::{SandboxManager, lock};
use crate::error::AgentResult;
use crate::snapshot::{MemoryHeader, MemoryView};
use crate::uffd::{PageServer, PageServerOptions};
use std::path::Path;
use std::sync::Arc;

/// A page server started for a restore that has not been handed to the sandbox yet; dropping it
/// stops the server (a failed restore).
#[derive(Debug)]
pub(super) struct PageServerGuard(PageServer);

/// How long the VMM has, after `PUT /snapshot/load` returned, to have finished the handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl PageServerGuard {
    /// Waits until the VMM has connected and handed over its memory (it does so during the
    /// snapshot load). An error means the VM cannot be served and must be stopped.
    pub(super) async fn connected(self) -> AgentResult<Self> {
        tokio::task::spawn_blocking(move || {
            self.0.wait_connected(HANDSHAKE_TIMEOUT)?;
            Ok(self)
        })
        .await
        .map_err(|e| crate::error::AgentError::Internal(format!("page server wait: {e}")))?
    }
}

impl SandboxManager {
    /// Starts the page server for sandbox `id` on `socket`, serving the memory `header`
    /// describes from the build files in `dir`. A fault it cannot serve (damaged data, a stuck
    /// read) kills the VM: a guest must never run on memory that is not its own.
    pub(super) fn start_page_server(
        &self,
        id: &str,
        socket: &Path,
        header: &MemoryHeader,
        dir: &Path,
    ) -> AgentResult<PageServerGuard> {
        let view = MemoryView::open(header.clone(), dir)?;
        let sandbox = id.to_string();
        let vm_pid = Arc::clone(&self.page_server_vm_pids);
        let options = PageServerOptions {
            on_fatal: Some(Box::new(move |reason| {
                tracing::error!(sandbox = %sandbox, %reason, "page server failed; killing the VM");
                if let Some(pid) = lock(&vm_pid).get(&sandbox).copied() {
                    crate::vmm::process::signal(pid, nix::sys::signal::Signal::SIGKILL);
                }
            })),
            ..Default::default()
        };
        Ok(PageServerGuard(PageServer::start(
            socket,
            Arc::new(view),
            options,
        )?))
    }

    /// Keeps the page server of a restored sandbox running until the sandbox goes away.
    pub(super) fn keep_page_server(&self, id: &str, vm_pid: u32, server: PageServerGuard) {
        lock(&self.page_server_vm_pids).insert(id.to_string(), vm_pid);
        lock(&self.page_servers).insert(id.to_string(), server.0);
    }

    /// Stops the page server of `id`, if it has one (its VM is gone).
    pub(super) fn stop_page_server(&self, id: &str) {
        lock(&self.page_server_vm_pids).remove(id);
        let server = lock(&self.page_servers).remove(id);
        if let Some(server) = server {
            // Joining its threads blocks briefly; not on the async executor.
            tokio::task::spawn_blocking(move || server.stop());
        }
    }
}
