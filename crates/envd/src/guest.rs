//! Things envd does only inside a sandbox VM (never on a host it runs on with `--isnotfc`).

use crate::error::{EnvdError, Result};

/// Points `name` at `ip` in /etc/hosts, replacing an earlier entry for it.
pub fn set_hosts_entry(name: &str, ip: &str) -> Result<()> {
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| EnvdError::InvalidArgument(format!("{ip:?} is not an IP address")))?;
    let current = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let mut lines: Vec<String> = current
        .lines()
        .filter(|l| !l.split_whitespace().skip(1).any(|n| n == name))
        .map(str::to_string)
        .collect();
    lines.push(format!("{ip} {name}"));
    let tmp = "/etc/hosts.wrenn-tmp";
    std::fs::write(tmp, lines.join("\n") + "\n")
        .and_then(|()| std::fs::rename(tmp, "/etc/hosts"))
        .map_err(|e| EnvdError::io("updating /etc/hosts", e))
}

/// Mounts an NFS export at `path` (created if missing).
pub async fn mount_nfs(target: &str, path: &str) -> Result<()> {
    if !path.starts_with('/') || target.is_empty() {
        return Err(EnvdError::InvalidArgument(format!(
            "volume mount {target:?} -> {path:?}: an NFS target and an absolute path are required"
        )));
    }
    std::fs::create_dir_all(path).map_err(|e| EnvdError::io(format!("creating {path}"), e))?;
    let out = tokio::process::Command::new("mount")
        .args([
            "-t",
            "nfs",
            "-o",
            "mountproto=tcp,mountport=2049,proto=tcp,port=2049,nfsvers=3,noacl",
            target,
            path,
        ])
        .output()
        .await
        .map_err(|e| EnvdError::io("running mount", e))?;
    if !out.status.success() {
        return Err(EnvdError::Internal(format!(
            "mounting {target} at {path}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Drops the clean page cache so the memory snapshot holds less.
pub fn drop_page_cache() {
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", b"1") {
        tracing::warn!(error = %e, "could not drop the page cache before the snapshot");
    }
}
