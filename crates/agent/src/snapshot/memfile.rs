//! Producing headers: Firecracker Full and Diff memory files, merging diff chains, describing
//! QEMU's in-place RAM file, and cleaning up build files nothing refers to.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::error::io_at;
use super::header::{overlay, push_mapping};
use super::sparse::{align_extents, chunk_ranges, data_extents, is_zero, zero_hash};
use super::verify::{HashFailure, HashJob, hash_jobs};
use super::{
    BLOCK_SIZE, BUILD_FILE_PREFIX, BuildFile, BuildId, CHUNK_SIZE, Checksum, Mapping, MemoryHeader,
    MemoryView, SnapshotError, valid_file_name,
};

/// Reads of source memory happen in pieces of this size.
const READ_SIZE: usize = 1 << 20;

/// Turns a Firecracker Full snapshot memory file into one build file `mem.<id>` in `out_dir`
/// holding only the non-zero blocks, packed. Zero blocks and holes (skipped with `SEEK_DATA`,
/// never read) map to [`BuildId::ZERO`]. Generation 0. The raw file is left for the caller to
/// delete.
pub fn process_full(raw: &Path, out_dir: &Path) -> Result<MemoryHeader, SnapshotError> {
    let (file, size) = open_memfile(raw, BLOCK_SIZE)?;
    let base = [Mapping::zero(0, size)];
    let id = BuildId::random();
    let (mappings, build) = pack_written(&file, raw, size, BLOCK_SIZE, id, &base, out_dir)?;
    let header = MemoryHeader {
        block_size: BLOCK_SIZE,
        size,
        generation: 0,
        build_id: id,
        base_build_id: id,
        mappings,
        builds: BTreeMap::new(),
    };
    Ok(with_build(header, build))
}

/// Layers a Firecracker Diff snapshot memory file on `parent`. The diff file is full size and
/// sparse: the VMM wrote exactly the dirty pages. Written ranges (found with `SEEK_DATA`) are
/// new, and an all-zero written block becomes a zero mapping, so a page the guest cleared
/// reads as zero rather than as the parent's stale data; holes inherit the parent's mapping.
/// The new non-zero blocks go to a new build file `mem.<id>` in `out_dir`. The parent's build
/// files are referred to by name and must be in the same directory as the new header.
///
/// The diff file must be freshly created on a filesystem that allocates in blocks no larger
/// than the page size (ext4, xfs, btrfs, tmpfs without huge pages): with larger allocation
/// units an untouched page next to a dirty one would look written.
pub fn process_diff(
    raw: &Path,
    parent: &MemoryHeader,
    out_dir: &Path,
) -> Result<MemoryHeader, SnapshotError> {
    parent
        .validate()
        .map_err(|e| SnapshotError::Invalid(format!("parent memory header: {e}")))?;
    let bs = parent.block_size;
    let (file, size) = open_memfile(raw, bs)?;
    if size != parent.size {
        return Err(SnapshotError::Invalid(format!(
            "diff memory file {} is {size} bytes but the parent snapshot has {} bytes of memory",
            raw.display(),
            parent.size
        )));
    }
    let alloc = file.metadata().map_err(io_at(raw))?.blksize();
    if alloc > bs {
        return Err(SnapshotError::Invalid(format!(
            "{} is on a filesystem that allocates {alloc}-byte blocks; diff snapshots need \
             {bs}-byte allocation to tell written pages from untouched ones",
            raw.display()
        )));
    }
    let id = BuildId::random();
    let (mappings, build) = pack_written(&file, raw, size, bs, id, &parent.mappings, out_dir)?;
    let header = MemoryHeader {
        block_size: bs,
        size,
        generation: parent.generation + 1,
        build_id: id,
        base_build_id: parent.base_build_id,
        mappings,
        builds: parent.builds.clone(),
    };
    Ok(with_build(header, build))
}

/// Re-materialises every non-zero block of `header` (build files in `dir`) into one new build
/// file, generation 0. Every chunk read is checked against its checksum first, so damage in
/// an old diff is reported instead of being sealed under fresh checksums. Blocks that turn out
/// to be zero become zero mappings. Afterwards the caller writes the new header and deletes
/// the old build files ([`remove_unreferenced`]).
pub fn merge(header: &MemoryHeader, dir: &Path) -> Result<MemoryHeader, SnapshotError> {
    let view = MemoryView::open(header.clone(), dir)?;
    let id = BuildId::random();
    let bs = header.block_size;
    let mut writer = BuildWriter::create(dir, id)?;
    let mut mappings = Vec::with_capacity(header.mappings.len());
    let mut buf = vec![0u8; READ_SIZE];
    for m in &header.mappings {
        if m.build.is_zero() {
            push_mapping(&mut mappings, *m);
            continue;
        }
        let mut pos = m.offset;
        while pos < m.end() {
            let n = (m.end() - pos).min(READ_SIZE as u64) as usize;
            view.read_at(pos, &mut buf[..n])?;
            pack_blocks(&buf[..n], pos, bs, &mut writer, &mut mappings)?;
            pos += n as u64;
        }
    }
    let build = writer.finish()?;
    let merged = MemoryHeader {
        block_size: bs,
        size: header.size,
        generation: 0,
        build_id: id,
        base_build_id: id,
        mappings,
        builds: BTreeMap::new(),
    };
    Ok(with_build(merged, build))
}

