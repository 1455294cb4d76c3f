//! Registration: introducing this host to the control plane with a one-time token, or reusing
//! the credentials of an earlier registration.

use super::client::ControlPlaneClient;
use super::credentials;
use crate::error::{AgentError, AgentResult};
use std::path::Path;
use wrenn_api_types::hosts::{HostCredentials, RegisterHostRequest};

/// What the control plane schedules by: this machine's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// `amd64` / `arm64` (Go's names, as upstream reports them).
    pub arch: String,
    pub cpu_cores: i32,
    pub memory_mb: i32,
    /// Size of the filesystem holding the data directory.
    pub disk_gb: i32,
}

impl HostFacts {
    pub fn detect(data_dir: &Path) -> AgentResult<Self> {
        let cpu_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let statvfs = nix::sys::statvfs::statvfs(data_dir)
            .map_err(|e| AgentError::io(data_dir, std::io::Error::from_raw_os_error(e as i32)))?;
        let disk_bytes = statvfs.blocks().saturating_mul(statvfs.fragment_size());
        Ok(Self {
            arch: go_arch(std::env::consts::ARCH).to_owned(),
            cpu_cores: clamp_i32(cpu_cores as u64),
            memory_mb: clamp_i32(memory_total_kib()? / 1024),
            disk_gb: clamp_i32(disk_bytes >> 30),
        })
    }
}

fn clamp_i32(v: u64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// `MemTotal` of `/proc/meminfo`, in KiB.
fn memory_total_kib() -> AgentResult<u64> {
    let path = "/proc/meminfo";
    let text = std::fs::read_to_string(path).map_err(|e| AgentError::io(path, e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| AgentError::Internal(format!("no MemTotal in {path}")))
}

/// The credentials to run with: with `register_token`, a fresh registration (always, even when
/// credentials exist: the operator asked for it); otherwise the saved ones.
pub async fn establish(
    client: &ControlPlaneClient,
    data_dir: &Path,
    register_token: Option<&str>,
    address: &str,
) -> AgentResult<HostCredentials> {
    let path = credentials::credentials_path(data_dir);
    let Some(token) = register_token else {
        return credentials::load(&path)?.ok_or_else(|| {
            AgentError::InvalidArgument(format!(
                "{} does not exist: this host has not registered with {} yet; create a host \
                 there (POST /v1/hosts) and start the agent with --register <token>",
                path.display(),
                client.base()
            ))
        });
    };
    let facts = HostFacts::detect(data_dir)?;
    tracing::info!(cp = %client.base(), %address, ?facts, "registering with the control plane");
    let fresh = client
        .register(&RegisterHostRequest {
            token: token.to_owned(),
            arch: facts.arch,
            cpu_cores: facts.cpu_cores,
            memory_mb: facts.memory_mb,
            disk_gb: facts.disk_gb,
            address: address.to_owned(),
        })
        .await?;
    credentials::save(&path, &fresh)?;
    tracing::info!(host_id = %fresh.host_id, "registered");
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_plausible() {
        let facts = HostFacts::detect(Path::new("/")).expect("facts");
        assert!(facts.cpu_cores >= 1);
        assert!(facts.memory_mb >= 64, "{facts:?}");
        assert!(facts.disk_gb >= 1, "{facts:?}");
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
    }
}
