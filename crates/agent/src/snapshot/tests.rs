//! Round trips through real (small, sparse) files in temp directories.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::*;
use crate::uffd::{PageContent, PageSource};

const PAGE: usize = BLOCK_SIZE as usize;

/// A deterministic xorshift stream, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn page(&mut self) -> Vec<u8> {
        (0..PAGE / 8)
            .flat_map(|_| self.next().to_le_bytes())
            .collect()
    }
}

/// What one page of a test memory file holds.
#[derive(Clone)]
enum Page {
    Hole,
    WrittenZero,
    Data(Vec<u8>),
}

/// Writes a sparse file of `pages.len()` pages; holes are never written.
fn write_memfile(path: &Path, pages: &[Page]) {
    let f = File::create(path).expect("create memfile");
    f.set_len((pages.len() * PAGE) as u64).expect("set_len");
    for (i, p) in pages.iter().enumerate() {
        let at = (i * PAGE) as u64;
        match p {
            Page::Hole => {}
            Page::WrittenZero => f.write_all_at(&[0u8; PAGE], at).expect("write zero"),
            Page::Data(d) => f.write_all_at(d, at).expect("write data"),
        }
    }
}

/// Random-ish memory of `n` pages: about half data, a quarter written zeros, a quarter holes,
/// with runs so mappings merge.
fn random_pages(rng: &mut Rng, n: usize) -> Vec<Page> {
    let mut pages = Vec::with_capacity(n);
    while pages.len() < n {
        let run = (rng.next() % 40 + 1) as usize;
        let kind = rng.next() % 4;
        for _ in 0..run.min(n - pages.len()) {
            pages.push(match kind {
                0 => Page::Hole,
                1 => Page::WrittenZero,
                _ => Page::Data(rng.page()),
            });
        }
    }
    pages
}

fn expected_bytes(pages: &[Page]) -> Vec<u8> {
    pages
        .iter()
        .flat_map(|p| match p {
            Page::Data(d) => d.clone(),
            _ => vec![0; PAGE],
        })
        .collect()
}

/// Reads every page through the view, as the page server would, and compares.
fn assert_view_reads(view: &MemoryView, expected: &[u8]) {
    assert_eq!(view.size(), expected.len() as u64);
    let mut buf = vec![0xAAu8; PAGE];
    for (i, want) in expected.chunks(PAGE).enumerate() {
        buf.fill(0xAA);
        let content = view.read((i * PAGE) as u64, &mut buf).expect("read a page");
        match content {
            PageContent::Zero => assert!(is_zero_page(want), "page {i} should hold data"),
            PageContent::Data => assert_eq!(&buf[..], want, "page {i} differs"),
        }
    }
}

fn is_zero_page(p: &[u8]) -> bool {
    p.iter().all(|&b| b == 0)
}