/// Describes QEMU's guest RAM file, which stays where it is and is used in place on resume:
/// an identity mapping onto the build file `build_file_name` (the name of `raw` in the
/// snapshot directory), zero mappings for holes and for chunks that hash as all zeros, and a
/// checksum per chunk. Holes are skipped without reading; chunks are hashed on two threads.
pub fn describe_raw(raw: &Path, build_file_name: &str) -> Result<MemoryHeader, SnapshotError> {
    if !valid_file_name(build_file_name) {
        return Err(SnapshotError::Invalid(format!(
            "{build_file_name:?} is not a file name"
        )));
    }
    let (file, size) = open_memfile(raw, BLOCK_SIZE)?;
    let extents = data_extents(&file, size).map_err(io_at(raw))?;
    let extents = align_extents(&extents, BLOCK_SIZE, size);
    let jobs: Vec<HashJob<'_>> = chunk_ranges(size)
        .map(|range| HashJob {
            path: raw,
            file: &file,
            extents: &extents,
            range,
        })
        .collect();
    let checksums = hash_jobs(&jobs, None).map_err(|f| match f {
        HashFailure::Io(_, e) => SnapshotError::io(raw, e),
        HashFailure::Mismatch(_) => SnapshotError::Invalid("unexpected mismatch".into()),
    })?;
    let mut zeros: Vec<Range<u64>> = holes(&extents, size);
    zeros.extend(
        jobs.iter()
            .zip(&checksums)
            .filter(|(j, sum)| **sum == zero_hash(j.range.end - j.range.start))
            .map(|(j, _)| j.range.clone()),
    );
    let zeros = align_extents(&sorted(zeros), BLOCK_SIZE, size);
    let id = BuildId::random();
    let mut mappings = Vec::new();
    let mut pos = 0;
    for z in zeros.iter().chain(std::iter::once(&(size..size))) {
        push_mapping(
            &mut mappings,
            Mapping {
                offset: pos,
                length: z.start - pos,
                build: id,
                storage_offset: pos,
            },
        );
        push_mapping(&mut mappings, Mapping::zero(z.start, z.end - z.start));
        pos = z.end;
    }
    let build = BuildFile {
        file_name: build_file_name.to_owned(),
        length: size,
        checksums,
    };
    let header = MemoryHeader {
        block_size: BLOCK_SIZE,
        size,
        generation: 0,
        build_id: id,
        base_build_id: id,
        mappings,
        builds: BTreeMap::new(),
    };
    Ok(with_build(header, Some(build)))
}

/// Build files in `dir` (named `mem.<id>`, as this module creates them) that `header` does
/// not refer to: superseded diffs after a merge, or leftovers of an interrupted pause. Other
/// files are never listed.
pub fn unreferenced_files(
    dir: &Path,
    header: &MemoryHeader,
) -> Result<Vec<PathBuf>, SnapshotError> {
    let used: BTreeSet<&str> = header
        .builds
        .values()
        .map(|b| b.file_name.as_str())
        .collect();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = name
            .strip_prefix(BUILD_FILE_PREFIX)
            .is_some_and(|hex| hex.len() == 32 && BuildId::from_hex(hex).is_some());
        if ours && !used.contains(name) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Deletes [`unreferenced_files`]; returns what was deleted.
pub fn remove_unreferenced(
    dir: &Path,
    header: &MemoryHeader,
) -> Result<Vec<PathBuf>, SnapshotError> {
    let files = unreferenced_files(dir, header)?;
    for f in &files {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SnapshotError::io(f, e)),
        }
    }
    Ok(files)
}

fn open_memfile(path: &Path, bs: u64) -> Result<(File, u64), SnapshotError> {
    let file = File::open(path).map_err(io_at(path))?;
    let size = file.metadata().map_err(io_at(path))?.len();
    if size == 0 || !size.is_multiple_of(bs) {
        return Err(SnapshotError::Invalid(format!(
            "memory file {} is {size} bytes, not a positive multiple of {bs}",
            path.display()
        )));
    }
    Ok((file, size))
}

