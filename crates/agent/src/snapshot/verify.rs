//! [`verify`]: every build file against its checksums, and the two-thread chunk hasher it
//! shares with [`describe_raw`](super::describe_raw).

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::error::io_at;
use super::sparse::{align_extents, chunk_ranges, data_extents, hash_range};
use super::{BLOCK_SIZE, Checksum, MemoryHeader, SnapshotError};

/// Threads that hash chunks. Two: the host has other work (the VMM is restoring meanwhile),
/// and blake3 on two cores already outruns the page cache copy.
const HASH_THREADS: usize = 2;

/// Checks that every build file `header` refers to exists in `dir`, has the recorded length,
/// and matches every chunk checksum. The first bad chunk (in build-table order) is reported
/// with its file and byte offset. Holes are hashed without being read.
pub fn verify(header: &MemoryHeader, dir: &Path) -> Result<(), SnapshotError> {
    let mut files = Vec::with_capacity(header.builds.len());
    for b in header.builds.values() {
        let (path, file) = open_build(dir, b)?;
        let len = b.length;
        let extents = data_extents(&file, len).map_err(io_at(&path))?;
        files.push((path, file, align_extents(&extents, BLOCK_SIZE, len)));
    }
    let mut jobs = Vec::new();
    let mut expected = Vec::new();
    for ((path, file, extents), b) in files.iter().zip(header.builds.values()) {
        for (range, sum) in chunk_ranges(b.length).zip(&b.checksums) {
            jobs.push(HashJob {
                path,
                file,
                extents,
                range,
            });
            expected.push(*sum);
        }
    }
    match hash_jobs(&jobs, Some(&expected)) {
        Ok(_) => Ok(()),
        Err(HashFailure::Io(i, e)) => Err(SnapshotError::io(jobs[i].path, e)),
        Err(HashFailure::Mismatch(i)) => {
            let j = &jobs[i];
            Err(SnapshotError::Damaged(format!(
                "build file {} does not match its checksum in the {}-byte chunk at byte offset {} ({:#x})",
                j.path.display(),
                j.range.end - j.range.start,
                j.range.start,
                j.range.start
            )))
        }
    }
}

/// Opens a build file; a missing one is damage, not an I/O error.
/// Opens a build file of the header and checks it has the length the header recorded: a
/// missing or truncated file is damage, not an I/O error.
pub(crate) fn open_build(
    dir: &Path,
    build: &super::BuildFile,
) -> Result<(std::path::PathBuf, File), SnapshotError> {
    let path = dir.join(&build.file_name);
    let file = File::open(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            SnapshotError::Damaged(format!("build file {} is missing", path.display()))
        } else {
            SnapshotError::io(&path, e)
        }
    })?;
    let len = file.metadata().map_err(io_at(&path))?.len();
    if len != build.length {
        return Err(SnapshotError::Damaged(format!(
            "build file {} is {len} bytes, the header says {}",
            path.display(),
            build.length
        )));
    }
    Ok((path, file))
}

/// One chunk to hash.
pub(crate) struct HashJob<'a> {
    pub path: &'a Path,
    pub file: &'a File,
    /// The file's data extents (holes are hashed as zeros without reading).
    pub extents: &'a [Range<u64>],
    pub range: Range<u64>,
}

pub(crate) enum HashFailure {
    Io(usize, io::Error),
    Mismatch(usize),
}

/// Hashes every job on up to [`HASH_THREADS`] threads, results in job order. With `expected`,
/// stops at the first mismatch; because jobs are claimed in order, the failure reported is the
/// one with the lowest index, whatever the thread timing.
pub(crate) fn hash_jobs(
    jobs: &[HashJob<'_>],
    expected: Option<&[Checksum]>,
) -> Result<Vec<Checksum>, HashFailure> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<HashFailure>> = Mutex::new(None);
    let worker = || {
        let mut buf = Vec::new();
        let mut done = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = jobs.get(i) else { break };
            let outcome = match hash_range(job.file, job.range.clone(), job.extents, &mut buf) {
                Ok(sum) if expected.is_some_and(|e| e.get(i) != Some(&sum)) => {
                    Err(HashFailure::Mismatch(i))
                }
                Ok(sum) => Ok(sum),
                Err(e) => Err(HashFailure::Io(i, e)),
            };
            match outcome {
                Ok(sum) => done.push((i, sum)),
                Err(f) => {
                    stop.store(true, Ordering::Relaxed);
                    let mut slot = failure.lock().unwrap_or_else(|p| p.into_inner());
                    if slot.as_ref().is_none_or(|old| index(old) > i) {
                        *slot = Some(f);
                    }
                }
            }
        }
        done
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, HASH_THREADS)
        .min(jobs.len().max(1));
    let parts: Vec<Vec<(usize, Checksum)>> = if threads <= 1 {
        vec![worker()]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(worker)).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    };
    if let Some(f) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(f);
    }
    let mut out = vec![[0u8; 32]; jobs.len()];
    for (i, sum) in parts.into_iter().flatten() {
        out[i] = sum;
    }
    Ok(out)
}

fn index(f: &HashFailure) -> usize {
    match f {
        HashFailure::Io(i, _) | HashFailure::Mismatch(i) => *i,
    }
}
