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
    pub metadata: GuestMetadata,
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
}
