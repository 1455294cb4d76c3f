//! The command, terminal and file operations behind the host agent's RPCs, against a real envd
//! running on the host (no VM): `envd_ops` takes only an `EnvdClient`, so it runs unchanged.
//!
//! The envd binary is `<target>/debug/envd`; it is built with `cargo build -p envd` when missing.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wrenn_agent::sandbox::envd::EnvdClient;
use wrenn_agent::sandbox::envd_ops::{
    self as ops, EventStream, Exit, ProcessEvent, ProcessSpec, Selector, Signal,
};
use wrenn_protocol::connect::{Code, Error as RpcError};

/// One envd process for one test, stopped (SIGTERM, which also ends its children) on drop.
struct Envd {
    child: Child,
    base: String,
    _run_dir: tempfile::TempDir,
}

impl Drop for Envd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `<target>/debug/envd`: this test runs as `<target>/debug/deps/rpc_ops-<hash>`.
fn envd_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(Path::parent).unwrap();
    let bin = debug.join("envd");
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "envd"])
                .status()
                .expect("running cargo build -p envd");
            assert!(status.success(), "cargo build -p envd failed");
        }
    });
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p envd`",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Envd {
    async fn start() -> (Envd, EnvdClient) {
        let port = free_port();
        let run_dir = tempfile::tempdir().unwrap();
        let child = Command::new(envd_binary())
            .args(["--isnotfc", "--listen-address", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--run-dir")
            .arg(run_dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("envd starts");
        let envd = Envd {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _run_dir: run_dir,
        };
        let client = EnvdClient::with_base("sb-test", &envd.base);
        client
            .wait_ready(Duration::from_secs(10), || true)
            .await
            .expect("envd answers /health");
        (envd, client)
    }
}

fn spec(cmd: &str, args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        cmd: cmd.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn sh(script: &str) -> ProcessSpec {
    spec("/bin/sh", &["-c", script])
}

/// Every event until the stream ends (or the test's patience does).
async fn collect(mut events: EventStream) -> (Vec<ProcessEvent>, Option<RpcError>) {
    let mut out = Vec::new();
    let read = async {
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev) => out.push(ev),
                Err(e) => return Some(e),
            }
        }
        None
    };
    let err = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the process stream ends");
    (out, err)
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn running_pids(envd: &EnvdClient) -> Vec<u32> {
    ops::list_processes(envd)
        .await
        .unwrap()
        .iter()
        .map(|p| p.pid)
        .collect()
}

/// Reads a PTY stream until its output contains `needle`.
async fn read_until(events: &mut EventStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let read = async {
        while let Some(ev) = events.next().await {
            if let ProcessEvent::Pty(b) = ev.unwrap() {
                seen.extend_from_slice(&b);
                if String::from_utf8_lossy(&seen).contains(needle) {
                    return;
                }
            }
        }
        panic!("stream ended before {needle:?} appeared");
    };
    if tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .is_err()
    {
        panic!(
            "no {needle:?} in the terminal output: {:?}",
            String::from_utf8_lossy(&seen)
        );
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Tests that measure or spend a lot of memory run one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// Exec

#[tokio::test]
async fn exec_reports_exit_code_and_splits_output() {
    let (_e, envd) = Envd::start().await;
    let out = ops::exec(
        &envd,
        &sh("echo out; echo err >&2; exit 3"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(&out.stdout[..], b"out\n");
    assert_eq!(&out.stderr[..], b"err\n");
    assert_eq!(
        out.exit,
        Exit {
            exit_code: 3,
            error: String::new()
        }
    );

    // Arguments reach the program as given: no shell expands them.
    let out = ops::exec(
        &envd,
        &spec("/bin/echo", &["$HOME", "a  b"]),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(&out.stdout[..], b"$HOME a  b\n");

    // Killed by a signal: no exit code, the reason in `error`.
    let out = ops::exec(&envd, &sh("kill -9 $$"), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(out.exit.exit_code, -1);
    assert_eq!(out.exit.error, "signal: killed");

    let err = ops::exec(
        &envd,
        &spec("/no/such/program", &[]),
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert_ne!(err.code, Code::Unknown, "{err}");
    let err = ops::exec(&envd, &spec("", &[]), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
}

#[tokio::test]
async fn exec_honours_envs_cwd_and_user() {
    let (_e, envd) = Envd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = sh("echo \"$FOO\"; pwd; id -un");
    s.envs.insert("FOO".into(), "bar baz".into());
    s.cwd = dir.path().display().to_string();
    s.user = "root".into();
    let out = ops::exec(&envd, &s, Duration::from_secs(10)).await.unwrap();
    let expected = format!("bar baz\n{}\nroot\n", dir.path().display());
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);

    let mut s = sh("true");
    s.user = "no-such-user-here".into();
    assert!(ops::exec(&envd, &s, Duration::from_secs(10)).await.is_err());
}

#[tokio::test]
async fn exec_timeout_kills_the_process() {
    let (_e, envd) = Envd::start().await;
    let started = Instant::now();
    let err = ops::exec(
        &envd,
        &sh("sleep 30; : exec-timeout-marker"),
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::DeadlineExceeded, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    eventually("the timed-out process to be gone", || async {
        ops::list_processes(&envd)
            .await
            .unwrap()
            .iter()
            .all(|p| !p.args.concat().contains("exec-timeout-marker"))
    })
    .await;
}

#[tokio::test]
async fn exec_output_is_capped() {
    let _heavy = HEAVY.lock().await;
    let (_e, envd) = Envd::start().await;
    let limit = ops::EXEC_OUTPUT_LIMIT.to_string();
    let err = ops::exec(
        &envd,
        &sh(&format!("head -c $(({limit} + 1)) /dev/zero; sleep 30")),
        Duration::from_secs(60),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::ResourceExhausted, "{err}");
    assert!(err.message.contains("ExecStream"), "{err}");
    eventually("the chatty process to be killed", || async {
        ops::list_processes(&envd).await.unwrap().is_empty()
    })
    .await;
}

#[tokio::test]
async fn exec_stream_events_arrive_in_order() {
    let (_e, envd) = Envd::start().await;
    let events = ops::exec_stream(
        &envd,
        &sh("echo one; sleep 0.1; echo two >&2; sleep 0.1; echo three; exit 5"),
        None,
    )
    .await
    .unwrap();
    let (events, err) = collect(events).await;
    assert!(err.is_none(), "{err:?}");
    assert!(matches!(events.first(), Some(ProcessEvent::Started { pid }) if *pid > 0));
    assert_eq!(
        events.last(),
        Some(&ProcessEvent::Ended(Exit {
            exit_code: 5,
            error: String::new()
        }))
    );
    let data: Vec<_> = events[1..events.len() - 1].to_vec();
    assert_eq!(
        data,
        vec![
            ProcessEvent::Stdout(Bytes::from_static(b"one\n")),
            ProcessEvent::Stderr(Bytes::from_static(b"two\n")),
            ProcessEvent::Stdout(Bytes::from_static(b"three\n")),
        ]
    );
}

#[tokio::test]
async fn exec_stream_timeout_and_drop_kill_the_process() {
    let (_e, envd) = Envd::start().await;
    // Timeout: the stream ends with deadline_exceeded and the process is gone.
    let events = ops::exec_stream(&envd, &sh("sleep 30"), Some(Duration::from_millis(300)))
        .await
        .unwrap();
    let (events, err) = collect(events).await;
    let Some(ProcessEvent::Started { pid }) = events.first().cloned() else {
        panic!("no start event: {events:?}");
    };
    assert_eq!(err.map(|e| e.code), Some(Code::DeadlineExceeded));
    eventually("the timed-out process to be gone", || async {
        !running_pids(&envd).await.contains(&pid)
    })
    .await;

    // Dropping the stream (the client went away) kills a foreground process.
    let mut events = ops::exec_stream(&envd, &sh("sleep 30"), None)
        .await
        .unwrap();
    let Some(Ok(ProcessEvent::Started { pid })) = events.next().await else {
        panic!("no start event");
    };
    assert!(running_pids(&envd).await.contains(&pid));
    drop(events);
    eventually("the abandoned process to be killed", || async {
        !running_pids(&envd).await.contains(&pid)
    })
    .await;
}

#[tokio::test]
async fn background_process_list_connect_and_kill() {
    let (_e, envd) = Envd::start().await;
    let pid = ops::start_background(
        &envd,
        &sh("while true; do echo tick; sleep 0.05; done"),
        "bg-1",
    )
    .await
    .unwrap();
    // It keeps running after start_background returned.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let list = ops::list_processes(&envd).await.unwrap();
    let p = list.iter().find(|p| p.pid == pid).expect("listed");
    assert_eq!(p.tag, "bg-1");
    assert_eq!(p.cmd, "/bin/sh");
    assert_eq!(p.args[0], "-c");

    // A second process may not take the same tag.
    let err = ops::start_background(&envd, &sh("sleep 5"), "bg-1")
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::AlreadyExists, "{err}");

    let mut events = ops::connect(&envd, Selector::Tag("bg-1".into()))
        .await
        .unwrap();
    assert_eq!(
        events.next().await.unwrap().unwrap(),
        ProcessEvent::Started { pid }
    );
    assert_eq!(
        events.next().await.unwrap().unwrap(),
        ProcessEvent::Stdout(Bytes::from_static(b"tick\n"))
    );
    // Leaving a connected stream does not stop the process.
    drop(events);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(running_pids(&envd).await.contains(&pid));

    let events = ops::connect(&envd, Selector::Pid(pid)).await.unwrap();
    ops::signal(&envd, Selector::Tag("bg-1".into()), Signal::Sigterm)
        .await
        .unwrap();
    let (events, err) = collect(events).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        events.last(),
        Some(&ProcessEvent::Ended(Exit {
            exit_code: -1,
            error: "signal: terminated".into()
        }))
    );
    assert!(!running_pids(&envd).await.contains(&pid));

    let err = ops::signal(&envd, Selector::Tag("bg-1".into()), Signal::Sigkill)
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound, "{err}");
    let err = ops::connect(&envd, Selector::Tag(String::new()))
        .await
        .err();
    assert_eq!(err.map(|e| e.code), Some(Code::InvalidArgument));

    assert_eq!(ops::parse_signal("").unwrap(), Signal::Sigkill);
    assert_eq!(ops::parse_signal("SIGTERM").unwrap(), Signal::Sigterm);
    assert_eq!(
        ops::parse_signal("SIGHUP").unwrap_err().code,
        Code::InvalidArgument
    );
}

// ---------------------------------------------------------------------------------------------
// Terminals

#[tokio::test]
async fn pty_input_resize_reattach_and_kill() {
    let (_e, envd) = Envd::start().await;
    let mut events = ops::pty_start(&envd, &spec("/bin/sh", &[]), "term-1", (80, 24))
        .await
        .unwrap();
    let Some(Ok(ProcessEvent::Started { pid })) = events.next().await else {
        panic!("no start event");
    };

    ops::pty_input(
        &envd,
        "term-1",
        Bytes::from_static(b"echo hi $((40 + 2))\n"),
    )
    .await
    .unwrap();
    read_until(&mut events, "hi 42").await;

    ops::pty_resize(&envd, "term-1", 100, 40).await.unwrap();
    ops::pty_input(&envd, "term-1", Bytes::from_static(b"stty size\n"))
        .await
        .unwrap();
    read_until(&mut events, "40 100").await;

    for (cols, rows) in [(0, 10), (10, 0), (1001, 10), (10, 1001)] {
        let err = ops::pty_resize(&envd, "term-1", cols, rows)
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::InvalidArgument, "{cols}x{rows}");
    }
    assert_eq!(
        ops::pty_input(&envd, "", Bytes::new())
            .await
            .unwrap_err()
            .code,
        Code::InvalidArgument
    );

    // Leave, then re-attach by tag with a new size: same process, still working.
    drop(events);
    let mut events = ops::pty_attach(&envd, "term-1", Some((120, 30)))
        .await
        .unwrap();
    assert_eq!(
        events.next().await.unwrap().unwrap(),
        ProcessEvent::Started { pid }
    );
    ops::pty_input(&envd, "term-1", Bytes::from_static(b"stty size\n"))
        .await
        .unwrap();
    read_until(&mut events, "30 120").await;

    ops::pty_kill(&envd, "term-1").await.unwrap();
    let (rest, err) = collect(events).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        rest.last(),
        Some(&ProcessEvent::Ended(Exit {
            exit_code: -1,
            error: "signal: killed".into()
        }))
    );
    assert_eq!(
        ops::pty_kill(&envd, "term-1").await.unwrap_err().code,
        Code::NotFound
    );
}

// ---------------------------------------------------------------------------------------------
// Files

#[tokio::test]
async fn file_round_trip_and_errors() {
    let (_e, envd) = Envd::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Spaces, `?`, `&` and `#` must survive the query string.
    let path = dir.path().join("new dir/a?b&c#d.bin");
    let path = path.to_str().unwrap();
    let content: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    ops::write_file(&envd, path, Bytes::from(content.clone()))
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), content);
    assert_eq!(
        &ops::read_file(&envd, path).await.unwrap()[..],
        &content[..]
    );

    // Overwrite with an empty file.
    ops::write_file(&envd, path, Bytes::new()).await.unwrap();
    assert!(ops::read_file(&envd, path).await.unwrap().is_empty());

    let missing = dir.path().join("missing.txt");
    let err = ops::read_file(&envd, missing.to_str().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound, "{err}");
    assert!(err.message.starts_with("envd: "), "{err}");
    let err = match ops::read_file_stream(&envd, missing.to_str().unwrap()).await {
        Err(e) => e,
        Ok(_) => panic!("a stream of a missing file"),
    };
    assert_eq!(err.code, Code::NotFound, "{err}");

    let err = ops::read_file(&envd, dir.path().to_str().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    let err = ops::write_file(&envd, "", Bytes::new()).await.unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);

    // ReadFile refuses what does not fit one message, pointing at ReadFileStream.
    let big = dir.path().join("big.sparse");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(ops::READ_FILE_LIMIT + 1)
        .unwrap();
    let err = ops::read_file(&envd, big.to_str().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::ResourceExhausted, "{err}");
    assert!(err.message.contains("ReadFileStream"), "{err}");
}

