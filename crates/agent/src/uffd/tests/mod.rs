//! The page server against a real userfaultfd in this process (needs root, as the agent does).

mod harness;
mod served_chain;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use harness::{
    Guest, MIB, PAGE, PatternSource, bounded, check_page, madvise_dontneed, map_anonymous,
    resident, serial, start_server, touch_pages,
};

use super::PageServer;
use super::regions::GuestRegion;
use crate::error::AgentError;

const GUEST: usize = 4 * MIB;
const PAGES: usize = GUEST / PAGE;
const LIMIT: Duration = Duration::from_secs(60);
const CONNECT: Duration = Duration::from_secs(20);

/// Stats once every fault read has been counted as served (bounded wait).
fn settled(server: &PageServer) -> super::PageServerStats {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = server.stats();
        if stats.faults_served >= stats.events.pagefault || std::time::Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn faults_are_served_with_the_source_pages_concurrently() {
    let _serial = serial();
    bounded("fault serving", LIMIT, || {
        let source = PatternSource::new(GUEST, 4096);
        let t = start_server(source.clone(), |o| o.tuning.workers = 4);
        let mut guest = Guest::new(GUEST);
        let _vmm = guest.handshake(&t.socket);
        t.server.wait_connected(CONNECT).expect("connected");

        // Every third page, scattered over both regions, from four threads at once.
        let pages: Vec<usize> = (0..PAGES).step_by(3).collect();
        touch_pages(&guest, &pages, 4).expect("pages match the source");

        // The faulting thread wakes inside the ioctl, just before the worker counts the fault.
        let stats = settled(&t.server);
        assert!(stats.connected);
        assert_eq!(stats.events.pagefault, pages.len() as u64, "{stats:?}");
        assert_eq!(stats.faults_served, pages.len() as u64, "{stats:?}");
        let zero = pages
            .iter()
            .filter(|&&p| PatternSource::is_zero_page(guest.memory_of(guest.base + p * PAGE)))
            .count() as u64;
        assert_eq!(
            stats.zero_pages, zero,
            "zero pages go through UFFDIO_ZEROPAGE"
        );
        assert_eq!(
            stats.bytes_copied,
            (pages.len() as u64 - zero) * PAGE as u64
        );
        assert_eq!(stats.prefetched_pages, 0);
        assert!(stats.fatal.is_none());
        t.server.stop();
        assert!(!t.socket.exists(), "stop removes the socket");
    });
}

#[test]
fn prefetch_installs_every_page_without_faults() {
    let _serial = serial();
    bounded("prefetch", LIMIT, || {
        // 64 KiB blocks: reads are split at block edges, copies coalesced up to 256 KiB.
        let source = PatternSource::new(GUEST, 64 * 1024);
        let t = start_server(source.clone(), |o| o.tuning.prefetch = true);
        let mut guest = Guest::new(GUEST);
        let _vmm = guest.handshake(&t.socket);
        t.server.wait_connected(CONNECT).expect("connected");
        assert!(t.server.wait_prefetch(LIMIT), "{:?}", t.server.stats());

        assert!(
            resident(guest.base, GUEST).iter().all(|&r| r),
            "every page present"
        );
        for p in 0..PAGES {
            let addr = guest.base + p * PAGE;
            check_page(addr, guest.memory_of(addr), false).expect("prefetched content");
        }
        let stats = t.server.stats();
        assert_eq!(stats.prefetched_pages, PAGES as u64);
        assert_eq!(stats.events.pagefault, 0, "nothing faulted: {stats:?}");
        assert!(stats.prefetch_done);
        assert!(
            source.reads.load(std::sync::atomic::Ordering::Relaxed) >= (GUEST / (64 * 1024)) as u64
        );
    });
}

#[test]
fn removed_ranges_read_as_zeros_and_prefetch_skips_them() {
    let _serial = serial();
    bounded("remove", LIMIT, || {
        let source = PatternSource::new(GUEST, 4096);
        source.close_gate(); // hold prefetch at its first read
        let t = start_server(source.clone(), |o| o.tuning.prefetch = true);
        let mut guest = Guest::new(GUEST);
        let _vmm = guest.handshake(&t.socket);
        t.server.wait_connected(CONNECT).expect("connected");

        // Pages 100..140 of the first region: freed before anything installed them.
        let untouched = guest.base + 100 * PAGE;
        madvise_dontneed(untouched, 40 * PAGE);
        source.open();

        // Pages 300..340: installed, then freed (balloon inflation).
        let pages: Vec<usize> = (300..340).collect();
        touch_pages(&guest, &pages, 2).expect("before removal");
        let touched = guest.base + 300 * PAGE;
        madvise_dontneed(touched, 20 * PAGE);

        assert!(t.server.wait_prefetch(LIMIT), "{:?}", t.server.stats());
        let present = resident(untouched, 40 * PAGE);
        assert!(present.iter().all(|&r| !r), "prefetch skipped freed pages");
        for p in (100..140).chain(300..320) {
            let addr = guest.base + p * PAGE;
            check_page(addr, guest.memory_of(addr), true).expect("freed pages read zeros");
        }
        for p in (320..340).chain(500..510) {
            let addr = guest.base + p * PAGE;
            check_page(addr, guest.memory_of(addr), false).expect("other pages keep data");
        }
        let stats = t.server.stats();
        assert!(stats.events.remove >= 2, "{stats:?}");
        assert!(stats.fatal.is_none() && !stats.vm_gone);
    });
}

#[test]
fn memory_freed_while_prefetch_runs_never_shows_snapshot_data() {
    let _serial = serial();
    bounded("remove during prefetch", LIMIT, || {
        for round in 0..10 {
            let source = PatternSource::new(GUEST, 4096);
            let t = start_server(source.clone(), |o| {
                o.tuning.prefetch = true;
                o.tuning.prefetch_chunk = 16 * 1024;
            });
            let mut guest = Guest::new(GUEST);
            let _vmm = guest.handshake(&t.socket);
            t.server.wait_connected(CONNECT).expect("connected");
            // Prefetch starts at memory offset 0, i.e. the second half of the mapping: free
            // that, in slices, while prefetch is filling it.
            for _ in 0..2 {
                for slice in 0..32 {
                    madvise_dontneed(guest.base + GUEST / 2 + slice * GUEST / 64, GUEST / 64);
                }
            }
            assert!(t.server.wait_prefetch(LIMIT), "{:?}", t.server.stats());
            for p in 0..PAGES {
                let addr = guest.base + p * PAGE;
                let freed = p >= PAGES / 2;
                check_page(addr, guest.memory_of(addr), freed)
                    .unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
        }
    });
}

#[test]
fn unmapped_and_remapped_ranges_are_followed() {
    let _serial = serial();
    bounded("unmap/remap", LIMIT, || {
        let source = PatternSource::new(GUEST, 4096);
        let t = start_server(source.clone(), |_| {});
        let mut guest = Guest::new(GUEST);
        let _vmm = guest.handshake(&t.socket);
        t.server.wait_connected(CONNECT).expect("connected");

        // A hole in the first region.
        harness::unmap(guest.base + 64 * PAGE, 16 * PAGE);
        // Move 64 pages of the second region (half of them already installed) elsewhere.
        let moved_from = guest.base + GUEST / 2 + 128 * PAGE;
        let moved_len = 64 * PAGE;
        let first_half: Vec<usize> = (0..32).map(|i| GUEST / 2 / PAGE + 128 + i).collect();
        touch_pages(&guest, &first_half, 1).expect("before the move");
        let target = map_anonymous(moved_len);
        guest.extra.push((target, moved_len));
        // SAFETY: moves a range of the test's own mapping onto the test's own reservation
        // (MREMAP_FIXED replaces it); nothing holds references into either.
        let moved = unsafe {
            libc::mremap(
                moved_from as *mut libc::c_void,
                moved_len,
                moved_len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                target as *mut libc::c_void,
            )
        };
        assert_eq!(
            moved as usize,
            target,
            "mremap: {}",
            std::io::Error::last_os_error()
        );

        for i in 0..64 {
            let memory = guest.memory_of(moved_from + i * PAGE);
            check_page(target + i * PAGE, memory, false).expect("moved pages at the new address");
        }
        let rest: Vec<usize> = (0..64).chain(80..120).chain(900..960).collect();
        touch_pages(&guest, &rest, 2).expect("pages outside the hole and the move");

        let stats = t.server.stats();
        assert!(
            stats.events.unmap >= 1 && stats.events.remap >= 1,
            "{stats:?}"
        );
        assert_eq!(stats.unknown_address_faults, 0);
        assert!(stats.fatal.is_none());
    });
}

#[test]
fn fork_events_are_absorbed() {
    let _serial = serial();
    bounded("fork", LIMIT, || {
        let source = PatternSource::new(GUEST, 4096);
        let t = start_server(source.clone(), |_| {});
        let mut guest = Guest::new(GUEST);
        let _vmm = guest.handshake(&t.socket);
        t.server.wait_connected(CONNECT).expect("connected");
        touch_pages(&guest, &[1, 2, 3], 1).expect("before fork");

        // SAFETY: the child only calls `_exit`, which is async-signal-safe, so forking a
        // multi-threaded process is sound.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: ends the child at once without running any of the parent's state.
            unsafe { libc::_exit(0) };
        }
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: waits for the child just forked; `status` is a valid out pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);

        touch_pages(&guest, &[10, 600, 700], 1).expect("after fork");
        let stats = t.server.stats();
        assert!(stats.events.fork >= 1, "{stats:?}");
        assert!(stats.fatal.is_none());
    });
}

