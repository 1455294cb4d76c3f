//! The on-disk snapshot memory format used by pause and resume.
//!
//! Guest memory of a paused sandbox is described by a [`MemoryHeader`] (`memory.header`-style
//! file) and stored in one or more *build files*. The header maps every block of guest memory
//! (`[0, size)`, [`BLOCK_SIZE`] blocks) either to [`BuildId::ZERO`] (all zeros, stored nowhere)
//! or to a byte range of a build file. Each build file has a blake3 checksum per
//! [`CHUNK_SIZE`] chunk, kept in the header, so damage is found before a guest runs on it.
//!
//! Producing headers:
//! - [`process_full`]: a Firecracker Full memory file → one packed build file `mem.<id>`,
//!   generation 0.
//! - [`process_diff`]: a Firecracker Diff memory file layered on a parent header. Pages the
//!   VMM wrote (found with `SEEK_DATA`/`SEEK_HOLE`) are new, *including* pages the guest zeroed
//!   (upstream treated those as "unchanged" and resurrected stale data); holes inherit the
//!   parent. Generation + 1; when [`MemoryHeader::needs_merge`] says so, [`merge`] folds the
//!   chain into one build file so resume never reads through more than [`MAX_GENERATION`] diffs.
//!   Afterwards [`remove_unreferenced`] deletes build files nothing maps to any more.
//!   [`store_vmm_memory`] does this whole sequence for a pause.
//! - [`describe_raw`]: QEMU keeps guest RAM in a sparse file that is used in place; this
//!   describes it with an identity mapping and checksums (holes are [`BuildId::ZERO`]).
//!
//! Consuming them:
//! - [`MemoryHeader::read`] checks the trailer checksum and the header's internal consistency.
//! - [`verify`] checks every build file's length and chunk checksums (on two threads; it runs
//!   while the VMM restores).
//! - [`MemoryView`] serves guest memory to the userfaultfd page server
//!   ([`crate::uffd::PageSource`]), verifying each chunk the first time it is read.
//! - [`copy_sparse`] copies memory files and disks into templates in time proportional to the
//!   data (reflink first, then data ranges only).
//!
//! Damage is always [`SnapshotError::Damaged`] (→ [`AgentError::SnapshotDamaged`]), never data.
//!
//! Header file layout (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..64 | version u64 (= [`FORMAT_VERSION`]), block_size u64, size u64, generation u64, build_id \[16\], base_build_id \[16\] (upstream's metadata) |
//! | 64..80 | chunk_size u64, build count u64 |
//! | per build | id \[16\], length u64, name length u16, name (UTF-8), one 32-byte blake3 per chunk |
//! | | mapping count u64 |
//! | per mapping | offset u64, length u64, build \[16\], storage_offset u64 (upstream's 40-byte record) |
//! | last 32 | blake3 of everything before |
//!
//! [`AgentError::SnapshotDamaged`]: crate::error::AgentError::SnapshotDamaged

mod chain;
mod copy;
mod error;
mod header;
mod memfile;
mod sparse;
mod verify;
mod view;

#[cfg(test)]
mod tests;

use std::fmt;

pub use chain::store_vmm_memory;
#[cfg(test)]
pub(crate) use chain::testing::SimulatedGuest;
pub use copy::{Durability, copy_sparse, copy_sparse_into_sized, copy_sparse_with};
pub use error::SnapshotError;
pub use header::{BuildFile, Checksum, Location, Mapping, MemoryHeader};
pub use memfile::{
    describe_raw, merge, process_diff, process_full, remove_unreferenced, unreferenced_files,
};
pub use verify::verify;
pub use view::MemoryView;

/// The unit memory is mapped in: one guest page.
pub const BLOCK_SIZE: u64 = 4096;
/// The unit build files are checksummed in. Large enough that the table stays small (16 KiB
/// per GiB), small enough that the first read of a chunk costs well under a millisecond.
pub const CHUNK_SIZE: u64 = 2 << 20;
/// Diff generations allowed before the chain is merged into one build file.
pub const MAX_GENERATION: u64 = 4;
/// Header format version. Upstream's headers are version 1; 100 marks this format (sections
/// for build files and checksums, trailing checksum).
pub const FORMAT_VERSION: u64 = 100;
/// Build files created here are named `mem.<32 hex digits of the build id>`.
pub const BUILD_FILE_PREFIX: &str = "mem.";

/// Identifies one build file (and one generation of a snapshot).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BuildId(pub [u8; 16]);

impl BuildId {
    /// "All-zero pages, no file".
    pub const ZERO: BuildId = BuildId([0; 16]);

    /// A fresh random id (never [`BuildId::ZERO`]).
    pub fn random() -> BuildId {
        loop {
            let id = BuildId(random_bytes());
            if !id.is_zero() {
                return id;
            }
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == BuildId::ZERO
    }

    /// The name of the build file [`process_full`], [`process_diff`] and [`merge`] create.
    pub fn file_name(&self) -> String {
        format!("{BUILD_FILE_PREFIX}{self}")
    }

    /// Parses the 32 hex digits [`Display`](fmt::Display) prints.
    pub fn from_hex(s: &str) -> Option<BuildId> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(BuildId(out))
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BuildId({self})")
    }
}

/// 16 bytes from the kernel's CSPRNG. getrandom(2) with no flags only fails with EINTR on
/// Linux ≥ 3.17; should it fail otherwise, the ids only need to be unique within one snapshot
/// directory, so a hash of time, pid and a counter is an adequate fallback.
fn random_bytes() -> [u8; 16] {
    let mut buf = [0u8; 16];
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, a live, writable buffer.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return fallback_random();
        }
    }
    buf
}

fn fallback_random() -> [u8; 16] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// A file name a header may name: one path component, so a forged header cannot point
/// outside the snapshot directory.
pub(crate) fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
}
