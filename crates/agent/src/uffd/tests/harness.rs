//! A stand-in for Firecracker inside the test process: an anonymous mapping registered with a
//! real userfaultfd, handed to the page server over its Unix socket, plus a pattern source.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::uffd::regions::{BASE_PAGE, GuestRegion};
use crate::uffd::{
    PageContent, PageServer, PageServerOptions, PageServerTuning, PageSource, handshake, sys,
};

pub const PAGE: usize = BASE_PAGE as usize;
pub const MIB: usize = 1 << 20;

/// The uffd tests run one at a time: a `fork` or `mremap` in one test must not meet another
/// test's userfaultfd half set up.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `body` on its own thread and fails the test if it does not finish within `limit`
/// (a broken server leaves a faulting thread blocked forever).
pub fn bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(body());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => panic!("{what} did not finish within {limit:?}"),
        Err(RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("{what} ended without a result"),
        },
    }
}

/// Guest memory where every 8-byte word holds its own offset (tagged), except "zero pages"
/// (every fifth page from the fourth), which the source reports as [`PageContent::Zero`].
pub struct PatternSource {
    size: u64,
    block: u64,
    pub fail: AtomicBool,
    pub reads: AtomicU64,
    gate: Mutex<bool>,
    gate_changed: Condvar,
}

impl PatternSource {
    pub fn new(size: usize, block: u64) -> Arc<Self> {
        Arc::new(PatternSource {
            size: size as u64,
            block,
            fail: AtomicBool::new(false),
            reads: AtomicU64::new(0),
            gate: Mutex::new(true),
            gate_changed: Condvar::new(),
        })
    }

    pub fn is_zero_page(offset: u64) -> bool {
        (offset / BASE_PAGE) % 5 == 3
    }

    pub fn word(offset: u64) -> u64 {
        0x5A00_0000_0000_0000 | offset
    }

    /// While closed, reads block (up to `limit`) until [`open`](Self::open).
    pub fn close_gate(&self) {
        *self.gate.lock().unwrap_or_else(PoisonError::into_inner) = false;
    }

    pub fn open(&self) {
        *self.gate.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.gate_changed.notify_all();
    }

    fn wait_gate(&self, limit: Duration) {
        let gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = self
            .gate_changed
            .wait_timeout_while(gate, limit, |open| !*open);
    }
}

impl PageSource for PatternSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn block_size(&self) -> u64 {
        self.block
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<PageContent> {
        assert_eq!(offset % BASE_PAGE, 0, "unaligned read at {offset}");
        assert_eq!(buf.len() % PAGE, 0, "unaligned read length {}", buf.len());
        assert_eq!(
            offset / self.block,
            (offset + buf.len() as u64 - 1) / self.block,
            "read crosses a block"
        );
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.wait_gate(Duration::from_secs(20));
        if self.fail.load(Ordering::Relaxed) {
            return Err(io::Error::other("injected read failure"));
        }
        let mut all_zero = true;
        for (i, page) in buf.chunks_exact_mut(PAGE).enumerate() {
            let page_offset = offset + (i * PAGE) as u64;
            if Self::is_zero_page(page_offset) {
                page.fill(0);
                continue;
            }
            all_zero = false;
            for (w, word) in page.chunks_exact_mut(8).enumerate() {
                word.copy_from_slice(&Self::word(page_offset + w as u64 * 8).to_ne_bytes());
            }
        }
        Ok(if all_zero {
            PageContent::Zero
        } else {
            PageContent::Data
        })
    }
}

/// The "VM": an anonymous mapping registered (MISSING) with a userfaultfd that wants every
/// non-cooperative event. It is announced as two regions whose memory offsets are swapped
/// (first half → second half of memory), so address translation is exercised.
pub struct Guest {
    pub base: usize,
    pub len: usize,
    uffd: Option<OwnedFd>,
    /// Other mappings the test created (moved pieces), unmapped on drop.
    pub extra: Vec<(usize, usize)>,
}

impl Guest {
    pub fn new(len: usize) -> Guest {
        let features = sys::UFFD_FEATURE_EVENT_REMOVE
            | sys::UFFD_FEATURE_EVENT_UNMAP
            | sys::UFFD_FEATURE_EVENT_REMAP
            | sys::UFFD_FEATURE_EVENT_FORK;
        let uffd = sys::create(features).expect("userfaultfd (the tests need root)");
        let base = map_anonymous(len);
        sys::register_missing(uffd.as_fd(), base as u64, len as u64).expect("UFFDIO_REGISTER");
        Guest {
            base,
            len,
            uffd: Some(uffd),
            extra: Vec::new(),
        }
    }

    pub fn regions(&self) -> Vec<GuestRegion> {
        let half = (self.len / 2) as u64;
        vec![
            GuestRegion {
                base_host_virt_addr: self.base as u64,
                size: half,
                offset: half,
                page_size: BASE_PAGE,
            },
            GuestRegion {
                base_host_virt_addr: self.base as u64 + half,
                size: half,
                offset: 0,
                page_size: BASE_PAGE,
            },
        ]
    }