#[test]
fn a_failing_source_is_fatal_within_the_deadline() {
    let _serial = serial();
    bounded("failing source", LIMIT, || {
        let source = PatternSource::new(GUEST, 4096);
        source
            .fail
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (tx, fatal) = mpsc::channel();
        let t = start_server(source.clone(), move |o| {
            o.tuning.fault_deadline = Duration::from_secs(5);
            o.on_fatal = Some(Box::new(move |reason| {
                let _ = tx.send(reason);
            }));
        });
        let mut guest = Guest::new(GUEST);
        let _vmm = guest.handshake(&t.socket);
        t.server.wait_connected(CONNECT).expect("connected");

        // The faulting thread is released when the server closes the uffd after giving up (in
        // production the VM is killed by `on_fatal` first, so the guest never runs on).
        let addr = guest.base + 5 * PAGE;
        let toucher = std::thread::spawn(move || harness::read_word(addr));
        let reason = fatal
            .recv_timeout(Duration::from_secs(20))
            .expect("on_fatal called");
        assert!(reason.contains("injected read failure"), "{reason}");
        assert!(
            reason.contains("offset 0x") && reason.contains("region 0"),
            "{reason}"
        );
        toucher.join().expect("the faulting thread is released");
        let stats = t.server.stats();
        assert_eq!(stats.fatal.as_deref(), Some(reason.as_str()));
        assert_eq!(
            source.reads.load(std::sync::atomic::Ordering::Relaxed),
            4,
            "1 + 3 retries"
        );
    });
}