fn damaged(r: Result<impl std::fmt::Debug, SnapshotError>) -> String {
    match r {
        Err(SnapshotError::Damaged(msg)) => msg,
        other => panic!("expected Damaged, got {other:?}"),
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn full_snapshot(dir: &Path, pages: &[Page]) -> (MemoryHeader, PathBuf) {
    let raw = dir.join("raw");
    write_memfile(&raw, pages);
    let header = process_full(&raw, dir).expect("process_full");
    std::fs::remove_file(&raw).expect("remove raw");
    (header, raw)
}

#[test]
fn header_round_trips_and_looks_up() {
    let dir = tmp();
    let mut rng = Rng(1);
    let pages = random_pages(&mut rng, 1024);
    let (header, _) = full_snapshot(dir.path(), &pages);
    let path = dir.path().join("memory.header");
    header.write(&path).expect("write");
    assert!(!dir.path().join("memory.header.tmp").exists());
    let back = MemoryHeader::read(&path).expect("read");
    assert_eq!(back, header);
    assert_eq!(back.generation, 0);
    assert_eq!(back.base_build_id, back.build_id);
    for (i, p) in pages.iter().enumerate() {
        let loc = back.lookup((i * PAGE + 100) as u64).expect("inside memory");
        match (p, loc) {
            (Page::Data(_), Location::Build { build, .. }) => assert_eq!(build, back.build_id),
            (Page::Data(_), Location::Zero) => panic!("page {i} lost its data"),
            (_, loc) => assert_eq!(loc, Location::Zero, "page {i}"),
        }
    }
    assert_eq!(back.lookup(back.size), None);
    // Adjacent records of the same build are merged.
    assert!(back.mappings.windows(2).all(|w| w[0].build != w[1].build
        || (!w[0].build.is_zero() && w[0].storage_offset + w[0].length != w[1].storage_offset)));
}

#[test]
fn a_flipped_byte_anywhere_in_the_header_is_damage() {
    let dir = tmp();
    let pages = random_pages(&mut Rng(2), 600);
    let (header, _) = full_snapshot(dir.path(), &pages);
    let path = dir.path().join("h");
    header.write(&path).expect("write");
    let good = std::fs::read(&path).expect("read bytes");
    for at in [0, 9, 40, 70, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        std::fs::write(&path, &bad).expect("write bad");
        let msg = damaged(MemoryHeader::read(&path));
        assert!(msg.contains("checksum"), "byte {at}: {msg}");
    }
    std::fs::write(&path, &good[..good.len() - 5]).expect("truncate");
    damaged(MemoryHeader::read(&path));
    std::fs::remove_file(&path).expect("rm");
    assert!(damaged(MemoryHeader::read(&path)).contains("missing"));
}

/// Breaks one invariant of a header.
type Breaker = Box<dyn Fn(&mut MemoryHeader)>;

/// A header with a correct trailer but broken invariants is still refused on read.
#[test]
fn inconsistent_headers_are_refused_even_with_a_valid_trailer() {
    let dir = tmp();
    let pages = random_pages(&mut Rng(3), 600);
    let (header, _) = full_snapshot(dir.path(), &pages);
    let path = dir.path().join("h");
    let cases: Vec<(&str, Breaker)> = vec![
        (
            "should start at",
            Box::new(|h| h.mappings[1].offset += BLOCK_SIZE),
        ),
        (
            "cover",
            Box::new(|h| {
                h.mappings.pop();
            }),
        ),
        (
            "bytes at",
            Box::new(|h| {
                let m = h
                    .mappings
                    .iter_mut()
                    .find(|m| !m.build.is_zero())
                    .expect("data");
                m.storage_offset = 1 << 40;
            }),
        ),
        (
            "invalid file name",
            Box::new(|h| {
                let b = h.builds.values_mut().next().expect("a build");
                b.file_name = "../../etc/passwd".into();
            }),
        ),
        // The table's length is implied by the file length, so this breaks the structure.
        (
            "",
            Box::new(|h| {
                h.builds
                    .values_mut()
                    .next()
                    .expect("a build")
                    .checksums
                    .pop();
            }),
        ),
        ("block size", Box::new(|h| h.block_size = 3000)),
    ];
    for (needle, break_it) in cases {
        let mut h = header.clone();
        break_it(&mut h);
        assert!(h.write(&path).is_err(), "{needle}: write must refuse");
        std::fs::write(&path, h.encode()).expect("write raw");
        let msg = damaged(MemoryHeader::read(&path));
        assert!(msg.contains(needle), "expected {needle:?} in {msg:?}");
    }
}

#[test]
fn full_snapshot_reads_back_identically_and_packs_only_data() {
    let dir = tmp();
    let pages = random_pages(&mut Rng(4), 2048 + 7);
    let (header, _) = full_snapshot(dir.path(), &pages);
    let data_pages = pages.iter().filter(|p| matches!(p, Page::Data(_))).count();
    assert_eq!(header.builds.len(), 1);
    let build = &header.builds[&header.build_id];
    assert_eq!(build.file_name, header.build_id.file_name());
    assert_eq!(build.length, (data_pages * PAGE) as u64);
    assert_eq!(header.stored_bytes(), build.length);
    verify(&header, dir.path()).expect("verify");
    let view = MemoryView::open(header, dir.path()).expect("open view");
    assert_view_reads(&view, &expected_bytes(&pages));
    // A read spanning several mappings and chunks.
    let mut big = vec![0u8; 3 << 20];
    view.read_at(4096, &mut big).expect("big read");
    assert_eq!(&big[..], &expected_bytes(&pages)[4096..4096 + (3 << 20)]);
}

#[test]
fn diff_chain_keeps_every_generation_and_zeroed_pages_read_zero() {
    let dir = tmp();
    let d = dir.path();
    let n = 1024;
    let mut rng = Rng(5);
    let mut model: Vec<Page> = (0..n).map(|_| Page::Data(rng.page())).collect();
    let (mut header, raw) = full_snapshot(d, &model);
    let zeroed_page = 10;
    let mut touched_by = Vec::new();
    for generation in 1..=3u64 {
        let mut diff = vec![Page::Hole; n];
        for i in (generation as usize * 100)..(generation as usize * 100 + 50) {
            let p = Page::Data(rng.page());
            diff[i] = p.clone();
            model[i] = p;
        }
        if generation == 2 {
            diff[zeroed_page] = Page::WrittenZero;
            model[zeroed_page] = Page::WrittenZero;
        }
        touched_by.push(generation as usize * 100);
        write_memfile(&raw, &diff);
        let next = process_diff(&raw, &header, d).expect("process_diff");
        std::fs::remove_file(&raw).expect("rm raw");
        assert_eq!(next.generation, generation);
        assert_eq!(next.base_build_id, header.base_build_id);
        assert_ne!(next.build_id, header.build_id);
        assert_eq!(next.needs_merge(), generation >= MAX_GENERATION);
        header = next;
    }
    assert_eq!(
        header.lookup((zeroed_page * PAGE) as u64),
        Some(Location::Zero)
    );
    // Generation 0 still serves untouched pages; each diff serves its own.
    assert_eq!(header.builds.len(), 4);
    let owner = |page: usize| match header.lookup((page * PAGE) as u64) {
        Some(Location::Build { build, .. }) => build,
        other => panic!("page {page}: {other:?}"),
    };
    let owners: std::collections::BTreeSet<_> = [0, 100, 200, 300].into_iter().map(owner).collect();
    assert_eq!(owners.len(), 4);
    header.write(&d.join("h")).expect("write");
    let header = MemoryHeader::read(&d.join("h")).expect("read");
    verify(&header, d).expect("verify chain");
    let expected = expected_bytes(&model);
    let view = MemoryView::open(header.clone(), d).expect("view");
    let mut page = vec![0xFFu8; PAGE];
    assert_eq!(
        view.read((zeroed_page * PAGE) as u64, &mut page)
            .expect("read"),
        PageContent::Zero
    );
    assert_view_reads(&view, &expected);

    let merged = merge(&header, d).expect("merge");
    assert_eq!(merged.generation, 0);
    assert_eq!(merged.builds.len(), 1);
    assert!(!merged.needs_merge());
    let removed = remove_unreferenced(d, &merged).expect("cleanup");
    assert_eq!(removed.len(), 4);
    assert!(d.join("h").exists(), "only build files are removed");
    verify(&merged, d).expect("verify merged");
    let view = MemoryView::open(merged, d).expect("view merged");
    assert_view_reads(&view, &expected);
}

#[test]
fn diff_of_the_wrong_size_is_refused() {
    let dir = tmp();
    let (header, raw) = full_snapshot(dir.path(), &random_pages(&mut Rng(6), 64));
    write_memfile(&raw, &vec![Page::Hole; 65]);
    assert!(matches!(
        process_diff(&raw, &header, dir.path()),
        Err(SnapshotError::Invalid(_))
    ));
    // The failed attempt left no build file behind.
    assert!(
        unreferenced_files(dir.path(), &header)
            .expect("list")
            .is_empty()
    );
}

#[test]
fn describe_raw_verifies_and_finds_a_corrupted_byte() {
    let dir = tmp();
    let d = dir.path();
    // 5 MiB + 2 pages: two full chunks, a partial one, holes and an all-zero written chunk.
    let n = (5 << 20) / PAGE + 2;
    let mut rng = Rng(7);
    let mut pages = random_pages(&mut rng, n);
    for p in &mut pages[..512] {
        *p = Page::WrittenZero;
    }
    let raw = d.join("memory.raw");
    write_memfile(&raw, &pages);
    let header = describe_raw(&raw, "memory.raw").expect("describe");
    assert_eq!(header.size, (n * PAGE) as u64);
    assert_eq!(header.builds[&header.build_id].checksums.len(), 3);
    assert_eq!(header.lookup(0), Some(Location::Zero), "all-zero chunk");
    for (i, p) in pages.iter().enumerate() {
        let loc = header.lookup((i * PAGE) as u64).expect("inside");
        match p {
            Page::Hole => assert_eq!(loc, Location::Zero, "hole page {i}"),
            Page::Data(_) => assert_eq!(
                loc,
                Location::Build {
                    build: header.build_id,
                    storage_offset: (i * PAGE) as u64
                }
            ),
            Page::WrittenZero => {}
        }
    }
    verify(&header, d).expect("verify");
    let view = MemoryView::open(header.clone(), d).expect("view");
    assert_view_reads(&view, &expected_bytes(&pages));

    let victim = pages
        .iter()
        .enumerate()
        .skip(3 << 20 >> 12)
        .find(|(_, p)| matches!(p, Page::Data(_)))
        .map(|(i, _)| i * PAGE + 123)
        .expect("a data page in the second chunk");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&raw)
        .expect("open");
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, victim as u64).expect("read");
    f.write_all_at(&[byte[0] ^ 1], victim as u64)
        .expect("corrupt");
    let msg = damaged(verify(&header, d));
    assert!(
        msg.contains("memory.raw") && msg.contains(&format!("{}", 2 << 20)),
        "{msg}"
    );
    let view = MemoryView::open(header.clone(), d).expect("view");
    let mut page = vec![0u8; PAGE];
    let err = view
        .read((victim / PAGE * PAGE) as u64, &mut page)
        .expect_err("damaged chunk must not be served");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("damaged"), "{err}");
    // Other chunks are still served.
    let first_data = pages
        .iter()
        .position(|p| matches!(p, Page::Data(_)))
        .expect("data");
    if first_data * PAGE < (2 << 20) {
        view.read((first_data * PAGE) as u64, &mut page)
            .expect("chunk 0 is fine");
    }

    // Writing into a hole is damage too.
    f.write_all_at(&[byte[0]], victim as u64).expect("restore");
    verify(&header, d).expect("restored");
    let hole = pages
        .iter()
        .rposition(|p| matches!(p, Page::Hole))
        .expect("a hole");
    f.write_all_at(&[7], (hole * PAGE) as u64)
        .expect("write into hole");
    damaged(verify(&header, d));
}

