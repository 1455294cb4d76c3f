//! [`MemoryView`]: guest memory read through a header, for the userfaultfd page server.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::io_at;
use super::verify::open_build;
use super::{CHUNK_SIZE, Checksum, MemoryHeader, SnapshotError};
use crate::uffd::{PageContent, PageSource};

/// Guest memory served from a snapshot's build files. Each [`CHUNK_SIZE`] chunk of a build
/// file is checked against its checksum the first time any byte of it is read; after that,
/// reads are a single `pread`. Damaged data is an error, never served. Send + Sync: reads from
/// many threads share the files and the verified-chunk bitsets.
pub struct MemoryView {
    header: MemoryHeader,
    sources: Vec<Source>,
    /// `header.mappings`, with build ids resolved to `sources` indexes.
    maps: Vec<Resolved>,
}

struct Source {
    path: PathBuf,
    file: File,
    length: u64,
    checksums: Vec<Checksum>,
    /// One bit per chunk: verified.
    verified: Vec<AtomicU64>,
}

#[derive(Clone, Copy)]
struct Resolved {
    offset: u64,
    end: u64,
    /// `None`: zeros.
    source: Option<usize>,
    storage_offset: u64,
}

thread_local! {
    /// One chunk of scratch space per reading thread, reused across verifications.
    static CHUNK_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl MemoryView {
    /// Opens every build file of `header` in `dir` and checks it has the recorded length.
    /// Checksums are checked lazily, as chunks are read (run [`verify`](super::verify) for
    /// an up-front check).
    pub fn open(header: MemoryHeader, dir: &Path) -> Result<MemoryView, SnapshotError> {
        header
            .validate()
            .map_err(|e| SnapshotError::Damaged(format!("memory header: {e}")))?;
        let mut sources = Vec::with_capacity(header.builds.len());
        let mut index = std::collections::BTreeMap::new();
        for (id, b) in &header.builds {
            let (path, file) = open_build(dir, b)?;
            index.insert(*id, sources.len());
            sources.push(Source {
                path,
                file,
                length: b.length,
                checksums: b.checksums.clone(),
                verified: (0..b.checksums.len().div_ceil(64))
                    .map(|_| AtomicU64::new(0))
                    .collect(),
            });
        }
        let maps = header
            .mappings
            .iter()
            .map(|m| Resolved {
                offset: m.offset,
                end: m.end(),
                // `validate` guarantees every non-zero build is in the table.
                source: index.get(&m.build).copied(),
                storage_offset: m.storage_offset,
            })
            .collect();
        Ok(MemoryView {
            header,
            sources,
            maps,
        })
    }

    pub fn header(&self) -> &MemoryHeader {
        &self.header
    }

    /// Reads guest bytes `[offset, offset + buf.len())`, which may span mappings and chunks.
    /// Returns [`PageContent::Zero`] without touching `buf` when the whole range is zero pages.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<PageContent, SnapshotError> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.header.size)
            .ok_or_else(|| {
                SnapshotError::Invalid(format!(
                    "read of {} bytes at {offset:#x} is outside guest memory ({:#x} bytes)",
                    buf.len(),
                    self.header.size
                ))
            })?;
        if buf.is_empty() {
            return Ok(PageContent::Zero);
        }
        let first = self.maps.partition_point(|m| m.end <= offset);
        let pieces = || {
            self.maps[first..]
                .iter()
                .take_while(move |m| m.offset < end)
        };
        if pieces().all(|m| m.source.is_none()) {
            return Ok(PageContent::Zero);
        }
        for m in pieces() {
            let start = m.offset.max(offset);
            let stop = m.end.min(end);
            let out = &mut buf[(start - offset) as usize..(stop - offset) as usize];
            match m.source {
                None => out.fill(0),
                Some(s) => {
                    self.read_source(s, m.storage_offset + (start - m.offset), out, start)?;
                }
            }
        }
        Ok(PageContent::Data)
    }

    /// Reads `out.len()` bytes at `storage` of one build file, verifying chunks not yet seen.
    fn read_source(
        &self,
        s: usize,
        mut storage: u64,
        mut out: &mut [u8],
        guest: u64,
    ) -> Result<(), SnapshotError> {
        let src = &self.sources[s];
        while !out.is_empty() {
            let chunk = storage / CHUNK_SIZE;
            let chunk_start = chunk * CHUNK_SIZE;
            let n = ((chunk_start + CHUNK_SIZE - storage) as usize).min(out.len());
            let (piece, rest) = out.split_at_mut(n);
            if src.is_verified(chunk) {
                src.file
                    .read_exact_at(piece, storage)
                    .map_err(io_at(&src.path))?;
            } else {
                src.verify_chunk(chunk, guest, |data| {
                    let from = (storage - chunk_start) as usize;
                    piece.copy_from_slice(&data[from..from + n]);
                })?;
            }
            storage += n as u64;
            out = rest;
        }
        Ok(())
    }
}

impl Source {
    fn is_verified(&self, chunk: u64) -> bool {
        let (word, bit) = ((chunk / 64) as usize, chunk % 64);
        self.verified
            .get(word)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << bit) != 0)
    }

    /// Reads the whole chunk, checks it, marks it verified and hands its bytes to `use_data`
    /// (so the read that triggered verification needs no second `pread`). Two threads racing
    /// on the same chunk both verify it; the result is the same.
    fn verify_chunk(
        &self,
        chunk: u64,
        guest: u64,
        use_data: impl FnOnce(&[u8]),
    ) -> Result<(), SnapshotError> {
        let start = chunk * CHUNK_SIZE;
        let len = (self.length.saturating_sub(start)).min(CHUNK_SIZE) as usize;
        let expected = self.checksums.get(chunk as usize).ok_or_else(|| {
            SnapshotError::Damaged(format!(
                "read at byte offset {start} is past the end of build file {}",
                self.path.display()
            ))
        })?;
        CHUNK_BUF.with_borrow_mut(|buf| {
            if buf.len() < len {
                buf.resize(len, 0);
            }
            let data = &mut buf[..len];
            self.file
                .read_exact_at(data, start)
                .map_err(io_at(&self.path))?;
            if blake3::hash(data).as_bytes() != expected {
                return Err(SnapshotError::Damaged(format!(
                    "build file {} does not match its checksum in the chunk at byte offset {start} \
                     ({start:#x}), read for guest offset {guest:#x}",
                    self.path.display()
                )));
            }
            self.verified[(chunk / 64) as usize].fetch_or(1 << (chunk % 64), Ordering::Release);
            use_data(data);
            Ok(())
        })
    }
}

impl std::fmt::Debug for MemoryView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryView")
            .field("size", &self.header.size)
            .field("build_id", &self.header.build_id)
            .field("builds", &self.sources.len())
            .field("mappings", &self.maps.len())
            .finish()
    }
}

impl PageSource for MemoryView {
    fn size(&self) -> u64 {
        self.header.size
    }

    fn block_size(&self) -> u64 {
        self.header.block_size
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<PageContent> {
        Ok(self.read_at(offset, buf)?)
    }
}
