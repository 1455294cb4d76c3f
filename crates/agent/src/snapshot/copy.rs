//! [`copy_sparse`]: copies in time proportional to the data, not the file size.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use nix::errno::Errno;

use super::SnapshotError;
use super::error::io_at;
use super::sparse::{data_extents, is_zero};

/// Largest single `copy_file_range` request.
const COPY_STEP: u64 = 1 << 30;
/// Buffer for the read/write fallback.
const FALLBACK_BUF: usize = 1 << 20;
/// Granularity at which the read/write fallback skips zeros.
const FALLBACK_BLOCK: usize = 4096;

/// Copies `src` to `dst` (created or truncated) keeping holes as holes and the exact length,
/// then fsyncs `dst`. Tries a reflink (`FICLONE`: btrfs, xfs) first, which shares the data
/// outright; otherwise copies only the data ranges (`SEEK_DATA`/`SEEK_HOLE`) with
/// `copy_file_range`, falling back to read/write where the kernel cannot. On failure `dst` is
/// removed.
pub fn copy_sparse(src: &Path, dst: &Path) -> Result<(), SnapshotError> {
    copy_sparse_with(src, dst, Durability::Synced)
}

/// Whether a copy must be on disk before it is reported done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before returning: templates and anything a crash must not lose.
    Synced,
    /// Leave it to writeback: a new sandbox's working copy, which is worthless after a host
    /// crash anyway and must not make every create wait for the disk.
    Volatile,
}

/// Copies `src` into `dst`, which must already exist with `src`'s length and hold only holes (a
/// file just created and sized, so it can be handed to a VMM's command line before the copy
/// ends). Nothing is truncated and nothing is synced.
pub fn copy_sparse_into_sized(src: &Path, dst: &Path) -> Result<(), SnapshotError> {
    let from = File::open(src).map_err(io_at(src))?;
    let len = from.metadata().map_err(io_at(src))?.len();
    let to = OpenOptions::new()
        .write(true)
        .open(dst)
        .map_err(io_at(dst))?;
    let dst_len = to.metadata().map_err(io_at(dst))?.len();
    if dst_len != len {
        return Err(SnapshotError::Invalid(format!(
            "{} is {dst_len} bytes, expected {len} like {}",
            dst.display(),
            src.display()
        )));
    }
    copy_into(&from, src, &to, dst, len)
}

/// [`copy_sparse`] with a choice of [`Durability`].
pub fn copy_sparse_with(
    src: &Path,
    dst: &Path,
    durability: Durability,
) -> Result<(), SnapshotError> {
    let from = File::open(src).map_err(io_at(src))?;
    let meta = from.metadata().map_err(io_at(src))?;
    let len = meta.len();
    if let Ok(existing) = std::fs::metadata(dst)
        && (existing.dev(), existing.ino()) == (meta.dev(), meta.ino())
    {
        return Err(SnapshotError::Invalid(format!(
            "cannot copy {} onto itself ({})",
            src.display(),
            dst.display()
        )));
    }
    let to = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)
        .map_err(io_at(dst))?;
    let result = copy_into(&from, src, &to, dst, len).and_then(|()| match durability {
        Durability::Synced => to.sync_all().map_err(io_at(dst)),
        Durability::Volatile => Ok(()),
    });
    if result.is_err() {
        drop(to);
        let _ = std::fs::remove_file(dst);
    }
    result
}

fn copy_into(
    from: &File,
    src: &Path,
    to: &File,
    dst: &Path,
    len: u64,
) -> Result<(), SnapshotError> {
    if !reflink(from, to) {
        to.set_len(len).map_err(io_at(dst))?;
        let extents = data_extents(from, len).map_err(io_at(src))?;
        let mut kernel_copy = true;
        for range in extents {
            if kernel_copy {
                match copy_range_in_kernel(from, to, range.clone()) {
                    Ok(()) => continue,
                    Err(CopyError::Unsupported(done)) => {
                        kernel_copy = false;
                        copy_range_by_hand(from, src, to, dst, done..range.end)?;
                    }
                    Err(CopyError::Io(e)) => return Err(SnapshotError::io(dst, e)),
                }
            } else {
                copy_range_by_hand(from, src, to, dst, range)?;
            }
        }
    }
    Ok(())
}