#[test]
fn truncated_or_missing_build_files_are_damage() {
    let dir = tmp();
    let d = dir.path();
    let (header, _) = full_snapshot(d, &random_pages(&mut Rng(8), 1500));
    let build = d.join(header.build_files().remove(0));
    let len = std::fs::metadata(&build).expect("meta").len();
    OpenOptions::new()
        .write(true)
        .open(&build)
        .expect("open")
        .set_len(len - 1)
        .expect("truncate");
    let msg = damaged(verify(&header, d));
    assert!(
        msg.contains("bytes") && msg.contains(&header.build_id.to_string()),
        "{msg}"
    );
    damaged(MemoryView::open(header.clone(), d));
    std::fs::remove_file(&build).expect("rm");
    assert!(damaged(verify(&header, d)).contains("missing"));
    damaged(merge(&header, d));
}

#[test]
fn copy_sparse_keeps_holes_and_content() {
    let dir = tmp();
    let src = dir.path().join("src");
    let mut pages = vec![Page::Hole; 2048];
    let mut rng = Rng(9);
    pages[3] = Page::Data(rng.page());
    pages[1000] = Page::Data(rng.page());
    pages[2047] = Page::Data(rng.page());
    write_memfile(&src, &pages);
    let dst = dir.path().join("dst");
    std::fs::write(&dst, vec![1u8; 1 << 20]).expect("pre-existing dst is replaced");
    copy_sparse(&src, &dst).expect("copy");
    assert_eq!(std::fs::read(&dst).expect("dst"), expected_bytes(&pages));
    let (s, t) = (
        std::fs::metadata(&src).expect("src meta"),
        std::fs::metadata(&dst).expect("dst meta"),
    );
    assert_eq!(s.len(), t.len());
    assert!(
        t.blocks() <= s.blocks() + 16,
        "dst uses {} blocks, src {}",
        t.blocks(),
        s.blocks()
    );
    assert!(
        t.blocks() * 512 < 1 << 20,
        "holes were filled: {} blocks",
        t.blocks()
    );
    assert!(matches!(
        copy_sparse(&dst, &dst),
        Err(SnapshotError::Invalid(_))
    ));
    assert_eq!(std::fs::read(&dst).expect("dst"), expected_bytes(&pages));
}

