//! [`MemoryHeader`]: the map from guest memory to build files, its checksums, and its binary
//! encoding.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use super::error::io_at;
use super::{BLOCK_SIZE, BuildId, CHUNK_SIZE, FORMAT_VERSION, SnapshotError, valid_file_name};

/// A blake3 digest.
pub type Checksum = [u8; 32];

/// Header files larger than this are refused before being read (a 64 GiB guest mapped page by
/// page needs 640 MiB; real headers are far smaller).
const MAX_HEADER_BYTES: u64 = 1 << 30;
const METADATA_BYTES: usize = 64;
const MAPPING_BYTES: usize = 40;
const TRAILER_BYTES: usize = 32;

/// Guest bytes `[offset, offset + length)` live in `build` at `storage_offset`
/// (`build == BuildId::ZERO`: they are zeros and `storage_offset` is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub offset: u64,
    pub length: u64,
    pub build: BuildId,
    pub storage_offset: u64,
}

impl Mapping {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }

    pub(crate) fn zero(offset: u64, length: u64) -> Mapping {
        Mapping {
            offset,
            length,
            build: BuildId::ZERO,
            storage_offset: 0,
        }
    }

    /// The part `[start, end)` of this mapping (inside it).
    fn slice(&self, start: u64, end: u64) -> Mapping {
        Mapping {
            offset: start,
            length: end - start,
            build: self.build,
            storage_offset: if self.build.is_zero() {
                0
            } else {
                self.storage_offset + (start - self.offset)
            },
        }
    }

    /// Whether `next` continues this mapping (same build, contiguous storage).
    fn continued_by(&self, next: &Mapping) -> bool {
        self.build == next.build
            && self.end() == next.offset
            && (self.build.is_zero() || self.storage_offset + self.length == next.storage_offset)
    }
}

/// One build file a header refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFile {
    /// Name inside the snapshot directory (one path component).
    pub file_name: String,
    /// Exact file length in bytes.
    pub length: u64,
    /// blake3 of each [`CHUNK_SIZE`] chunk of the file (the last one may be shorter).
    pub checksums: Vec<Checksum>,
}

/// Where one guest offset lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Zero,
    Build { build: BuildId, storage_offset: u64 },
}

/// The description of one snapshot's guest memory. See the [module docs](super).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryHeader {
    pub block_size: u64,
    /// Guest memory size in bytes.
    pub size: u64,
    /// Number of diffs layered since the last full snapshot or merge.
    pub generation: u64,
    /// This snapshot's id (also the id of the build file it created, if any).
    pub build_id: BuildId,
    /// The id of generation 0 of this chain.
    pub base_build_id: BuildId,
    /// Sorted, covering `[0, size)` exactly.
    pub mappings: Vec<Mapping>,
    /// Every build the mappings refer to.
    pub builds: BTreeMap<BuildId, BuildFile>,
}

