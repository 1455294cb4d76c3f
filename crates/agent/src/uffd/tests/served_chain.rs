//! The restore path minus Firecracker: a diff chain stored by [`store_vmm_memory`], opened as a
//! [`MemoryView`] and served to a real userfaultfd, must give back exactly the memory the guest
//! had at pause; damage in a build file must end serving with a reason, not with bad data.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use super::harness::{Guest, MIB, PAGE, bounded, read_word, resident, serial, start_server};
use super::{CONNECT, LIMIT};
use crate::snapshot::{Location, MemoryHeader, MemoryView, SimulatedGuest, store_vmm_memory};
use crate::uffd::{PageContent, PageSource};

const GUEST: usize = 4 * MIB;
const PAGES: usize = GUEST / PAGE;

/// A stored three-build chain (generations 0, 1, 2) and the memory it must reproduce.
struct Chain {
    dir: tempfile::TempDir,
    header: MemoryHeader,
    memory: Vec<u8>,
    /// A data page whose current content lives in the middle build (generation 1).
    middle_page: usize,
}

fn build_chain() -> Chain {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("memfile.raw");
    let mut guest = SimulatedGuest::new(PAGES);
    // Boot: every fourth page and the last eighth of memory never written.
    for page in (0..PAGES * 7 / 8).filter(|p| p % 4 != 3) {
        guest.write_data(page, page as u64);
    }
    guest.pause_full(&raw);
    let full = store_vmm_memory(&raw, None, dir.path()).expect("full pause");

    for page in (0..PAGES).step_by(5) {
        guest.write_data(page, 10_000 + page as u64);
    }
    guest.write_zeros(1);
    guest.pause_diff(&raw);
    let first = store_vmm_memory(&raw, Some(&full), dir.path()).expect("first diff");

    for page in (0..PAGES).step_by(10) {
        guest.write_data(page, 20_000 + page as u64);
    }
    guest.write_data(PAGES - 2, 7); // into memory never written before
    guest.write_zeros(2);
    guest.pause_diff(&raw);
    let header = store_vmm_memory(&raw, Some(&first), dir.path()).expect("second diff");

    assert_eq!(header.generation, 2);
    assert_eq!(
        header.builds.len(),
        3,
        "every generation still serves pages"
    );
    let middle_page = 5;
    assert!(
        matches!(
            header.lookup((middle_page * PAGE) as u64),
            Some(Location::Build { build, .. }) if build == first.build_id
        ),
        "page {middle_page} comes from generation 1"
    );
    Chain {
        dir,
        header,
        memory: guest.memory,
        middle_page,
    }
}

impl Chain {
    fn zero_mapped(&self) -> Vec<bool> {
        (0..PAGES)
            .map(|p| self.header.lookup((p * PAGE) as u64) == Some(Location::Zero))
            .collect()
    }

    fn view(&self, dir: &Path) -> MemoryView {
        MemoryView::open(self.header.clone(), dir).expect("open the memory view")
    }
}

/// The view, counting reads of zero-mapped pages that did not come back as
/// [`PageContent::Zero`] (they would have read a build file, or been copied as data).
struct Watched {
    view: MemoryView,
    zero_mapped: Vec<bool>,
    zero_mapped_read_as_data: AtomicU64,
}

impl PageSource for Watched {
    fn size(&self) -> u64 {
        self.view.size()
    }

    fn block_size(&self) -> u64 {
        self.view.block_size()
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<PageContent> {
        let content = self.view.read(offset, buf)?;
        let first = offset as usize / PAGE;
        let all_zero_mapped = self.zero_mapped[first..first + buf.len().div_ceil(PAGE)]
            .iter()
            .all(|&z| z);
        if all_zero_mapped && content != PageContent::Zero {
            self.zero_mapped_read_as_data
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(content)
    }
}

/// Reads every page of the guest mapping on `threads` threads and compares it with `memory`.
fn check_every_page(guest: &Guest, memory: &[u8], threads: usize) -> Result<(), String> {
    let check = |page: usize| -> Result<(), String> {
        let addr = guest.base + page * PAGE;
        let at = guest.memory_of(addr) as usize;
        for w in 0..PAGE / 8 {
            let got = read_word(addr + w * 8);
            let bytes = &memory[at + w * 8..at + w * 8 + 8];
            let want = u64::from_ne_bytes(bytes.try_into().expect("8 bytes"));
            if got != want {
                return Err(format!(
                    "memory offset {:#x}: got {got:#x}, want {want:#x}",
                    at + w * 8
                ));
            }
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || (t..PAGES).step_by(threads).try_for_each(check)))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "reader panicked".to_owned())?)
    })
}

