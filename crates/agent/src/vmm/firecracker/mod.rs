//! The Firecracker driver: one `firecracker` process per VM, configured over its REST API.
//!
//! - [`api`]: the request bodies, named exactly as in Firecracker's swagger definition.
//! - [`client`]: HTTP/1.1 over the API's Unix socket, with a deadline on every call.
//! - `launch`: starting the process, plain or jailed, and cleaning up after it.
//! - [`snapshot`]: snapshot create and load, and how their files reach a jailed Firecracker.
//!
//! Firecracker is started inside the sandbox's network namespace (`ip netns exec`, which execs in
//! place, so the pid we spawn is Firecracker's) in a session of its own, so it outlives an agent
//! restart. Its stdout and stderr, which carry both its own log and the guest's serial console,
//! are appended to `firecracker.log` in the sandbox's run folder. Booting is then a fixed sequence
//! of API calls ([`BootConfig::apply`]), the one upstream Wrenn used plus a balloon device and
//! dirty-page tracking (so that a restored VM's next snapshot can be a diff).
//!
//! With a [`JailerConfig`], the jailer starts Firecracker instead: chrooted, as an unprivileged
//! user, in the namespace. The kernel, initrd and disk are then hard-linked into the chroot and the
//! API is given their paths inside it.
//!
//! # The drive path, and why it is relative
//!
//! A snapshot records the root drive's `path_on_host`, and a restore reopens exactly that path
//! (Firecracker wants host resources "at the same relative paths"). A restored sandbox runs from
//! another folder than the one snapshotted (a template's clone always, a resumed sandbox possibly),
//! so the drive is always given as the relative [`DRIVE_PATH`], resolved against Firecracker's
//! working directory:
//! - without the jailer, Firecracker works in the run folder, where `DRIVE_PATH` is a symlink to
//!   the sandbox's disk, made anew on every start and restore;
//! - under the jailer, it works in the chroot's `/`, where `DRIVE_PATH` is the disk's hard link.
//!
//! So a snapshot restores wherever the sandbox's files are now, jailed or not. Every other path
//! Firecracker is given is absolute, so that no relative path of the caller's is ever resolved
//! against the run folder by mistake.

pub mod api;
pub mod client;
mod launch;
pub mod snapshot;

pub use client::{DEFAULT_API_TIMEOUT, FirecrackerClient, SNAPSHOT_API_TIMEOUT};

use self::api::{
    ActionType, Balloon, BalloonUpdate, BootSource, Drive, MachineConfiguration, MmdsConfig,
    MmdsVersion, NetworkInterface, RateLimiter, VmState,
};
use super::{
    DiskFormat, GuestMetadata, MemorySnapshot, RestoreSource, SnapshotTarget, VmHandle, VmSpec,
    Vmm, VmmKind, process,
};
use crate::error::{AgentError, AgentResult};
use async_trait::async_trait;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// Where release tarballs and most installs put the binary.
pub const DEFAULT_BINARY: &str = "/usr/local/bin/firecracker";
/// Overrides [`DEFAULT_BINARY`] when no path is configured explicitly.
pub const BINARY_ENV: &str = "WRENN_FIRECRACKER_BIN";
/// The API socket's name in the run folder (or in the jailer's chroot).
pub const API_SOCKET: &str = "firecracker.sock";
/// Firecracker's stdout and stderr: its own log and the guest's serial console.
pub const LOG_FILE: &str = "firecracker.log";
/// The root disk's drive id. Snapshots record it, so it must never change.
pub const ROOT_DRIVE_ID: &str = "rootfs";
/// The guest NIC's interface id (also the one MMDS answers on). Recorded in snapshots too.
pub const GUEST_IFACE_ID: &str = "eth0";
/// The root drive's `path_on_host`, relative to Firecracker's working directory: a symlink to
/// the disk in the run folder, or the disk's hard link in the jail. Snapshots record it, so it
/// must never change (see the module docs).
pub const DRIVE_PATH: &str = "firecracker-rootfs";