impl MemoryHeader {
    /// Reads and checks a header file. Anything inconsistent is [`SnapshotError::Damaged`],
    /// including a missing file (a snapshot without its header cannot be resumed).
    pub fn read(path: &Path) -> Result<MemoryHeader, SnapshotError> {
        let damaged = |msg: String| SnapshotError::Damaged(format!("{}: {msg}", path.display()));
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(damaged("the memory header is missing".into()));
            }
            Err(e) => return Err(SnapshotError::io(path, e)),
        };
        let len = file.metadata().map_err(io_at(path))?.len();
        if len > MAX_HEADER_BYTES {
            return Err(damaged(format!("implausibly large header ({len} bytes)")));
        }
        let bytes = std::fs::read(path).map_err(io_at(path))?;
        let header = MemoryHeader::decode(&bytes).map_err(damaged)?;
        header.validate().map_err(damaged)?;
        Ok(header)
    }

    /// Writes the header atomically: a temporary file is written and fsynced, renamed over
    /// `path`, and the directory fsynced, so a crash leaves either the old or the new header.
    pub fn write(&self, path: &Path) -> Result<(), SnapshotError> {
        self.validate().map_err(|e| {
            SnapshotError::Invalid(format!(
                "refusing to write an inconsistent memory header: {e}"
            ))
        })?;
        let bytes = self.encode();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = Path::new(&tmp);
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(tmp);
            return Err(SnapshotError::io(tmp, e));
        }
        std::fs::rename(tmp, path).map_err(io_at(path))?;
        sync_parent(path)
    }

    /// Where guest byte `offset` lives; `None` past the end of memory.
    pub fn lookup(&self, offset: u64) -> Option<Location> {
        let m = self.mappings.get(self.mapping_index(offset)?)?;
        Some(if m.build.is_zero() {
            Location::Zero
        } else {
            Location::Build {
                build: m.build,
                storage_offset: m.storage_offset + (offset - m.offset),
            }
        })
    }

    /// The index of the mapping covering `offset` (binary search).
    pub fn mapping_index(&self, offset: u64) -> Option<usize> {
        if offset >= self.size {
            return None;
        }
        let i = self.mappings.partition_point(|m| m.end() <= offset);
        (i < self.mappings.len()).then_some(i)
    }

    /// True once the diff chain is as long as allowed; the caller should [`merge`](super::merge).
    pub fn needs_merge(&self) -> bool {
        self.generation >= super::MAX_GENERATION
    }

    /// The names of all build files this header needs (relative to its directory).
    pub fn build_files(&self) -> Vec<String> {
        self.builds.values().map(|b| b.file_name.clone()).collect()
    }

    /// Bytes of guest memory stored in build files (the rest is zero).
    pub fn stored_bytes(&self) -> u64 {
        self.mappings
            .iter()
            .filter(|m| !m.build.is_zero())
            .map(|m| m.length)
            .sum()
    }

    /// Checks the invariants every reader relies on; the error says what is wrong and where.
    pub fn validate(&self) -> Result<(), String> {
        let bs = self.block_size;
        if !bs.is_power_of_two() || !(BLOCK_SIZE..=CHUNK_SIZE).contains(&bs) {
            return Err(format!("unsupported block size {bs}"));
        }
        if self.size == 0 || !self.size.is_multiple_of(bs) {
            return Err(format!(
                "memory size {} is not a positive multiple of the block size {bs}",
                self.size
            ));
        }
        if self.build_id.is_zero() {
            return Err("the build id is all zeros".into());
        }
        for (id, b) in &self.builds {
            if id.is_zero() {
                return Err("the build table lists the zero build".into());
            }
            if !valid_file_name(&b.file_name) {
                return Err(format!(
                    "build {id} has an invalid file name {:?}",
                    b.file_name
                ));
            }
            let chunks = b.length.div_ceil(CHUNK_SIZE);
            if b.checksums.len() as u64 != chunks {
                return Err(format!(
                    "build {id} ({}) is {} bytes, which needs {chunks} checksums, but has {}",
                    b.file_name,
                    b.length,
                    b.checksums.len()
                ));
            }
        }
        let mut expected = 0u64;
        for (i, m) in self.mappings.iter().enumerate() {
            let at = format!("mapping {i} (guest offset {:#x})", m.offset);
            if m.offset != expected {
                return Err(format!("{at} should start at {expected:#x}"));
            }
            if m.length == 0 || !m.length.is_multiple_of(bs) {
                return Err(format!("{at} has length {} (block size {bs})", m.length));
            }
            let end = m
                .offset
                .checked_add(m.length)
                .filter(|&e| e <= self.size)
                .ok_or_else(|| format!("{at} runs past the end of memory ({:#x})", self.size))?;
            if m.build.is_zero() {
                if m.storage_offset != 0 {
                    return Err(format!("{at} is zero but has a storage offset"));
                }
            } else {
                let b = self
                    .builds
                    .get(&m.build)
                    .ok_or_else(|| format!("{at} refers to build {} with no file", m.build))?;
                if !m.storage_offset.is_multiple_of(bs)
                    || m.storage_offset
                        .checked_add(m.length)
                        .is_none_or(|e| e > b.length)
                {
                    return Err(format!(
                        "{at} reads {} bytes at {:#x} of {}, which is {} bytes",
                        m.length, m.storage_offset, b.file_name, b.length
                    ));
                }
            }
            expected = end;
        }
        if expected != self.size {
            return Err(format!(
                "the mappings cover {expected:#x} bytes of {:#x}",
                self.size
            ));
        }
        Ok(())
    }

    /// The binary form (see the module docs), trailer included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            METADATA_BYTES + 64 + self.mappings.len() * MAPPING_BYTES + TRAILER_BYTES,
        );
        for v in [FORMAT_VERSION, self.block_size, self.size, self.generation] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.build_id.0);
        out.extend_from_slice(&self.base_build_id.0);
        out.extend_from_slice(&CHUNK_SIZE.to_le_bytes());
        out.extend_from_slice(&(self.builds.len() as u64).to_le_bytes());
        for (id, b) in &self.builds {
            out.extend_from_slice(&id.0);
            out.extend_from_slice(&b.length.to_le_bytes());
            // `validate` limits names to 255 bytes.
            out.extend_from_slice(&(b.file_name.len() as u16).to_le_bytes());
            out.extend_from_slice(b.file_name.as_bytes());
            for c in &b.checksums {
                out.extend_from_slice(c);
            }
        }
        out.extend_from_slice(&(self.mappings.len() as u64).to_le_bytes());
        for m in &self.mappings {
            out.extend_from_slice(&m.offset.to_le_bytes());
            out.extend_from_slice(&m.length.to_le_bytes());
            out.extend_from_slice(&m.build.0);
            out.extend_from_slice(&m.storage_offset.to_le_bytes());
        }
        let trailer = blake3::hash(&out);
        out.extend_from_slice(trailer.as_bytes());
        out
    }

    /// Parses the binary form. Checks the trailer, version and structure, but not the
    /// invariants ([`validate`](Self::validate) does).
    pub fn decode(bytes: &[u8]) -> Result<MemoryHeader, String> {
        if bytes.len() < METADATA_BYTES + TRAILER_BYTES {
            return Err(format!("truncated: {} bytes", bytes.len()));
        }
        let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_BYTES);
        if blake3::hash(body).as_bytes() != trailer {
            return Err("the header checksum does not match its contents".into());
        }
        let mut d = Decoder { buf: body, pos: 0 };
        let version = d.u64("version")?;
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version}, expected {FORMAT_VERSION}"
            ));
        }
        let block_size = d.u64("block size")?;
        let size = d.u64("size")?;
        let generation = d.u64("generation")?;
        let build_id = d.id("build id")?;
        let base_build_id = d.id("base build id")?;
        let chunk_size = d.u64("chunk size")?;
        if chunk_size != CHUNK_SIZE {
            return Err(format!(
                "checksum chunk size {chunk_size}, expected {CHUNK_SIZE}"
            ));
        }
        let build_count = d.count("build count", 16 + 8 + 2)?;
        let mut builds = BTreeMap::new();
        for i in 0..build_count {
            let id = d.id("build id")?;
            let length = d.u64("build length")?;
            let name_len = u16::from_le_bytes(d.array::<2>("build name length")?) as usize;
            let name = std::str::from_utf8(d.take(name_len, "build name")?)
                .map_err(|_| format!("build {i}: the file name is not UTF-8"))?
                .to_owned();
            let chunks = usize::try_from(length.div_ceil(CHUNK_SIZE))
                .ok()
                .filter(|&c| c <= d.remaining() / 32)
                .ok_or_else(|| format!("build {i} ({name}): checksum table truncated"))?;
            let mut checksums = Vec::with_capacity(chunks);
            for _ in 0..chunks {
                checksums.push(d.array::<32>("checksum")?);
            }
            let file = BuildFile {
                file_name: name,
                length,
                checksums,
            };
            if builds.insert(id, file).is_some() {
                return Err(format!("build {id} is listed twice"));
            }
        }
        let mapping_count = d.count("mapping count", MAPPING_BYTES)?;
        let mut mappings = Vec::with_capacity(mapping_count);
        for _ in 0..mapping_count {
            mappings.push(Mapping {
                offset: d.u64("mapping offset")?,
                length: d.u64("mapping length")?,
                build: d.id("mapping build")?,
                storage_offset: d.u64("mapping storage offset")?,
            });
        }
        if d.remaining() != 0 {
            return Err(format!(
                "{} unexpected bytes at byte {}",
                d.remaining(),
                d.pos
            ));
        }
        Ok(MemoryHeader {
            block_size,
            size,
            generation,
            build_id,
            base_build_id,
            mappings,
            builds,
        })
    }

    /// Keeps only the builds some mapping refers to.
    pub(crate) fn retain_referenced_builds(&mut self) {
        let used: BTreeSet<BuildId> = self.mappings.iter().map(|m| m.build).collect();
        self.builds.retain(|id, _| used.contains(id));
    }
}