    /// Memory offset of a host address inside the original mapping.
    pub fn memory_of(&self, addr: usize) -> u64 {
        let half = self.len / 2;
        let at = addr - self.base;
        if at < half {
            (at + half) as u64
        } else {
            (at - half) as u64
        }
    }

    /// Connects to the server's socket and sends the regions and the uffd like Firecracker,
    /// then closes our copy of the uffd, so the server's is the only one (closing it releases
    /// any faulting thread).
    pub fn handshake(&mut self, socket: &Path) -> UnixStream {
        let json = handshake::regions_json(&self.regions());
        self.send(socket, &json)
    }

    pub fn send(&mut self, socket: &Path, json: &[u8]) -> UnixStream {
        let stream = UnixStream::connect(socket).expect("connect to the uffd socket");
        let uffd = self.uffd.take().expect("handshake once");
        handshake::send(&stream, json, uffd.as_fd()).expect("send the handshake");
        stream
    }

    /// Takes the uffd for [`PageServer::serve`].
    pub fn take_uffd(&mut self) -> OwnedFd {
        self.uffd.take().expect("uffd taken once")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        unmap(self.base, self.len);
        for &(addr, len) in &self.extra {
            unmap(addr, len);
        }
    }
}

pub fn map_anonymous(len: usize) -> usize {
    // SAFETY: a fresh private anonymous mapping at an address the kernel picks; no existing
    // memory is affected.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(
        addr,
        libc::MAP_FAILED,
        "mmap: {}",
        io::Error::last_os_error()
    );
    addr as usize
}

pub fn unmap(addr: usize, len: usize) {
    // SAFETY: unmaps a range this test mapped; nothing holds references into it.
    let rc = unsafe { libc::munmap(addr as *mut libc::c_void, len) };
    assert_eq!(rc, 0, "munmap: {}", io::Error::last_os_error());
}

/// Reads one word of guest memory (faulting it in through the server if missing).
pub fn read_word(addr: usize) -> u64 {
    // SAFETY: `addr` is 8-aligned and inside a live mapping the test owns; it is read as plain
    // integers, so any content is valid.
    unsafe { std::ptr::read_volatile(addr as *const u64) }
}

/// Checks every word of the page at `addr` against the pattern for memory offset `memory`
/// (zeros for a zero page, or when `expect_zero`).
pub fn check_page(addr: usize, memory: u64, expect_zero: bool) -> Result<(), String> {
    let zero = expect_zero || PatternSource::is_zero_page(memory);
    for w in 0..PAGE / 8 {
        let got = read_word(addr + w * 8);
        let want = if zero {
            0
        } else {
            PatternSource::word(memory + (w * 8) as u64)
        };
        if got != want {
            return Err(format!(
                "page at 0x{addr:x} (memory 0x{memory:x}) word {w}: got 0x{got:x}, want 0x{want:x}"
            ));
        }
    }
    Ok(())
}

/// Which pages of `[addr, addr + len)` are present, without touching them.
pub fn resident(addr: usize, len: usize) -> Vec<bool> {
    let mut vec = vec![0u8; len / PAGE];
    // SAFETY: `vec` has one byte per page of the range, which lies in a mapping the test owns;
    // mincore only writes into `vec`.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
    vec.iter().map(|b| b & 1 == 1).collect()
}

pub fn madvise_dontneed(addr: usize, len: usize) {
    // SAFETY: drops the pages of a range the test owns; later reads fault them in again.
    let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    assert_eq!(rc, 0, "madvise: {}", io::Error::last_os_error());
}

pub struct TestServer {
    pub server: PageServer,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

/// A page server on a fresh socket, without prefetch and with generous test deadlines;
/// `tweak` changes the options before it starts.
pub fn start_server(
    source: Arc<dyn PageSource>,
    tweak: impl FnOnce(&mut PageServerOptions),
) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("uffd.sock");
    let mut opts = PageServerOptions {
        tuning: PageServerTuning {
            connect_timeout: Duration::from_secs(20),
            fault_deadline: Duration::from_secs(20),
            prefetch: false,
            ..Default::default()
        },
        ..Default::default()
    };
    tweak(&mut opts);
    let server = PageServer::start(&socket, source, opts).expect("start the page server");
    TestServer {
        server,
        socket,
        _dir: dir,
    }
}

/// Reads pages (by index into the guest mapping) on `threads` threads and checks them.
pub fn touch_pages(guest: &Guest, pages: &[usize], threads: usize) -> Result<(), String> {
    let base = guest.base;
    let memory: Vec<(usize, u64)> = pages
        .iter()
        .map(|&p| {
            let addr = base + p * PAGE;
            (addr, guest.memory_of(addr))
        })
        .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let memory = &memory;
                scope.spawn(move || {
                    memory
                        .iter()
                        .skip(t)
                        .step_by(threads)
                        .try_for_each(|&(addr, mem)| check_page(addr, mem, false))
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "toucher panicked".to_owned())?)
    })
}