/// SIGTERM grace before SIGKILL on stop.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Kernel arguments Firecracker guests need, each added only when the image's own arguments do
/// not already set that key (so an image can override any of them):
/// - `console=ttyS0`: Firecracker's only console is the 8250 UART, wired to its stdout;
/// - `reboot=k`: a guest reboot goes through the i8042 controller, which makes Firecracker exit
///   (it cannot reboot a VM), so a rebooting guest ends the sandbox instead of hanging;
/// - `panic=1`: a panicking guest reboots, hence exits, after one second;
/// - `pci=off`: there is no PCI bus; probing for one only costs boot time.
const DRIVER_ARGS: [(&str, &str); 4] = [
    ("console", "console=ttyS0"),
    ("reboot", "reboot=k"),
    ("panic", "panic=1"),
    ("pci", "pci=off"),
];

/// Balloon statistics interval. Pause uses `mem_used` to size the balloon it inflates.
const BALLOON_STATS_INTERVAL_S: u32 = 5;

/// Runs Firecracker under its jailer (chroot, unprivileged uid/gid, network namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerConfig {
    pub binary: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// The jailer builds `<chroot_base>/<firecracker file name>/<id>/root`. It must be on the
    /// same filesystem as the sandbox folders and the snapshots: disks and page server sockets
    /// are hard-linked into it, and snapshots are renamed out of it.
    pub chroot_base: PathBuf,
}

impl JailerConfig {
    /// `<chroot_base>/<exec file name>/<id>`: the jailer's per-VM folder.
    pub fn jail_dir(&self, exec_file: &Path, id: &str) -> PathBuf {
        let exec_name = exec_file
            .file_name()
            .map(OsString::from)
            .unwrap_or_else(|| "firecracker".into());
        self.chroot_base.join(exec_name).join(id)
    }

    /// The chroot Firecracker sees as `/`.
    pub fn chroot(&self, exec_file: &Path, id: &str) -> PathBuf {
        self.jail_dir(exec_file, id).join("root")
    }
}

/// The Firecracker driver. Stateless apart from configuration; every VM's state is its
/// [`VmHandle`].
#[derive(Debug, Clone)]
pub struct Firecracker {
    binary: PathBuf,
    jailer: Option<JailerConfig>,
    api_timeout: Duration,
    /// `ip`, which enters the network namespace. Replaceable so tests can run `start` unprivileged.
    ip: PathBuf,
    /// `firecracker --version`, run on first use.
    version: OnceLock<String>,
}

