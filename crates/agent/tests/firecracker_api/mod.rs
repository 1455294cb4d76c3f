//! The fake Firecracker the tests drive: an API server that records requests, and shell scripts
//! standing in for `ip`, `firecracker` and the jailer.

mod boot;
mod snapshot;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wrenn_agent::AgentError;
use wrenn_agent::vmm::firecracker::api::{
    ActionType, MachineConfiguration, NetworkInterface, RateLimiter, TokenBucket, VmState,
};
use wrenn_agent::vmm::firecracker::{Firecracker, FirecrackerClient, JailerConfig, LOG_FILE};
use wrenn_agent::vmm::{DiskFormat, GuestMetadata, VmSpec, Vmm, VmmKind};

/// One request as the fake saw it; also the fixture format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Call {
    method: String,
    path: String,
    #[serde(skip_serializing_if = "Value::is_null", default)]
    body: Value,
}

/// How the fake answers: 204 to everything, except the configured paths.
#[derive(Debug, Clone, Default)]
struct Behaviour {
    /// Answered with 400 and a `fault_message`.
    fail: Option<&'static str>,
    /// Never answered.
    hang: Option<&'static str>,
    /// Makes `/snapshot/create` write its two files, like a Firecracker whose `/` is this
    /// folder (a jail's chroot). Unset, nothing is written.
    snapshot_root: Option<PathBuf>,
}

/// A fake Firecracker API on a Unix socket.
struct FakeApi {
    calls: Arc<Mutex<Vec<Call>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    fn bind(socket: &Path, behaviour: Behaviour) -> Self {
        let listener = tokio::net::UnixListener::bind(socket).expect("bind fake API");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let recorded = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let calls = recorded.clone();
                let behaviour = behaviour.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        answer(req, calls.clone(), behaviour.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { calls, task }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("lock").clone()
    }
}

async fn answer(
    req: Request<Incoming>,
    calls: Arc<Mutex<Vec<Call>>>,
    behaviour: Behaviour,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let json_content = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/json");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()))
    };
    let has_body = !body.is_null();
    let snapshot_body = has_body.then(|| body.clone());
    calls.lock().expect("lock").push(Call {
        method: method.to_string(),
        path: path.clone(),
        body,
    });
    let reply = |status: StatusCode, body: Value| {
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        Ok(response)
    };
    if has_body && !json_content {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"fault_message": "body without application/json"}),
        );
    }
    if behaviour.hang == Some(path.as_str()) {
        std::future::pending::<()>().await;
    }
    if behaviour.fail == Some(path.as_str()) {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"fault_message": format!("fake refuses {path}")}),
        );
    }
    if let (Some(root), Some(body)) = (&behaviour.snapshot_root, &snapshot_body)
        && path == "/snapshot/create"
    {
        for (field, content) in [("snapshot_path", "vmstate"), ("mem_file_path", "pages")] {
            let inside = body[field].as_str().expect("path").trim_start_matches('/');
            std::fs::write(root.join(inside), content).expect("fake writes the snapshot");
        }
    }
    match (method, path.as_str()) {
        (Method::GET, "/") => reply(
            StatusCode::OK,
            json!({"app_name": "Firecracker", "id": "sb-fixture", "state": "Running", "vmm_version": "1.7.0"}),
        ),
        (Method::GET, "/version") => reply(StatusCode::OK, json!({"firecracker_version": "1.7.0"})),
        _ => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            Ok(response)
        }
    }
}

/// Compares `calls` with a checked-in fixture, or rewrites it under `UPDATE_FIXTURES=1`.
fn check_fixture(name: &str, calls: &[Call]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/firecracker")
        .join(name);
    let actual = serde_json::to_string_pretty(calls).expect("json") + "\n";
    if std::env::var_os("UPDATE_FIXTURES").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir fixtures");
        std::fs::write(&path, &actual).expect("write fixture");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; create it with UPDATE_FIXTURES=1", path.display()));
    if expected != actual {
        let mut diff = String::new();
        let (old, new): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
        for i in 0..old.len().max(new.len()) {
            let (o, n) = (old.get(i), new.get(i));
            if o != n {
                if let Some(o) = o {
                    diff.push_str(&format!("{:4} - {o}\n", i + 1));
                }
                if let Some(n) = n {
                    diff.push_str(&format!("{:4} + {n}\n", i + 1));
                }
            }
        }
        panic!(
            "requests differ from {} (- fixture, + sent); if intended, re-bless with \
             UPDATE_FIXTURES=1:\n{diff}",
            path.display()
        );
    }
}

fn spec(run_dir: &Path) -> VmSpec {
    VmSpec {
        sandbox_id: "sb-fixture".into(),
        vcpus: 2,
        memory_mib: 1024,
        kernel: "/var/lib/wrenn/images/v1/vmlinux".into(),
        initrd: None,
        boot_args: "console=ttyS0 root=/dev/vda rw init=/usr/local/bin/wrenn-init".into(),
        disk: "/var/lib/wrenn/sandboxes/sb-fixture/rootfs.ext4".into(),
        disk_format: DiskFormat::Raw,
        netns: "wrenn-ns-7".into(),
        tap: wrenn_agent::network::TAP_NAME.into(),
        guest_mac: wrenn_agent::network::GUEST_MAC.into(),
        // Upstream's egress limit: 200 MB/s with a 100 MB initial burst.
        tx_rate_limit: Some(wrenn_agent::vmm::TokenBucket {
            size: 209_715_200,
            one_time_burst: Some(104_857_600),
            refill_time_ms: 1000,
        }),
        run_dir: run_dir.into(),
        memory_path: PathBuf::from("/unused/memory.raw"),
        metadata: GuestMetadata {
            instance_id: "sb-fixture".into(),
            env_id: "tmpl-base".into(),
            address: None,
        },
    }
}

