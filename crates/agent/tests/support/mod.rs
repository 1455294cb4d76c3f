//! Shared harness for the VM tests: a real `wrenn-agent` process booting real QEMU guests.
//!
//! Each harness gets its own data directory and its own range of network slots, so tests (and a
//! developer's running agent) never touch each other's namespaces or VMs.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wrenn_protocol::connect::ConnectClient;
use wrenn_protocol::envd::rpc_path;
use wrenn_protocol::hostagent::{self as pb, SERVICE};

/// Where the test image lives (built by `scripts/build-image.sh`, which the test script runs).
pub fn images_dir() -> PathBuf {
    std::env::var_os("WRENN_TEST_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/wrenn-cache/images"))
}

/// Why VM tests cannot run here, if they cannot. With `WRENN_REQUIRE_VM_TESTS=1` (the test
/// script sets it) a missing prerequisite fails the test instead of skipping it.
pub fn vm_prerequisites_missing() -> Option<String> {
    let mut missing = Vec::new();
    if !nix::unistd::Uid::effective().is_root() {
        missing.push("root (network namespaces, TAP devices)".to_string());
    }
    for tool in ["qemu-system-x86_64", "qemu-img", "ip", "nft"] {
        if which(tool).is_none() {
            missing.push(format!("{tool} on PATH"));
        }
    }
    if !images_dir().join("current/manifest.json").exists() {
        missing.push(format!(
            "a guest image in {} (run scripts/build-image.sh)",
            images_dir().display()
        ));
    }
    if missing.is_empty() {
        return None;
    }
    let reason = missing.join(", ");
    if std::env::var("WRENN_REQUIRE_VM_TESTS").as_deref() == Ok("1") {
        panic!("VM test prerequisites missing: {reason}");
    }
    Some(reason)
}

/// Skips the calling test (with a message) when VM prerequisites are missing.
#[macro_export]
macro_rules! require_vm {
    () => {
        if let Some(reason) = support::vm_prerequisites_missing() {
            eprintln!("skipping: this test needs {reason}");
            return;
        }
    };
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Agent {
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub slots: String,
    pub port: u16,
    pub metadata_port: u16,
    child: Option<Child>,
    pub client: ConnectClient,
}

impl Agent {
    /// Starts an agent with a fresh data directory and the given slot range (`"100-119"`).
    pub fn start(slots: &str) -> Agent {
        let tmp = tempfile::Builder::new()
            .prefix("wrenn-agent-test-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let data_dir = tmp.path().to_path_buf();
        let mut agent = Agent {
            data_dir,
            _tmp: Some(tmp),
            slots: slots.to_string(),
            port: 0,
            metadata_port: 0,
            child: None,
            client: ConnectClient::new("http://127.0.0.1:1"),
        };
        agent.spawn();
        agent
    }

    /// (Re)starts the agent process on the same data directory.
    pub fn spawn(&mut self) {
        self.port = free_port();
        self.metadata_port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("agent-test.log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_wrenn-agent"))
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--images-dir")
            .arg(images_dir())
            .args(["--slots", &self.slots])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--metadata-port", &self.metadata_port.to_string()])
            .args(["--vmm", "qemu"])
            .args(["--default-disk", "2G"])
            .args(["--boot-timeout-secs", "150"])
            .env("RUST_LOG", "info,wrenn_agent=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start wrenn-agent");
        self.child = Some(child);
        self.client = ConnectClient::new(format!("http://127.0.0.1:{}", self.port))
            .with_unary_timeout(Duration::from_secs(300));
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("wrenn-agent exited with {status}:\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not listen:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running agent")
    }

    /// Kills the agent the hard way (a crash), leaving its VMs behind.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the agent with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(40);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.data_dir.join("agent-test.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    pub async fn call<Req, Resp>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<Resp, wrenn_protocol::connect::Error>
    where
        Req: wrenn_protocol::connect::Message,
        Resp: wrenn_protocol::connect::Message,
    {
        self.client.unary(&rpc_path(SERVICE, method), req).await
    }

    pub async fn create(&self, id: &str, memory_mb: i32) -> pb::CreateSandboxResponse {
        let req = pb::CreateSandboxRequest {
            sandbox_id: id.into(),
            vcpus: 1,
            memory_mb,
            team_id: "team-test".into(),
            template_id: "tmpl-test".into(),
            ..Default::default()
        };
        match self.call("CreateSandbox", &req).await {
            Ok(r) => r,
            Err(e) => panic!("create {id}: {e:?}\nagent log:\n{}", self.log_tail()),
        }
    }

    pub async fn exec(&self, id: &str, script: &str) -> pb::ExecResponse {
        let req = pb::ExecRequest {
            sandbox_id: id.into(),
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            timeout_sec: 60,
            ..Default::default()
        };
        match self.call("Exec", &req).await {
            Ok(r) => r,
            Err(e) => panic!("exec in {id}: {e:?}\nagent log:\n{}", self.log_tail()),
        }
    }

    pub async fn destroy(&self, id: &str) {
        let req = pb::DestroySandboxRequest {
            sandbox_id: id.into(),
        };
        let _: pb::DestroySandboxResponse = self
            .call("DestroySandbox", &req)
            .await
            .unwrap_or_else(|e| panic!("destroy {id}: {e:?}"));
    }

    pub async fn list(&self) -> pb::ListSandboxesResponse {
        self.call("ListSandboxes", &pb::ListSandboxesRequest {})
            .await
            .expect("list")
    }

    /// Runs `wrenn-agent cleanup` on this agent's data directory and slots (after a failed test).
    pub fn cleanup(&self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_wrenn-agent"))
            .arg("cleanup")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--images-dir")
            .arg(images_dir())
            .args(["--slots", &self.slots])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.crash();
        // Whatever a failed test left running goes away with the data directory.
        self.cleanup();
    }
}

/// What a slot leaves on the host; all of it must be gone after destroy.
pub fn slot_leftovers(slot: u32) -> Vec<String> {
    let mut found = Vec::new();
    if Path::new(&format!("/run/netns/wrenn-ns-{slot}")).exists() {
        found.push(format!("netns wrenn-ns-{slot}"));
    }
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    for l in links.lines() {
        let name = l
            .split(':')
            .nth(1)
            .map(|s| s.trim().split('@').next().unwrap_or(""))
            .unwrap_or("");
        if name == format!("wrenn-v{slot}") {
            found.push(format!("link {name}"));
        }
    }
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    for t in String::from_utf8_lossy(&tables.stdout).lines() {
        if t.trim().ends_with(&format!("wrenn-slot-{slot}")) {
            found.push(t.trim().to_string());
        }
    }
    let routes = Command::new("ip")
        .args(["route", "show"])
        .output()
        .expect("ip route");
    let host_ip = format!("10.11.{}.{} ", slot >> 8, slot & 255);
    for r in String::from_utf8_lossy(&routes.stdout).lines() {
        if r.starts_with(&host_ip) {
            found.push(format!("route {r}"));
        }
    }
    found
}

/// QEMU processes whose command line mentions `dir`.
pub fn vms_under(dir: &Path) -> Vec<u32> {
    let marker = dir.display().to_string();
    let mut pids = Vec::new();
    for p in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("qemu-system") && cmd.contains(&marker) {
            pids.push(pid);
        }
    }
    pids
}

/// Polls `f` until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