#[test]
fn a_stored_chain_is_served_page_by_page() {
    let _serial = serial();
    bounded("served chain", LIMIT, || {
        let chain = build_chain();
        let zero_mapped = chain.zero_mapped();
        let zero_pages = zero_mapped.iter().filter(|&&z| z).count() as u64;
        assert!(zero_pages > 0 && zero_pages < PAGES as u64);
        let source = Arc::new(Watched {
            view: chain.view(chain.dir.path()),
            zero_mapped,
            zero_mapped_read_as_data: AtomicU64::new(0),
        });
        let t = start_server(source.clone(), |_| {});
        let mut guest = Guest::new(GUEST);
        let _vmm = guest.handshake(&t.socket);
        t.server.wait_connected(CONNECT).expect("connected");

        check_every_page(&guest, &chain.memory, 2).expect("every page matches the pause");

        let stats = super::settled(&t.server);
        assert_eq!(stats.faults_served, PAGES as u64, "{stats:?}");
        assert_eq!(stats.zero_pages, zero_pages, "{stats:?}");
        assert_eq!(
            stats.bytes_copied,
            (PAGES as u64 - zero_pages) * PAGE as u64
        );
        assert_eq!(source.zero_mapped_read_as_data.load(Ordering::Relaxed), 0);
        assert!(stats.fatal.is_none());
        t.server.stop();
    });
}

#[test]
fn a_stored_chain_is_prefetched_whole() {
    let _serial = serial();
    bounded("prefetched chain", LIMIT, || {
        let chain = build_chain();
        let zero_mapped = chain.zero_mapped();
        let zero_pages = zero_mapped.iter().filter(|&&z| z).count() as u64;
        let source = Arc::new(Watched {
            view: chain.view(chain.dir.path()),
            zero_mapped,
            zero_mapped_read_as_data: AtomicU64::new(0),
        });
        let t = start_server(source.clone(), |o| o.tuning.prefetch = true);
        let mut guest = Guest::new(GUEST);
        let _vmm = guest.handshake(&t.socket);
        t.server.wait_connected(CONNECT).expect("connected");
        assert!(t.server.wait_prefetch(LIMIT), "{:?}", t.server.stats());

        assert!(
            resident(guest.base, GUEST).iter().all(|&r| r),
            "every page present"
        );
        check_every_page(&guest, &chain.memory, 2).expect("prefetched memory matches the pause");
        let stats = t.server.stats();
        assert!(stats.prefetch_done);
        assert_eq!(stats.events.pagefault, 0, "nothing faulted: {stats:?}");
        assert_eq!(stats.prefetched_pages, PAGES as u64, "{stats:?}");
        assert_eq!(stats.zero_pages, zero_pages, "{stats:?}");
        assert_eq!(source.zero_mapped_read_as_data.load(Ordering::Relaxed), 0);
        t.server.stop();
    });
}

#[test]
fn a_damaged_build_file_is_fatal_when_touched() {
    let _serial = serial();
    bounded("damaged chain", LIMIT, || {
        let chain = build_chain();
        let copy = tempfile::tempdir().expect("tempdir");
        for name in chain.header.build_files() {
            std::fs::copy(chain.dir.path().join(&name), copy.path().join(&name))
                .expect("copy a build file");
        }
        let memory = (chain.middle_page * PAGE) as u64;
        let Some(Location::Build {
            build,
            storage_offset,
        }) = chain.header.lookup(memory)
        else {
            panic!("page {} is not stored", chain.middle_page);
        };
        let name = chain.header.builds[&build].file_name.clone();
        let damaged = copy.path().join(&name);
        let mut bytes = std::fs::read(&damaged).expect("read the build file");
        bytes[storage_offset as usize + 100] ^= 0x01;
        std::fs::write(&damaged, &bytes).expect("damage the build file");

        let (tx, fatal) = mpsc::channel();
        let t = start_server(Arc::new(chain.view(copy.path())), move |o| {
            o.tuning.fault_deadline = Duration::from_secs(5);
            o.on_fatal = Some(Box::new(move |reason| {
                let _ = tx.send(reason);
            }));
        });
        let mut guest = Guest::new(GUEST);
        let _vmm = guest.handshake(&t.socket);
        t.server.wait_connected(CONNECT).expect("connected");

        // The harness announces the first half of the mapping as the second half of memory.
        let half = (GUEST / 2) as u64;
        let addr = guest.base + ((memory + half) % GUEST as u64) as usize;
        assert_eq!(guest.memory_of(addr), memory);
        // Released when the server closes the uffd after giving up.
        let toucher = std::thread::spawn(move || read_word(addr));
        let reason = fatal
            .recv_timeout(Duration::from_secs(20))
            .expect("on_fatal called");
        assert!(reason.contains("does not match its checksum"), "{reason}");
        assert!(reason.contains(&name), "names the damaged file: {reason}");
        toucher.join().expect("the faulting thread is released");
        assert_eq!(t.server.stats().fatal.as_deref(), Some(reason.as_str()));
        t.server.stop();
    });
}
