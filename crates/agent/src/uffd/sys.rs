//! The userfaultfd ABI (`linux/userfaultfd.h`) and thin, safe wrappers around its ioctls.
//!
//! libc 0.2 only exposes `SYS_userfaultfd`, so the structs, constants and request numbers are
//! written out here. Every struct is `#[repr(C)]` with the kernel's field order; the sizes are
//! asserted at compile time because they are encoded in the ioctl numbers (`_IOWR('\xAA', nr,
//! struct)`), which nix computes for the target architecture.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// `UFFD_API`: the only API version the kernel knows.
pub const UFFD_API: u64 = 0xAA;
/// The ioctl "type" byte of every userfaultfd request.
const UFFDIO: u8 = 0xAA;

pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_EVENT_FORK: u8 = 0x13;
pub const UFFD_EVENT_REMAP: u8 = 0x14;
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
pub const UFFD_EVENT_UNMAP: u8 = 0x16;

pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;

pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;

/// `struct uffdio_api` (24 bytes).
#[repr(C)]
#[derive(Debug, Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range` (16 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register` (32 bytes).
#[repr(C)]
#[derive(Debug, Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_copy` (40 bytes). `copy` is written back: bytes copied, or `-errno`.
#[repr(C)]
#[derive(Debug, Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffdio_zeropage` (32 bytes). `zeropage` is written back like `uffdio_copy.copy`.
#[repr(C)]
#[derive(Debug, Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

const _: () = assert!(std::mem::size_of::<UffdioApi>() == 24);
const _: () = assert!(std::mem::size_of::<UffdioRange>() == 16);
const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioCopy>() == 40);
const _: () = assert!(std::mem::size_of::<UffdioZeropage>() == 32);

/// `UFFDIO_REGISTER = _IOWR(UFFDIO, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: u64 =
    nix::request_code_readwrite!(UFFDIO, 0x00, std::mem::size_of::<UffdioRegister>()) as u64;
/// `UFFDIO_WAKE = _IOR(UFFDIO, 0x02, struct uffdio_range)`.
const UFFDIO_WAKE: u64 =
    nix::request_code_read!(UFFDIO, 0x02, std::mem::size_of::<UffdioRange>()) as u64;
/// `UFFDIO_COPY = _IOWR(UFFDIO, 0x03, struct uffdio_copy)`.
const UFFDIO_COPY: u64 =
    nix::request_code_readwrite!(UFFDIO, 0x03, std::mem::size_of::<UffdioCopy>()) as u64;
/// `UFFDIO_ZEROPAGE = _IOWR(UFFDIO, 0x04, struct uffdio_zeropage)`.
const UFFDIO_ZEROPAGE: u64 =
    nix::request_code_readwrite!(UFFDIO, 0x04, std::mem::size_of::<UffdioZeropage>()) as u64;
/// `UFFDIO_API = _IOWR(UFFDIO, 0x3F, struct uffdio_api)`.
const UFFDIO_API: u64 =
    nix::request_code_readwrite!(UFFDIO, 0x3F, std::mem::size_of::<UffdioApi>()) as u64;

// The values from the kernel headers on x86_64 and aarch64, as a cross-check of the layouts.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const _: () = {
    assert!(UFFDIO_API == 0xC018_AA3F);
    assert!(UFFDIO_REGISTER == 0xC020_AA00);
    assert!(UFFDIO_WAKE == 0x8010_AA02);
    assert!(UFFDIO_COPY == 0xC028_AA03);
    assert!(UFFDIO_ZEROPAGE == 0xC020_AA04);
};

/// Size of one `struct uffd_msg` (packed, 32 bytes).
pub const UFFD_MSG_SIZE: usize = 32;

/// One decoded `struct uffd_msg`.
#[derive(Debug)]
pub enum UffdEvent {
    /// A thread touched a missing page at `address` (not page-aligned).
    PageFault { address: u64, flags: u64 },
    /// The process forked; `child` is the child's new userfaultfd, installed in our fd table.
    Fork { child: OwnedFd },
    /// `mremap` moved `[from, from + len)` to `to`.
    Remap { from: u64, to: u64, len: u64 },
    /// `madvise(DONTNEED/REMOVE)` freed `[start, end)`; it reads as zeros from now on.
    Remove { start: u64, end: u64 },
    /// `munmap` removed `[start, end)`.
    Unmap { start: u64, end: u64 },
    /// An event this code does not know (logged and counted).
    Unknown { event: u8 },
}

fn u64_at(msg: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&msg[at..at + 8]);
    u64::from_ne_bytes(bytes)
}

/// Decodes one 32-byte message. The union starts at byte 8.
fn decode(msg: &[u8]) -> UffdEvent {
    match msg[0] {
        UFFD_EVENT_PAGEFAULT => UffdEvent::PageFault {
            flags: u64_at(msg, 8),
            address: u64_at(msg, 16),
        },
        UFFD_EVENT_FORK => {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(&msg[8..12]);
            let raw = u32::from_ne_bytes(bytes) as RawFd;
            // SAFETY: for a fork event the kernel installs a fresh descriptor (the child's
            // userfaultfd) in this process's fd table while the message is read, and passes its
            // number here. Nobody else knows the number, so taking ownership is sound.
            let child = unsafe { OwnedFd::from_raw_fd(raw) };
            UffdEvent::Fork { child }
        }
        UFFD_EVENT_REMAP => UffdEvent::Remap {
            from: u64_at(msg, 8),
            to: u64_at(msg, 16),
            len: u64_at(msg, 24),
        },
        UFFD_EVENT_REMOVE => UffdEvent::Remove {
            start: u64_at(msg, 8),
            end: u64_at(msg, 16),
        },
        UFFD_EVENT_UNMAP => UffdEvent::Unmap {
            start: u64_at(msg, 8),
            end: u64_at(msg, 16),
        },
        event => UffdEvent::Unknown { event },
    }
}