impl Firecracker {
    /// A driver for `binary`, which is not checked (see [`Firecracker::detect`]).
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            jailer: None,
            api_timeout: DEFAULT_API_TIMEOUT,
            ip: PathBuf::from("ip"),
            version: OnceLock::new(),
        }
    }

    /// The driver, if Firecracker is installed: `binary`, else `$WRENN_FIRECRACKER_BIN`, else
    /// [`DEFAULT_BINARY`], provided it is an executable file. `None` lets the agent fall back to
    /// QEMU.
    pub fn detect(binary: Option<PathBuf>) -> Option<Self> {
        let binary = binary
            .or_else(|| std::env::var_os(BINARY_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BINARY));
        let meta = std::fs::metadata(&binary).ok()?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            tracing::debug!(binary = %binary.display(), "firecracker is not an executable file");
            return None;
        }
        Some(Self::new(binary))
    }

    pub fn with_jailer(mut self, jailer: JailerConfig) -> Self {
        self.jailer = Some(jailer);
        self
    }

    /// The deadline of each configuration call.
    pub fn with_api_timeout(mut self, timeout: Duration) -> Self {
        self.api_timeout = timeout;
        self
    }

    /// The `ip` used for `ip netns exec` (default: `ip` on PATH).
    pub fn with_ip_command(mut self, ip: impl Into<PathBuf>) -> Self {
        self.ip = ip.into();
        self
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn jailer(&self) -> Option<&JailerConfig> {
        self.jailer.as_ref()
    }

    /// Firecracker's version (`1.7.0`), or `unknown` if `--version` did not say.
    pub fn version(&self) -> &str {
        self.version.get_or_init(|| {
            std::process::Command::new(&self.binary)
                .arg("--version")
                .output()
                .ok()
                .and_then(|out| parse_version(&String::from_utf8_lossy(&out.stdout)))
                .unwrap_or_else(|| "unknown".into())
        })
    }

    /// A client for a running VM's API.
    pub fn client(&self, vm: &VmHandle) -> FirecrackerClient {
        FirecrackerClient::new(&vm.control_socket).with_timeout(self.api_timeout)
    }

    /// The kernel command line: the image's arguments plus the driver's own (`console=ttyS0
    /// reboot=k panic=1 pci=off`), each only if the image does not set that key already.
    pub fn kernel_args(image_args: &str) -> String {
        let set: Vec<&str> = image_args
            .split_whitespace()
            .map(|a| a.split_once('=').map_or(a, |(k, _)| k))
            .collect();
        let mut args = image_args.trim().to_string();
        for (key, arg) in DRIVER_ARGS {
            if !set.contains(&key) {
                if !args.is_empty() {
                    args.push(' ');
                }
                args.push_str(arg);
            }
        }
        args
    }

    /// Every API call that boots `spec`, with paths as Firecracker sees them (pure; tested).
    pub fn boot_config(&self, spec: &VmSpec) -> BootConfig {
        let (kernel, initrd, disk) = self.boot_paths(spec);
        BootConfig {
            boot_source: BootSource {
                kernel_image_path: kernel,
                boot_args: Some(Self::kernel_args(&spec.boot_args)),
                initrd_path: initrd,
            },
            root_drive: Drive {
                drive_id: ROOT_DRIVE_ID.into(),
                path_on_host: disk,
                is_root_device: true,
                is_read_only: false,
                rate_limiter: None,
            },
            network_interface: NetworkInterface {
                iface_id: GUEST_IFACE_ID.into(),
                host_dev_name: spec.tap.clone(),
                guest_mac: Some(spec.guest_mac.clone()),
                rx_rate_limiter: None,
                tx_rate_limiter: spec.tx_rate_limit.map(RateLimiter::bandwidth),
            },
            machine_config: MachineConfiguration {
                vcpu_count: spec.vcpus,
                mem_size_mib: spec.memory_mib,
                smt: false,
                // Needed for diff snapshots; a restored VM gets it from the snapshot load.
                track_dirty_pages: Some(true),
            },
            balloon: Some(Balloon {
                amount_mib: 0,
                deflate_on_oom: true,
                stats_polling_interval_s: Some(BALLOON_STATS_INTERVAL_S),
            }),
            mmds_config: MmdsConfig {
                version: Some(MmdsVersion::V2),
                network_interfaces: vec![GUEST_IFACE_ID.into()],
                ipv4_address: Some(crate::network::METADATA_IP),
            },
            metadata: spec.metadata.clone(),
        }
    }
}

/// The API calls that boot a VM, in the order they are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub boot_source: BootSource,
    pub root_drive: Drive,
    pub network_interface: NetworkInterface,
    pub machine_config: MachineConfiguration,
    /// Optional because Firecracker builds without a balloon device exist; failing to add it is
    /// only a warning (the sandbox runs, it just cannot be shrunk before a snapshot).
    pub balloon: Option<Balloon>,
    pub mmds_config: MmdsConfig,
    pub metadata: GuestMetadata,
}

impl BootConfig {
    /// Configures a fresh Firecracker and starts the guest: boot source, root drive, NIC,
    /// machine, balloon, MMDS, `InstanceStart`, then the MMDS contents (upstream's order).
    pub async fn apply(&self, client: &FirecrackerClient) -> AgentResult<()> {
        client.put_boot_source(&self.boot_source).await?;
        client.put_drive(&self.root_drive).await?;
        client
            .put_network_interface(&self.network_interface)
            .await?;
        client.put_machine_config(&self.machine_config).await?;
        if let Some(balloon) = &self.balloon
            && let Err(e) = client.put_balloon(balloon).await
        {
            tracing::warn!(error = %e, "firecracker balloon unavailable; continuing without it");
        }
        client.put_mmds_config(&self.mmds_config).await?;
        client.put_action(ActionType::InstanceStart).await?;
        client.put_mmds(&self.metadata).await?;
        Ok(())
    }
}

