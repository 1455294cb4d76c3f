//! The Firecracker driver: one `firecracker` process per VM, configured over its REST API.
//!
//! - [`api`]: the request bodies, named exactly as in Firecracker's swagger definition.
//! - [`client`]: HTTP/1.1 over the API's Unix socket, with a deadline on every call.
//!
//! Firecracker is started inside the sandbox's network namespace (`ip netns exec`, which execs in
//! place, so the pid we spawn is Firecracker's) in a session of its own, so it outlives an agent
//! restart. Its stdout and stderr, which carry both its own log and the guest's serial console,
//! are appended to `firecracker.log` in the sandbox's run folder. Booting is then a fixed sequence
//! of API calls ([`BootConfig::apply`]), the one upstream Wrenn used.
//!
//! With a [`JailerConfig`], the jailer starts Firecracker instead: chrooted, as an unprivileged
//! user, in the namespace. The kernel, initrd and disk are then hard-linked into the chroot and the
//! API is given their paths inside it.

pub mod api;
pub mod client;

pub use client::{DEFAULT_API_TIMEOUT, FirecrackerClient, SNAPSHOT_API_TIMEOUT};

use self::api::{
    ActionType, Balloon, BootSource, Drive, MachineConfiguration, MmdsConfig, MmdsVersion,
    NetworkInterface, RateLimiter,
};
use super::{DiskFormat, GuestMetadata, VmHandle, VmSpec, Vmm, VmmKind, process};
use crate::error::{AgentError, AgentResult};
use async_trait::async_trait;
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
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
/// File names of the boot files inside a jailer chroot.
const JAIL_KERNEL: &str = "vmlinux";
const JAIL_INITRD: &str = "initrd";
const JAIL_ROOTFS: &str = "rootfs";