#[test]
fn unreferenced_files_lists_only_stale_build_files() {
    let dir = tmp();
    let d = dir.path();
    let (header, _) = full_snapshot(d, &random_pages(&mut Rng(10), 64));
    let stale = d.join(BuildId::random().file_name());
    std::fs::write(&stale, b"x").expect("stale");
    for other in ["mem.notanid", "rootfs.ext4", "memory.header"] {
        std::fs::write(d.join(other), b"x").expect("other");
    }
    assert_eq!(unreferenced_files(d, &header).expect("list"), vec![stale]);
}

#[test]
fn build_ids_are_random_and_print_as_hex() {
    let a = BuildId::random();
    assert_ne!(a, BuildId::random());
    assert!(!a.is_zero());
    assert_eq!(a.to_string().len(), 32);
    assert_eq!(BuildId::from_hex(&a.to_string()), Some(a));
    assert_eq!(BuildId::ZERO.to_string(), "0".repeat(32));
}

#[test]
fn snapshot_errors_map_to_agent_errors() {
    use crate::error::AgentError;
    let e: AgentError = SnapshotError::Damaged("chunk 3".into()).into();
    assert!(matches!(e, AgentError::SnapshotDamaged(ref m) if m == "chunk 3"));
    let e: AgentError =
        SnapshotError::io("/x", std::io::Error::from(std::io::ErrorKind::NotFound)).into();
    assert!(matches!(e, AgentError::Io { .. }));
}
