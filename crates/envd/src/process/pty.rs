//! The master side of a pseudo-terminal.

use crate::error::{EnvdError, Result};
use bytes::Bytes;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

/// Opens a PTY pair sized `cols`×`rows`; returns (master, slave).
pub fn open(cols: u16, rows: u16) -> Result<(OwnedFd, OwnedFd)> {
    let size = nix::pty::Winsize {
        ws_row: rows.max(1),
        ws_col: cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pair = nix::pty::openpty(Some(&size), None)
        .map_err(|e| EnvdError::Internal(format!("opening a pseudo-terminal: {e}")))?;
    Ok((pair.master, pair.slave))
}

/// The master end, shared by the output reader, input writers and resizes.
#[derive(Clone)]
pub struct PtyMaster {
    fd: Arc<OwnedFd>,
}

impl PtyMaster {
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd: Arc::new(fd) }
    }

    /// A blocking reader over the master (for a dedicated thread).
    pub fn reader(&self) -> Result<std::fs::File> {
        let dup = self
            .fd
            .try_clone()
            .map_err(|e| EnvdError::io("duplicating the terminal", e))?;
        Ok(std::fs::File::from(dup))
    }

    /// Writes input to the terminal off the async runtime (a full terminal buffer blocks).
    pub async fn write(&self, data: Bytes) -> Result<()> {
        let mut file = self.reader()?;
        tokio::task::spawn_blocking(move || file.write_all(&data))
            .await
            .map_err(|e| EnvdError::Internal(format!("terminal writer: {e}")))?
            .map_err(|e| EnvdError::io("writing to the terminal", e))
    }

    pub fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        if cols == 0 || rows == 0 {
            return Err(EnvdError::InvalidArgument(format!(
                "terminal size {cols}x{rows}: columns and rows must be positive"
            )));
        }
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which lives across the call;
        // the fd is open for as long as `self.fd` is.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc != 0 {
            return Err(EnvdError::io(
                "resizing the terminal",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}
