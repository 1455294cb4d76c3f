//! [`store_vmm_memory`]: turning the memory file a VMM wrote at pause into the next link of a
//! snapshot's build-file chain.

use std::path::Path;

use super::{MemoryHeader, SnapshotError, merge, process_diff, process_full, remove_unreferenced};

/// Stores the raw memory file `raw` a VMM (Firecracker) wrote at pause into `out_dir` and
/// returns the header describing it; the caller writes that header (its commit point).
///
/// With a `parent` (the header of the snapshot this VM was restored from, its build files in
/// `out_dir`), `raw` is a Diff file and only the pages dirtied since the restore become a new
/// build file; everything else keeps pointing at the parent's builds. That is why pausing a
/// large, mostly idle VM writes little. Each diff adds a generation, and a restore may read
/// through every one of them, so once the chain reaches [`MAX_GENERATION`](super::MAX_GENERATION)
/// it is [`merge`]d into one build file: resume latency and file count stay bounded.
/// Without a parent, `raw` is a Full file and starts a new chain (generation 0).
///
/// On success `raw` is deleted (it is as large as guest memory) and so is every build file in
/// `out_dir` the new header does not refer to (diffs a merge folded in, pages wholly
/// overwritten, leftovers of failed pauses). The header previously in `out_dir` is therefore
/// no longer usable: the caller must have invalidated it before the VMM wrote `raw`. If
/// processing or merging fails, nothing is deleted: the parent's files stay intact, `raw` is
/// left for the caller, and a half-made build file is swept by the next successful call.
/// Failing to delete `raw` is an error too.
pub fn store_vmm_memory(
    raw: &Path,
    parent: Option<&MemoryHeader>,
    out_dir: &Path,
) -> Result<MemoryHeader, SnapshotError> {
    let header = match parent {
        Some(parent) => process_diff(raw, parent, out_dir)?,
        None => process_full(raw, out_dir)?,
    };
    let header = if header.needs_merge() {
        merge(&header, out_dir)?
    } else {
        header
    };
    // A leftover raw file wastes guest-memory-sized disk, and a later Diff written into it
    // could make its stale pages look dirty.
    match std::fs::remove_file(raw) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(SnapshotError::io(raw, e)),
    }
    let removed = remove_unreferenced(out_dir, &header)?;
    tracing::debug!(
        generation = header.generation,
        builds = header.builds.len(),
        removed = removed.len(),
        "stored VMM memory snapshot"
    );
    Ok(header)
}

