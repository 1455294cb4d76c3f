//! The QEMU driver: `qemu-system-x86_64 -M microvm`, virtio-mmio block and net devices, the serial
//! console in a per-sandbox log file and a QMP socket for control.
//!
//! QEMU runs daemonized (`-daemonize -pidfile`): errors before the guest starts come back on its
//! stderr with a failing exit status, and the VM is reparented to init, so it survives an agent
//! restart and never becomes the agent's zombie. It is started inside the sandbox's network
//! namespace (setns before exec) so it opens that namespace's `tap0`.

use super::{
    DiskFormat, GuestMetadata, MemorySnapshot, RestoreMemory, RestoreSource, SnapshotKind,
    SnapshotTarget, VmHandle, VmSpec, Vmm, VmmKind, process, qmp::Qmp,
};
use crate::error::{AgentError, AgentResult};
use async_trait::async_trait;
use serde_json::json;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Under TCG the kernel's PIT-based TSC calibration fails at random and the boot hangs in
/// `calibrate_delay_converge`; fixed values avoid it (any sane value works, measured 52/52 boots).
const TCG_CLOCK_ARGS: &str = "tsc_early_khz=2596132 lpj=10384528";
/// Boot-time savings under emulation: self-tests, mitigations (meaningless under TCG), legacy
/// devices the microvm machine does not have.
const TCG_FAST_ARGS: &str = "cryptomgr.notests mitigations=off i8042.noaux i8042.nokbd i8042.nopnp 8250.nr_uarts=1 nokaslr random.trust_cpu=on";
/// TCG's translated-code cache: QEMU 7.2 lets it grow to 1 GiB per VM, which becomes host memory
/// the sandbox pays for on top of its RAM. 128 MiB keeps hot code cached at a fraction of that.
const TCG_TB_CACHE_MIB: u32 = 128;
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// Saving device state is a few hundred KB (guest RAM is not in the stream); loading it likewise.
/// Generous, because a loaded host may be slow to schedule QEMU's migration thread.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);
/// QEMU caps migration at 128 MiB/s by default, even for a stopped VM.
const MIGRATION_MAX_BANDWIDTH: u64 = 100_000_000_000;
/// The RAM block id; it must be the same on the saving and the restoring side.
const MEMORY_BACKEND_ID: &str = "mem0";
const SPAWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Which accelerator to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when /dev/kvm is usable and the CPU has hardware virtualization, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!("unknown accelerator {other:?} (auto, kvm or tcg)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Qemu {
    binary: PathBuf,
    kvm: bool,
    version: String,
}

impl Qemu {
    /// Finds the QEMU binary (default `qemu-system-x86_64` on PATH) and resolves the accelerator.
    pub fn detect(binary: Option<PathBuf>, accel: Accel) -> AgentResult<Self> {
        let binary = match binary {
            Some(b) => b,
            None => find_in_path("qemu-system-x86_64").ok_or_else(|| AgentError::Unavailable {
                what: "qemu-system-x86_64".into(),
                hint: "install Debian's qemu-system-x86 package".into(),
            })?,
        };
        let out = std::process::Command::new(&binary)
            .arg("--version")
            .output()
            .map_err(|e| AgentError::command(binary.display().to_string(), e.to_string()))?;
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.split("version ").nth(1))
            .map(|v| v.split_whitespace().next().unwrap_or(v).to_string())
            .unwrap_or_else(|| "unknown".into());
        let kvm = match accel {
            Accel::Tcg => false,
            Accel::Kvm => true,
            Accel::Auto => hardware_kvm_usable(),
        };
        Ok(Self {
            binary,
            kvm,
            version,
        })
    }

    pub fn accelerator(&self) -> &'static str {
        if self.kvm { "kvm" } else { "tcg" }
    }

    /// The kernel command line: the image's arguments plus what this accelerator needs.
    pub fn kernel_args(&self, image_args: &str) -> String {
        if self.kvm {
            image_args.to_string()
        } else {
            format!("{image_args} {TCG_CLOCK_ARGS} {TCG_FAST_ARGS}")
        }
    }

    /// The full argument list for `spec` (pure; unit-tested).
    pub fn args(&self, spec: &VmSpec) -> Vec<String> {
        let run = &spec.run_dir;
        let mut a: Vec<String> = vec![
            "-M".into(),
            format!("microvm,memory-backend={MEMORY_BACKEND_ID}"),
            // Guest RAM in a shared file: with x-ignore-shared a snapshot skips it entirely and a
            // restore maps it (vm-lab: 0.13 s saves, constant-time restores).
            "-object".into(),
            format!(
                "memory-backend-file,id={MEMORY_BACKEND_ID},size={}M,mem-path={},share=on",
                spec.memory_mib,
                qemu_path(&spec.memory_path)
            ),
            "-accel".into(),
            if self.kvm {
                "kvm".to_string()
            } else {
                format!("tcg,tb-size={TCG_TB_CACHE_MIB}")
            },
            "-cpu".into(),
            if self.kvm { "host" } else { "max" }.into(),
            "-smp".into(),
            spec.vcpus.to_string(),
            "-m".into(),
            format!("{}M", spec.memory_mib),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-name".into(),
            format!(
                "wrenn-{},process=wrenn-{}",
                spec.sandbox_id, spec.sandbox_id
            ),
            "-chardev".into(),
            format!(
                "file,id=serial0,path={},append=on",
                qemu_path(&run.join(SERIAL_LOG))
            ),
            "-serial".into(),
            "chardev:serial0".into(),
            "-kernel".into(),
            qemu_path(&spec.kernel),
        ];
        if let Some(initrd) = &spec.initrd {
            a.push("-initrd".into());
            a.push(qemu_path(initrd));
        }
        let format = match spec.disk_format {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        };
        a.extend([
            "-append".into(),
            self.kernel_args(&spec.boot_args),
            "-drive".into(),
            format!(
                "id=root,file={},format={format},if=none,cache=writeback,discard=unmap,detect-zeroes=unmap",
                qemu_path(&spec.disk)
            ),
            "-device".into(),
            "virtio-blk-device,drive=root".into(),
            "-netdev".into(),
            format!("tap,id=net0,ifname={},script=no,downscript=no", spec.tap),
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={}", spec.guest_mac),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qemu_path(&run.join(QMP_SOCKET))),
            "-pidfile".into(),
            qemu_path(&run.join(PID_FILE)),
            "-daemonize".into(),
        ]);
        a
    }
}

