//! Sparse-file and hashing helpers shared by the producers, `verify` and `copy_sparse`.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};

use super::{CHUNK_SIZE, Checksum};

/// A page of zeros to feed the hasher for holes, so holes are hashed without being read.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The byte ranges of `file` (of length `len`) that hold data, found with `SEEK_DATA` /
/// `SEEK_HOLE` so holes are never read. Filesystems without hole support report the whole file
/// as data, which is still correct.
pub(crate) fn data_extents(file: &File, len: u64) -> io::Result<Vec<Range<u64>>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let start = match lseek(file, to_off(pos)?, Whence::SeekData) {
            Ok(s) => s as u64,
            Err(Errno::ENXIO) => break,
            Err(Errno::EINVAL) if pos == 0 => return Ok(std::iter::once(0..len).collect()),
            Err(e) => return Err(e.into()),
        };
        if start >= len {
            break;
        }
        let mut end = (lseek(file, to_off(start)?, Whence::SeekHole)? as u64).min(len);
        if end <= start {
            end = len;
        }
        out.push(start..end);
        pos = end;
    }
    Ok(out)
}

fn to_off(pos: u64) -> io::Result<i64> {
    i64::try_from(pos).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

/// Rounds extents outward to `block` boundaries (capped at `len`) and merges those that touch.
pub(crate) fn align_extents(extents: &[Range<u64>], block: u64, len: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::with_capacity(extents.len());
    for e in extents {
        let start = e.start / block * block;
        let end = e.end.div_ceil(block).saturating_mul(block).min(len);
        if start >= end {
            continue;
        }
        match out.last_mut() {
            Some(last) if start <= last.end => last.end = last.end.max(end),
            _ => out.push(start..end),
        }
    }
    out
}

/// True when every byte is zero. Folding 64-byte groups lets the compiler vectorise while
/// still stopping early on the first non-zero group.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let (groups, rest) = buf.as_chunks::<64>();
    groups
        .iter()
        .all(|g| g.iter().fold(0u8, |acc, b| acc | b) == 0)
        && rest.iter().all(|&b| b == 0)
}

pub(crate) fn hash_zeros(hasher: &mut blake3::Hasher, mut len: u64) {
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..n]);
        len -= n as u64;
    }
}

/// The checksum of `len` zero bytes; the full-chunk value is computed once per process.
pub(crate) fn zero_hash(len: u64) -> Checksum {
    static FULL_CHUNK: OnceLock<Checksum> = OnceLock::new();
    let compute = |len| {
        let mut h = blake3::Hasher::new();
        hash_zeros(&mut h, len);
        *h.finalize().as_bytes()
    };
    if len == CHUNK_SIZE {
        *FULL_CHUNK.get_or_init(|| compute(len))
    } else {
        compute(len)
    }
}

/// The blake3 of bytes `range` of `file`, reading only the parts inside `extents` (sorted,
/// non-overlapping data ranges) and hashing zeros for the rest. `buf` is scratch space.
pub(crate) fn hash_range(
    file: &File,
    range: Range<u64>,
    extents: &[Range<u64>],
    buf: &mut Vec<u8>,
) -> io::Result<Checksum> {
    let first = extents.partition_point(|e| e.end <= range.start);
    let touched = extents[first..]
        .iter()
        .take_while(|e| e.start < range.end)
        .count();
    if touched == 0 {
        return Ok(zero_hash(range.end - range.start));
    }
    let mut hasher = blake3::Hasher::new();
    let mut pos = range.start;
    for e in &extents[first..first + touched] {
        let start = e.start.max(pos);
        let end = e.end.min(range.end);
        hash_zeros(&mut hasher, start - pos);
        let n = (end - start) as usize;
        if buf.len() < n {
            buf.resize(n, 0);
        }
        file.read_exact_at(&mut buf[..n], start)?;
        hasher.update(&buf[..n]);
        pos = end;
    }
    hash_zeros(&mut hasher, range.end - pos);
    Ok(*hasher.finalize().as_bytes())
}

/// The chunk ranges of a file of `len` bytes.
pub(crate) fn chunk_ranges(len: u64) -> impl Iterator<Item = Range<u64>> {
    (0..len.div_ceil(CHUNK_SIZE)).map(move |i| i * CHUNK_SIZE..((i + 1) * CHUNK_SIZE).min(len))
}
