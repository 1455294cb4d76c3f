//! Snapshots: `PUT /snapshot/create` on a paused VM, `PUT /snapshot/load` into a fresh process.
//!
//! Without the jailer, Firecracker is given the caller's paths (made absolute). Under the jailer
//! it only sees its chroot, so the files are staged there:
//! - a snapshot is written to [`JAIL_SAVE_STATE`] and [`JAIL_SAVE_MEMORY`] in the chroot, then
//!   renamed to the caller's paths and handed to the agent's user;
//! - a restore reads a copy of the state file ([`JAIL_RESTORE_STATE`]; it is small, and a copy
//!   owned by the jail user is readable whatever the snapshot's permissions) and connects to the
//!   page server through a hard link of its socket ([`JAIL_PAGE_SERVER`]), owned by the jail
//!   user so that it may connect. A bind mount would work across filesystems, but it would have
//!   to exist before the jailer builds its mount namespace and be unmounted by hand afterwards.
//!
//! Renames and links need the chroot base on the same filesystem as the sandbox and snapshot
//! folders, which the disk's hard link already requires.

use super::api::{
    MemoryBackend, MemoryBackendType, SnapshotCreateParams, SnapshotLoadParams, SnapshotType,
};
use super::launch::{hard_link_into_jail, remove_file_if_exists};
use super::{Firecracker, absolute, check_disk, instance_id};
use crate::error::{AgentError, AgentResult};
use crate::vmm::{RestoreMemory, RestoreSource, SnapshotKind, SnapshotTarget, VmHandle, VmSpec};
use std::path::{Path, PathBuf};

/// Where a jailed Firecracker writes a snapshot, in its chroot.
pub const JAIL_SAVE_STATE: &str = "save.snap";
pub const JAIL_SAVE_MEMORY: &str = "save.mem";
/// Where a jailed Firecracker reads the state file it restores, in its chroot.
pub const JAIL_RESTORE_STATE: &str = "restore.snap";
/// The page server's socket as a jailed Firecracker sees it.
pub const JAIL_PAGE_SERVER: &str = "uffd.sock";

impl Firecracker {
    /// `PUT /snapshot/create` for `target`, with paths as Firecracker sees them (pure; tested).
    pub fn snapshot_create_params(
        &self,
        target: &SnapshotTarget,
    ) -> AgentResult<SnapshotCreateParams> {
        let Some(memory) = &target.memory else {
            return Err(AgentError::Vmm(
                "firecracker writes guest memory itself: a snapshot needs a memory file path"
                    .into(),
            ));
        };
        let (snapshot_path, mem_file_path) = match &self.jailer {
            None => (absolute(&target.state), absolute(memory)),
            Some(_) => (in_jail(JAIL_SAVE_STATE), in_jail(JAIL_SAVE_MEMORY)),
        };
        Ok(SnapshotCreateParams {
            snapshot_type: Some(match target.kind {
                SnapshotKind::Full => SnapshotType::Full,
                SnapshotKind::Diff => SnapshotType::Diff,
            }),
            snapshot_path,
            mem_file_path,
        })
    }

    /// `PUT /snapshot/load` for `from`, with paths as Firecracker sees them (pure; tested).
    /// Memory always comes from the page server; the guest stays paused, and dirty pages are
    /// tracked so that its next snapshot can be a diff.
    pub fn snapshot_load_params(&self, from: &RestoreSource) -> AgentResult<SnapshotLoadParams> {
        let RestoreMemory::PageServer(socket) = &from.memory else {
            return Err(AgentError::Vmm(
                "firecracker restores guest memory from a page server socket, not a shared file"
                    .into(),
            ));
        };
        let (snapshot_path, backend_path) = match &self.jailer {
            None => (absolute(&from.state), absolute(socket)),
            Some(_) => (in_jail(JAIL_RESTORE_STATE), in_jail(JAIL_PAGE_SERVER)),
        };
        Ok(SnapshotLoadParams {
            snapshot_path,
            mem_backend: MemoryBackend {
                backend_type: MemoryBackendType::Uffd,
                backend_path,
            },
            // The name every Firecracker version with snapshots knows (newer ones also take
            // `track_dirty_pages`).
            enable_diff_snapshots: Some(true),
            track_dirty_pages: None,
            resume_vm: Some(false),
            // The TAP has the same name in every sandbox's namespace, so nothing to rename (and
            // Firecracker versions before 1.12 refuse the field).
            network_overrides: vec![],
        })
    }