pub const SERIAL_LOG: &str = "serial.log";
pub const QMP_SOCKET: &str = "qmp.sock";
pub const PID_FILE: &str = "qemu.pid";

#[async_trait]
impl Vmm for Qemu {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    fn disk_format(&self) -> DiskFormat {
        DiskFormat::Qcow2
    }

    fn describe(&self) -> String {
        format!("qemu {} ({})", self.version, self.accelerator())
    }

    async fn start(&self, spec: &VmSpec) -> AgentResult<VmHandle> {
        let handle = self.spawn(spec, &[]).await?;
        self.expect_status(&handle, "running").await?;
        Ok(handle)
    }

    async fn stop(&self, vm: &VmHandle) -> AgentResult<()> {
        stop_process(vm).await
    }

    async fn set_metadata(&self, _vm: &VmHandle, _metadata: &GuestMetadata) -> AgentResult<()> {
        Ok(())
    }

    fn memory_snapshot(&self) -> MemorySnapshot {
        MemorySnapshot::SharedFile
    }

    async fn pause_vcpus(&self, vm: &VmHandle) -> AgentResult<()> {
        qmp(vm).await?.execute("stop", None).await.map(|_| ())
    }

    async fn resume_vcpus(&self, vm: &VmHandle) -> AgentResult<()> {
        qmp(vm).await?.execute("cont", None).await.map(|_| ())
    }

    async fn save_snapshot(&self, vm: &VmHandle, target: &SnapshotTarget) -> AgentResult<()> {
        if target.kind != SnapshotKind::Full || target.memory.is_some() {
            return Err(AgentError::Vmm(
                "qemu keeps guest memory in its shared file; it only saves full device state"
                    .into(),
            ));
        }
        let mut qmp = qmp(vm).await?;
        qmp.execute("migrate-set-capabilities", Some(ignore_shared_caps()))
            .await?;
        qmp.execute(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": MIGRATION_MAX_BANDWIDTH })),
        )
        .await?;
        let uri = format!("exec:cat > {}", shell_quote(&target.state));
        qmp.execute("migrate", Some(json!({ "uri": uri }))).await?;
        wait_migration(&mut qmp, "saving the snapshot").await
    }

