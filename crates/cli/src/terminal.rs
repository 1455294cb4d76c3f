//! The local terminal: raw mode for `wrenn shell`, no-echo for the password prompt, and the
//! window size. Every mode change is undone by a guard on drop, and also by a panic hook (the
//! release profile aborts on panic, which skips destructors), so the user's terminal is never left
//! raw.

use crate::error::{CliError, CliResult};
use nix::sys::termios::{self, LocalFlags, SetArg, Termios};
use std::io::{BufRead, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Mutex;

/// The settings to put back if we die while a guard is active: (fd, original termios).
static SAVED_MODE: Mutex<Option<(RawFd, Termios)>> = Mutex::new(None);

/// Restores the saved terminal mode before the default panic output.
pub fn install_panic_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_saved_mode();
        default_hook(info);
    }));
}

/// Puts back whatever mode a live guard replaced. Safe to call at any time.
pub fn restore_saved_mode() {
    let saved = match SAVED_MODE.lock() {
        Ok(mut saved) => saved.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    if let Some((fd, original)) = saved {
        // SAFETY: the guard that saved `fd` borrows it for its whole life and clears the slot
        // before it ends, so the descriptor is still open while it is in SAVED_MODE.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = termios::tcsetattr(fd, SetArg::TCSADRAIN, &original);
    }
}

/// A terminal mode change, undone on drop.
#[derive(Debug)]
pub struct ModeGuard<'fd> {
    fd: BorrowedFd<'fd>,
    original: Termios,
}

impl<'fd> ModeGuard<'fd> {
    /// Raw mode (`cfmakeraw`): bytes pass through unprocessed, keys like Ctrl-C go to the
    /// remote program instead of signalling us, and output `\n` is not turned into `\r\n`.
    pub fn raw(fd: BorrowedFd<'fd>) -> CliResult<Self> {
        Self::apply(fd, termios::cfmakeraw)
    }

    /// Line input without echo, for secrets.
    pub fn no_echo(fd: BorrowedFd<'fd>) -> CliResult<Self> {
        Self::apply(fd, |mode| {
            mode.local_flags.remove(LocalFlags::ECHO);
            mode.local_flags.insert(LocalFlags::ECHONL);
        })
    }

    fn apply(fd: BorrowedFd<'fd>, change: impl FnOnce(&mut Termios)) -> CliResult<Self> {
        let terminal_error =
            |error: nix::Error| CliError::io("configuring the terminal", error.into());
        let original = termios::tcgetattr(fd).map_err(terminal_error)?;
        let mut changed = original.clone();
        change(&mut changed);
        if let Ok(mut saved) = SAVED_MODE.lock() {
            *saved = Some((fd.as_raw_fd(), original.clone()));
        }
        if let Err(error) = termios::tcsetattr(fd, SetArg::TCSADRAIN, &changed) {
            restore_saved_mode();
            return Err(terminal_error(error));
        }
        Ok(Self { fd, original })
    }
}

impl Drop for ModeGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut saved) = SAVED_MODE.lock() {
            saved.take();
        }
        let _ = termios::tcsetattr(self.fd, SetArg::TCSADRAIN, &self.original);
    }
}

/// Columns and rows of the terminal on `fd`, `None` when it is not a terminal (or reports 0).
pub fn window_size(fd: impl AsFd) -> Option<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the valid, exclusively borrowed `size`.
    let result = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (result == 0 && size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

/// Reads a password from the controlling terminal without echo (works even when stdin is
/// redirected, like `ssh`).
pub fn prompt_password(prompt: &str) -> CliResult<String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|error| {
            CliError::io(
                "no terminal to prompt for the password (use --password-stdin)",
                error,
            )
        })?;
    let mut writer = &tty;
    writer
        .write_all(prompt.as_bytes())
        .and_then(|()| writer.flush())
        .map_err(|error| CliError::io("writing the prompt", error))?;
    let line = {
        let _no_echo = ModeGuard::no_echo(tty.as_fd())?;
        let mut line = String::new();
        std::io::BufReader::new(&tty)
            .read_line(&mut line)
            .map_err(|error| CliError::io("reading the password", error))?;
        line
    };
    Ok(trim_line_end(line))
}

/// Strips one trailing `\n` or `\r\n` (a password may end in other whitespace).
pub fn trim_line_end(mut line: String) -> String {
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_line_end_keeps_inner_whitespace() {
        assert_eq!(trim_line_end("pa ss \r\n".into()), "pa ss ");
        assert_eq!(trim_line_end("x\n".into()), "x");
        assert_eq!(trim_line_end("x".into()), "x");
    }

    #[test]
    fn raw_mode_is_undone_on_drop_and_size_is_read() {
        let size = nix::pty::Winsize {
            ws_row: 33,
            ws_col: 111,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        assert_eq!(window_size(&pty.slave), Some((111, 33)));
        let cooked = termios::tcgetattr(&pty.slave).expect("tcgetattr");
        assert!(
            cooked
                .local_flags
                .contains(LocalFlags::ICANON | LocalFlags::ECHO)
        );
        {
            let _raw = ModeGuard::raw(pty.slave.as_fd()).expect("raw");
            let raw = termios::tcgetattr(&pty.slave).expect("tcgetattr");
            assert!(
                !raw.local_flags
                    .intersects(LocalFlags::ICANON | LocalFlags::ECHO)
            );
        }
        let restored = termios::tcgetattr(&pty.slave).expect("tcgetattr");
        assert!(
            restored
                .local_flags
                .contains(LocalFlags::ICANON | LocalFlags::ECHO)
        );
        let not_a_tty = std::fs::File::open("/dev/null").expect("open /dev/null");
        assert_eq!(window_size(&not_a_tty), None);
    }
}