#[test]
fn a_stuck_source_trips_the_fault_deadline() {
    let _serial = serial();
    bounded("stuck source", LIMIT, || {
        let source = PatternSource::new(GUEST, 4096);
        source.close_gate(); // reads block (up to 20 s)
        let (tx, fatal) = mpsc::channel();
        let t = start_server(source.clone(), move |o| {
            o.tuning.fault_deadline = Duration::from_secs(1);
            o.on_fatal = Some(Box::new(move |reason| {
                let _ = tx.send(reason);
            }));
        });
        let mut guest = Guest::new(GUEST);
        let _vmm = guest.handshake(&t.socket);
        t.server.wait_connected(CONNECT).expect("connected");

        let addr = guest.base + 7 * PAGE;
        let toucher = std::thread::spawn(move || harness::read_word(addr));
        let reason = fatal
            .recv_timeout(Duration::from_secs(20))
            .expect("on_fatal called");
        assert!(reason.contains("unresolved"), "{reason}");
        assert!(reason.contains(&format!("0x{addr:x}")), "{reason}");
        toucher.join().expect("the faulting thread is released");
        source.open(); // let the stuck worker go, so stop() joins it
        t.server.stop();
    });
}

#[test]
fn connect_timeout_and_bad_handshakes_are_reported() {
    let _serial = serial();
    bounded("handshake errors", LIMIT, || {
        let source = PatternSource::new(GUEST, 4096);

        // Nobody connects. A stale file at the socket path is replaced first.
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("stale.sock");
        std::fs::write(&socket, b"stale").expect("stale file");
        let opts = super::PageServerOptions {
            tuning: super::PageServerTuning {
                connect_timeout: Duration::from_millis(300),
                ..Default::default()
            },
            ..Default::default()
        };
        let server = PageServer::start(&socket, source.clone(), opts).expect("start");
        let err = server.wait_connected(CONNECT).expect_err("no VMM");
        assert!(matches!(err, AgentError::Timeout(_)), "{err:?}");
        assert!(err.to_string().contains("did not connect"), "{err}");
        drop(server);
        assert!(!socket.exists());

        // Garbage instead of JSON.
        let t = start_server(source.clone(), |_| {});
        let mut guest = Guest::new(GUEST);
        let _vmm = guest.send(&t.socket, b"[{\"base_host_virt_addr\": oops}]");
        let err = t.server.wait_connected(CONNECT).expect_err("bad JSON");
        assert!(matches!(err, AgentError::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains("JSON"), "{err}");

        // Well-formed, but the regions do not fit the snapshot.
        let t = start_server(source.clone(), |_| {});
        let mut guest = Guest::new(GUEST);
        let mut regions = guest.regions();
        regions[1].size *= 4;
        let json = super::handshake::regions_json(&regions);
        let _vmm = guest.send(&t.socket, &json);
        let err = t.server.wait_connected(CONNECT).expect_err("bad regions");
        assert!(err.to_string().contains("region 1"), "{err}");
    });
}

#[test]
fn serve_takes_an_already_received_uffd() {
    let _serial = serial();
    bounded("serve", LIMIT, || {
        let source: Arc<PatternSource> = PatternSource::new(GUEST, 4096);
        let mut guest = Guest::new(GUEST);
        let overlapping = vec![GuestRegion {
            base_host_virt_addr: guest.base as u64,
            size: (GUEST * 2) as u64,
            offset: 0,
            page_size: 4096,
        }];
        let err = PageServer::serve(
            guest.take_uffd(),
            overlapping,
            source.clone(),
            Default::default(),
        )
        .expect_err("regions larger than the source");
        assert!(err.to_string().contains("outside"), "{err}");

        let mut guest = Guest::new(GUEST);
        let regions = guest.regions();
        let server = PageServer::serve(guest.take_uffd(), regions, source, Default::default())
            .expect("serve");
        server.wait_connected(CONNECT).expect("connected at once");
        touch_pages(&guest, &[0, 511, 512, 1023], 2).expect("served");
        assert!(server.wait_prefetch(LIMIT));
        server.stop();
        server.stop(); // idempotent
    });
}