    async fn restore(&self, spec: &VmSpec, from: &RestoreSource) -> AgentResult<VmHandle> {
        if !matches!(from.memory, RestoreMemory::SharedFile) {
            return Err(AgentError::Vmm(
                "qemu restores guest memory from its shared file, not a page server".into(),
            ));
        }
        let handle = self
            .spawn(spec, &["-incoming".to_string(), "defer".to_string()])
            .await?;
        let loaded = async {
            let mut qmp = qmp(&handle).await?;
            qmp.execute("migrate-set-capabilities", Some(ignore_shared_caps()))
                .await?;
            let uri = format!("exec:cat {}", shell_quote(&from.state));
            qmp.execute("migrate-incoming", Some(json!({ "uri": uri })))
                .await?;
            wait_migration(&mut qmp, "loading the snapshot").await?;
            let status = qmp.status().await?;
            if status != "paused" {
                return Err(AgentError::Vmm(format!(
                    "the restored VM is {status}, expected paused"
                )));
            }
            Ok(())
        }
        .await;
        match loaded {
            Ok(()) => Ok(handle),
            Err(e) => {
                let _ = stop_process(&handle).await;
                Err(e)
            }
        }
    }
}

impl Qemu {
    /// Starts QEMU daemonized in the sandbox's network namespace with `extra` arguments.
    async fn spawn(&self, spec: &VmSpec, extra: &[String]) -> AgentResult<VmHandle> {
        let run = spec.run_dir.clone();
        for f in [QMP_SOCKET, PID_FILE] {
            let _ = std::fs::remove_file(run.join(f));
        }
        let netns_path = PathBuf::from("/run/netns").join(&spec.netns);
        let netns = std::fs::File::open(&netns_path).map_err(|e| {
            AgentError::Vmm(format!(
                "cannot open network namespace {}: {e}",
                netns_path.display()
            ))
        })?;
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.args(self.args(spec))
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let fd = netns.as_raw_fd();
        // SAFETY: only async-signal-safe syscalls (setns, setsid) run between fork and exec, and
        // `netns` outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::setsid();
                Ok(())
            });
        }
        tracing::debug!(sandbox = %spec.sandbox_id, args = ?cmd.get_args().collect::<Vec<_>>(), "starting qemu");
        // `-daemonize` returns once the VM is set up; its exit status says whether it worked.
        let output = tokio::time::timeout(
            SPAWN_TIMEOUT,
            tokio::task::spawn_blocking(move || cmd.output()),
        )
        .await
        .map_err(|_| AgentError::Vmm(format!("qemu did not start within {SPAWN_TIMEOUT:?}")))?
        .map_err(|e| AgentError::Internal(e.to_string()))?
        .map_err(|e| AgentError::Vmm(format!("cannot run {}: {e}", self.binary.display())))?;
        drop(netns);
        if !output.status.success() {
            return Err(AgentError::Vmm(format!(
                "qemu failed to start: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let pid: u32 = std::fs::read_to_string(run.join(PID_FILE))
            .map_err(|e| AgentError::io(run.join(PID_FILE), e))?
            .trim()
            .parse()
            .map_err(|e| AgentError::Vmm(format!("bad qemu pid file: {e}")))?;
        let start_time = process::start_time(pid)
            .ok_or_else(|| AgentError::Vmm("qemu exited right after starting".into()))?;
        Ok(VmHandle {
            kind: VmmKind::Qemu,
            pid,
            start_time,
            control_socket: run.join(QMP_SOCKET),
            serial_log: run.join(SERIAL_LOG),
        })
    }

    /// Stops the VM unless its run state is `want` (a fresh boot must be running, not stopped in
    /// some error state).
    async fn expect_status(&self, handle: &VmHandle, want: &str) -> AgentResult<()> {
        let status = async { qmp(handle).await?.status().await }.await;
        match status {
            Ok(s) if s == want => Ok(()),
            Ok(s) => {
                let _ = stop_process(handle).await;
                Err(AgentError::Vmm(format!("qemu started but the VM is {s}")))
            }
            Err(e) => {
                let _ = stop_process(handle).await;
                Err(e)
            }
        }
    }
}

async fn qmp(vm: &VmHandle) -> AgentResult<Qmp> {
    Qmp::connect(&vm.control_socket, QMP_TIMEOUT).await
}

fn ignore_shared_caps() -> serde_json::Value {
    json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] })
}