fn reflink(from: &File, to: &File) -> bool {
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are open
    // for the duration of the call.
    unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) == 0 }
}

enum CopyError {
    /// The kernel cannot copy between these files; the offset reached so far.
    Unsupported(u64),
    Io(io::Error),
}

fn copy_range_in_kernel(from: &File, to: &File, range: Range<u64>) -> Result<(), CopyError> {
    let mut pos = range.start;
    while pos < range.end {
        let mut off_in = pos as i64;
        let mut off_out = pos as i64;
        let want = (range.end - pos).min(COPY_STEP) as usize;
        match copy_file_range(from, &mut off_in, to, &mut off_out, want) {
            Ok(0) => {
                return Err(CopyError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the source shrank while being copied",
                )));
            }
            Ok(n) => pos += n as u64,
            Err(Errno::EINTR) => {}
            Err(Errno::EXDEV | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EINVAL) => {
                return Err(CopyError::Unsupported(pos));
            }
            Err(e) => return Err(CopyError::Io(e.into())),
        }
    }
    Ok(())
}

/// copy_file_range(2) with explicit offsets (nix only offers it behind a feature this crate
/// does not enable).
fn copy_file_range(
    from: &File,
    off_in: &mut i64,
    to: &File,
    off_out: &mut i64,
    len: usize,
) -> Result<usize, Errno> {
    // SAFETY: both descriptors are open for the call and the offset pointers come from live
    // `&mut i64`s.
    let n =
        unsafe { libc::copy_file_range(from.as_raw_fd(), off_in, to.as_raw_fd(), off_out, len, 0) };
    Errno::result(n).map(|n| n as usize)
}

/// Reads and writes `range`, leaving all-zero blocks unwritten (they are holes in `to`).
fn copy_range_by_hand(
    from: &File,
    src: &Path,
    to: &File,
    dst: &Path,
    range: Range<u64>,
) -> Result<(), SnapshotError> {
    let mut buf = vec![0u8; FALLBACK_BUF];
    let mut pos = range.start;
    while pos < range.end {
        let n = (range.end - pos).min(FALLBACK_BUF as u64) as usize;
        from.read_exact_at(&mut buf[..n], pos).map_err(io_at(src))?;
        for (i, block) in buf[..n].chunks(FALLBACK_BLOCK).enumerate() {
            if !is_zero(block) {
                to.write_all_at(block, pos + (i * FALLBACK_BLOCK) as u64)
                    .map_err(io_at(dst))?;
            }
        }
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The read/write fallback (used where `copy_file_range` cannot cross filesystems) also
    /// leaves zero blocks as holes.
    #[test]
    fn fallback_copy_skips_zero_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (dir.path().join("s"), dir.path().join("d"));
        let from = File::create(&src).expect("create");
        from.write_all_at(&vec![0u8; 1 << 20], 0).expect("zeros");
        from.write_all_at(b"tail", (1 << 20) + 10).expect("data");
        let from = File::open(&src).expect("open");
        let len = from.metadata().expect("meta").len();
        let to = File::create(&dst).expect("create dst");
        to.set_len(len).expect("set_len");
        copy_range_by_hand(&from, &src, &to, &dst, 0..len).expect("copy");
        assert_eq!(
            std::fs::read(&dst).expect("dst"),
            std::fs::read(&src).expect("src")
        );
        let blocks = to.metadata().expect("meta").blocks();
        assert!(
            blocks * 512 <= 8192,
            "zero blocks were written: {blocks} blocks"
        );
    }
}
