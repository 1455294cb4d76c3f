//! Running the host tools the builder drives (apt, dpkg, debootstrap, mkfs, make).
//!
//! Every failure names the command, the tail of its stderr and what the operator should do,
//! because the builder runs unattended from scripts and its errors are all the operator sees.

use crate::error::{AgentError, AgentResult};
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};

/// How many trailing output lines an error message quotes.
const TAIL_LINES: usize = 25;

/// A command line plus the advice given when it fails.
pub(crate) struct Cmd {
    inner: tokio::process::Command,
    program: String,
    display: String,
    hint: Option<String>,
}

impl Cmd {
    pub(crate) fn new(program: &str) -> Self {
        let mut inner = tokio::process::Command::new(program);
        inner.stdin(Stdio::null()).kill_on_drop(true);
        // Tools must not ask questions or translate the messages we parse.
        inner
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive");
        Cmd {
            inner,
            program: program.to_string(),
            display: program.to_string(),
            hint: None,
        }
    }

    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        let arg = arg.as_ref();
        self.display.push(' ');
        self.display.push_str(&arg.to_string_lossy());
        self.inner.arg(arg);
        self
    }

    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub(crate) fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.inner.env(key, value);
        self
    }

    pub(crate) fn current_dir(mut self, dir: &Path) -> Self {
        self.inner.current_dir(dir);
        self
    }

    /// What to tell the operator if the command fails.
    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Runs to completion and returns stdout. stderr is quoted in the error on failure.
    pub(crate) async fn output(mut self) -> AgentResult<String> {
        tracing::debug!(command = %self.display, "running");
        let out = self
            .inner
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| spawn_error(&self.program, &self.display, e))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let text = if stderr.trim().is_empty() {
            stdout
        } else {
            stderr
        };
        let tail: Vec<&str> = text.lines().collect();
        let tail = tail[tail.len().saturating_sub(TAIL_LINES)..].join("\n");
        Err(self.failure(&format!("{}: {}", out.status, tail.trim())))
    }

    /// Runs to completion, logging every output line (stdout and stderr) at debug level, for
    /// long-running tools whose progress is worth watching with `RUST_LOG=debug`.
    pub(crate) async fn stream(mut self) -> AgentResult<()> {
        tracing::debug!(command = %self.display, "running");
        let mut child = self
            .inner
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error(&self.program, &self.display, e))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(forward_lines(BufReader::new(out), tx.clone())));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(forward_lines(BufReader::new(err), tx.clone())));
        }
        drop(tx);
        let name = self.program.clone();
        let mut tail = VecDeque::with_capacity(TAIL_LINES);
        while let Some(line) = rx.recv().await {
            tracing::debug!(target: "wrenn_agent::image::tool", tool = %name, "{line}");
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        for r in readers {
            let _ = r.await;
        }
        let status = child
            .wait()
            .await
            .map_err(|e| spawn_error(&self.program, &self.display, e))?;
        if status.success() {
            return Ok(());
        }
        let tail: Vec<String> = tail.into_iter().collect();
        Err(self.failure(&format!("{status}: {}", tail.join("\n").trim())))
    }

    fn failure(&self, detail: &str) -> AgentError {
        let detail = match &self.hint {
            Some(h) => format!("{detail}\n=> {h}"),
            None => detail.to_string(),
        };
        AgentError::command(self.display.clone(), detail)
    }
}

async fn forward_lines<R: tokio::io::AsyncRead + Unpin>(
    reader: BufReader<R>,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut lines = reader.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.send(line).is_err() {
            break;
        }
    }
}

/// A tool that cannot even be started is almost always a missing Debian package.
fn spawn_error(program: &str, display: &str, e: std::io::Error) -> AgentError {
    if e.kind() == std::io::ErrorKind::NotFound {
        let package = match program {
            "debootstrap" => "debootstrap",
            "mkfs.ext4" | "e2fsck" | "dumpe2fs" => "e2fsprogs",
            "dpkg" | "dpkg-deb" => "dpkg",
            "apt-get" | "apt-cache" => "apt",
            "xz" => "xz-utils",
            "zstd" => "zstd",
            "tar" => "tar",
            "cp" => "coreutils",
            "make" => "make",
            "umount" => "mount",
            other => other,
        };
        return AgentError::Unavailable {
            what: program.to_string(),
            hint: format!(
                "install it (`apt-get install -y {package}`, or run scripts/build-image.sh, which installs everything the builder needs)"
            ),
        };
    }
    AgentError::command(display, format!("cannot start: {e}"))
}