/// How long Firecracker gets to open its API socket. It does so within milliseconds; anything
/// slower means it is stuck, not slow.
const SOCKET_WAIT: Duration = Duration::from_secs(5);
const SOCKET_POLL: Duration = Duration::from_millis(10);
/// SIGTERM grace before SIGKILL on stop.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How much of the log goes into a start error.
const LOG_TAIL_BYTES: u64 = 4096;

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
    /// same filesystem as the sandbox disks, which are hard-linked into it.
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

    /// The API socket's host path for `spec`.
    pub fn api_socket(&self, spec: &VmSpec) -> PathBuf {
        match &self.jailer {
            Some(j) => j
                .chroot(&self.binary, &instance_id(&spec.sandbox_id))
                .join(API_SOCKET),
            None => spec.run_dir.join(API_SOCKET),
        }
    }

    /// The full command line (program first) that starts Firecracker for `spec` (pure; tested).
    pub fn launch_command(&self, spec: &VmSpec) -> Vec<OsString> {
        let id = instance_id(&spec.sandbox_id);
        let mut argv: Vec<OsString> = Vec::new();
        match &self.jailer {
            None => {
                argv.extend([
                    self.ip.clone().into(),
                    "netns".into(),
                    "exec".into(),
                    spec.netns.clone().into(),
                    self.binary.clone().into(),
                    "--api-sock".into(),
                    self.api_socket(spec).into(),
                    "--id".into(),
                    id.into(),
                ]);
            }
            Some(j) => {
                // The jailer passes `--id` on to Firecracker itself; what follows `--` is for
                // Firecracker, with paths inside the chroot.
                argv.extend([
                    j.binary.clone().into(),
                    "--id".into(),
                    id.into(),
                    "--exec-file".into(),
                    self.binary.clone().into(),
                    "--uid".into(),
                    j.uid.to_string().into(),
                    "--gid".into(),
                    j.gid.to_string().into(),
                    "--chroot-base-dir".into(),
                    j.chroot_base.clone().into(),
                    "--netns".into(),
                    Path::new("/var/run/netns").join(&spec.netns).into(),
                    "--".into(),
                    "--api-sock".into(),
                    Path::new("/").join(API_SOCKET).into(),
                ]);
            }
        }
        argv
    }

    /// Every API call that boots `spec`, with paths as Firecracker sees them (pure; tested).
    pub fn boot_config(&self, spec: &VmSpec) -> BootConfig {
        let (kernel, initrd, disk) = match &self.jailer {
            None => (spec.kernel.clone(), spec.initrd.clone(), spec.disk.clone()),
            Some(_) => {
                let root = Path::new("/");
                (
                    root.join(JAIL_KERNEL),
                    spec.initrd.as_ref().map(|_| root.join(JAIL_INITRD)),
                    root.join(JAIL_ROOTFS),
                )
            }
        };
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
                track_dirty_pages: None,
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

    /// Starts a Firecracker process for `spec` and waits until its API answers, without
    /// configuring anything: `start` boots it, a snapshot restore loads a snapshot into it.
    /// On failure the process is gone and the socket removed.
    pub async fn spawn(&self, spec: &VmSpec) -> AgentResult<VmHandle> {
        let socket = self.api_socket(spec);
        let log_path = spec.run_dir.join(LOG_FILE);
        std::fs::create_dir_all(&spec.run_dir).map_err(|e| AgentError::io(&spec.run_dir, e))?;
        // A stale socket from a crashed run would make the wait below succeed at once.
        remove_file_if_exists(&socket)?;
        if let Some(jailer) = &self.jailer {
            self.stage_jail(jailer, spec)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| AgentError::io(&log_path, e))?;
        // Only what this run writes goes into an error.
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log.try_clone().map_err(|e| AgentError::io(&log_path, e))?;

        let argv = self.launch_command(spec);
        let Some((program, args)) = argv.split_first() else {
            return Err(AgentError::Internal(
                "empty firecracker command line".into(),
            ));
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: setsid is async-signal-safe, and nothing else runs between fork and exec.
        // A session of its own keeps the VM out of the agent's process group, so a Ctrl-C or a
        // service manager's group kill of the agent does not take the sandboxes with it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        tracing::debug!(sandbox = %spec.sandbox_id, ?argv, "starting firecracker");
        let mut child = cmd.spawn().map_err(|e| {
            AgentError::Vmm(format!("cannot run {}: {e}", Path::new(program).display()))
        })?;
        let handle = match child
            .id()
            .and_then(|pid| Some((pid, process::start_time(pid)?)))
        {
            Some((pid, start_time)) => VmHandle {
                kind: VmmKind::Firecracker,
                pid,
                start_time,
                control_socket: socket.clone(),
                serial_log: log_path.clone(),
            },
            None => {
                let status = child.wait().await.ok();
                self.cleanup_files(&socket);
                return Err(AgentError::Vmm(format!(
                    "firecracker exited at once ({}): {}",
                    status.map_or_else(|| "unknown status".into(), |s| s.to_string()),
                    log_tail(&log_path, log_start)
                )));
            }
        };
        match wait_for_socket(&mut child, &socket).await {
            Ok(()) => {
                // Dropping the child does not kill it; tokio reaps it if it exits while the agent
                // runs, and [`process::wait_gone`] reaps it on stop.
                tracing::debug!(sandbox = %spec.sandbox_id, pid = handle.pid, "firecracker API is up");
                Ok(handle)
            }
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                self.cleanup_files(&socket);
                Err(AgentError::Vmm(format!(
                    "{e}; firecracker log: {}",
                    log_tail(&log_path, log_start)
                )))
            }
        }
    }

    /// Links the boot files into the jailer's chroot, where Firecracker expects them.
    fn stage_jail(&self, jailer: &JailerConfig, spec: &VmSpec) -> AgentResult<()> {
        let jail = jailer.jail_dir(&self.binary, &instance_id(&spec.sandbox_id));
        // Leftovers of a crashed run: only links and the socket.
        if jail.exists() {
            std::fs::remove_dir_all(&jail).map_err(|e| AgentError::io(&jail, e))?;
        }
        let root = jail.join("root");
        std::fs::create_dir_all(&root).map_err(|e| AgentError::io(&root, e))?;
        link_or_copy(&spec.kernel, &root.join(JAIL_KERNEL))?;
        if let Some(initrd) = &spec.initrd {
            link_or_copy(initrd, &root.join(JAIL_INITRD))?;
        }
        // The disk must be the sandbox's own file, never a copy of it.
        let disk = root.join(JAIL_ROOTFS);
        std::fs::hard_link(&spec.disk, &disk).map_err(|e| {
            AgentError::Vmm(format!(
                "cannot link {} into the jail at {} (the chroot base must be on the disk's \
                 filesystem): {e}",
                spec.disk.display(),
                disk.display()
            ))
        })?;
        std::os::unix::fs::chown(&disk, Some(jailer.uid), Some(jailer.gid))
            .map_err(|e| AgentError::io(&disk, e))?;
        Ok(())
    }

    /// Removes the API socket and, under the jailer, the VM's jail folder (whose hard links
    /// would otherwise keep a deleted disk's blocks allocated).
    fn cleanup_files(&self, socket: &Path) {
        let _ = std::fs::remove_file(socket);
        let Some(jailer) = &self.jailer else {
            return;
        };
        // socket = <chroot_base>/<exec>/<id>/root/<API_SOCKET>; only ever remove that <id> folder.
        let jail = socket.parent().and_then(Path::parent);
        if let Some(jail) = jail
            && jail.parent().and_then(Path::parent) == Some(jailer.chroot_base.as_path())
            && let Err(e) = std::fs::remove_dir_all(jail)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(jail = %jail.display(), error = %e, "cannot remove firecracker jail");
        }
    }

    /// SIGKILL without grace: for a VM that never finished booting, there is nothing to save.
    async fn kill(&self, vm: &VmHandle) {
        if vm.is_alive() {
            process::signal(vm.pid, nix::sys::signal::Signal::SIGKILL);
            process::wait_gone(vm.pid, vm.start_time, Duration::from_secs(5)).await;
        }
        self.cleanup_files(&vm.control_socket);
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
        if spec.disk_format != DiskFormat::Raw {
            return Err(AgentError::Vmm(format!(
                "firecracker only boots raw disks, but {} is {:?}",
                spec.disk.display(),
                spec.disk_format
            )));
        }
        let config = self.boot_config(spec);
        let vm = self.spawn(spec).await?;
        if let Err(e) = config.apply(&self.client(&vm)).await {
            let died = !vm.is_alive();
            self.kill(&vm).await;
            let log = if died {
                format!(
                    "; firecracker exited, its log: {}",
                    log_tail(&vm.serial_log, 0)
                )
            } else {
                String::new()
            };
            tracing::warn!(sandbox = %spec.sandbox_id, error = %e, "firecracker boot failed");
            return Err(match e {
                AgentError::Vmm(msg) => AgentError::Vmm(format!("{msg}{log}")),
                other if died => AgentError::Vmm(format!("{other}{log}")),
                other => other,
            });
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

/// Polls until the API socket accepts connections, failing early if Firecracker exits.
async fn wait_for_socket(child: &mut tokio::process::Child, socket: &Path) -> AgentResult<()> {
    let deadline = tokio::time::Instant::now() + SOCKET_WAIT;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| AgentError::Vmm(format!("cannot check on firecracker: {e}")))?
        {
            return Err(AgentError::Vmm(format!(
                "firecracker exited ({status}) before opening its API socket"
            )));
        }
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AgentError::Vmm(format!(
                "firecracker did not open its API socket {} within {SOCKET_WAIT:?}",
                socket.display()
            )));
        }
        tokio::time::sleep(SOCKET_POLL).await;
    }
}

