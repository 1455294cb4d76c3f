//! Stand-ins for the hardware behind the sandbox manager, for tests that need a manager (RPC
//! routing, the control-plane link, the idle reaper) but boot no VM and touch no network.

use crate::error::{AgentError, AgentResult};
use crate::network::{CleanupReport, Network, NetworkOptions, SlotNetwork};
use crate::sandbox::{ManagerConfig, SandboxManager};
use crate::vmm::{
    DiskFormat, GuestMetadata, MemorySnapshot, RestoreSource, SnapshotTarget, VmHandle, VmSpec,
    Vmm, VmmKind,
};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A VMM that starts nothing and records what it was asked to stop.
#[derive(Debug, Default)]
pub struct FakeVmm {
    pub stopped: Mutex<Vec<u32>>,
}

#[async_trait]
impl Vmm for FakeVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    fn disk_format(&self) -> DiskFormat {
        DiskFormat::Raw
    }

    fn describe(&self) -> String {
        "fake".into()
    }

    async fn start(&self, _spec: &VmSpec) -> AgentResult<VmHandle> {
        Err(AgentError::Unavailable {
            what: "a VMM".into(),
            hint: "this is a test stand-in".into(),
        })
    }

    async fn stop(&self, vm: &VmHandle) -> AgentResult<()> {
        self.stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(vm.pid);
        Ok(())
    }

    async fn set_metadata(&self, _vm: &VmHandle, _metadata: &GuestMetadata) -> AgentResult<()> {
        Ok(())
    }

    fn memory_snapshot(&self) -> MemorySnapshot {
        MemorySnapshot::SharedFile
    }

    async fn pause_vcpus(&self, _vm: &VmHandle) -> AgentResult<()> {
        Ok(())
    }

    async fn resume_vcpus(&self, _vm: &VmHandle) -> AgentResult<()> {
        Ok(())
    }

    async fn save_snapshot(&self, _vm: &VmHandle, _target: &SnapshotTarget) -> AgentResult<()> {
        Err(AgentError::Vmm("this is a test stand-in".into()))
    }

    async fn restore(&self, _spec: &VmSpec, _from: &RestoreSource) -> AgentResult<VmHandle> {
        Err(AgentError::Vmm("this is a test stand-in".into()))
    }
}

/// A network that creates nothing and removes everything.
#[derive(Debug, Default)]
pub struct FakeNetwork;

#[async_trait]
impl Network for FakeNetwork {
    async fn prepare_host(&self) -> AgentResult<()> {
        Ok(())
    }

    async fn create(&self, _slot: u32, _options: &NetworkOptions) -> AgentResult<SlotNetwork> {
        Err(AgentError::Network("this is a test stand-in".into()))
    }

    async fn destroy(&self, _slot: u32) -> AgentResult<()> {
        Ok(())
    }

    async fn cleanup_stale(
        &self,
        _range: std::ops::RangeInclusive<u32>,
        _keep: &[u32],
    ) -> AgentResult<CleanupReport> {
        Ok(CleanupReport::default())
    }
}

/// A manager over `data_dir` with the fakes above.
pub fn fake_manager(data_dir: &std::path::Path) -> (Arc<SandboxManager>, Arc<FakeVmm>) {
    let vmm = Arc::new(FakeVmm::default());
    let manager = SandboxManager::new(
        ManagerConfig {
            layout: crate::layout::Layout::new(data_dir, None),
            default_vcpus: 1,
            default_memory_mb: 512,
            default_disk_mb: 1024,
            boot_timeout: Duration::from_secs(1),
            metadata_port: None,
            slot_range: (1, 8),
        },
        vmm.clone(),
        Arc::new(FakeNetwork),
    );
    (manager, vmm)
}
