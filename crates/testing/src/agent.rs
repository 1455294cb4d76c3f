//! A real `wrenn-agent` process for tests.
//!
//! Each one gets its own data directory and its own range of network slots, so tests (and a
//! developer's running agent) never touch each other's namespaces or VMs. Dropping it kills the
//! agent and runs `wrenn-agent cleanup`, so whatever a test (even a failed one) left running is
//! gone with the data directory.

use crate::vm::images_dir;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The `wrenn-agent` binary.
    pub binary: PathBuf,
    /// Network slots, `"FIRST-LAST"`.
    pub slots: String,
    /// The port to listen on (a free one when `None`; fix it when an `--address` names it).
    pub port: Option<u16>,
    /// Extra `serve` arguments (`--cp-url`, `--register`, `--address`, …).
    pub extra_args: Vec<String>,
}

pub struct AgentProcess {
    pub options: AgentOptions,
    pub data_dir: PathBuf,
    _tmp: tempfile::TempDir,
    pub port: u16,
    pub metadata_port: u16,
    child: Option<Child>,
}

impl AgentProcess {
    /// Starts an agent on a fresh data directory, on a free loopback port, and waits until it
    /// listens.
    pub fn start(options: AgentOptions) -> Self {
        let mut agent = Self::launch(options);
        agent.wait_listening();
        agent
    }

    /// Starts an agent without waiting for it (an agent joining a control plane served by the
    /// same async test must not block that test's runtime); poll [`Self::listening`].
    pub fn launch(options: AgentOptions) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("wrenn-agent-test-")
            .tempdir_in("/var/tmp")
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut agent = Self {
            port: options.port.unwrap_or_else(crate::free_port),
            options,
            data_dir: tmp.path().to_path_buf(),
            _tmp: tmp,
            metadata_port: crate::free_port(),
            child: None,
        };
        agent.respawn();
        agent
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts the process on the same data directory and port, and waits until it listens.
    pub fn spawn(&mut self) {
        self.respawn();
        self.wait_listening();
    }

    /// (Re)starts the process without waiting.
    pub fn respawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("agent-test.log"))
            .unwrap_or_else(|e| panic!("agent log: {e}"));
        let stderr = log.try_clone().unwrap_or_else(|e| panic!("agent log: {e}"));
        let child = Command::new(&self.options.binary)
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--images-dir")
            .arg(images_dir())
            .args(["--slots", &self.options.slots])
            .args(["--listen", &self.address()])
            .args(["--metadata-port", &self.metadata_port.to_string()])
            .args(["--vmm", "qemu"])
            .args(["--default-disk", "2G"])
            .args(["--boot-timeout-secs", "150"])
            .args(&self.options.extra_args)
            .env("RUST_LOG", "info,wrenn_agent=debug")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.options.binary.display()));
        self.child = Some(child);
    }

    /// Whether the agent accepts connections yet; panics (with its log) if it exited.
    pub fn listening(&mut self) -> bool {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
            panic!("wrenn-agent exited with {status}:\n{}", self.log_tail());
        }
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// Blocks until the agent listens (60 s at most).
    pub fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.listening() {
            assert!(
                Instant::now() < deadline,
                "agent did not listen:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills the agent the hard way (a crash), leaving its VMs running.
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

    /// Runs `wrenn-agent cleanup` on this agent's data directory and slots: destroys whatever
    /// VMs and network slots it left.
    pub fn cleanup(&self) {
        let _ = Command::new(&self.options.binary)
            .arg("cleanup")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--images-dir")
            .arg(images_dir())
            .args(["--slots", &self.options.slots])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.crash();
        self.cleanup();
    }
}