/// Appends `m`, merging it into the previous mapping when it continues it.
pub(crate) fn push_mapping(out: &mut Vec<Mapping>, m: Mapping) {
    if m.length == 0 {
        return;
    }
    match out.last_mut() {
        Some(last) if last.continued_by(&m) => last.length += m.length,
        _ => out.push(m),
    }
}

/// `top` (sorted, non-overlapping) laid over `base` (sorted, covering `[0, size)`): where `top`
/// has a mapping it wins, elsewhere `base` shows through. The result is merged.
pub(crate) fn overlay(base: &[Mapping], top: &[Mapping], size: u64) -> Vec<Mapping> {
    let mut out = Vec::with_capacity(base.len() + top.len());
    let mut bi = 0;
    let mut pos = 0;
    let mut emit_base = |from: u64, to: u64, out: &mut Vec<Mapping>| {
        let mut from = from;
        while from < to {
            while bi < base.len() && base[bi].end() <= from {
                bi += 1;
            }
            let Some(m) = base.get(bi) else { break };
            let end = to.min(m.end());
            push_mapping(out, m.slice(from.max(m.offset), end));
            from = end;
        }
    };
    for t in top {
        emit_base(pos, t.offset, &mut out);
        push_mapping(&mut out, *t);
        pos = t.end();
    }
    emit_base(pos, size, &mut out);
    out
}

fn sync_parent(path: &Path) -> Result<(), SnapshotError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.remaining() < n {
            return Err(format!(
                "truncated at byte {} while reading the {what}",
                self.pos
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array::<8>(what)?))
    }

    fn id(&mut self, what: &str) -> Result<BuildId, String> {
        Ok(BuildId(self.array::<16>(what)?))
    }

    /// A record count, refused if the remaining bytes cannot hold that many records of at
    /// least `min_record` bytes (so a damaged count cannot trigger a huge allocation).
    fn count(&mut self, what: &str, min_record: usize) -> Result<usize, String> {
        let at = self.pos;
        let n = self.u64(what)?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.remaining() / min_record)
            .ok_or_else(|| format!("the {what} at byte {at} ({n}) exceeds the file"))
    }
}
