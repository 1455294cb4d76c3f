//! Prerequisites of tests that boot real VMs.

use std::path::PathBuf;

/// Where the test image lives (built by `scripts/build-image.sh`, which the test script runs).
pub fn images_dir() -> PathBuf {
    std::env::var_os("WRENN_TEST_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/wrenn-cache/images"))
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Why VM tests cannot run here, if they cannot. With `WRENN_REQUIRE_VM_TESTS=1` (the test
/// script sets it) a missing prerequisite fails the test instead of skipping it.
pub fn prerequisites_missing() -> Option<String> {
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
        if let Some(reason) = $crate::vm::prerequisites_missing() {
            eprintln!("skipping: this test needs {reason}");
            return;
        }
    };
}
