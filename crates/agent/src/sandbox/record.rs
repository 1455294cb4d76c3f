//! What the agent persists about each live sandbox (`sandboxes/<id>/record.json`), so a restarted
//! agent finds its VMs again instead of leaking or killing them.

use crate::error::{AgentError, AgentResult};
use crate::vmm::{DiskFormat, VmHandle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const RECORD_FILE: &str = "record.json";

/// Whether the sandbox's VM runs, or it sleeps in a snapshot in its folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordState {
    #[default]
    Running,
    Paused,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub sandbox_id: String,
    pub vcpus: u32,
    pub memory_mb: u32,
    pub disk_size_mb: u32,
    pub timeout_sec: u32,
    pub team_id: String,
    pub template_id: String,
    #[serde(default)]
    pub template: String,
    #[serde(default)]
    pub default_user: String,
    #[serde(default)]
    pub default_env: BTreeMap<String, String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub slot: u32,
    pub host_ip: String,
    pub created_at_unix: i64,
    pub image_version: String,
    pub kernel_release: String,
    pub disk: PathBuf,
    pub disk_format: DiskFormat,
    /// The VM while running; stale (and never acted on) while paused.
    pub vm: VmHandle,
    #[serde(default)]
    pub state: RecordState,
}

impl SandboxRecord {
    /// Writes the record atomically (temporary file, fsync, rename): a crash never leaves half a
    /// record behind.
    pub fn save(&self, dir: &Path) -> AgentResult<()> {
        write_json_atomic(&dir.join(RECORD_FILE), self)
    }

    pub fn load(dir: &Path) -> AgentResult<Self> {
        let path = dir.join(RECORD_FILE);
        let text = std::fs::read(&path).map_err(|e| AgentError::io(&path, e))?;
        serde_json::from_slice(&text)
            .map_err(|e| AgentError::Internal(format!("{} is malformed: {e}", path.display())))
    }
}

/// Writes `value` as JSON to `path` atomically (temporary file, fsync, rename, fsync of the
/// folder): readers see the old file or the new one, never half of one.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> AgentResult<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| AgentError::Internal(format!("{} has no folder", path.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let json = serde_json::to_vec_pretty(value).map_err(|e| AgentError::Internal(e.to_string()))?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| AgentError::io(&tmp, e))?;
    f.write_all(&json).map_err(|e| AgentError::io(&tmp, e))?;
    f.sync_all().map_err(|e| AgentError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| AgentError::io(path, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::VmmKind;

    #[test]
    fn record_round_trips_through_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = SandboxRecord {
            sandbox_id: "cl-1".into(),
            vcpus: 1,
            memory_mb: 512,
            disk_size_mb: 2048,
            timeout_sec: 300,
            team_id: "team".into(),
            template_id: "minimal".into(),
            template: String::new(),
            default_user: "user".into(),
            default_env: [("A".to_string(), "1".to_string())].into(),
            metadata: BTreeMap::new(),
            slot: 7,
            host_ip: "10.11.0.7".into(),
            created_at_unix: 1,
            image_version: "abc".into(),
            kernel_release: "6.1.0".into(),
            disk: dir.path().join("rootfs.qcow2"),
            disk_format: DiskFormat::Qcow2,
            vm: VmHandle {
                kind: VmmKind::Qemu,
                pid: 42,
                start_time: 99,
                control_socket: "/x/qmp.sock".into(),
                serial_log: "/x/serial.log".into(),
            },
            state: RecordState::Paused,
        };
        rec.save(dir.path()).expect("save");
        assert_eq!(SandboxRecord::load(dir.path()).expect("load"), rec);
    }
}
