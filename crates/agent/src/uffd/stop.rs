//! The stop signal every page-server thread waits on: a flag plus an eventfd, so threads blocked
//! in `poll` (on the uffd, the listening socket, or a backoff sleep) wake at once.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct StopSignal {
    stopped: AtomicBool,
    event: OwnedFd,
}

/// Which descriptors `poll` found ready.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ready {
    pub readable: bool,
    /// The descriptor reported an error or hang-up.
    pub broken: bool,
    pub stopped: bool,
}

impl StopSignal {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with integer arguments; returns a new descriptor or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `eventfd` just returned this descriptor and nothing else owns it.
        let event = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(StopSignal {
            stopped: AtomicBool::new(false),
            event,
        })
    }

    /// Sets the flag and makes the eventfd readable (for good: it is never drained).
    pub fn trigger(&self) {
        if !self.stopped.swap(true, Ordering::AcqRel) {
            // A failed write could only mean the counter overflowed, i.e. it is already readable.
            let _ = nix::unistd::write(self.event.as_fd(), &1u64.to_ne_bytes());
        }
    }

    pub fn is_set(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Sleeps for `duration` unless stopped first. Returns `true` when stopped.
    pub fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        loop {
            if self.is_set() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if self.poll(None, left).is_err() {
                // poll cannot fail on two valid descriptors short of EINTR; fall back to a plain
                // sleep so the caller still backs off.
                std::thread::sleep(left.min(Duration::from_millis(10)));
            }
        }
    }

    /// Waits until `fd` is readable, the signal fires, or `timeout` passes.
    pub fn poll(&self, fd: Option<BorrowedFd<'_>>, timeout: Duration) -> io::Result<Ready> {
        let mut fds = [
            libc::pollfd {
                fd: self.event.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fd.map_or(-1, |fd| fd.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout_ms = libc::c_int::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call (a negative
        // fd is ignored by the kernel); the descriptors are borrowed, so they stay open.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(Ready {
                    stopped: self.is_set(),
                    ..Ready::default()
                });
            }
            return Err(err);
        }
        let revents = fds[1].revents;
        Ok(Ready {
            readable: revents & libc::POLLIN != 0,
            broken: revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0,
            stopped: self.is_set() || fds[0].revents != 0,
        })
    }
}
