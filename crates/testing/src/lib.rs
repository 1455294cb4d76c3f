//! Test harnesses shared by the agent's and the control plane's end-to-end tests.
//!
//! - [`vm`]: what VM tests need (root, QEMU, the guest image) and the `require_vm!` skip.
//! - [`agent`]: a real `wrenn-agent` process on its own data directory and network slots.
//! - [`pty`]: a program driven through a real pseudo-terminal, as a user at a terminal would.

pub mod agent;
pub mod pty;
pub mod vm;

pub use agent::{AgentOptions, AgentProcess};

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// A binary of this workspace (`wrenn-agent`, `wrenn-cp`, `wrenn`) next to the running test's
/// target directory (`target/<profile>/deps/<test>` → `target/<profile>/<name>`).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()));
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first (`cargo build -p <crate> --bins`; the test script does)",
        path.display()
    );
    path
}
