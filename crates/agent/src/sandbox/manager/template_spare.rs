//! Spare RAM files for QEMU templates.
//!
//! A sandbox made from a QEMU template needs its own copy of the template's RAM file, because the
//! guest writes into it. Copying 360 MiB of touched RAM takes about 130 ms on this kind of host,
//! a third of a create. So after each create from a template, a low-priority thread copies the
//! next one ahead (`spare-memory.raw` in the template's folder), and the next create only renames
//! it. A burst of creates gets one spare; the rest copy as before.
//!
//! A spare is written without fsync, so the agent removes all of them at start: one torn by a
//! host crash would otherwise be resumed. Template deletion renames the folder away first, and a
//! refill works through a directory handle, so a refill racing a delete (or a delete and a
//! re-create under the same id) can never put one template's RAM into another's folder.

use super::snapshot::MEMORY_FILE;
use super::{SandboxManager, lock};
use crate::error::{AgentError, AgentResult};
use crate::snapshot::{self as store, Durability};
use crate::vmm::MemorySnapshot;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The ready spare in a template's folder.
const SPARE_MEMORY: &str = "spare-memory.raw";
/// A spare being copied; renamed to [`SPARE_MEMORY`] once complete.
const SPARE_PARTIAL: &str = "spare-memory.raw.partial";
/// Suffix of a template folder being deleted (`templates/.<id>.deleting`).
const DELETING_SUFFIX: &str = ".deleting";

impl SandboxManager {
    /// Moves `template_dir`'s spare RAM file to `to`. False when there is none (yet), or it
    /// cannot be moved there (another filesystem): the caller copies instead.
    pub(super) fn take_spare_memory(template_dir: &Path, to: &Path) -> bool {
        match std::fs::rename(template_dir.join(SPARE_MEMORY), to) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!(template = %template_dir.display(), error = %e, "could not take the template's spare RAM file; copying instead");
                false
            }
        }
    }

    /// Starts copying a spare RAM file for `template_id` on a low-priority thread, unless the
    /// VMM does not need one, one is ready, or one is being made.
    pub(super) fn refill_spare_memory(self: &Arc<Self>, template_id: &str) {
        if self.vmm.memory_snapshot() != MemorySnapshot::SharedFile {
            return;
        }
        let dir = self.template_dir(template_id);
        if dir.join(SPARE_MEMORY).exists() || !lock(&self.spare_refills).insert(template_id.into())
        {
            return;
        }
        let trash = self.retired_template_dir(template_id);
        let mgr = self.clone();
        let id = template_id.to_string();
        let spawned = std::thread::Builder::new()
            .name("template-spare".into())
            .spawn(move || {
                lower_this_threads_priority();
                let started = Instant::now();
                match make_spare(&dir, &trash) {
                    Ok(()) => tracing::debug!(template = %id, ms = started.elapsed().as_millis() as u64, "spare RAM file ready"),
                    Err(e) => tracing::debug!(template = %id, error = %e, "no spare RAM file"),
                }
                lock(&mgr.spare_refills).remove(&id);
            });
        if let Err(e) = spawned {
            tracing::warn!(template = %template_id, error = %e, "could not start the spare copy");
            lock(&self.spare_refills).remove(template_id);
        }
    }

    /// Moves a template's folder out of the way before removing it, so that nothing (a spare
    /// refill) can write into the folder of a later template with the same id. Returns the path
    /// to remove; `Ok(None)` when the template does not exist.
    pub(super) fn retire_template_dir(&self, template_id: &str) -> AgentResult<Option<PathBuf>> {
        let dir = self.template_dir(template_id);
        let trash = self.retired_template_dir(template_id);
        let _ = std::fs::remove_dir_all(&trash);
        match std::fs::rename(&dir, &trash) {
            Ok(()) => Ok(Some(trash)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::io(&dir, e)),
        }
    }

    /// Blocks until no spare of `template_id` is being copied, or `limit` has passed.
    pub(super) fn wait_for_spare_refill(&self, template_id: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while lock(&self.spare_refills).contains(template_id) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Where [`Self::retire_template_dir`] moves a template's folder.
    fn retired_template_dir(&self, template_id: &str) -> PathBuf {
        self.cfg
            .layout
            .templates()
            .join(format!(".{template_id}{DELETING_SUFFIX}"))
    }

    /// At start: removes every spare (written without fsync) and folders left mid-deletion.
    pub(super) fn sweep_template_spares(&self) {
        let root = self.cfg.layout.templates();
        let Ok(entries) = std::fs::read_dir(&root) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') && name.ends_with(DELETING_SUFFIX) {
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            for spare in [SPARE_MEMORY, SPARE_PARTIAL] {
                let _ = std::fs::remove_file(path.join(spare));
            }
        }
    }
}

/// Copies the template's RAM file to a partial spare and renames it into place, all relative
/// to one open handle of the folder: if the folder is renamed away meanwhile, the spare goes
/// with it. A delete that ran meanwhile may have failed to remove the folder because of the
/// spare, so when the folder was retired, the spare is removed and the folder with it.
fn make_spare(template_dir: &Path, retired_dir: &Path) -> AgentResult<()> {
    let handle = std::fs::File::open(template_dir).map_err(|e| AgentError::io(template_dir, e))?;
    make_spare_in(&handle, template_dir, retired_dir)
}

