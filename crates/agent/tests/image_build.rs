//! End-to-end guest image build. Slow (debootstrap, downloads from the Debian mirror) and needs
//! root, so it is ignored by default; run it by hand:
//!
//! ```sh
//! cargo build --release --locked --target x86_64-unknown-linux-musl -p envd
//! cargo test -p wrenn-agent --test image_build -- --ignored --nocapture
//! ```
//!
//! `WRENN_IMAGE_FORCE=1` rebuilds an existing version. The image stays in
//! `/var/tmp/wrenn-cache/images` (`WRENN_IMAGES_DIR`), with `images/current` pointing at it,
//! for the VM tests to boot.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Instant;
use wrenn_agent::image::GuestImage;
use wrenn_agent::image::build::{self, BuildOptions};

fn envd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WRENN_ENVD_BINARY") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("x86_64-unknown-linux-musl/release/envd")
}

fn options() -> BuildOptions {
    let dir = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| default.into())
    };
    BuildOptions::new(
        dir("WRENN_IMAGES_DIR", build::DEFAULT_IMAGES_DIR),
        dir("WRENN_IMAGE_CACHE_DIR", build::DEFAULT_CACHE_DIR),
        envd_binary(),
    )
}

/// `debugfs -R "cat <path>"` on the image: reads a guest file without mounting anything.
fn guest_file(rootfs: &Path, path: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(rootfs)
        .output()
        .expect("debugfs (e2fsprogs)");
    assert!(out.status.success(), "debugfs cat {path}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn guest_stat(rootfs: &Path, path: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(rootfs)
        .output()
        .expect("debugfs (e2fsprogs)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("Inode:"),
        "{path} missing from the image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test]
#[ignore = "builds a real guest image: root, network and minutes; run with --ignored"]
async fn build_real_image() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
    let mut opts = options();
    // WRENN_IMAGE_FORCE=1 rebuilds even an existing version (the debootstrap tree stays cached).
    opts.force = std::env::var_os("WRENN_IMAGE_FORCE").is_some();
    assert!(
        opts.envd_binary.is_file(),
        "no envd at {} (build it: cargo build --release --locked --target x86_64-unknown-linux-musl -p envd, or set WRENN_ENVD_BINARY)",
        opts.envd_binary.display()
    );

    let t = Instant::now();
    let image = build::build_image(&opts).await.expect("image build");
    eprintln!(
        "first build: {:.1} s, version {}",
        t.elapsed().as_secs_f64(),
        image.manifest.version
    );

    let m = &image.manifest;
    assert_eq!(m.version.len(), 16);
    assert!(
        m.kernel_release.ends_with("-cloud-amd64"),
        "{}",
        m.kernel_release
    );
    assert!(m.boot_args.contains("init=/sbin/wrenn-init"));
    assert_eq!(
        m.envd_sha256,
        build::sha256_file(&opts.envd_binary).unwrap()
    );
    let kernel = std::fs::read(image.kernel()).unwrap();
    assert_eq!(&kernel[..4], b"\x7fELF");
    let initrd = std::fs::read(image.initrd().unwrap()).unwrap();
    assert_eq!(&initrd[..2], &[0x1f, 0x8b]);
    let rootfs = image.rootfs();
    let len = std::fs::metadata(&rootfs).unwrap().len();
    assert_eq!(len, m.rootfs_size_bytes);
    let mut sb = [0u8; 2];
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&rootfs).unwrap();
        f.seek(SeekFrom::Start(1024 + 0x38)).unwrap();
        f.read_exact(&mut sb).unwrap();
    }
    assert_eq!(u16::from_le_bytes(sb), 0xEF53, "not ext4");

    // The guest's own files.
    assert!(guest_file(&rootfs, "/etc/passwd").contains("user:x:1000:1000::/home/user:/bin/bash"));
    assert_eq!(guest_file(&rootfs, "/etc/hostname"), "capsule\n");
    assert!(guest_file(&rootfs, "/etc/sudoers.d/user").contains("NOPASSWD"));
    assert!(guest_file(&rootfs, "/etc/resolv.conf").contains("nameserver 8.8.8.8"));
    assert!(guest_file(&rootfs, "/etc/wrenn-image").contains(&format!("ROOTFS_SIZE_BYTES={len}")));
    assert_eq!(
        guest_file(&rootfs, "/usr/sbin/wrenn-init"),
        build::WRENN_INIT
    );
    assert!(guest_stat(&rootfs, "/usr/local/bin/envd").contains("Mode:  0755"));
    assert!(guest_stat(&rootfs, "/home/user").contains("User:  1000"));
    for bin in [
        "/usr/bin/tini",
        "/usr/bin/python3",
        "/usr/bin/git",
        "/usr/bin/curl",
        "/usr/sbin/resize2fs",
        "/usr/bin/sudo",
    ] {
        guest_stat(&rootfs, bin);
    }

    // images/current, and an unchanged rebuild only repoints it.
    let current = GuestImage::current(&opts.images_dir).unwrap();
    assert_eq!(current.manifest, image.manifest);
    opts.force = false;
    let t = Instant::now();
    let again = build::build_image(&opts).await.expect("cached build");
    let cached = t.elapsed();
    eprintln!("cached build: {:.2} s", cached.as_secs_f64());
    assert_eq!(again.manifest, image.manifest);
    assert!(cached.as_secs() < 60, "a cached build took {cached:?}");
}