#[async_trait]
impl Vmm for Firecracker {
    fn kind(&self) -> VmmKind {
        VmmKind::Firecracker
    }

    fn disk_format(&self) -> DiskFormat {
        DiskFormat::Raw
    }

    fn describe(&self) -> String {
        format!("firecracker {} (kvm)", self.version())
    }

    async fn start(&self, spec: &VmSpec) -> AgentResult<VmHandle> {
        check_disk(spec)?;
        let config = self.boot_config(spec);
        let vm = self.spawn(spec).await?;
        if let Err(e) = config.apply(&self.client(&vm)).await {
            tracing::warn!(sandbox = %spec.sandbox_id, error = %e, "firecracker boot failed");
            return Err(self.abandon(&vm, e).await);
        }
        tracing::info!(sandbox = %spec.sandbox_id, pid = vm.pid, "firecracker VM started");
        Ok(vm)
    }

    async fn stop(&self, vm: &VmHandle) -> AgentResult<()> {
        // An exited VM of ours is a zombie until reaped; reaping a pid that is not our child (or
        // still runs) does nothing.
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(vm.pid as i32),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        process::terminate(vm.pid, vm.start_time, STOP_GRACE).await;
        if vm.is_alive() {
            return Err(AgentError::Vmm(format!(
                "firecracker (pid {}) survived SIGKILL",
                vm.pid
            )));
        }
        self.cleanup_files(&vm.control_socket);
        Ok(())
    }

    async fn set_metadata(&self, vm: &VmHandle, metadata: &GuestMetadata) -> AgentResult<()> {
        self.client(vm).put_mmds(metadata).await
    }

    fn memory_snapshot(&self) -> MemorySnapshot {
        MemorySnapshot::VmmWritten
    }

    /// `PATCH /vm` to `Paused`.
    async fn pause_vcpus(&self, vm: &VmHandle) -> AgentResult<()> {
        self.client(vm).patch_vm_state(VmState::Paused).await
    }

    /// `PATCH /vm` to `Resumed`.
    async fn resume_vcpus(&self, vm: &VmHandle) -> AgentResult<()> {
        self.client(vm).patch_vm_state(VmState::Resumed).await
    }

    /// `PUT /snapshot/create` (see [`snapshot`] for the jailed case). Needs `target.memory`.
    async fn save_snapshot(&self, vm: &VmHandle, target: &SnapshotTarget) -> AgentResult<()> {
        self.write_snapshot(vm, target).await
    }

    /// A fresh process like [`start`](Vmm::start)'s, then `PUT /snapshot/load` with the page
    /// server as memory backend and `PUT /mmds`; the guest stays paused. Needs
    /// [`RestoreMemory::PageServer`](super::RestoreMemory::PageServer).
    async fn restore(&self, spec: &VmSpec, from: &RestoreSource) -> AgentResult<VmHandle> {
        self.restore_vm(spec, from).await
    }

    /// `PATCH /balloon`. Every VM this driver boots has a balloon unless Firecracker refused it
    /// at boot, in which case Firecracker's error is returned.
    async fn set_balloon(&self, vm: &VmHandle, amount_mib: u32) -> AgentResult<bool> {
        self.client(vm)
            .patch_balloon(&BalloonUpdate { amount_mib })
            .await
            .map(|()| true)
    }
}

/// Firecracker ids (`--id`, and the jailer's folder name) allow only ASCII letters, digits and
/// '-', up to 64 characters; sandbox ids may also contain '_'.
pub fn instance_id(sandbox_id: &str) -> String {
    sandbox_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(64)
        .collect()
}

/// `Firecracker v1.7.0` (first line of `--version`) → `1.7.0`.
fn parse_version(output: &str) -> Option<String> {
    let word = output.lines().next()?.split_whitespace().last()?;
    Some(word.trim_start_matches('v').to_string())
}

