//! Starting a process: environment, user, working directory, terminal, and the tasks that pump
//! its output and wait for its end.

use super::pty::{self, PtyMaster};
use super::{Exit, Fanout, Input, Output, PIPE_CHUNK, PTY_CHUNK, Process, ProcessTable};
use crate::error::{EnvdError, Result};
use crate::state::Defaults;
use crate::user::Account;
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use wrenn_protocol::envd::process::ProcessConfig;

/// After a process exits, how long its output may keep flowing (a child that inherited the pipe
/// and still writes) before the end event is sent anyway.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything needed to start one process.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    pub config: ProcessConfig,
    /// Terminal size (cols, rows) for a PTY process.
    pub pty: Option<(u16, u16)>,
    pub tag: Option<String>,
    pub stdin: bool,
    pub account: Account,
    pub defaults: Defaults,
    /// `cgroup.procs` of the group the process joins (owned by the cgroup manager, which
    /// outlives the spawn); `None` leaves it in envd's group.
    pub cgroup: Option<RawFd>,
}

fn build_env(req: &SpawnRequest) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string()),
    );
    env.insert("HOME".into(), req.account.home.display().to_string());
    env.insert("USER".into(), req.account.name.clone());
    env.insert("LOGNAME".into(), req.account.name.clone());
    env.insert("SHELL".into(), req.account.shell.display().to_string());
    if req.pty.is_some() {
        env.insert("TERM".into(), "xterm-256color".into());
    }
    for (k, v) in &req.defaults.env_vars {
        env.insert(k.clone(), v.clone());
    }
    for (k, v) in &req.config.envs {
        env.insert(k.clone(), v.clone());
    }
    env
}

fn working_dir(req: &SpawnRequest) -> Result<std::path::PathBuf> {
    let dir = match req.config.cwd.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => req.account.resolve_path(c)?,
        None => match &req.defaults.workdir {
            Some(w) => w.clone(),
            None if req.account.home.is_dir() => req.account.home.clone(),
            None => "/".into(),
        },
    };
    if !dir.is_dir() {
        return Err(EnvdError::InvalidArgument(format!(
            "working directory {} does not exist or is not a directory",
            dir.display()
        )));
    }
    Ok(dir)
}

/// The credentials the child switches to before exec; `None` when envd already runs as the user.
struct Credentials {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

fn credentials(account: &Account) -> Result<Option<Credentials>> {
    if nix::unistd::geteuid().as_raw() == account.uid {
        return Ok(None);
    }
    let name = CString::new(account.name.clone())
        .map_err(|_| EnvdError::InvalidArgument("user name contains a NUL byte".into()))?;
    let groups = nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(account.gid))
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![account.gid]);
    Ok(Some(Credentials {
        uid: account.uid,
        gid: account.gid,
        groups,
    }))
}

