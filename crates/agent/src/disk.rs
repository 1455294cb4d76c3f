//! Copy-on-write sandbox disks over a read-only base image.
//!
//! A sandbox never copies its base image: QEMU gets a qcow2 overlay whose backing file is the raw
//! ext4 image (creation takes milliseconds and the file starts almost empty). The overlay's virtual
//! size is the requested disk size; the guest grows its filesystem online at boot.
//! Firecracker only takes raw files; its hosts get a sparse reflink copy where the filesystem
//! supports it (XFS, btrfs), which is equally cheap.

use crate::error::{AgentError, AgentResult};
use crate::vmm::DiskFormat;
use std::path::Path;
use std::time::Duration;
use tokio::process::Command;

const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates `dest` as a copy-on-write view of `base` with at least `size_bytes` of virtual size.
pub async fn create(
    format: DiskFormat,
    base: &Path,
    dest: &Path,
    size_bytes: u64,
) -> AgentResult<()> {
    let base_len = std::fs::metadata(base)
        .map_err(|e| AgentError::io(base, e))?
        .len();
    // Never smaller than the filesystem inside, or the guest would see a truncated disk.
    let size = size_bytes.max(base_len);
    match format {
        DiskFormat::Qcow2 => {
            let out = run(Command::new("qemu-img")
                .arg("create")
                .args(["-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(base)
                .arg(dest)
                .arg(size.to_string()))
            .await?;
            drop(out);
        }
        DiskFormat::Raw => {
            run(Command::new("cp")
                .args(["--reflink=always", "--sparse=always"])
                .arg(base)
                .arg(dest))
            .await
            .map_err(|e| {
                AgentError::Disk(format!(
                    "{e}; raw sandbox disks need a filesystem with reflinks (XFS or btrfs) under the data directory"
                ))
            })?;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(dest)
                .map_err(|e| AgentError::io(dest, e))?;
            file.set_len(size).map_err(|e| AgentError::io(dest, e))?;
        }
    }
    Ok(())
}

/// Bytes actually allocated on the host for a disk file (what the sandbox has written).
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// Removes a sandbox disk; a missing file is fine.
pub fn remove(path: &Path) -> AgentResult<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AgentError::io(path, e)),
    }
}

async fn run(cmd: &mut Command) -> AgentResult<std::process::Output> {
    let name = format!("{:?}", cmd.as_std());
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(TOOL_TIMEOUT, cmd.output())
        .await
        .map_err(|_| AgentError::command(&name, format!("no answer in {TOOL_TIMEOUT:?}")))?
        .map_err(|e| AgentError::command(&name, e.to_string()))?;
    if !out.status.success() {
        return Err(AgentError::command(
            &name,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn qcow2_overlay_is_small_and_sized_as_requested() {
        if which("qemu-img").is_none() {
            eprintln!("skipping: qemu-img is not installed (apt install qemu-utils)");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("base.ext4");
        let f = std::fs::File::create(&base).expect("create");
        f.set_len(64 << 20).expect("len");
        let overlay = dir.path().join("disk.qcow2");
        create(DiskFormat::Qcow2, &base, &overlay, 1 << 30)
            .await
            .expect("overlay");
        assert!(allocated_bytes(&overlay) < 1 << 20, "overlay copied data");
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json", "-U"])
            .arg(&overlay)
            .output()
            .expect("qemu-img info");
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
        assert_eq!(v["virtual-size"], 1u64 << 30);
        assert_eq!(v["backing-filename-format"], "raw");
        // A request smaller than the base gets the base's size.
        let small = dir.path().join("small.qcow2");
        create(DiskFormat::Qcow2, &base, &small, 1 << 20)
            .await
            .expect("overlay");
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json", "-U"])
            .arg(&small)
            .output()
            .expect("qemu-img info");
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
        assert_eq!(v["virtual-size"], 64u64 << 20);
        remove(&overlay).expect("remove");
        remove(&overlay).expect("remove twice");
    }

    fn which(tool: &str) -> Option<std::path::PathBuf> {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .find(|p| p.is_file())
        })
    }
}