/// A deterministic, incompressible-enough pattern: byte `i` of the file.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn large_files_stream_in_constant_memory() {
    const SIZE: u64 = 20 * 1000 * 1000;
    const CHUNK: u64 = 256 * 1024;
    let _heavy = HEAVY.lock().await;
    let (_e, envd) = Envd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let path = path.to_str().unwrap();

    // Reset the peak RSS, then move 20 MB each way; the peak must stay far below the file size.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let baseline = status_kib("VmRSS:");

    let chunks = futures::stream::iter((0..SIZE.div_ceil(CHUNK)).map(|c| {
        let start = c * CHUNK;
        let end = (start + CHUNK).min(SIZE);
        Ok(Bytes::from((start..end).map(pattern).collect::<Vec<u8>>()))
    }));
    let written = ops::write_file_stream(&envd, path, chunks).await.unwrap();
    assert_eq!(written, SIZE);
    assert_eq!(std::fs::metadata(path).unwrap().len(), SIZE);

    let mut stream = ops::read_file_stream(&envd, path).await.unwrap();
    let mut offset = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(!chunk.is_empty() && chunk.len() <= ops::STREAM_CHUNK);
        for (i, b) in chunk.iter().enumerate() {
            assert_eq!(*b, pattern(offset + i as u64), "byte {}", offset + i as u64);
        }
        offset += chunk.len() as u64;
    }
    assert_eq!(offset, SIZE);

    let peak = status_kib("VmHWM:");
    let grew_mib = peak.saturating_sub(baseline) / 1024;
    assert!(
        grew_mib < 12,
        "peak RSS grew by {grew_mib} MiB moving a 20 MB file"
    );
}

