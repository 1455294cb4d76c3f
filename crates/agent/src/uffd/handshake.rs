//! Firecracker's side of the `Uffd` memory backend handshake, and ours.
//!
//! Firecracker connects to the socket named in `PUT /snapshot/load` and sends, in one
//! `sendmsg`, a JSON array of `GuestRegionUffdMapping`s with the userfaultfd attached as
//! `SCM_RIGHTS`. Older Firecracker closes its end right after; newer keeps it open.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use super::regions::{GuestRegion, parse_regions};
use super::stop::StopSignal;
use crate::error::{AgentError, AgentResult};

/// One read of the handshake. Each region is ~100 bytes of JSON, so this holds hundreds of
/// regions in one go (upstream's 1024 bytes held about ten); longer messages are read on.
const READ_CHUNK: usize = 64 * 1024;
/// Upper bound on the whole handshake, so a peer cannot make us buffer without end.
const MAX_HANDSHAKE: usize = 4 * 1024 * 1024;
/// Descriptors accepted in one message: Firecracker sends one; extras are closed.
const MAX_FDS: usize = 8;

/// Binds `path`, replacing a stale socket file left by a crashed agent.
pub fn bind(path: &Path) -> AgentResult<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(path = %path.display(), "removed a stale uffd socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AgentError::io(path, e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| AgentError::io(path, e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| AgentError::io(path, e))?;
    Ok(listener)
}

/// Waits up to `timeout` for one connection. `Ok(None)` means stop was requested.
pub fn accept(
    listener: &UnixListener,
    path: &Path,
    timeout: Duration,
    stop: &StopSignal,
) -> AgentResult<Option<UnixStream>> {
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .map_err(|e| AgentError::io(path, e))?;
                return Ok(Some(stream));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(AgentError::io(path, e)),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(AgentError::Timeout(format!(
                "the VMM did not connect to the uffd socket {} within {timeout:?}",
                path.display()
            )));
        }
        let ready = stop
            .poll(Some(listener.as_fd()), left)
            .map_err(|e| AgentError::io(path, e))?;
        if ready.stopped {
            return Ok(None);
        }
    }
}

/// Receives the region list and the userfaultfd, waiting at most `timeout` for all of it.
/// `Ok(None)` means stop was requested.
pub fn receive(
    stream: &UnixStream,
    memory_size: u64,
    timeout: Duration,
    stop: &StopSignal,
) -> AgentResult<Option<(OwnedFd, Vec<GuestRegion>)>> {
    let deadline = Instant::now() + timeout;
    let mut json = Vec::new();
    let mut uffd: Option<OwnedFd> = None;
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(AgentError::Timeout(format!(
                "uffd handshake incomplete after {timeout:?} ({} bytes, fd {})",
                json.len(),
                if uffd.is_some() {
                    "received"
                } else {
                    "missing"
                }
            )));
        }
        let ready = stop
            .poll(Some(stream.as_fd()), left)
            .map_err(|e| handshake_error(format!("poll: {e}")))?;
        if ready.stopped {
            return Ok(None);
        }
        if !ready.readable && !ready.broken {
            continue;
        }
        let (bytes, fds) = recv_chunk(stream.as_fd(), &mut chunk)?;
        for fd in fds {
            if uffd.is_none() {
                uffd = Some(fd);
            } else {
                tracing::warn!("uffd handshake carried more than one descriptor; extras closed");
            }
        }
        json.extend_from_slice(&chunk[..bytes]);
        if json.len() > MAX_HANDSHAKE {
            return Err(handshake_error(format!(
                "message exceeds {MAX_HANDSHAKE} bytes"
            )));
        }
        let complete = match serde_json::from_slice::<serde::de::IgnoredAny>(&json) {
            Ok(_) => true,
            Err(e) => !e.is_eof(),
        };
        if complete || bytes == 0 {
            let regions = parse_regions(&json, memory_size)?;
            let uffd = uffd.ok_or_else(|| {
                handshake_error("no userfaultfd was attached (SCM_RIGHTS)".into())
            })?;
            return Ok(Some((uffd, regions)));
        }
    }
}

fn handshake_error(what: String) -> AgentError {
    AgentError::InvalidArgument(format!("bad uffd handshake: {what}"))
}

/// One `recvmsg`: bytes read into `buf` and the descriptors that came with them.
fn recv_chunk(socket: BorrowedFd<'_>, buf: &mut [u8]) -> AgentResult<(usize, Vec<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => break msg,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(handshake_error(format!("recvmsg: {e}"))),
        }
    };
    let mut fds = Vec::new();
    let cmsgs = msg
        .cmsgs()
        .map_err(|_| handshake_error("control data truncated (too many descriptors)".into()))?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: SCM_RIGHTS just installed these descriptors in our fd table; nothing
                // else knows them, so each is owned exactly once here.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok((msg.bytes, fds))
}

/// Sends a handshake the way Firecracker does: `json` and `uffd` in one message. Used by tests
/// and by tools that stand in for the VMM.
pub fn send(stream: &UnixStream, json: &[u8], uffd: BorrowedFd<'_>) -> std::io::Result<()> {
    let fds = [uffd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(json)],
        &cmsg,
        MsgFlags::empty(),
        None,
    )?;
    if sent < json.len() {
        use std::io::Write;
        (&*stream).write_all(&json[sent..])?;
    }
    Ok(())
}

/// The handshake JSON Firecracker ≥ 1.10 sends for `regions`.
pub fn regions_json(regions: &[GuestRegion]) -> Vec<u8> {
    let list: Vec<serde_json::Value> = regions
        .iter()
        .map(|r| {
            serde_json::json!({
                "base_host_virt_addr": r.base_host_virt_addr,
                "size": r.size,
                "offset": r.offset,
                "page_size": r.page_size,
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string().into_bytes()
}
