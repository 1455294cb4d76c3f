//! Processes started through the `process.Process` service.
//!
//! A process outlives the RPC that started it. Its output is read by one pump per stream and fanned
//! out to every attached subscriber through bounded channels: a slow subscriber slows the pump,
//! the pipe fills and the process waits, so nothing is dropped and memory stays bounded. With no
//! subscriber attached the output is drained and discarded, so a background process never blocks.

mod pty;
pub mod service;
mod spawn;

use crate::error::{EnvdError, Result};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use wrenn_protocol::envd::process::{ProcessConfig, ProcessInfo, process_selector::Selector};

pub use spawn::{SpawnRequest, spawn};

/// Capacity, in events, of each subscriber's channel.
const SUBSCRIBER_BUFFER: usize = 64;
/// Read size for pipe output.
const PIPE_CHUNK: usize = 32 * 1024;
/// Read size for PTY output.
const PTY_CHUNK: usize = 16 * 1024;

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
    Pty(Bytes),
    End(Exit),
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub exit_code: i32,
    pub exited: bool,
    pub status: String,
    pub error: Option<String>,
}

/// Input side of a process.
enum Input {
    Pipe(tokio::sync::Mutex<Option<tokio::process::ChildStdin>>),
    Pty(pty::PtyMaster),
    None,
}

/// One running process.
pub struct Process {
    pub pid: u32,
    pub tag: Option<String>,
    pub config: ProcessConfig,
    input: Input,
    fanout: Mutex<Fanout>,
}

#[derive(Default)]
struct Fanout {
    subscribers: Vec<mpsc::Sender<Output>>,
    ended: bool,
}

impl Process {
    /// Attaches a new subscriber; it sees output from now on. `None` once the process has ended.
    pub fn subscribe(&self) -> Option<mpsc::Receiver<Output>> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let mut f = self.fanout.lock().unwrap_or_else(|p| p.into_inner());
        if f.ended {
            return None;
        }
        f.subscribers.push(tx);
        Some(rx)
    }

    /// Delivers one event to every live subscriber, waiting for room in each (backpressure).
    async fn publish(&self, event: Output) {
        let subscribers: Vec<_> = {
            let mut f = self.fanout.lock().unwrap_or_else(|p| p.into_inner());
            f.subscribers.retain(|s| !s.is_closed());
            f.subscribers.clone()
        };
        for s in subscribers {
            // A subscriber that went away in the meantime is simply skipped.
            let _ = s.send(event.clone()).await;
        }
    }

    /// Marks the process ended and hands the end event to every subscriber, then lets their
    /// streams finish.
    async fn finish(&self, exit: Exit) {
        let subscribers = {
            let mut f = self.fanout.lock().unwrap_or_else(|p| p.into_inner());
            f.ended = true;
            std::mem::take(&mut f.subscribers)
        };
        for s in subscribers {
            let _ = s.send(Output::End(exit.clone())).await;
        }
    }

    pub fn is_pty(&self) -> bool {
        matches!(self.input, Input::Pty(_))
    }

    /// Writes to stdin (pipes) or the terminal (PTY).
    pub async fn write_input(&self, data: Bytes, to_pty: bool) -> Result<()> {
        match (&self.input, to_pty) {
            (Input::Pty(m), _) => m.write(data).await,
            (Input::Pipe(stdin), false) => {
                use tokio::io::AsyncWriteExt;
                let mut guard = stdin.lock().await;
                let w = guard.as_mut().ok_or_else(|| {
                    EnvdError::FailedPrecondition(format!(
                        "stdin of process {} is closed",
                        self.pid
                    ))
                })?;
                w.write_all(&data).await.map_err(|e| {
                    EnvdError::io(format!("writing to stdin of process {}", self.pid), e)
                })?;
                w.flush().await.map_err(|e| {
                    EnvdError::io(format!("flushing stdin of process {}", self.pid), e)
                })
            }
            (Input::Pipe(_), true) => Err(EnvdError::InvalidArgument(format!(
                "process {} has no terminal; send stdin instead",
                self.pid
            ))),
            (Input::None, _) => Err(EnvdError::FailedPrecondition(format!(
                "process {} was started without stdin",
                self.pid
            ))),
        }
    }

    /// Closes stdin so the process reads EOF.
    pub async fn close_stdin(&self) -> Result<()> {
        match &self.input {
            Input::Pipe(stdin) => {
                stdin.lock().await.take();
                Ok(())
            }
            Input::Pty(_) => Err(EnvdError::FailedPrecondition(format!(
                "process {} runs in a terminal; send Ctrl-D (0x04) instead of closing stdin",
                self.pid
            ))),
            Input::None => Ok(()),
        }
    }

    /// Resizes the terminal.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        match &self.input {
            Input::Pty(m) => m.resize(cols, rows),
            _ => Err(EnvdError::FailedPrecondition(format!(
                "process {} has no terminal to resize",
                self.pid
            ))),
        }
    }

    /// Signals the process and its process group (it leads one), so children die with it.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.pid as i32);
        match nix::sys::signal::killpg(pid, signal) {
            Ok(()) => Ok(()),
            Err(_) => nix::sys::signal::kill(pid, signal).map_err(|e| {
                EnvdError::NotFound(format!("process {} cannot be signalled: {e}", self.pid))
            }),
        }
    }

    pub fn info(&self) -> ProcessInfo {
        ProcessInfo {
            config: Some(self.config.clone()),
            pid: self.pid,
            tag: self.tag.clone(),
        }
    }
}

/// The processes envd is running, by pid.
#[derive(Default)]
pub struct ProcessTable {
    by_pid: Mutex<HashMap<u32, Arc<Process>>>,
}

impl ProcessTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Process>>> {
        self.by_pid.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        let mut v: Vec<_> = self.lock().values().map(|p| p.info()).collect();
        v.sort_by_key(|p| p.pid);
        v
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn tag_in_use(&self, tag: &str) -> bool {
        self.lock().values().any(|p| p.tag.as_deref() == Some(tag))
    }

    /// Finds a process by pid or tag.
    pub fn get(&self, selector: Option<&Selector>) -> Result<Arc<Process>> {
        let table = self.lock();
        match selector {
            Some(Selector::Pid(pid)) => table
                .get(pid)
                .cloned()
                .ok_or_else(|| EnvdError::NotFound(format!("process with pid {pid} not found"))),
            Some(Selector::Tag(tag)) => table
                .values()
                .find(|p| p.tag.as_deref() == Some(tag.as_str()))
                .cloned()
                .ok_or_else(|| EnvdError::NotFound(format!("process with tag {tag:?} not found"))),
            None => Err(EnvdError::InvalidArgument(
                "a process selector (pid or tag) is required".into(),
            )),
        }
    }

    fn insert(&self, p: Arc<Process>) {
        self.lock().insert(p.pid, p);
    }

    fn remove(&self, pid: u32) {
        self.lock().remove(&pid);
    }

    /// Kills every process (envd shutting down).
    pub fn kill_all(&self) {
        for p in self.lock().values() {
            let _ = p.signal(nix::sys::signal::Signal::SIGKILL);
        }
    }
}