fn remove_file_if_exists(path: &Path) -> AgentResult<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(AgentError::io(path, e)),
        _ => Ok(()),
    }
}

/// Hard-links `from` to `to`, copying when they are on different filesystems (fine for the
/// read-only kernel and initrd, which are shared by every VM and never written).
fn link_or_copy(from: &Path, to: &Path) -> AgentResult<()> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|e| AgentError::io(from, e))
}

/// The end of `path` from byte `from` on, as one line for an error message.
fn log_tail(path: &Path, from: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let start = from.max(len.saturating_sub(LOG_TAIL_BYTES));
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).trim().replace('\n', " | "))
    };
    match read() {
        Ok(text) if text.is_empty() => "(empty)".into(),
        Ok(text) => text,
        Err(e) => format!("(unreadable: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
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
            metadata: GuestMetadata {
                instance_id: "sb_1".into(),
                env_id: "t".into(),
                address: None,
            },
        }
    }

    fn strings(argv: &[OsString]) -> Vec<String> {
        argv.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
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

    #[test]
    fn plain_command_line_enters_the_namespace_with_ip() {
        let fc = Firecracker::new("/usr/local/bin/firecracker");
        assert_eq!(
            strings(&fc.launch_command(&spec())),
            [
                "ip",
                "netns",
                "exec",
                "wrenn-ns-3",
                "/usr/local/bin/firecracker",
                "--api-sock",
                "/data/sandboxes/sb_1/firecracker.sock",
                "--id",
                "sb-1",
            ]
        );
    }

    fn jailer() -> JailerConfig {
        JailerConfig {
            binary: "/usr/local/bin/jailer".into(),
            uid: 123,
            gid: 456,
            chroot_base: "/srv/jail".into(),
        }
    }

    #[test]
    fn jailer_command_line_puts_firecracker_arguments_after_the_separator() {
        let fc = Firecracker::new("/usr/local/bin/firecracker").with_jailer(jailer());
        assert_eq!(
            strings(&fc.launch_command(&spec())),
            [
                "/usr/local/bin/jailer",
                "--id",
                "sb-1",
                "--exec-file",
                "/usr/local/bin/firecracker",
                "--uid",
                "123",
                "--gid",
                "456",
                "--chroot-base-dir",
                "/srv/jail",
                "--netns",
                "/var/run/netns/wrenn-ns-3",
                "--",
                "--api-sock",
                "/firecracker.sock",
            ]
        );
        assert_eq!(
            fc.api_socket(&spec()),
            Path::new("/srv/jail/firecracker/sb-1/root/firecracker.sock")
        );
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
        assert_eq!(config.root_drive.path_on_host, Path::new("/rootfs"));
    }

    #[test]
    fn jail_cleanup_removes_only_the_vm_folder() {
        let base = tempfile::tempdir().expect("tempdir");
        let fc = Firecracker::new("/usr/local/bin/firecracker").with_jailer(JailerConfig {
            chroot_base: base.path().into(),
            ..jailer()
        });
        let root = base.path().join("firecracker/sb-1/root");
        std::fs::create_dir_all(&root).expect("mkdir");
        std::fs::write(root.join("rootfs"), b"x").expect("write");
        fc.cleanup_files(&root.join(API_SOCKET));
        assert!(!base.path().join("firecracker/sb-1").exists());
        assert!(base.path().join("firecracker").exists());
        // A socket elsewhere never removes anything.
        let other = base.path().join("x/y");
        std::fs::create_dir_all(&other).expect("mkdir");
        fc.cleanup_files(&other.join(API_SOCKET));
        assert!(other.exists());
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