/// Firecracker only takes raw disks.
fn check_disk(spec: &VmSpec) -> AgentResult<()> {
    if spec.disk_format == DiskFormat::Raw {
        return Ok(());
    }
    Err(AgentError::Vmm(format!(
        "firecracker only boots raw disks, but {} is {:?}",
        spec.disk.display(),
        spec.disk_format
    )))
}

/// `path` made absolute against the agent's working directory (Firecracker has another one).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A spec with fixed host paths; shared by the tests of the submodules.
    pub(in crate::vmm::firecracker) fn spec() -> VmSpec {
        VmSpec {
            sandbox_id: "sb_1".into(),
            vcpus: 2,
            memory_mib: 512,
            kernel: "/img/vmlinux".into(),
            initrd: None,
            boot_args: "console=ttyS0 root=/dev/vda".into(),
            disk: "/data/sandboxes/sb_1/rootfs.raw".into(),
            disk_format: DiskFormat::Raw,
            netns: "wrenn-ns-3".into(),
            tap: "tap0".into(),
            guest_mac: "02:FC:00:00:00:05".into(),
            tx_rate_limit: None,
            run_dir: "/data/sandboxes/sb_1".into(),
            memory_path: PathBuf::from("/unused/memory.raw"),
            metadata: GuestMetadata {
                instance_id: "sb_1".into(),
                env_id: "t".into(),
                address: None,
            },
        }
    }

    #[test]
    fn driver_args_are_added_unless_the_image_sets_them() {
        assert_eq!(
            Firecracker::kernel_args("console=ttyS0 root=/dev/vda panic=5"),
            "console=ttyS0 root=/dev/vda panic=5 reboot=k pci=off"
        );
        assert_eq!(
            Firecracker::kernel_args(""),
            "console=ttyS0 reboot=k panic=1 pci=off"
        );
    }

    pub(in crate::vmm::firecracker) fn jailer() -> JailerConfig {
        JailerConfig {
            binary: "/usr/local/bin/jailer".into(),
            uid: 123,
            gid: 456,
            chroot_base: "/srv/jail".into(),
        }
    }

    #[test]
    fn jailed_boot_config_uses_paths_inside_the_chroot() {
        let fc = Firecracker::new("/usr/local/bin/firecracker").with_jailer(jailer());
        let mut s = spec();
        s.initrd = Some("/img/initrd.img".into());
        let config = fc.boot_config(&s);
        assert_eq!(config.boot_source.kernel_image_path, Path::new("/vmlinux"));
        assert_eq!(
            config.boot_source.initrd_path.as_deref(),
            Some(Path::new("/initrd"))
        );
        // The same relative drive path as without the jailer: snapshots move between both.
        assert_eq!(config.root_drive.path_on_host, Path::new(DRIVE_PATH));
    }

    #[test]
    fn plain_boot_config_tracks_dirty_pages_and_names_the_drive_relatively() {
        let config = Firecracker::new("/usr/local/bin/firecracker").boot_config(&spec());
        assert_eq!(config.root_drive.path_on_host, Path::new(DRIVE_PATH));
        assert!(config.root_drive.path_on_host.is_relative());
        assert_eq!(
            config.boot_source.kernel_image_path,
            Path::new("/img/vmlinux")
        );
        assert_eq!(config.machine_config.track_dirty_pages, Some(true));
        assert_eq!(config.balloon.map(|b| b.amount_mib), Some(0));
    }

    #[test]
    fn instance_ids_are_sanitised_for_firecracker() {
        assert_eq!(instance_id("cl_ab-9"), "cl-ab-9");
        assert_eq!(instance_id(&"a".repeat(80)).len(), 64);
    }

    #[test]
    fn version_line_is_parsed() {
        assert_eq!(
            parse_version("Firecracker v1.7.0\n\nSupported snapshot data format versions: 1.0.0"),
            Some("1.7.0".into())
        );
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn detect_wants_an_executable_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("firecracker");
        std::fs::write(&bin, b"#!/bin/sh\n").expect("write");
        assert!(Firecracker::detect(Some(bin.clone())).is_none());
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(Firecracker::detect(Some(bin)).is_some());
        assert!(Firecracker::detect(Some(dir.path().into())).is_none());
    }
}