/// Runs in the child between fork and exec: only async-signal-safe calls.
fn child_setup(
    cgroup: Option<RawFd>,
    creds: &Option<Credentials>,
    controlling_tty: bool,
) -> std::io::Result<()> {
    // First, while still privileged enough to write to cgroup.procs.
    if let Some(fd) = cgroup {
        crate::cgroups::join_in_child(fd);
    }
    // SAFETY (whole block): plain syscalls on values prepared before the fork.
    unsafe {
        if libc::setsid() < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // User code is what the kernel should kill first when the guest runs out of memory,
        // never envd.
        let path = c"/proc/self/oom_score_adj";
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            let _ = libc::write(fd, b"100".as_ptr().cast(), 3);
            libc::close(fd);
        }
        if let Some(c) = creds {
            if libc::setgroups(c.groups.len(), c.groups.as_ptr()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setgid(c.gid) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setuid(c.uid) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Starts a process. When `subscribe` is true the returned receiver is attached before the
/// process runs, so it sees all of its output.
pub async fn spawn(
    table: &Arc<ProcessTable>,
    req: SpawnRequest,
    subscribe: bool,
) -> Result<(Arc<Process>, Option<mpsc::Receiver<Output>>)> {
    if req.config.cmd.is_empty() {
        return Err(EnvdError::InvalidArgument("process.cmd is empty".into()));
    }
    if let Some(tag) = &req.tag
        && table.tag_in_use(tag)
    {
        return Err(EnvdError::AlreadyExists(format!(
            "a running process already has tag {tag:?}"
        )));
    }
    let cwd = working_dir(&req)?;
    let env = build_env(&req);
    let creds = credentials(&req.account)?;

    let mut cmd = std::process::Command::new(&req.config.cmd);
    cmd.args(&req.config.args)
        .env_clear()
        .envs(&env)
        .current_dir(&cwd);

    let mut master = None;
    if let Some((cols, rows)) = req.pty {
        let (m, slave) = pty::open(cols, rows)?;
        let dup = |fd: &std::os::fd::OwnedFd| {
            fd.try_clone()
                .map_err(|e| EnvdError::io("duplicating the terminal", e))
        };
        cmd.stdin(Stdio::from(dup(&slave)?))
            .stdout(Stdio::from(dup(&slave)?))
            .stderr(Stdio::from(slave));
        master = Some(PtyMaster::new(m));
    } else {
        cmd.stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    }
    let controlling_tty = master.is_some();
    let cgroup = req.cgroup;
    // SAFETY: the closure only makes async-signal-safe syscalls (see `child_setup`).
    unsafe {
        cmd.pre_exec(move || child_setup(cgroup, &creds, controlling_tty));
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(false);
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            EnvdError::InvalidArgument(format!("command {:?} not found: {e}", req.config.cmd))
        }
        std::io::ErrorKind::PermissionDenied => EnvdError::PermissionDenied(format!(
            "cannot start {:?} as {}: {e}",
            req.config.cmd, req.account.name
        )),
        _ => EnvdError::io(format!("starting {:?}", req.config.cmd), e),
    })?;
    // Dropping the command closes the parent's copies of the terminal's slave end, so reads on
    // the master see EOF once the process and its children are gone.
    drop(cmd);
    let pid = child
        .id()
        .ok_or_else(|| EnvdError::Internal("started process has no pid".into()))?;

    let input = match (&master, child.stdin.take()) {
        (Some(m), _) => Input::Pty(m.clone()),
        (None, Some(stdin)) => Input::Pipe(tokio::sync::Mutex::new(Some(stdin))),
        (None, None) => Input::None,
    };
    let process = Arc::new(Process {
        pid,
        tag: req.tag.clone(),
        config: req.config.clone(),
        input,
        fanout: Mutex::new(Fanout::default()),
    });
    let rx = if subscribe { process.subscribe() } else { None };
    table.insert(process.clone());

    let mut pumps = Vec::new();
    if let Some(m) = &master {
        pumps.push(pump_pty(process.clone(), m)?);
    }
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump_pipe(
            process.clone(),
            out,
            Output::Stdout,
        )));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump_pipe(
            process.clone(),
            err,
            Output::Stderr,
        )));
    }
    tracing::debug!(pid, cmd = %req.config.cmd, pty = master.is_some(), "process started");

    let table = table.clone();
    let waited = process.clone();
    tokio::spawn(async move {
        let exit = match child.wait().await {
            Ok(status) => exit_of(status),
            Err(e) => Exit {
                exit_code: -1,
                exited: false,
                status: "unknown".into(),
                error: Some(format!("waiting for the process: {e}")),
            },
        };
        let drain = futures::future::join_all(pumps.iter_mut());
        if tokio::time::timeout(OUTPUT_GRACE, drain).await.is_err() {
            tracing::debug!(
                pid,
                "output still open after exit; ending the stream anyway"
            );
            for p in &pumps {
                p.abort();
            }
        }
        table.remove(pid);
        tracing::debug!(pid, status = %exit.status, "process ended");
        waited.finish(exit).await;
    });
    Ok((process, rx))
}

/// Describes an exit status the way Go's `os.ProcessState` does, which clients show to users.
fn exit_of(status: std::process::ExitStatus) -> Exit {
    if let Some(code) = status.code() {
        return Exit {
            exit_code: code,
            exited: true,
            status: format!("exit status {code}"),
            error: None,
        };
    }
    let sig = status.signal().unwrap_or(0);
    let name = match sig {
        libc::SIGHUP => "hangup".to_string(),
        libc::SIGINT => "interrupt".to_string(),
        libc::SIGQUIT => "quit".to_string(),
        libc::SIGABRT => "aborted".to_string(),
        libc::SIGKILL => "killed".to_string(),
        libc::SIGSEGV => "segmentation fault".to_string(),
        libc::SIGPIPE => "broken pipe".to_string(),
        libc::SIGTERM => "terminated".to_string(),
        other => format!("signal {other}"),
    };
    Exit {
        exit_code: -1,
        exited: false,
        status: format!("signal: {name}"),
        error: None,
    }
}

async fn pump_pipe<R: AsyncRead + Unpin>(
    process: Arc<Process>,
    mut reader: R,
    wrap: fn(Bytes) -> Output,
) {
    let mut buf = BytesMut::with_capacity(PIPE_CHUNK);
    loop {
        buf.reserve(PIPE_CHUNK);
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => process.publish(wrap(buf.split().freeze())).await,
        }
    }
}

/// PTY masters are read on a dedicated thread (EIO marks the end), handing chunks to an async
/// pump through a small channel so backpressure still reaches the terminal.
fn pump_pty(process: Arc<Process>, master: &PtyMaster) -> Result<tokio::task::JoinHandle<()>> {
    use std::io::Read;
    let mut reader = master.reader()?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    std::thread::Builder::new()
        .name(format!("pty-{}", process.pid))
        .spawn(move || {
            let mut buf = vec![0u8; PTY_CHUNK];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                            break;
                        }
                    }
                }
            }
        })
        .map_err(|e| EnvdError::io("starting the terminal reader", e))?;
    Ok(tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            process.publish(Output::Pty(chunk)).await;
        }
    }))
}