/// Reads every pending message (the fd is non-blocking). Returns an empty list when none is
/// pending. `buf` is scratch space, a multiple of [`UFFD_MSG_SIZE`].
pub fn read_events(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Vec<UffdEvent>> {
    let mut events = Vec::new();
    loop {
        match nix::unistd::read(fd, buf) {
            Ok(0) => return Ok(events),
            Ok(n) => {
                events.extend(buf[..n].chunks_exact(UFFD_MSG_SIZE).map(decode));
                if n < buf.len() {
                    return Ok(events);
                }
            }
            Err(Errno::EAGAIN) => return Ok(events),
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Makes `fd` non-blocking, so reading it after `poll` can never stall the serving loop.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// What a `UFFDIO_COPY`/`UFFDIO_ZEROPAGE` did: how many bytes it filled from the start of the
/// range, and the error that stopped it (if it did not fill everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filled {
    pub bytes: u64,
    pub error: Option<Errno>,
}

impl Filled {
    fn from_ioctl(rc: libc::c_int, written_back: i64) -> Self {
        let errno = (rc < 0).then(Errno::last);
        Filled {
            bytes: u64::try_from(written_back).unwrap_or(0),
            error: errno,
        }
    }
}

/// `UFFDIO_COPY`: atomically fills the missing pages at `dst` (an address in the registered
/// process) with `src`, and wakes the threads waiting on them.
pub fn copy(fd: BorrowedFd<'_>, dst: u64, src: &[u8]) -> Filled {
    let mut arg = UffdioCopy {
        dst,
        src: src.as_ptr() as u64,
        len: src.len() as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: `arg` is a valid `uffdio_copy` that lives across the call; the kernel reads
    // `src.len()` bytes from `src` (a live slice) and writes only `arg.copy`. `dst` is checked by
    // the kernel to lie in a range registered with this uffd, and only *missing* pages are filled
    // (present ones fail with EEXIST), so no memory anyone can observe changes underneath them.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_COPY as _, &mut arg) };
    Filled::from_ioctl(rc, arg.copy)
}

/// `UFFDIO_ZEROPAGE`: maps the shared zero page at the missing pages of `[dst, dst + len)`
/// (no memory is used until the guest writes). Not supported on hugetlbfs.
pub fn zeropage(fd: BorrowedFd<'_>, dst: u64, len: u64) -> Filled {
    let mut arg = UffdioZeropage {
        range: UffdioRange { start: dst, len },
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: `arg` is a valid `uffdio_zeropage` that lives across the call; the kernel writes
    // only `arg.zeropage`, and fills only missing pages of a registered range (see `copy`).
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_ZEROPAGE as _, &mut arg) };
    Filled::from_ioctl(rc, arg.zeropage)
}

/// `UFFDIO_WAKE`: wakes threads waiting on `[start, start + len)` without filling anything.
pub fn wake(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut arg = UffdioRange { start, len };
    // SAFETY: `arg` is a valid `uffdio_range` that lives across the call; the kernel only reads it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_WAKE as _, &mut arg) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a userfaultfd (`O_CLOEXEC | O_NONBLOCK`) and negotiates the API with `features`.
/// Firecracker does this on its side; the agent needs it only in tests and diagnostics.
pub fn create(features: u64) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer flags; it returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw =
        RawFd::try_from(raw).map_err(|_| io::Error::other("userfaultfd returned a bad fd"))?;
    // SAFETY: the syscall just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `api` is a valid `uffdio_api` that lives across the call; the kernel writes back
    // the supported features and ioctls into it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, &mut api) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// `UFFDIO_REGISTER` in MISSING mode for `[start, start + len)` of this process.
pub fn register_missing(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut arg = UffdioRegister {
        range: UffdioRange { start, len },
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: `arg` is a valid `uffdio_register` that lives across the call; the kernel validates
    // the range (it must be mapped in this process) and writes back `arg.ioctls`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_REGISTER as _, &mut arg) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_events_from_their_kernel_layout() {
        let mut msg = [0u8; UFFD_MSG_SIZE];
        msg[0] = UFFD_EVENT_PAGEFAULT;
        msg[8..16].copy_from_slice(&1u64.to_ne_bytes());
        msg[16..24].copy_from_slice(&0x7f00_1234u64.to_ne_bytes());
        assert!(matches!(
            decode(&msg),
            UffdEvent::PageFault {
                address: 0x7f00_1234,
                flags: 1
            }
        ));

        msg[0] = UFFD_EVENT_REMAP;
        msg[24..32].copy_from_slice(&0x2000u64.to_ne_bytes());
        assert!(matches!(
            decode(&msg),
            UffdEvent::Remap {
                from: 1,
                to: 0x7f00_1234,
                len: 0x2000
            }
        ));

        msg[0] = UFFD_EVENT_REMOVE;
        assert!(matches!(
            decode(&msg),
            UffdEvent::Remove {
                start: 1,
                end: 0x7f00_1234
            }
        ));
        msg[0] = 0x42;
        assert!(matches!(decode(&msg), UffdEvent::Unknown { event: 0x42 }));
    }
}