    /// Writes a snapshot of the paused `vm` to `target`.
    pub(super) async fn write_snapshot(
        &self,
        vm: &VmHandle,
        target: &SnapshotTarget,
    ) -> AgentResult<()> {
        let params = self.snapshot_create_params(target)?;
        let client = self.client(vm);
        if self.jailer.is_none() {
            return client.put_snapshot_create(&params).await;
        }
        let chroot = self.chroot_of(&vm.control_socket).ok_or_else(|| {
            AgentError::Vmm(format!(
                "{} is not the API socket of a jailed firecracker",
                vm.control_socket.display()
            ))
        })?;
        // `params` exists, so the memory path does too.
        let memory = target.memory.as_deref().unwrap_or(&target.state);
        let outputs = [
            (chroot.join(JAIL_SAVE_STATE), target.state.as_path()),
            (chroot.join(JAIL_SAVE_MEMORY), memory),
        ];
        for (staged, _) in &outputs {
            remove_file_if_exists(staged)?;
        }
        let saved = match client.put_snapshot_create(&params).await {
            Ok(()) => outputs
                .iter()
                .try_for_each(|(staged, to)| move_out_of_jail(staged, to)),
            Err(e) => Err(e),
        };
        if saved.is_err() {
            for (staged, _) in &outputs {
                let _ = std::fs::remove_file(staged);
            }
        }
        saved
    }

    /// Starts a fresh Firecracker for `spec` and loads the snapshot `from` into it, leaving the
    /// guest paused. On failure the process is killed and its files removed.
    pub(super) async fn restore_vm(
        &self,
        spec: &VmSpec,
        from: &RestoreSource,
    ) -> AgentResult<VmHandle> {
        check_disk(spec)?;
        // Refuses a shared-file restore before anything runs.
        let params = self.snapshot_load_params(from)?;
        let vm = self.spawn(spec).await?;
        let loaded = async {
            let staged_state = match &self.jailer {
                Some(jailer) => {
                    let chroot = jailer.chroot(&self.binary, &instance_id(&spec.sandbox_id));
                    Some(stage_restore(&chroot, from, jailer.uid, jailer.gid)?)
                }
                None => None,
            };
            let client = self.client(&vm);
            client.put_snapshot_load(&params).await?;
            // Firecracker is done with the state file once loaded.
            if let Some(copy) = staged_state {
                let _ = std::fs::remove_file(copy);
            }
            // The snapshot restores the MMDS configuration but not its contents.
            client.put_mmds(&spec.metadata).await
        }
        .await;
        match loaded {
            Ok(()) => {
                tracing::info!(sandbox = %spec.sandbox_id, pid = vm.pid, "firecracker VM restored (paused)");
                Ok(vm)
            }
            Err(e) => {
                tracing::warn!(sandbox = %spec.sandbox_id, error = %e, "firecracker restore failed");
                Err(self.abandon(&vm, e).await)
            }
        }
    }
}

/// `name` at the root of the chroot, as the jailed Firecracker sees it.
fn in_jail(name: &str) -> PathBuf {
    Path::new("/").join(name)
}

/// Puts what a restore reads into the chroot: a copy of the state file and a hard link of the
/// page server's socket, both owned by the jail user. Returns the state file's copy.
fn stage_restore(chroot: &Path, from: &RestoreSource, uid: u32, gid: u32) -> AgentResult<PathBuf> {
    let state = chroot.join(JAIL_RESTORE_STATE);
    remove_file_if_exists(&state)?;
    std::fs::copy(&from.state, &state).map_err(|e| AgentError::io(&from.state, e))?;
    std::os::unix::fs::chown(&state, Some(uid), Some(gid))
        .map_err(|e| AgentError::io(&state, e))?;
    if let RestoreMemory::PageServer(socket) = &from.memory {
        let link = chroot.join(JAIL_PAGE_SERVER);
        hard_link_into_jail(socket, &link, "page server socket")?;
        // Connecting needs write permission on the socket; this changes the socket itself (the
        // link is the same inode), which only the agent and this VM use.
        std::os::unix::fs::chown(&link, Some(uid), Some(gid))
            .map_err(|e| AgentError::io(&link, e))?;
    }
    Ok(state)
}

