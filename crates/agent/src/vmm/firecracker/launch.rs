//! Starting a Firecracker process (plain or under the jailer), and cleaning up after it.

use super::{API_SOCKET, DRIVE_PATH, Firecracker, JailerConfig, LOG_FILE, absolute, instance_id};
use crate::error::{AgentError, AgentResult};
use crate::vmm::{VmHandle, VmSpec, VmmKind, process};
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// File names of the boot files inside a jailer chroot (the disk is [`DRIVE_PATH`]).
const JAIL_KERNEL: &str = "vmlinux";
const JAIL_INITRD: &str = "initrd";
/// How long Firecracker gets to open its API socket. It does so within milliseconds; anything
/// slower means it is stuck, not slow.
const SOCKET_WAIT: Duration = Duration::from_secs(5);
const SOCKET_POLL: Duration = Duration::from_millis(10);
/// How much of the log goes into a start error.
const LOG_TAIL_BYTES: u64 = 4096;

impl Firecracker {
    /// The API socket's host path for `spec`.
    pub fn api_socket(&self, spec: &VmSpec) -> PathBuf {
        match &self.jailer {
            Some(j) => j
                .chroot(&self.binary, &instance_id(&spec.sandbox_id))
                .join(API_SOCKET),
            None => absolute(&spec.run_dir).join(API_SOCKET),
        }
    }

    /// The kernel, initrd and disk paths Firecracker is given for `spec`. The disk is always the
    /// relative [`DRIVE_PATH`], so that the path a snapshot records stays valid wherever the
    /// sandbox's files are when it is restored (see the module docs).
    pub(super) fn boot_paths(&self, spec: &VmSpec) -> (PathBuf, Option<PathBuf>, PathBuf) {
        let drive = PathBuf::from(DRIVE_PATH);
        match &self.jailer {
            None => (
                absolute(&spec.kernel),
                spec.initrd.as_deref().map(absolute),
                drive,
            ),
            Some(_) => {
                let root = Path::new("/");
                (
                    root.join(JAIL_KERNEL),
                    spec.initrd.as_ref().map(|_| root.join(JAIL_INITRD)),
                    drive,
                )
            }
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

    /// Starts a Firecracker process for `spec` and waits until its API answers, without
    /// configuring anything: `start` boots it, `restore` loads a snapshot into it. The process
    /// works in the run folder, where [`DRIVE_PATH`] links to the disk (under the jailer, the
    /// chroot holds the disk under that name instead). On failure the process is gone and the
    /// socket removed.
    pub async fn spawn(&self, spec: &VmSpec) -> AgentResult<VmHandle> {
        let socket = self.api_socket(spec);
        let run_dir = absolute(&spec.run_dir);
        let log_path = run_dir.join(LOG_FILE);
        std::fs::create_dir_all(&run_dir).map_err(|e| AgentError::io(&run_dir, e))?;
        // A stale socket from a crashed run would make the wait below succeed at once.
        remove_file_if_exists(&socket)?;
        match &self.jailer {
            Some(jailer) => self.stage_jail(jailer, spec)?,
            None => link_drive(&run_dir, &spec.disk)?,
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
            .current_dir(&run_dir)
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
        // Leftovers of a crashed run: only links, copies and the socket.
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
        let disk = root.join(DRIVE_PATH);
        hard_link_into_jail(&spec.disk, &disk, "disk")?;
        std::os::unix::fs::chown(&disk, Some(jailer.uid), Some(jailer.gid))
            .map_err(|e| AgentError::io(&disk, e))?;
        Ok(())
    }

    /// The chroot of the jailed VM whose API socket is `socket`
    /// (`<chroot_base>/<exec>/<id>/root`). `None` without the jailer, or when the socket is
    /// anywhere else: the result names folders that get written to and deleted.
    pub(super) fn chroot_of<'a>(&self, socket: &'a Path) -> Option<&'a Path> {
        let jailer = self.jailer.as_ref()?;
        let root = socket.parent()?;
        let id = root.parent()?.file_name()?.to_str()?;
        (jailer.chroot(&self.binary, id) == root).then_some(root)
    }

    /// Removes the API socket and, under the jailer, the VM's jail folder (whose hard links
    /// would otherwise keep a deleted disk's blocks allocated).
    pub(super) fn cleanup_files(&self, socket: &Path) {
        let _ = std::fs::remove_file(socket);
        if let Some(jail) = self.chroot_of(socket).and_then(Path::parent)
            && let Err(e) = std::fs::remove_dir_all(jail)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(jail = %jail.display(), error = %e, "cannot remove firecracker jail");
        }
    }

