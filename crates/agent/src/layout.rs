//! Where the host agent keeps things under its data directory (default `/var/lib/wrenn`).
//!
//! ```text
//! images/<version>/{vmlinux, initrd.img, rootfs.ext4, manifest.json}   guest images, never modified
//! images/current -> <version>                                          the image new sandboxes use
//! sandboxes/<id>/{record.json, rootfs.qcow2, serial.log, qmp.sock, ...} one folder per live sandbox
//! snapshots/<id>/                                                       pause snapshots
//! templates/<team>/<template>/                                          snapshot templates
//! ```

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    images: PathBuf,
}

impl Layout {
    /// `images` may live elsewhere (a shared cache); by default it is `<root>/images`.
    pub fn new(root: impl Into<PathBuf>, images: Option<PathBuf>) -> Self {
        let root = root.into();
        let images = images.unwrap_or_else(|| root.join("images"));
        Self { root, images }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn images(&self) -> &Path {
        &self.images
    }

    pub fn sandboxes(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.sandboxes().join(id)
    }

    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub fn templates(&self) -> PathBuf {
        self.root.join("templates")
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
}

/// Sandbox ids become file and interface names, so only a safe alphabet is accepted.
pub fn validate_sandbox_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!(
            "sandbox id must be 1 to 64 characters, got {}",
            id.len()
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "sandbox id {id:?} may only contain letters, digits, '-' and '_'"
        ));
    }
    if id.starts_with('-') || id.starts_with('.') {
        return Err(format!("sandbox id {id:?} must not start with '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids_cannot_escape_their_folder() {
        assert!(validate_sandbox_id("cl-abc123").is_ok());
        for bad in ["", "../etc", "a/b", "-rf", "a b", "x\0", &"a".repeat(65)] {
            assert!(validate_sandbox_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