/// [`make_spare`] with the folder's handle already open.
fn make_spare_in(
    handle: &std::fs::File,
    template_dir: &Path,
    retired_dir: &Path,
) -> AgentResult<()> {
    let at = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
    let partial = at.join(SPARE_PARTIAL);
    let _ = std::fs::remove_file(&partial);
    let copied = store::copy_sparse_with(&at.join(MEMORY_FILE), &partial, Durability::Volatile)
        .map_err(AgentError::from)
        .and_then(|()| {
            std::fs::rename(&partial, at.join(SPARE_MEMORY))
                .map_err(|e| AgentError::io(template_dir.join(SPARE_MEMORY), e))
        });
    if copied.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    if !is_same_dir(handle, template_dir) {
        let _ = std::fs::remove_file(at.join(SPARE_MEMORY));
        // Only the folder this handle holds: a later delete of a same-named template may own
        // the retired path by now, and removes it itself.
        if is_same_dir(handle, retired_dir) {
            let _ = std::fs::remove_dir_all(retired_dir);
        }
        return Err(AgentError::io(
            template_dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the template was deleted while its spare was copied",
            ),
        ));
    }
    copied
}

/// True when `path` names the directory `handle` has open.
fn is_same_dir(handle: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (handle.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// A spare is only ever a head start: it must not slow guests or RPCs down. On Linux the nice
/// value set with `PRIO_PROCESS` and who = 0 is the calling thread's own.
fn lower_this_threads_priority() {
    // SAFETY: setpriority takes no pointers; it only changes this thread's nice value.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the spare copy's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn template_with_ram(mgr: &SandboxManager, id: &str, ram: &[u8]) -> PathBuf {
        let dir = mgr.template_dir(id);
        std::fs::create_dir_all(&dir).expect("template dir");
        std::fs::write(dir.join(MEMORY_FILE), ram).expect("ram");
        dir
    }

    fn wait_for_refills(mgr: &SandboxManager) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lock(&mgr.spare_refills).is_empty() {
            assert!(Instant::now() < deadline, "the spare copy never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_spare_is_a_complete_copy_and_is_taken_by_rename() {
        let data = tempfile::tempdir().expect("tempdir");
        let (mgr, _) = crate::testing::fake_manager(data.path());
        let ram: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let dir = template_with_ram(&mgr, "tpl", &ram);
        let to = data.path().join("child-memory.raw");
        assert!(
            !SandboxManager::take_spare_memory(&dir, &to),
            "no spare yet"
        );

        mgr.refill_spare_memory("tpl");
        wait_for_refills(&mgr);
        let spare = dir.join(SPARE_MEMORY);
        assert_eq!(std::fs::read(&spare).expect("spare"), ram);
        assert!(!dir.join(SPARE_PARTIAL).exists());
        let ino = std::fs::metadata(&spare).expect("spare").ino();

        assert!(SandboxManager::take_spare_memory(&dir, &to));
        assert_eq!(std::fs::metadata(&to).expect("taken").ino(), ino);
        assert!(!spare.exists(), "a spare serves one sandbox");
        // The template's own RAM file is untouched.
        assert_eq!(std::fs::read(dir.join(MEMORY_FILE)).expect("ram"), ram);
    }

    #[tokio::test]
    async fn a_deleted_template_leaves_nothing_and_a_same_named_one_gets_no_stale_spare() {
        let data = tempfile::tempdir().expect("tempdir");
        let (mgr, _) = crate::testing::fake_manager(data.path());
        let old = vec![1u8; 8 * 1024 * 1024];
        template_with_ram(&mgr, "tpl", &old);
        mgr.refill_spare_memory("tpl");
        // Deleted while its spare may still be being copied, then made again with new RAM.
        mgr.delete_template("tpl").await.expect("delete");
        let new = vec![2u8; 4096];
        let dir = template_with_ram(&mgr, "tpl", &new);
        wait_for_refills(&mgr);
        assert!(
            !dir.join(SPARE_MEMORY).exists() && !dir.join(SPARE_PARTIAL).exists(),
            "the old template's spare landed in the new one's folder"
        );
        let names: Vec<String> = std::fs::read_dir(mgr.cfg.layout.templates())
            .expect("templates")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["tpl".to_string()]);
    }

    #[test]
    fn a_spare_copied_into_a_retired_folder_removes_the_folder() {
        let data = tempfile::tempdir().expect("tempdir");
        let (mgr, _) = crate::testing::fake_manager(data.path());
        let dir = template_with_ram(&mgr, "tpl", &[3u8; 64 * 1024]);
        // The copy has opened the folder when the delete moves it away and, say, fails to
        // remove it because the partial spare appeared mid-removal.
        let handle = std::fs::File::open(&dir).expect("handle");
        let retired = mgr
            .retire_template_dir("tpl")
            .expect("retire")
            .expect("retired");
        assert!(make_spare_in(&handle, &dir, &retired).is_err());
        assert!(
            !retired.exists(),
            "the retired folder outlived its spare copy"
        );
        assert!(!dir.exists());
    }

    #[test]
    fn start_removes_spares_and_half_deleted_templates() {
        let data = tempfile::tempdir().expect("tempdir");
        let (mgr, _) = crate::testing::fake_manager(data.path());
        let dir = template_with_ram(&mgr, "tpl", b"ram");
        std::fs::write(dir.join(SPARE_MEMORY), b"maybe torn").expect("spare");
        std::fs::write(dir.join(SPARE_PARTIAL), b"half").expect("partial");
        let half_deleted = mgr.cfg.layout.templates().join(".old.deleting");
        std::fs::create_dir_all(&half_deleted).expect("half deleted");
        std::fs::write(half_deleted.join(MEMORY_FILE), b"x").expect("file");

        mgr.sweep_template_spares();
        assert!(!dir.join(SPARE_MEMORY).exists());
        assert!(!dir.join(SPARE_PARTIAL).exists());
        assert!(dir.join(MEMORY_FILE).exists(), "the template itself stays");
        assert!(!half_deleted.exists());
    }
}