    /// SIGKILL without grace: for a VM that never finished booting, there is nothing to save.
    pub(super) async fn kill(&self, vm: &VmHandle) {
        if vm.is_alive() {
            process::signal(vm.pid, nix::sys::signal::Signal::SIGKILL);
            process::wait_gone(vm.pid, vm.start_time, Duration::from_secs(5)).await;
        }
        self.cleanup_files(&vm.control_socket);
    }

    /// Kills a VM whose configuration (boot or snapshot load) failed with `error`, and returns
    /// the error to report: with Firecracker's log when it had exited on its own.
    pub(super) async fn abandon(&self, vm: &VmHandle, error: AgentError) -> AgentError {
        let died = !vm.is_alive();
        self.kill(vm).await;
        let log = if died {
            format!(
                "; firecracker exited, its log: {}",
                log_tail(&vm.serial_log, 0)
            )
        } else {
            String::new()
        };
        match error {
            AgentError::Vmm(msg) => AgentError::Vmm(format!("{msg}{log}")),
            other if died => AgentError::Vmm(format!("{other}{log}")),
            other => other,
        }
    }
}

/// Points `<run_dir>/`[`DRIVE_PATH`] at `disk` (absolute, so the link works from anywhere).
fn link_drive(run_dir: &Path, disk: &Path) -> AgentResult<()> {
    let link = run_dir.join(DRIVE_PATH);
    remove_file_if_exists(&link)?;
    std::os::unix::fs::symlink(absolute(disk), &link).map_err(|e| AgentError::io(&link, e))
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

pub(super) fn remove_file_if_exists(path: &Path) -> AgentResult<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(AgentError::io(path, e)),
        _ => Ok(()),
    }
}

/// Hard-links `from` into a jail at `to`; `what` names it in the error. Used for files that must
/// stay the very same file (the disk, the page server's socket), which is why there is no
/// fallback to copying.
pub(super) fn hard_link_into_jail(from: &Path, to: &Path, what: &str) -> AgentResult<()> {
    remove_file_if_exists(to)?;
    std::fs::hard_link(from, to).map_err(|e| {
        AgentError::Vmm(format!(
            "cannot link the {what} {} into the jail at {} (the jailer's chroot base must be on \
             the same filesystem as the sandboxes): {e}",
            from.display(),
            to.display()
        ))
    })
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
    use super::super::tests::{jailer, spec};
    use super::*;

    fn strings(argv: &[OsString]) -> Vec<String> {
        argv.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
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
    fn jail_cleanup_removes_only_the_vm_folder() {
        let base = tempfile::tempdir().expect("tempdir");
        let fc = Firecracker::new("/usr/local/bin/firecracker").with_jailer(JailerConfig {
            chroot_base: base.path().into(),
            ..jailer()
        });
        let root = base.path().join("firecracker/sb-1/root");
        std::fs::create_dir_all(&root).expect("mkdir");
        std::fs::write(root.join(DRIVE_PATH), b"x").expect("write");
        fc.cleanup_files(&root.join(API_SOCKET));
        assert!(!base.path().join("firecracker/sb-1").exists());
        assert!(base.path().join("firecracker").exists());
        // A socket elsewhere never removes anything.
        for other in ["x/y", "x/y/root", "a/b/c/root"] {
            let other = base.path().join(other);
            std::fs::create_dir_all(&other).expect("mkdir");
            fc.cleanup_files(&other.join(API_SOCKET));
            assert!(other.exists(), "{}", other.display());
        }
    }

    #[test]
    fn the_drive_link_points_at_the_disk_and_is_replaced_on_every_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        link_drive(dir.path(), Path::new("/old/rootfs.ext4")).expect("link");
        link_drive(dir.path(), Path::new("/new/rootfs.ext4")).expect("relink");
        assert_eq!(
            std::fs::read_link(dir.path().join(DRIVE_PATH)).expect("readlink"),
            Path::new("/new/rootfs.ext4")
        );
    }
}
