//! Page servers of restored Firecracker sandboxes (being wired up).

use super::SandboxManager;
use crate::error::{AgentError, AgentResult};
use crate::snapshot::MemoryHeader;
use std::path::Path;

/// A running page server (placeholder until the page server lands).
#[derive(Debug)]
pub(super) struct PageServerGuard;

impl SandboxManager {
    pub(super) fn start_page_server(
        &self,
        _id: &str,
        _socket: &Path,
        _header: &MemoryHeader,
        _dir: &Path,
    ) -> AgentResult<PageServerGuard> {
        Err(AgentError::Unimplemented("page server"))
    }

    pub(super) fn keep_page_server(&self, _id: &str, _server: PageServerGuard) {}
}