/// Polls `query-migrate` until the migration completes; any other end is an error that says why.
async fn wait_migration(qmp: &mut Qmp, what: &str) -> AgentResult<()> {
    let deadline = tokio::time::Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let info = qmp.execute("query-migrate", None).await?;
        match info.get("status").and_then(serde_json::Value::as_str) {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                let detail = info
                    .get("error-desc")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("no detail");
                return Err(AgentError::Vmm(format!("{what} failed: {detail}")));
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = qmp.execute("migrate_cancel", None).await;
            return Err(AgentError::Timeout(format!(
                "{what} did not finish within {MIGRATION_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Single-quotes a path for QEMU's `exec:` migration URIs, which run through `/bin/sh -c`.
fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Quits QEMU (it flushes the qcow2 metadata), then SIGKILL if it ignores that.
async fn stop_process(vm: &VmHandle) -> AgentResult<()> {
    {
        if vm.is_alive() {
            // A clean quit first: QEMU flushes the qcow2 metadata.
            if let Ok(mut qmp) = Qmp::connect(&vm.control_socket, Duration::from_secs(2)).await {
                let _ = qmp.execute("quit", None).await;
            }
            if !process::wait_gone(vm.pid, vm.start_time, Duration::from_secs(3)).await {
                tracing::warn!(pid = vm.pid, "qemu ignored quit; killing it");
                process::signal(vm.pid, nix::sys::signal::Signal::SIGKILL);
                if !process::wait_gone(vm.pid, vm.start_time, Duration::from_secs(5)).await {
                    return Err(AgentError::Vmm(format!(
                        "qemu (pid {}) survived SIGKILL",
                        vm.pid
                    )));
                }
            }
        }
        if let Some(dir) = vm.control_socket.parent() {
            for f in [QMP_SOCKET, PID_FILE] {
                let _ = std::fs::remove_file(dir.join(f));
            }
        }
        Ok(())
    }
}

/// QEMU option values are comma-separated; a comma in a path is written twice.
fn qemu_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// KVM is only worth using with hardware virtualization: a software /dev/kvm (PVM, as on the
/// development machines) cannot boot a stock kernel, and its absence of vmx/svm gives it away.
fn hardware_kvm_usable() -> bool {
    let kvm_ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let cpu_ok = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false);
    kvm_ok && cpu_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            sandbox_id: "cl-test".into(),
            vcpus: 2,
            memory_mib: 512,
            kernel: "/img/vmlinux".into(),
            initrd: Some("/img/initrd.img".into()),
            boot_args: "console=ttyS0 root=/dev/vda".into(),
            disk: "/data/sandboxes/cl-test/rootfs.qcow2".into(),
            disk_format: DiskFormat::Qcow2,
            netns: "wrenn-ns-3".into(),
            tap: "tap0".into(),
            guest_mac: "02:FC:00:00:00:05".into(),
            tx_rate_limit: None,
            run_dir: "/data/sandboxes/cl-test".into(),
            memory_path: "/data/sandboxes/cl-test/memory.raw".into(),
            metadata: GuestMetadata {
                instance_id: "cl-test".into(),
                env_id: "t".into(),
                address: None,
            },
        }
    }

    fn qemu(kvm: bool) -> Qemu {
        Qemu {
            binary: "/usr/bin/qemu-system-x86_64".into(),
            kvm,
            version: "7.2.0".into(),
        }
    }

    fn value_after<'a>(args: &'a [String], flag: &str) -> &'a str {
        let i = args.iter().position(|a| a == flag).expect(flag);
        &args[i + 1]
    }

    #[test]
    fn tcg_command_line_carries_the_clock_fix_and_the_devices() {
        let args = qemu(false).args(&spec());
        assert_eq!(value_after(&args, "-accel"), "tcg,tb-size=128");
        assert_eq!(value_after(&args, "-cpu"), "max");
        assert_eq!(value_after(&args, "-smp"), "2");
        assert_eq!(value_after(&args, "-m"), "512M");
        let append = value_after(&args, "-append");
        assert!(append.starts_with("console=ttyS0 root=/dev/vda "));
        assert!(append.contains("tsc_early_khz=") && append.contains("lpj="));
        assert!(value_after(&args, "-drive").contains("format=qcow2"));
        assert!(value_after(&args, "-netdev").contains("ifname=tap0"));
        assert!(args.contains(&"virtio-net-device,netdev=net0,mac=02:FC:00:00:00:05".to_string()));
        assert!(args.contains(&"-daemonize".to_string()));
        assert_eq!(value_after(&args, "-initrd"), "/img/initrd.img");
    }

    #[test]
    fn kvm_uses_the_host_cpu_and_no_tcg_workarounds() {
        let args = qemu(true).args(&spec());
        assert_eq!(value_after(&args, "-accel"), "kvm");
        assert_eq!(value_after(&args, "-cpu"), "host");
        assert!(!value_after(&args, "-append").contains("lpj="));
        assert!(!value_after(&args, "-append").contains("mitigations=off"));
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        assert_eq!(qemu_path(Path::new("/a,b/c")), "/a,,b/c");
    }

    #[test]
    fn accelerator_names_parse() {
        assert_eq!("tcg".parse::<Accel>(), Ok(Accel::Tcg));
        assert!("xen".parse::<Accel>().is_err());
    }
}
