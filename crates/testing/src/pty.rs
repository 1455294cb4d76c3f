//! Drives a program inside a real pseudo-terminal, as a user at a terminal would: the program
//! gets the pty as stdin/stdout/stderr and as its controlling terminal (new session), so raw
//! mode, window size and kernel-delivered SIGWINCH all behave as in a real terminal.
//!
//! ```ignore
//! let mut term = PtyProcess::spawn(Command::new(wrenn).args(["shell", id]), 100, 30)?;
//! term.wait_for_output("re-attach with", Duration::from_secs(10))?;
//! term.write(b"echo hi\r")?;
//! term.wait_for_output("hi", Duration::from_secs(5))?;
//! term.resize(120, 40)?;                      // the program receives SIGWINCH from the kernel
//! term.write(b"exit 3\r")?;
//! let status = term.wait_exit(Duration::from_secs(10))?;
//! assert_eq!(status.code(), Some(3));
//! assert!(term.is_cooked()?);                 // the program restored the terminal
//! ```

use nix::pty::{OpenptyResult, Winsize, openpty};
use nix::sys::termios::{LocalFlags, Termios, tcgetattr};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A child process attached to a pty, with everything it writes collected in the background.
pub struct PtyProcess {
    master: std::fs::File,
    /// Kept open so the terminal's settings can be read after the child exits.
    slave: Option<OwnedFd>,
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl PtyProcess {
    /// Starts `command` on a new `cols`×`rows` pty. The terminal starts in the kernel's default
    /// (cooked) mode.
    pub fn spawn(command: &mut Command, cols: u16, rows: u16) -> std::io::Result<Self> {
        let size = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let OpenptyResult { master, slave } = openpty(Some(&size), None)?;
        command
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave.try_clone()?));
        // SAFETY: between fork and exec the closure makes only async-signal-safe syscalls
        // (setsid, ioctl) and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                // A new session whose controlling terminal is the pty (stdin, fd 0): its
                // process group is then the terminal's foreground group and gets SIGWINCH.
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = command.spawn();
        // Drop the command's copies of the slave, or the reader would never see EOF.
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawned?;
        let master = std::fs::File::from(master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let mut master = master.try_clone()?;
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                // Ends with EIO once every slave descriptor is closed.
                while let Ok(count) = master.read(&mut buffer) {
                    if count == 0 {
                        break;
                    }
                    if let Ok(mut output) = output.lock() {
                        output.extend_from_slice(&buffer[..count]);
                    }
                }
            })
        };
        Ok(Self {
            master,
            slave: Some(slave),
            child,
            output,
            reader: Some(reader),
        })
    }

    /// Types bytes (a real Enter key is `\r`).
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.master.write_all(bytes)?;
        self.master.flush()
    }

    /// Everything the program wrote so far, lossily decoded.
    pub fn output(&self) -> String {
        let bytes = self
            .output
            .lock()
            .map(|bytes| bytes.clone())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits until the output contains `needle`; the error carries the output seen.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        wait_until(timeout, || self.output().contains(needle)).map_err(|_| {
            format!(
                "no {needle:?} in the terminal output after {timeout:?}; got {:?}",
                self.output()
            )
        })
    }

    /// Sets the window size; the kernel sends SIGWINCH to the program's process group.
    pub fn resize(&self, cols: u16, rows: u16) -> std::io::Result<()> {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `winsize` from the valid `size`; the fd is open.
        let result = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if result < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The terminal's current settings (as the program left them).
    pub fn termios(&self) -> std::io::Result<Termios> {
        let slave = self
            .slave
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the pty slave is closed"))?;
        Ok(tcgetattr(slave)?)
    }

    /// True in the default line mode (canonical input with echo).
    pub fn is_cooked(&self) -> std::io::Result<bool> {
        let flags = self.termios()?.local_flags;
        Ok(flags.contains(LocalFlags::ICANON | LocalFlags::ECHO))
    }

    /// True in raw mode (no canonical input, no echo).
    pub fn is_raw(&self) -> std::io::Result<bool> {
        let flags = self.termios()?.local_flags;
        Ok(!flags.intersects(LocalFlags::ICANON | LocalFlags::ECHO))
    }

    /// Waits for the program to exit; kills it if it does not in time.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!(
                        "the program did not exit within {timeout:?}; output {:?}",
                        self.output()
                    ));
                }
                Err(error) => return Err(format!("waiting for the program: {error}")),
            }
        }
    }

    /// The child's pid (e.g. to send it a signal).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PtyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Closing our slave lets the reader's read fail with EIO, so the thread ends.
        self.slave.take();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes; the error says how long
/// it waited.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if condition() {
        Ok(())
    } else {
        Err(format!("condition still false after {timeout:?}"))
    }
}