#[tokio::test]
async fn failed_stream_upload_leaves_nothing() {
    let (_e, envd) = Envd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.bin");
    let chunks = futures::stream::iter(vec![
        Ok(Bytes::from(vec![1u8; 100_000])),
        Ok(Bytes::from(vec![2u8; 100_000])),
        Err(RpcError::new(Code::Canceled, "the client went away")),
        Ok(Bytes::from(vec![3u8; 100_000])),
    ]);
    let err = ops::write_file_stream(&envd, path.to_str().unwrap(), chunks)
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::Canceled);
    eventually("envd to discard the partial upload", || async {
        std::fs::read_dir(dir.path()).unwrap().next().is_none()
    })
    .await;
    // And after a while still nothing was committed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!path.exists());

    // envd refusing an upload part-way (the target is a directory) is reported as envd said,
    // not as a broken connection, and the source is not read to its end.
    let pulled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = pulled.clone();
    let chunks = futures::stream::iter(0..200).map(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Bytes::from(vec![0u8; 1024 * 1024]))
    });
    let err = ops::write_file_stream(&envd, dir.path().to_str().unwrap(), chunks)
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    assert!(err.message.contains("is a directory"), "{err}");
    assert!(pulled.load(std::sync::atomic::Ordering::Relaxed) < 200);

    // The same for a whole-file write, and for a parent that is a file.
    let err = ops::write_file(
        &envd,
        dir.path().to_str().unwrap(),
        Bytes::from(vec![0u8; 8 << 20]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    let below_file = dir.path().join("file/child");
    let err = ops::write_file(
        &envd,
        below_file.to_str().unwrap(),
        Bytes::from(vec![0u8; 8 << 20]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
}

#[tokio::test]
async fn list_make_and_remove() {
    let (_e, envd) = Envd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("d1");
    let root_s = root.to_str().unwrap();

    let entry = ops::make_dir(&envd, &format!("{root_s}/d2")).await.unwrap();
    assert_eq!(entry.name, "d2");
    assert_eq!(entry.r#type, "directory");
    assert_eq!(entry.path, format!("{root_s}/d2"));
    assert!(entry.modified_at_unix > 1_600_000_000);
    let err = ops::make_dir(&envd, &format!("{root_s}/d2"))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::AlreadyExists, "{err}");

    std::fs::write(root.join("f.txt"), b"hello").unwrap();
    std::fs::write(root.join("d2/inner.txt"), b"x").unwrap();
    std::os::unix::fs::symlink("f.txt", root.join("link")).unwrap();

    let mut entries = ops::list_dir(&envd, root_s, 0).await.unwrap();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<_> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.r#type.as_str()))
        .collect();
    assert_eq!(
        names,
        [("d2", "directory"), ("f.txt", "file"), ("link", "symlink")]
    );
    let f = &entries[1];
    assert_eq!(f.size, 5);
    assert_eq!(f.path, format!("{root_s}/f.txt"));
    assert_eq!(f.mode & 0o777, 0o644);
    assert!(f.permissions.ends_with("rw-r--r--"), "{}", f.permissions);
    assert_eq!(f.owner, "root");
    assert_eq!(entries[2].symlink_target, format!("{root_s}/f.txt"));

    let deep = ops::list_dir(&envd, root_s, 2).await.unwrap();
    assert!(deep.iter().any(|e| e.name == "inner.txt"));

    ops::remove(&envd, root_s).await.unwrap();
    assert!(!root.exists());
    let err = ops::list_dir(&envd, root_s, 1).await.unwrap_err();
    assert_eq!(err.code, Code::NotFound, "{err}");
    let err = ops::remove(&envd, root_s).await.unwrap_err();
    assert_eq!(err.code, Code::NotFound, "{err}");
    let err = ops::list_dir(&envd, "", 1).await.unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
}
