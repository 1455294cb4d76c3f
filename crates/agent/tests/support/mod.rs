//! Shared harness for the VM tests: a real `wrenn-agent` process booting real QEMU guests.
//!
//! Each harness gets its own data directory and its own range of network slots, so tests (and a
//! developer's running agent) never touch each other's namespaces or VMs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use wrenn_protocol::connect::ConnectClient;
use wrenn_protocol::envd::rpc_path;
use wrenn_protocol::hostagent::{self as pb, SERVICE};
use wrenn_testing::{AgentOptions, AgentProcess};

/// Why VM tests cannot run here, if they cannot (see [`wrenn_testing::vm`]).
pub fn vm_prerequisites_missing() -> Option<String> {
    wrenn_testing::vm::prerequisites_missing()
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

/// A real `wrenn-agent` process (see [`AgentProcess`]) and a plain-HTTP RPC client for it.
pub struct Agent {
    process: AgentProcess,
    pub client: ConnectClient,
}

impl std::ops::Deref for Agent {
    type Target = AgentProcess;
    fn deref(&self) -> &AgentProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut AgentProcess {
        &mut self.process
    }
}

fn client_for(port: u16) -> ConnectClient {
    ConnectClient::new(format!("http://127.0.0.1:{port}"))
        .with_unary_timeout(Duration::from_secs(300))
}

impl Agent {
    /// Starts an agent with a fresh data directory and the given slot range (`"100-119"`).
    pub fn start(slots: &str) -> Agent {
        let process = AgentProcess::start(AgentOptions {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_wrenn-agent")),
            slots: slots.to_string(),
            port: None,
            extra_args: Vec::new(),
        });
        let client = client_for(process.port);
        Agent { process, client }
    }

    /// (Re)starts the agent process on the same data directory and port.
    pub fn spawn(&mut self) {
        self.process.spawn();
        self.client = client_for(self.process.port);
    }

    pub fn pid(&self) -> u32 {
        self.process.pid().expect("running agent")
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

    pub async fn pause(&self, id: &str) -> Result<(), wrenn_protocol::connect::Error> {
        let req = pb::PauseSandboxRequest {
            sandbox_id: id.into(),
        };
        self.call::<_, pb::PauseSandboxResponse>("PauseSandbox", &req)
            .await
            .map(|_| ())
    }

    pub async fn resume(
        &self,
        id: &str,
    ) -> Result<pb::ResumeSandboxResponse, wrenn_protocol::connect::Error> {
        let req = pb::ResumeSandboxRequest {
            sandbox_id: id.into(),
            ..Default::default()
        };
        self.call("ResumeSandbox", &req).await
    }

    pub async fn list(&self) -> pb::ListSandboxesResponse {
        self.call("ListSandboxes", &pb::ListSandboxesRequest {})
            .await
            .expect("list")
    }
}

/// The network slot behind a sandbox's host address (`10.11.<slot/256>.<slot%256>`).
pub fn slot_of(host_ip: &str) -> u32 {
    let o: Vec<u32> = host_ip
        .split('.')
        .map(|p| p.parse().expect("octet"))
        .collect();
    (o[2] << 8) | o[3]
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