/// Packs the written ranges of `file` into a new build file and lays them over `base`.
fn pack_written(
    file: &File,
    path: &Path,
    size: u64,
    bs: u64,
    id: BuildId,
    base: &[Mapping],
    out_dir: &Path,
) -> Result<(Vec<Mapping>, Option<BuildFile>), SnapshotError> {
    let extents = data_extents(file, size).map_err(io_at(path))?;
    let written = align_extents(&extents, bs, size);
    let mut writer = BuildWriter::create(out_dir, id)?;
    let mut top = Vec::new();
    let mut buf = vec![0u8; READ_SIZE];
    for range in &written {
        let mut pos = range.start;
        while pos < range.end {
            let n = (range.end - pos).min(READ_SIZE as u64) as usize;
            file.read_exact_at(&mut buf[..n], pos)
                .map_err(io_at(path))?;
            pack_blocks(&buf[..n], pos, bs, &mut writer, &mut top)?;
            pos += n as u64;
        }
    }
    let build = writer.finish()?;
    Ok((overlay(base, &top, size), build))
}

/// Maps each `bs` block of `data` (guest offset `offset`): zero blocks to the zero build, the
/// rest appended to `writer`.
fn pack_blocks(
    data: &[u8],
    offset: u64,
    bs: u64,
    writer: &mut BuildWriter,
    out: &mut Vec<Mapping>,
) -> Result<(), SnapshotError> {
    for (i, block) in data.chunks(bs as usize).enumerate() {
        let at = offset + i as u64 * bs;
        let len = block.len() as u64;
        if is_zero(block) {
            push_mapping(out, Mapping::zero(at, len));
        } else {
            let storage_offset = writer.append(block)?;
            push_mapping(
                out,
                Mapping {
                    offset: at,
                    length: len,
                    build: writer.id,
                    storage_offset,
                },
            );
        }
    }
    Ok(())
}

/// Adds the new build (if any blocks were stored) and drops builds nothing maps to any more.
fn with_build(mut header: MemoryHeader, new_build: Option<BuildFile>) -> MemoryHeader {
    if let Some(b) = new_build {
        header.builds.insert(header.build_id, b);
    }
    header.retain_referenced_builds();
    header
}

fn holes(extents: &[Range<u64>], size: u64) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut pos = 0;
    for e in extents.iter().chain(std::iter::once(&(size..size))) {
        if e.start > pos {
            out.push(pos..e.start);
        }
        pos = pos.max(e.end);
    }
    out
}

fn sorted(mut v: Vec<Range<u64>>) -> Vec<Range<u64>> {
    v.sort_by_key(|r| r.start);
    v
}

/// Writes a new build file sequentially, checksumming each chunk as it goes. The file is
/// deleted if the writer is dropped without [`finish`](Self::finish) (a failed pause leaves
/// nothing behind).
struct BuildWriter {
    id: BuildId,
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    length: u64,
    hasher: blake3::Hasher,
    in_chunk: u64,
    checksums: Vec<Checksum>,
    finished: bool,
}

impl BuildWriter {
    fn create(dir: &Path, id: BuildId) -> Result<BuildWriter, SnapshotError> {
        let path = dir.join(id.file_name());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_at(&path))?;
        Ok(BuildWriter {
            id,
            path,
            file,
            buf: Vec::with_capacity(READ_SIZE),
            length: 0,
            hasher: blake3::Hasher::new(),
            in_chunk: 0,
            checksums: Vec::new(),
            finished: false,
        })
    }

    /// Appends `data`; returns the offset it was written at.
    fn append(&mut self, data: &[u8]) -> Result<u64, SnapshotError> {
        let at = self.length;
        self.buf.extend_from_slice(data);
        self.length += data.len() as u64;
        if self.buf.len() >= READ_SIZE {
            self.flush()?;
        }
        Ok(at)
    }

    /// Hashes and writes the buffered bytes (hashing here feeds blake3 large slices).
    fn flush(&mut self) -> Result<(), SnapshotError> {
        let mut rest = &self.buf[..];
        while !rest.is_empty() {
            let n = ((CHUNK_SIZE - self.in_chunk) as usize).min(rest.len());
            self.hasher.update(&rest[..n]);
            self.in_chunk += n as u64;
            rest = &rest[n..];
            if self.in_chunk == CHUNK_SIZE {
                self.checksums.push(*self.hasher.finalize().as_bytes());
                self.hasher.reset();
                self.in_chunk = 0;
            }
        }
        self.file.write_all(&self.buf).map_err(io_at(&self.path))?;
        self.buf.clear();
        Ok(())
    }

    /// Flushes and fsyncs; `None` (and no file) when nothing was appended.
    fn finish(mut self) -> Result<Option<BuildFile>, SnapshotError> {
        self.flush()?;
        if self.length == 0 {
            return Ok(None);
        }
        if self.in_chunk > 0 {
            self.checksums.push(*self.hasher.finalize().as_bytes());
        }
        self.file.sync_all().map_err(io_at(&self.path))?;
        self.finished = true;
        Ok(Some(BuildFile {
            file_name: self.id.file_name(),
            length: self.length,
            checksums: std::mem::take(&mut self.checksums),
        }))
    }
}

impl Drop for BuildWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