/// A stand-in for a Firecracker guest's memory for tests: tracks the memory image and the
/// pages dirtied since the last pause, and writes Full and Diff memory files the way
/// Firecracker does.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeSet;
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    use crate::snapshot::BLOCK_SIZE;

    pub const PAGE: usize = BLOCK_SIZE as usize;

    pub struct SimulatedGuest {
        /// What the guest's memory holds now: the image every restore must reproduce.
        pub memory: Vec<u8>,
        dirty: BTreeSet<usize>,
    }

    impl SimulatedGuest {
        pub fn new(pages: usize) -> SimulatedGuest {
            SimulatedGuest {
                memory: vec![0; pages * PAGE],
                dirty: BTreeSet::new(),
            }
        }

        /// Fills page `page` with bytes derived from `seed` (never all zero).
        pub fn write_data(&mut self, page: usize, seed: u64) {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let words = self.page_mut(page).chunks_exact_mut(8);
            for word in words {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                word.copy_from_slice(&x.to_le_bytes());
            }
        }

        /// Clears page `page` (the guest zeroed it: dirty, but all zeros).
        pub fn write_zeros(&mut self, page: usize) {
            self.page_mut(page).fill(0);
        }

        pub fn is_zero_page(&self, page: usize) -> bool {
            self.memory[page * PAGE..(page + 1) * PAGE]
                .iter()
                .all(|&b| b == 0)
        }

        fn page_mut(&mut self, page: usize) -> &mut [u8] {
            self.dirty.insert(page);
            &mut self.memory[page * PAGE..(page + 1) * PAGE]
        }

        /// A Full memory file: every page written, zeros included.
        pub fn pause_full(&mut self, path: &Path) {
            std::fs::write(path, &self.memory).expect("write the full memory file");
            self.dirty.clear();
        }

        /// A Diff memory file: full size, sparse, only the pages dirtied since the last pause
        /// written.
        pub fn pause_diff(&mut self, path: &Path) {
            let file = File::create(path).expect("create the diff memory file");
            file.set_len(self.memory.len() as u64)
                .expect("size the diff memory file");
            for &page in &self.dirty {
                let bytes = &self.memory[page * PAGE..(page + 1) * PAGE];
                file.write_all_at(bytes, (page * PAGE) as u64)
                    .expect("write a dirty page");
            }
            self.dirty.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::testing::SimulatedGuest;
    use super::*;
    use crate::snapshot::{MAX_GENERATION, MemoryView, verify};

    /// 6 MiB: the full build spans several checksum chunks.
    const PAGES: usize = 1536;
    /// Enough diffs to pass one merge and start the next chain.
    const DIFFS: u64 = MAX_GENERATION + 1;

    /// Every file in `dir` (names).
    fn listing(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .expect("read the snapshot folder")
            .map(|e| {
                e.expect("folder entry")
                    .file_name()
                    .into_string()
                    .expect("UTF-8 name")
            })
            .collect()
    }

    /// Everything a restore relies on, checked after one pause.
    fn check_stored(header: &MemoryHeader, dir: &Path, guest: &SimulatedGuest, step: u64) {
        verify(header, dir).unwrap_or_else(|e| panic!("step {step}: verify: {e}"));
        let view = MemoryView::open(header.clone(), dir).expect("open the view");
        let mut buf = vec![0xAAu8; 1 << 20];
        for (i, want) in guest.memory.chunks(buf.len()).enumerate() {
            let got = &mut buf[..want.len()];
            got.fill(0xAA);
            let content = view
                .read_at((i * (1 << 20)) as u64, got)
                .expect("read guest memory");
            if content == crate::uffd::PageContent::Zero {
                got.fill(0);
            }
            if let Some(at) = got.iter().zip(want).position(|(g, w)| g != w) {
                panic!(
                    "step {step}: memory differs at offset {:#x}",
                    i * (1 << 20) + at
                );
            }
        }
        let referenced: BTreeSet<String> = header.build_files().into_iter().collect();
        assert_eq!(
            listing(dir),
            referenced,
            "step {step}: the folder holds exactly the referenced build files"
        );
    }

    #[test]
    fn full_then_diffs_chain_merge_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let raw = d.join("memfile.raw");
        let mut guest = SimulatedGuest::new(PAGES);

        // Boot: about two thirds of memory holds data, the rest was never touched.
        for page in (0..PAGES).filter(|p| p % 3 != 2 && *p < PAGES - 100) {
            guest.write_data(page, page as u64);
        }
        assert!(guest.is_zero_page(5) && !guest.is_zero_page(4));
        guest.pause_full(&raw);
        let mut header = store_vmm_memory(&raw, None, d).expect("store the full pause");
        assert_eq!(header.generation, 0);
        assert!(!raw.exists(), "the raw memory file is deleted");
        check_stored(&header, d, &guest, 0);
        let mut base = header.base_build_id;

        for step in 1..=DIFFS {
            let seed = step * 1_000_000;
            match step {
                // Overwrite a spread of pages, and zero one that held data.
                1 => {
                    for page in (10..PAGES).step_by(97) {
                        guest.write_data(page, seed + page as u64);
                    }
                    guest.write_zeros(4);
                }
                // Write into pages that were never written (a hole), and overwrite step 1's.
                2 => {
                    guest.write_data(5, seed);
                    guest.write_data(PAGES - 1, seed + 1);
                    for page in (10..PAGES).step_by(194) {
                        guest.write_data(page, seed + page as u64);
                    }
                }
                // Only zeroing: the diff stores no new build file at all.
                3 => {
                    guest.write_zeros(5);
                    guest.write_zeros(7);
                }
                // Large runs spanning checksum chunks.
                _ => {
                    for page in (step as usize * 40)..(step as usize * 40 + 600) {
                        guest.write_data(page, seed + page as u64);
                    }
                    guest.write_zeros(PAGES - 1);
                }
            }
            guest.pause_diff(&raw);
            let parent = header.clone();
            header = store_vmm_memory(&raw, Some(&parent), d).expect("store a diff pause");
            assert!(!raw.exists(), "step {step}: the raw memory file is deleted");

            assert_eq!(
                header.generation,
                step % MAX_GENERATION,
                "step {step}: generation"
            );
            assert!(!header.needs_merge());
            if step == MAX_GENERATION {
                assert_eq!(header.builds.len(), 1, "a merge leaves one build file");
                assert_eq!(header.base_build_id, header.build_id, "a new chain starts");
                base = header.base_build_id;
            } else {
                assert_eq!(header.base_build_id, base, "step {step}: same chain");
            }
            if step == 3 && step < MAX_GENERATION {
                assert!(
                    !header.builds.contains_key(&header.build_id),
                    "zeroing alone writes no build file"
                );
            }
            check_stored(&header, d, &guest, step);
        }
    }

    #[test]
    fn a_failed_diff_keeps_the_parent_and_the_raw_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let raw = d.join("memfile.raw");
        let mut guest = SimulatedGuest::new(64);
        guest.write_data(1, 1);
        guest.pause_full(&raw);
        let header = store_vmm_memory(&raw, None, d).expect("store the full pause");

        // A diff of the wrong size (another VM's memory file) is refused.
        let mut other = SimulatedGuest::new(65);
        other.write_data(2, 2);
        other.pause_diff(&raw);
        let err = store_vmm_memory(&raw, Some(&header), d).expect_err("wrong size");
        assert!(matches!(err, SnapshotError::Invalid(_)), "{err:?}");
        assert!(raw.exists(), "the raw file is left for the caller");
        std::fs::remove_file(&raw).expect("remove raw");
        check_stored(&header, d, &guest, 0);
    }
}
