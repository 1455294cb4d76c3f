//! The VMM abstraction: one trait, two drivers.
//!
//! - [`qemu`]: Debian's `qemu-system-x86_64 -M microvm`, KVM when it works and TCG otherwise. This
//!   is what boots on the development and CI machines (their /dev/kvm cannot run a stock kernel).
//! - [`firecracker`]: Firecracker's REST API over its Unix socket, selected when the binary exists.
//!
//! VMs are started in their own session so that they outlive an agent restart; a [`VmHandle`]
//! (persisted with the sandbox record) is enough to find, control and stop them again.

pub mod firecracker;
pub mod process;
pub mod qemu;
pub mod qmp;

use crate::error::AgentResult;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which driver runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmKind {
    Qemu,
    Firecracker,
}

impl std::fmt::Display for VmmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmmKind::Qemu => "qemu",
            VmmKind::Firecracker => "firecracker",
        })
    }
}

/// How the guest's disk file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

/// A token bucket, as Firecracker's rate limiters take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    pub size: u64,
    pub one_time_burst: Option<u64>,
    pub refill_time_ms: u64,
}

/// The identity the guest reads from its metadata service (Firecracker's MMDS, or the agent's
/// MMDS-compatible server for QEMU). Field names are what envd expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMetadata {
    #[serde(rename = "instanceID")]
    pub instance_id: String,
    #[serde(rename = "envID")]
    pub env_id: String,
    #[serde(rename = "address", skip_serializing_if = "Option::is_none", default)]
    pub address: Option<String>,
}

/// Everything a driver needs to boot one sandbox. All paths are host paths.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub sandbox_id: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The image's part of the kernel command line (init, root, ip=...). Drivers append their own.
    pub boot_args: String,
    pub disk: PathBuf,
    pub disk_format: DiskFormat,
    /// The network namespace the VMM process runs in, so it opens `tap` there.
    pub netns: String,
    pub tap: String,
    pub guest_mac: String,
    /// Guest egress limit (Firecracker enforces it; QEMU has no per-device limiter).
    pub tx_rate_limit: Option<TokenBucket>,
    /// Per-sandbox folder for the API/QMP socket, the serial log and the pid file.
    pub run_dir: PathBuf,
    /// The file that backs guest RAM. QEMU maps it shared, so a snapshot only has to save device
    /// state; Firecracker ignores it (its memory goes through the snapshot API).
    pub memory_path: PathBuf,
    pub metadata: GuestMetadata,
}

/// How a driver's snapshots carry guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemorySnapshot {
    /// Guest RAM already lives in [`VmSpec::memory_path`] (QEMU's shared memory backend with
    /// `x-ignore-shared`): the snapshot is that file plus a small device-state file.
    SharedFile,
    /// The VMM writes guest memory itself (Firecracker's full or diff memory file); a restore
    /// gets it back page by page from the agent's userfaultfd page server.
    VmmWritten,
}

/// Full (every page) or diff (pages dirtied since the VM was restored) memory snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    Full,
    Diff,
}

/// Where [`Vmm::save_snapshot`] writes.
#[derive(Debug, Clone)]
pub struct SnapshotTarget {
    /// Device and vCPU state (QEMU's migration stream, Firecracker's `snapfile`).
    pub state: PathBuf,
    /// Guest memory, for [`MemorySnapshot::VmmWritten`] drivers only.
    pub memory: Option<PathBuf>,
    pub kind: SnapshotKind,
}

/// Where a restored VM gets its memory from.
#[derive(Debug, Clone)]
pub enum RestoreMemory {
    /// Map [`VmSpec::memory_path`], which already holds the snapshot's RAM.
    SharedFile,
    /// Connect to the page server listening on this Unix socket (Firecracker's `Uffd` backend).
    PageServer(PathBuf),
}

/// What [`Vmm::restore`] starts from.
#[derive(Debug, Clone)]
pub struct RestoreSource {
    pub state: PathBuf,
    pub memory: RestoreMemory,
}

/// A running VM, as much as is needed to find it again after an agent restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmHandle {
    pub kind: VmmKind,
    pub pid: u32,
    /// The process start time (clock ticks since boot, /proc/<pid>/stat field 22): a pid alone
    /// could have been reused by another process after a crash.
    pub start_time: u64,
    /// QMP socket (QEMU) or API socket (Firecracker).
    pub control_socket: PathBuf,
    pub serial_log: PathBuf,
}

impl VmHandle {
    /// True while the very process this handle names is still running.
    pub fn is_alive(&self) -> bool {
        process::start_time(self.pid) == Some(self.start_time)
    }
}

/// A VM monitor. Drivers are stateless; all state is in the [`VmHandle`].
#[async_trait]
pub trait Vmm: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> VmmKind;

    /// The disk format this driver wants for the sandbox's root disk.
    fn disk_format(&self) -> DiskFormat;

    /// A short human-readable description (binary, version, accelerator) for logs and benches.
    fn describe(&self) -> String;

    /// Boots the VM and returns once the VMM runs the guest (not once the guest is ready).
    async fn start(&self, spec: &VmSpec) -> AgentResult<VmHandle>;

    /// Stops the VM: a clean quit first, then SIGKILL. Succeeds if it is already gone.
    async fn stop(&self, vm: &VmHandle) -> AgentResult<()>;

    /// Replaces the identity the guest reads from its metadata service. QEMU guests read it from
    /// the agent's own server, so that driver has nothing to do.
    async fn set_metadata(&self, vm: &VmHandle, metadata: &GuestMetadata) -> AgentResult<()>;

    /// How this driver's snapshots carry guest memory.
    fn memory_snapshot(&self) -> MemorySnapshot;

    /// Freezes the vCPUs; the VMM process keeps running.
    async fn pause_vcpus(&self, vm: &VmHandle) -> AgentResult<()>;

    /// Thaws vCPUs frozen by [`pause_vcpus`](Self::pause_vcpus) or left frozen by
    /// [`restore`](Self::restore).
    async fn resume_vcpus(&self, vm: &VmHandle) -> AgentResult<()>;

    /// Writes the state of a frozen VM to `target`. The VM stays frozen and usable: on failure
    /// the caller thaws it and nothing is lost.
    async fn save_snapshot(&self, vm: &VmHandle, target: &SnapshotTarget) -> AgentResult<()>;

    /// Starts a new VMM process from a snapshot and returns with the guest still frozen, so the
    /// caller can finish its checks before the guest runs. `spec` gives the new run directory,
    /// network namespace, memory file and identity; vCPUs and memory size come from the snapshot.
    async fn restore(&self, spec: &VmSpec, from: &RestoreSource) -> AgentResult<VmHandle>;

    /// Sets the balloon to `amount_mib` (0 deflates it). Returns `false` when this VM has no
    /// balloon, which is not an error.
    async fn set_balloon(&self, _vm: &VmHandle, _amount_mib: u32) -> AgentResult<bool> {
        Ok(false)
    }
}
