//! Guest images: a kernel, an initramfs and a root filesystem, built from Debian packages only.
//!
//! An image lives in `images/<version>/` next to a `manifest.json`; `images/current` points at the
//! one new sandboxes use. The version is a hash of every input (package versions, init scripts,
//! envd), so an unchanged input set is never rebuilt and a snapshot can name the exact image (and
//! kernel) it was taken with.

pub mod build;

use crate::error::{AgentError, AgentResult};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The manifest's file name inside an image folder.
pub const MANIFEST: &str = "manifest.json";
/// The symlink naming the image new sandboxes boot.
pub const CURRENT: &str = "current";

/// What an image folder holds. File names are relative to the folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// Content hash of every input; also the folder name.
    pub version: String,
    /// `uname -r` of the guest kernel, e.g. `6.1.0-47-cloud-amd64`.
    pub kernel_release: String,
    /// The Debian package version the kernel came from.
    pub kernel_package_version: String,
    /// Uncompressed ELF kernel (PVH-bootable).
    pub kernel: String,
    /// Initramfs that loads the virtio modules, configures the network and mounts the root disk.
    /// `None` for kernels with everything built in (the Firecracker kernel).
    pub initrd: Option<String>,
    /// ext4 root filesystem, used read-only as the base of every sandbox's copy-on-write disk.
    pub rootfs: String,
    /// Size of the ext4 filesystem in bytes (a sandbox disk is never smaller).
    pub rootfs_size_bytes: u64,
    /// The kernel command line this image needs (root device, init, network). VMM drivers append
    /// their own arguments.
    pub boot_args: String,
    /// sha256 of the envd binary inside the image.
    pub envd_sha256: String,
}

/// A built image, with absolute paths.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub dir: PathBuf,
    pub manifest: ImageManifest,
}

impl GuestImage {
    /// Loads the image in `dir` and checks that its files exist.
    pub fn open(dir: &Path) -> AgentResult<Self> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            AgentError::Image(format!(
                "cannot read {}: {e}; build the guest image with `wrenn-agent image build`",
                path.display()
            ))
        })?;
        let manifest: ImageManifest = serde_json::from_str(&text)
            .map_err(|e| AgentError::Image(format!("{} is malformed: {e}", path.display())))?;
        let dir = std::fs::canonicalize(dir).map_err(|e| AgentError::io(dir, e))?;
        let image = GuestImage { dir, manifest };
        for file in [Some(image.kernel()), image.initrd(), Some(image.rootfs())]
            .into_iter()
            .flatten()
        {
            if !file.is_file() {
                return Err(AgentError::Image(format!(
                    "{} is missing; rebuild the guest image with `wrenn-agent image build`",
                    file.display()
                )));
            }
        }
        Ok(image)
    }

    /// The image `images/current` points at.
    pub fn current(images_dir: &Path) -> AgentResult<Self> {
        Self::open(&images_dir.join(CURRENT))
    }

    /// A specific version, e.g. the one a snapshot was taken with.
    pub fn version(images_dir: &Path, version: &str) -> AgentResult<Self> {
        if version.is_empty()
            || !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(AgentError::InvalidArgument(format!(
                "bad image version {version:?}"
            )));
        }
        Self::open(&images_dir.join(version))
    }

    pub fn kernel(&self) -> PathBuf {
        self.dir.join(&self.manifest.kernel)
    }

    /// Marks this image as needed by `holder` (a sandbox's disk and kernel, a snapshot or a
    /// template that must restore with it), so pruning old images never removes it.
    pub fn pin(&self, holder: &str) -> AgentResult<()> {
        let dir = self.dir.join(PINS);
        std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
        let pin = dir.join(holder);
        std::fs::write(&pin, b"").map_err(|e| AgentError::io(&pin, e))
    }

    pub fn initrd(&self) -> Option<PathBuf> {
        self.manifest.initrd.as_ref().map(|f| self.dir.join(f))
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join(&self.manifest.rootfs)
    }
}

/// Folder of an image version holding one empty file per holder that still needs it.
pub const PINS: &str = "pins";

/// Removes `holder`'s pin from every image version (it is gone, or moved on).
pub fn unpin(images_dir: &Path, holder: &str) {
    let Ok(entries) = std::fs::read_dir(images_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let _ = std::fs::remove_file(entry.path().join(PINS).join(holder));
    }
}

/// Whether anything still pins the image in `dir`.
pub fn is_pinned(dir: &Path) -> bool {
    std::fs::read_dir(dir.join(PINS)).is_ok_and(|mut d| d.next().is_some())
}