/// Writes an executable script. The write happens in a child shell so that no writable fd of
/// the script ever exists in this (multi-threaded, forking) process, which would make
/// exec fail with ETXTBSY in a concurrently spawned child.
fn write_script(path: &Path, content: &str) {
    let status = std::process::Command::new("sh")
        .args(["-c", r#"printf '%s' "$1" > "$2" && chmod 755 "$2""#, "sh"])
        .arg(content)
        .arg(path)
        .status()
        .expect("sh");
    assert!(status.success(), "cannot write {}", path.display());
}

/// `ip netns exec <ns> <cmd...>` that records its arguments and execs `<cmd...>`.
const FAKE_IP: &str = r#"#!/bin/sh
dir=$(dirname "$0")
printf '%s\n' "$@" > "$dir/ip.args.tmp" && mv "$dir/ip.args.tmp" "$dir/ip.args"
[ "$1" = netns ] && [ "$2" = exec ] || { echo "fake ip: unexpected $*" >&2; exit 2; }
shift 3
exec "$@"
"#;

/// A Firecracker that records its pid and arguments, logs a line and waits to be killed.
const FAKE_FIRECRACKER: &str = r#"#!/bin/sh
dir=$(dirname "$0")
echo "fake firecracker starting"
printf '%s\n' "$$" "$@" > "$dir/fc.args.tmp" && mv "$dir/fc.args.tmp" "$dir/fc.args"
exec sleep 600
"#;

/// A Firecracker that fails at once, as a real one does without /dev/kvm.
const FAILING_FIRECRACKER: &str = r#"#!/bin/sh
echo "Error creating the Kvm object: No such file or directory" >&2
exit 1
"#;

/// The jailer, as far as the driver can tell: it builds `<base>/<exec name>/<id>/root`, works in
/// it, and execs Firecracker with the arguments after `--`. Without a real chroot, the API socket
/// path Firecracker gets is mapped into the jail the way the chroot would.
const FAKE_JAILER: &str = r#"#!/bin/sh
while [ "$1" != "--" ]; do
  case "$1" in
    --id) id=$2 ;;
    --exec-file) exe=$2 ;;
    --chroot-base-dir) base=$2 ;;
  esac
  shift 2
done
shift
root="$base/$(basename "$exe")/$id/root"
mkdir -p "$root" && cd "$root" || exit 1
[ "$1" = --api-sock ] || { echo "fake jailer: expected --api-sock, got $*" >&2; exit 2; }
sock="$root$2"
shift 2
exec "$exe" --api-sock "$sock" "$@" --id "$id"
"#;

struct Rig {
    dir: tempfile::TempDir,
    driver: Firecracker,
}

/// Kills a fake Firecracker a failed test left running (it would sleep for ten minutes).
impl Drop for Rig {
    fn drop(&mut self) {
        let Ok(args) = std::fs::read_to_string(self.bin("fc.args")) else {
            return;
        };
        let Some(pid) = args.lines().next().and_then(|p| p.parse::<i32>().ok()) else {
            return;
        };
        // Only if that pid is still our `sleep 600`, never a reused one.
        if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x00600\x00") {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Rig {
    fn new(firecracker: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("mkdir");
        write_script(&bin.join("ip"), FAKE_IP);
        write_script(&bin.join("firecracker"), firecracker);
        let driver = Firecracker::new(bin.join("firecracker"))
            .with_ip_command(bin.join("ip"))
            .with_api_timeout(Duration::from_secs(2));
        Self { dir, driver }
    }

    /// A rig whose driver runs the fake Firecracker through the fake jailer, with jails under
    /// `<dir>/jail` owned by the current user.
    fn jailed() -> Self {
        let mut rig = Self::new(FAKE_FIRECRACKER);
        write_script(&rig.bin("jailer"), FAKE_JAILER);
        rig.driver = rig.driver.clone().with_jailer(JailerConfig {
            binary: rig.bin("jailer"),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            chroot_base: rig.dir.path().join("jail"),
        });
        rig
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.dir.path().join("bin").join(name)
    }

    /// Waits for the fake Firecracker to record itself, then binds the fake API at the
    /// socket it was told to open. Returns the fake and the recorded pid and arguments.
    async fn serve_when_spawned(
        args_file: PathBuf,
        behaviour: Behaviour,
    ) -> (FakeApi, u32, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&args_file) {
                break text;
            }
            assert!(Instant::now() < deadline, "fake firecracker never ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let mut lines = text.lines().map(String::from);
        let pid = lines.next().expect("pid").parse().expect("pid number");
        let args: Vec<String> = lines.collect();
        let socket = args
            .iter()
            .position(|a| a == "--api-sock")
            .map(|i| PathBuf::from(&args[i + 1]))
            .expect("--api-sock");
        (FakeApi::bind(&socket, behaviour), pid, args)
    }
}

fn process_exists(pid: u32) -> bool {
    wrenn_agent::vmm::process::start_time(pid).is_some()
}