/// Renames a file Firecracker wrote in its chroot to `to`, and gives it to the agent's user.
fn move_out_of_jail(staged: &Path, to: &Path) -> AgentResult<()> {
    std::fs::rename(staged, to).map_err(|e| {
        AgentError::Vmm(format!(
            "cannot move the snapshot file {} to {} (the jailer's chroot base must be on the same \
             filesystem as the snapshots): {e}",
            staged.display(),
            to.display()
        ))
    })?;
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    if let Err(e) = std::os::unix::fs::chown(to, Some(uid.as_raw()), Some(gid.as_raw())) {
        tracing::warn!(file = %to.display(), error = %e, "cannot take ownership of a snapshot file");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::jailer;
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn target(kind: SnapshotKind) -> SnapshotTarget {
        SnapshotTarget {
            state: "/snap/sb-1/snapfile".into(),
            memory: Some("/snap/sb-1/memfile.raw".into()),
            kind,
        }
    }

    fn source() -> RestoreSource {
        RestoreSource {
            state: "/snap/sb-1/snapfile".into(),
            memory: RestoreMemory::PageServer("/data/sandboxes/sb_1/uffd.sock".into()),
        }
    }

    #[test]
    fn plain_snapshots_use_the_callers_paths() {
        let fc = Firecracker::new("/usr/local/bin/firecracker");
        let create = fc
            .snapshot_create_params(&target(SnapshotKind::Diff))
            .expect("params");
        assert_eq!(create.snapshot_type, Some(SnapshotType::Diff));
        assert_eq!(create.snapshot_path, Path::new("/snap/sb-1/snapfile"));
        assert_eq!(create.mem_file_path, Path::new("/snap/sb-1/memfile.raw"));
        let load = fc.snapshot_load_params(&source()).expect("params");
        assert_eq!(load.snapshot_path, Path::new("/snap/sb-1/snapfile"));
        assert_eq!(
            load.mem_backend.backend_path,
            Path::new("/data/sandboxes/sb_1/uffd.sock")
        );
        assert_eq!(load.mem_backend.backend_type, MemoryBackendType::Uffd);
        assert_eq!(load.resume_vm, Some(false), "the manager resumes");
        assert_eq!(load.enable_diff_snapshots, Some(true));
    }

    #[test]
    fn relative_paths_are_made_absolute_because_firecracker_works_elsewhere() {
        let fc = Firecracker::new("/usr/local/bin/firecracker");
        let mut t = target(SnapshotKind::Full);
        t.state = "rel/snapfile".into();
        let create = fc.snapshot_create_params(&t).expect("params");
        assert_eq!(
            create.snapshot_path,
            std::env::current_dir().expect("cwd").join("rel/snapfile")
        );
    }

    #[test]
    fn jailed_snapshots_use_paths_inside_the_chroot() {
        let fc = Firecracker::new("/usr/local/bin/firecracker").with_jailer(jailer());
        let create = fc
            .snapshot_create_params(&target(SnapshotKind::Full))
            .expect("params");
        assert_eq!(create.snapshot_type, Some(SnapshotType::Full));
        assert_eq!(create.snapshot_path, Path::new("/save.snap"));
        assert_eq!(create.mem_file_path, Path::new("/save.mem"));
        let load = fc.snapshot_load_params(&source()).expect("params");
        assert_eq!(load.snapshot_path, Path::new("/restore.snap"));
        assert_eq!(load.mem_backend.backend_path, Path::new("/uffd.sock"));
    }

    #[test]
    fn wrong_memory_kinds_are_refused_with_a_reason() {
        let fc = Firecracker::new("/usr/local/bin/firecracker");
        let mut t = target(SnapshotKind::Full);
        t.memory = None;
        let err = fc.snapshot_create_params(&t).expect_err("no memory path");
        assert!(err.to_string().contains("memory file"), "{err}");
        let mut s = source();
        s.memory = RestoreMemory::SharedFile;
        let err = fc.snapshot_load_params(&s).expect_err("shared file");
        assert!(err.to_string().contains("page server"), "{err}");
    }

    #[test]
    fn restore_staging_copies_the_state_and_links_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let chroot = dir.path().join("root");
        std::fs::create_dir(&chroot).expect("mkdir");
        let state = dir.path().join("snapfile");
        std::fs::write(&state, b"vmstate").expect("write");
        let socket = dir.path().join("uffd.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        let from = RestoreSource {
            state: state.clone(),
            memory: RestoreMemory::PageServer(socket.clone()),
        };
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        // Twice: leftovers of an earlier attempt are replaced.
        stage_restore(&chroot, &from, uid, gid).expect("stage");
        let copy = stage_restore(&chroot, &from, uid, gid).expect("stage again");
        assert_eq!(copy, chroot.join(JAIL_RESTORE_STATE));
        assert_eq!(std::fs::read(&copy).expect("read"), b"vmstate");
        let link = std::fs::metadata(chroot.join(JAIL_PAGE_SERVER)).expect("link");
        let original = std::fs::metadata(&socket).expect("socket");
        assert_eq!(link.ino(), original.ino(), "the same socket, not a copy");
        assert_eq!(link.uid(), uid);
        // Connecting through the link reaches the page server.
        std::os::unix::net::UnixStream::connect(chroot.join(JAIL_PAGE_SERVER)).expect("connect");
    }

    #[test]
    fn a_missing_state_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let from = RestoreSource {
            state: dir.path().join("missing.snap"),
            memory: RestoreMemory::PageServer(dir.path().join("uffd.sock")),
        };
        let err = stage_restore(dir.path(), &from, 0, 0).expect_err("must fail");
        assert!(err.to_string().contains("missing.snap"), "{err:?}");
    }

    #[test]
    fn written_files_move_to_the_callers_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let staged = dir.path().join(JAIL_SAVE_MEMORY);
        std::fs::write(&staged, b"pages").expect("write");
        let to = dir.path().join("out.raw");
        move_out_of_jail(&staged, &to).expect("move");
        assert!(!staged.exists());
        assert_eq!(std::fs::read(&to).expect("read"), b"pages");
        let err = move_out_of_jail(&staged, &to).expect_err("nothing to move");
        assert!(err.to_string().contains("same filesystem"), "{err}");
    }
}
