//! Typed bodies of the Firecracker API calls the agent makes.
//!
//! Field and enum names are exactly those of Firecracker's swagger definition
//! (`src/firecracker/swagger/firecracker.yaml`): the structs are the contract, and the fixture
//! tests in `tests/firecracker_api.rs` record the JSON they produce so any drift shows as a diff.
//! Optional fields are left out of the JSON when unset, so Firecracker applies its own defaults
//! rather than ours, and older Firecracker builds (the e2b fork) never see fields they do not know.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub boot_args: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub initrd_path: Option<PathBuf>,
}

/// `PUT /drives/{drive_id}`. Only the virtio-block fields: vhost-user block is not used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_root_device: bool,
    pub is_read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    pub iface_id: String,
    /// The TAP's name, opened in Firecracker's network namespace.
    pub host_dev_name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub guest_mac: Option<String>,
    /// Limits what the guest receives.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Limits what the guest sends.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// An I/O rate limiter: independent byte and operation budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RateLimiter {
    /// Tokens are bytes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bandwidth: Option<TokenBucket>,
    /// Tokens are operations (packets or block requests).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// A limiter on bytes only, which is all the sandboxes use.
    pub fn bandwidth(bucket: impl Into<TokenBucket>) -> Self {
        Self {
            bandwidth: Some(bucket.into()),
            ops: None,
        }
    }
}

/// Firecracker's token bucket. It differs from [`crate::vmm::TokenBucket`] only in the name of
/// the refill field (`refill_time`, in milliseconds), which is why the conversion exists at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    /// Capacity of the bucket.
    pub size: u64,
    /// An initial budget spent before the refill rate applies.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill `size` tokens from empty.
    pub refill_time: u64,
}

impl From<crate::vmm::TokenBucket> for TokenBucket {
    fn from(b: crate::vmm::TokenBucket) -> Self {
        Self {
            size: b.size,
            one_time_burst: b.one_time_burst,
            refill_time: b.refill_time_ms,
        }
    }
}

/// `PUT /machine-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfiguration {
    pub vcpu_count: u32,
    pub mem_size_mib: u32,
    /// Always sent: Firecracker's default is false too, but a config that says so is clearer in
    /// the fixtures than one relying on a default.
    pub smt: bool,
    /// Dirty-page tracking, needed for `Diff` snapshots; costs some performance when on.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub track_dirty_pages: Option<bool>,
}

/// `PUT /balloon` (pre-boot only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balloon {
    pub amount_mib: u32,
    pub deflate_on_oom: bool,
    /// 0 (or absent) disables the statistics; they can only be enabled before boot.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stats_polling_interval_s: Option<u32>,
}

/// `PATCH /balloon`: a new target size, after boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonUpdate {
    pub amount_mib: u32,
}

/// Which MMDS protocol the guest speaks. V2 requires a session token (`PUT /latest/api/token`),
/// which is what envd does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    V1,
    V2,
}

/// `PUT /mmds/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmdsConfig {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<MmdsVersion>,
    /// Interfaces (by `iface_id`) whose traffic to `ipv4_address` Firecracker answers itself.
    pub network_interfaces: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ipv4_address: Option<Ipv4Addr>,
}

/// The synchronous actions of `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    FlushMetrics,
    InstanceStart,
    SendCtrlAltDel,
}

/// `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

/// The states `PATCH /vm` can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Paused,
    Resumed,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub state: VmState,
}

/// What a snapshot's memory file holds: all of guest memory, or only pages dirtied since the
/// previous snapshot (requires dirty-page tracking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    Full,
    Diff,
}

/// `PUT /snapshot/create` (the VM must be paused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreateParams {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot_type: Option<SnapshotType>,
    /// The microVM state (devices, vCPUs) file.
    pub snapshot_path: PathBuf,
    /// The guest memory file.
    pub mem_file_path: PathBuf,
}

/// Where a restored VM's memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// `backend_path` is the memory file, mapped privately.
    File,
    /// `backend_path` is a Unix socket where a page-fault handler waits for the userfaultfd.
    Uffd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    pub backend_type: MemoryBackendType,
    pub backend_path: PathBuf,
}

/// Renames a TAP on restore, so a snapshot taken in one namespace can run with another device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// `PUT /snapshot/load` (only on a fresh Firecracker process, before any configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoadParams {
    pub snapshot_path: PathBuf,
    pub mem_backend: MemoryBackend,
    /// Dirty-page tracking on the restored VM, so its next snapshot can be a `Diff`. This is the
    /// name older Firecracker builds (including e2b's fork) know; newer ones also accept
    /// `track_dirty_pages`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enable_diff_snapshots: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub track_dirty_pages: Option<bool>,
    /// Resume right after loading. Left false by the agent, which resumes with `PATCH /vm` once
    /// the page-fault handler runs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resume_vm: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub network_overrides: Vec<NetworkOverride>,
}

/// Levels of Firecracker's own log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
    Trace,
    Off,
}

/// `PUT /logger`: Firecracker's own log to a file instead of stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logger {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub log_path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub level: Option<LogLevel>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub show_level: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub show_log_origin: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub module: Option<String>,
}

/// `PUT /metrics`: where Firecracker flushes its JSON metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    pub metrics_path: PathBuf,
}

/// `GET /` answers this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub app_name: String,
    pub id: String,
    /// `Not started`, `Running` or `Paused`.
    pub state: String,
    pub vmm_version: String,
}

/// `GET /version` answers this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerVersion {
    pub firecracker_version: String,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub fault_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unset_optionals_are_left_out() {
        let boot = BootSource {
            kernel_image_path: "/k".into(),
            boot_args: None,
            initrd_path: None,
        };
        assert_eq!(
            serde_json::to_value(&boot).expect("json"),
            json!({"kernel_image_path": "/k"})
        );
        let load = SnapshotLoadParams {
            snapshot_path: "/s".into(),
            mem_backend: MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: "/m".into(),
            },
            enable_diff_snapshots: None,
            track_dirty_pages: None,
            resume_vm: None,
            network_overrides: vec![],
        };
        assert_eq!(
            serde_json::to_value(&load).expect("json"),
            json!({"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}})
        );
    }

    #[test]
    fn token_bucket_renames_the_refill_field() {
        let ours = crate::vmm::TokenBucket {
            size: 10,
            one_time_burst: None,
            refill_time_ms: 1000,
        };
        assert_eq!(
            serde_json::to_value(RateLimiter::bandwidth(ours)).expect("json"),
            json!({"bandwidth": {"size": 10, "refill_time": 1000}})
        );
    }

    #[test]
    fn mmds_address_is_a_dotted_string() {
        let c = MmdsConfig {
            version: Some(MmdsVersion::V2),
            network_interfaces: vec!["eth0".into()],
            ipv4_address: Some(Ipv4Addr::new(169, 254, 169, 254)),
        };
        assert_eq!(
            serde_json::to_value(&c).expect("json"),
            json!({"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.169.254"})
        );
    }
}
