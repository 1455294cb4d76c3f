//! A Firecracker guest kernel: Debian's own kernel source and config, with what Firecracker needs
//! built in.
//!
//! Firecracker has no initramfs step in Wrenn's boot and no ACPI/PCI device discovery (`pci=off`):
//! it announces its virtio-mmio devices on the kernel command line
//! (`CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`), the root disk must be readable without modules
//! (virtio-blk and ext4 built in), and the network is configured by the kernel from `ip=`
//! (`CONFIG_IP_PNP`). Debian's cloud kernel has all of these as modules or not at all, so it
//! boots under QEMU (with our initramfs) but not under Firecracker.

use super::apt::{self, PackageRef};
use super::cmd::Cmd;
use super::{FILE_KERNEL, FILE_KERNEL_CONFIG, FILE_ROOTFS, ip_arg};
use crate::error::{AgentError, AgentResult};
use crate::image::{GuestImage, ImageManifest, MANIFEST};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How a config symbol is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Yes,
    No,
    Str(&'static str),
}

/// The changes applied to Debian's config. `make olddefconfig` then resolves dependencies;
/// [`check_firecracker_config`] verifies the result still has what matters.
pub const FIRECRACKER_OVERRIDES: &[(&str, Setting)] = &[
    // virtio over MMIO, devices announced on the command line, drivers built in.
    ("VIRTIO_MENU", Setting::Yes),
    ("VIRTIO", Setting::Yes),
    ("VIRTIO_MMIO", Setting::Yes),
    ("VIRTIO_MMIO_CMDLINE_DEVICES", Setting::Yes),
    ("VIRTIO_BLK", Setting::Yes),
    ("BLK_DEV", Setting::Yes),
    ("NETDEVICES", Setting::Yes),
    ("NET_CORE", Setting::Yes),
    ("VIRTIO_NET", Setting::Yes),
    ("FAILOVER", Setting::Yes),
    ("NET_FAILOVER", Setting::Yes),
    // Firecracker's other virtio devices: balloon, entropy, vsock.
    ("VIRTIO_BALLOON", Setting::Yes),
    ("HW_RANDOM", Setting::Yes),
    ("HW_RANDOM_VIRTIO", Setting::Yes),
    ("VSOCKETS", Setting::Yes),
    ("VIRTIO_VSOCKETS", Setting::Yes),
    ("VIRTIO_VSOCKETS_COMMON", Setting::Yes),
    // The kernel configures eth0 from ip= (static only).
    ("IP_PNP", Setting::Yes),
    ("IP_PNP_DHCP", Setting::No),
    ("IP_PNP_BOOTP", Setting::No),
    ("IP_PNP_RARP", Setting::No),
    // Root filesystem without modules.
    ("EXT4_FS", Setting::Yes),
    ("JBD2", Setting::Yes),
    ("CRC16", Setting::Yes),
    ("LIBCRC32C", Setting::Yes),
    ("CRYPTO_CRC32C", Setting::Yes),
    ("DEVTMPFS", Setting::Yes),
    // /dev/console exists before init runs (there is no initramfs to provide it).
    ("DEVTMPFS_MOUNT", Setting::Yes),
    // Serial console.
    ("SERIAL_8250", Setting::Yes),
    ("SERIAL_8250_CONSOLE", Setting::Yes),
    // KVM guest: paravirtual clock and PVH boot entry.
    ("HYPERVISOR_GUEST", Setting::Yes),
    ("PARAVIRT", Setting::Yes),
    ("KVM_GUEST", Setting::Yes),
    ("PARAVIRT_CLOCK", Setting::Yes),
    ("PVH", Setting::Yes),
    // No module signing enforcement, and no signing of modules at build time. Debian's
    // certificate paths exist only in its packaging tree, so they are cleared. (MODULE_SIG itself
    // stays on: Debian's SECURITY_LOCKDOWN_LSM selects it; unsigned modules still load, with a
    // taint.)
    ("MODULE_SIG_FORCE", Setting::No),
    ("MODULE_SIG_ALL", Setting::No),
    ("SYSTEM_TRUSTED_KEYS", Setting::Str("")),
    ("SYSTEM_REVOCATION_KEYS", Setting::Str("")),
    // No debug info: it multiplies the build time and needs pahole for BTF.
    ("DEBUG_INFO_NONE", Setting::Yes),
    ("DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT", Setting::No),
    ("DEBUG_INFO_DWARF4", Setting::No),
    ("DEBUG_INFO_DWARF5", Setting::No),
    ("DEBUG_INFO_BTF", Setting::No),
    ("LOCALVERSION", Setting::Str("-wrenn-fc")),
    ("LOCALVERSION_AUTO", Setting::No),
];

/// Symbols that must be `=y` in the final `.config` for a Firecracker boot to work.
pub const FIRECRACKER_REQUIRED: &[&str] = &[
    "VIRTIO",
    "VIRTIO_MMIO",
    "VIRTIO_MMIO_CMDLINE_DEVICES",
    "VIRTIO_BLK",
    "VIRTIO_NET",
    "IP_PNP",
    "EXT4_FS",
    "DEVTMPFS",
    "DEVTMPFS_MOUNT",
    "SERIAL_8250",
    "SERIAL_8250_CONSOLE",
    "KVM_GUEST",
    "PARAVIRT_CLOCK",
];

/// Symbols that must not be `=y`.
pub const FIRECRACKER_FORBIDDEN: &[&str] = &["MODULE_SIG_FORCE", "DEBUG_INFO_BTF"];

/// `Some((symbol, value))` for `CONFIG_X=v` and `# CONFIG_X is not set` (value `None`).
fn parse_config_line(line: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = line.strip_prefix("# CONFIG_") {
        return rest.strip_suffix(" is not set").map(|s| (s, None));
    }
    let rest = line.strip_prefix("CONFIG_")?;
    let (sym, value) = rest.split_once('=')?;
    Some((sym, Some(value)))
}

fn render(symbol: &str, setting: Setting) -> String {
    match setting {
        Setting::Yes => format!("CONFIG_{symbol}=y"),
        Setting::No => format!("# CONFIG_{symbol} is not set"),
        Setting::Str(s) => format!("CONFIG_{symbol}=\"{s}\""),
    }
}

/// Debian's kernel config (`/boot/config-*` of the cloud package) with
/// [`FIRECRACKER_OVERRIDES`] applied: symbols already present are rewritten in place, the rest
/// are appended. Feed the result to `make olddefconfig`.
pub fn firecracker_kernel_config(base_config: &str) -> String {
    let mut applied = vec![false; FIRECRACKER_OVERRIDES.len()];
    let mut out = String::with_capacity(base_config.len() + 2048);
    for line in base_config.lines() {
        let replacement = parse_config_line(line).and_then(|(sym, _)| {
            FIRECRACKER_OVERRIDES
                .iter()
                .position(|(s, _)| *s == sym)
                .map(|i| (i, render(sym, FIRECRACKER_OVERRIDES[i].1)))
        });
        match replacement {
            Some((i, text)) => {
                applied[i] = true;
                out.push_str(&text);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    let missing: Vec<String> = FIRECRACKER_OVERRIDES
        .iter()
        .zip(&applied)
        .filter(|(_, done)| !**done)
        .map(|((sym, setting), _)| render(sym, *setting))
        .collect();
    if !missing.is_empty() {
        out.push_str("\n#\n# Wrenn: Firecracker guest requirements\n#\n");
        for line in missing {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// The value of `CONFIG_<symbol>` in a config text (`None` when unset or absent).
pub fn config_value<'a>(config: &'a str, symbol: &str) -> Option<&'a str> {
    config
        .lines()
        .filter_map(parse_config_line)
        .rfind(|(s, _)| *s == symbol)
        .and_then(|(_, v)| v)
}

/// Checks a final `.config` (after `make olddefconfig`) for [`FIRECRACKER_REQUIRED`] and
/// [`FIRECRACKER_FORBIDDEN`]; returns the problems.
pub fn check_firecracker_config(config: &str) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    for sym in FIRECRACKER_REQUIRED {
        match config_value(config, sym) {
            Some("y") => {}
            other => problems.push(format!(
                "CONFIG_{sym} is {} (needs y)",
                other.unwrap_or("not set")
            )),
        }
    }
    for sym in FIRECRACKER_FORBIDDEN {
        if config_value(config, sym) == Some("y") {
            problems.push(format!("CONFIG_{sym}=y must be off"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The kernel command line of a Firecracker image: no initramfs, the kernel configures eth0
/// (`ip=`), `pci=off` because Firecracker devices are virtio-mmio, and a panic or reboot ends the
/// VM (Firecracker exits on the guest's reboot via the keyboard controller: `reboot=k`).
pub fn firecracker_boot_args() -> String {
    format!(
        "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw rootfstype=ext4 init=/sbin/wrenn-init {} quiet",
        ip_arg()
    )
}

/// What [`build_firecracker_kernel`] builds from.
#[derive(Debug, Clone)]
pub struct FirecrackerKernelOptions {
    pub images_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// The image whose kernel config and root filesystem are used; `None` = `images/current`.
    pub base_version: Option<String>,
    /// `make -j`; `None` = the number of CPUs.
    pub jobs: Option<usize>,
}

/// The variant folder name for a base image.
pub fn firecracker_variant(base_version: &str) -> String {
    format!("{base_version}-fc")
}

/// A kernel source tree configured for Firecracker, ready for `make vmlinux`.
#[derive(Debug, Clone)]
pub struct PreparedKernelSource {
    /// The image the config and root filesystem come from.
    pub base: GuestImage,
    /// The `linux-source-X.Y` package the tree was unpacked from.
    pub package: String,
    pub package_version: String,
    /// The source tree (its `.config` is final and checked).
    pub dir: PathBuf,
}

/// Steps 1-3 of [`build_firecracker_kernel`]: downloads `linux-source-X.Y` at the base image's
/// kernel package version, unpacks it into the cache (once), writes
/// [`firecracker_kernel_config`] of the base image's config, runs `make olddefconfig` and checks
/// the result. A few minutes (unpacking 1.4 GB of source is most of it); needs `make gcc bison
/// flex`.
pub async fn prepare_firecracker_kernel_source(
    opts: &FirecrackerKernelOptions,
) -> AgentResult<PreparedKernelSource> {
    check_build_tools(&["make", "gcc", "bison", "flex", "tar", "xz"], &[])?;
    let base = match &opts.base_version {
        Some(v) => GuestImage::version(&opts.images_dir, v)?,
        None => GuestImage::current(&opts.images_dir)?,
    };
    let base_config_path = base.dir.join(FILE_KERNEL_CONFIG);
    let base_config = std::fs::read_to_string(&base_config_path).map_err(|e| {
        AgentError::Image(format!(
            "cannot read {} ({e}); rebuild the base image with `wrenn-agent image build --force`",
            base_config_path.display()
        ))
    })?;
    let series = kernel_series(&base.manifest.kernel_release).ok_or_else(|| {
        AgentError::Image(format!(
            "cannot tell the kernel series of {:?}",
            base.manifest.kernel_release
        ))
    })?;

    tracing::info!(
        "[1/4] downloading linux-source-{series} {}",
        base.manifest.kernel_package_version
    );
    let debs = opts.cache_dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| AgentError::io(&debs, e))?;
    let pkg = PackageRef {
        name: format!("linux-source-{series}"),
        version: base.manifest.kernel_package_version.clone(),
    };
    let pinned = pkg.clone();
    let (pkg, deb) = apt::download_or_update(&pkg, &debs, async || Ok(pinned)).await?;
    let work = opts.cache_dir.join("firecracker").join(pkg.file_stem());
    apt::unpack(&deb, &work.join("pkg")).await?;

    let src = work.join(format!("linux-source-{series}"));
    if let Ok(entries) = std::fs::read_dir(&work) {
        for e in entries.filter_map(Result::ok) {
            if super::is_leftover(&e.file_name().to_string_lossy()) {
                tracing::info!(path = %e.path().display(), "removing an interrupted unpack");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if !src.join("Makefile").is_file() {
        tracing::info!("[2/4] unpacking the kernel source (a few minutes)");
        let tarball = find_source_tarball(&work.join("pkg/usr/src"))?;
        let tmp = apt::tmp_sibling(&src);
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| AgentError::io(&tmp, e))?;
        Cmd::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&tmp)
            .hint("unpacking the kernel source failed; check free space in the cache directory")
            .output()
            .await?;
        let inner = tmp.join(format!("linux-source-{series}"));
        std::fs::rename(&inner, &src).map_err(|e| AgentError::io(&src, e))?;
        let _ = std::fs::remove_dir_all(&tmp);
    } else {
        tracing::info!("[2/4] kernel source already unpacked in {}", src.display());
    }

    tracing::info!("[3/4] configuring (make olddefconfig)");
    let config_path = src.join(".config");
    std::fs::write(&config_path, firecracker_kernel_config(&base_config))
        .map_err(|e| AgentError::io(&config_path, e))?;
    make(&src, &["olddefconfig"]).await?;
    let final_config =
        std::fs::read_to_string(&config_path).map_err(|e| AgentError::io(&config_path, e))?;
    check_firecracker_config(&final_config).map_err(|p| {
        AgentError::Image(format!(
            "the kernel config lost Firecracker requirements after olddefconfig: {}",
            p.join("; ")
        ))
    })?;
    Ok(PreparedKernelSource {
        base,
        package: pkg.name,
        package_version: pkg.version,
        dir: src,
    })
}

/// Builds a Firecracker-ready kernel from the Debian source of the base image's kernel and
/// installs it as `images/<base>-fc/` (vmlinux, the base's rootfs hard-linked, `initrd: None`,
/// [`firecracker_boot_args`]). Does not change `images/current`.
///
/// Slow: compiling `vmlinux` takes on the order of an hour on a 2-core machine, so no test runs
/// it (the ignored test `prepare_real_source` covers everything up to the compile). Needs
/// `build-essential bc bison flex libelf-dev libssl-dev` on the host (checked first); the
/// downloaded and unpacked source stays in the cache, and an interrupted compile resumes where
/// `make` left off.
pub async fn build_firecracker_kernel(opts: &FirecrackerKernelOptions) -> AgentResult<GuestImage> {
    let started = Instant::now();
    check_build_tools(
        &["make", "gcc", "bc", "bison", "flex", "perl", "tar", "xz"],
        &["/usr/include/libelf.h", "/usr/include/openssl/ssl.h"],
    )?;
    let prepared = prepare_firecracker_kernel_source(opts).await?;
    let (base, src) = (&prepared.base, &prepared.dir);

    let jobs = opts
        .jobs
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    tracing::info!(
        jobs,
        "[4/4] compiling vmlinux (about an hour on 2 cores; RUST_LOG=debug shows make's output)"
    );
    make(src, &[&format!("-j{jobs}"), "vmlinux"]).await?;
    let release = Cmd::new("make")
        .args(["-s", "kernelrelease"])
        .current_dir(src)
        .output()
        .await?
        .trim()
        .to_string();
    let config_path = src.join(".config");
    let final_config =
        std::fs::read_to_string(&config_path).map_err(|e| AgentError::io(&config_path, e))?;

    let name = firecracker_variant(&base.manifest.version);
    let dest = opts.images_dir.join(&name);
    let tmp = apt::tmp_sibling(&dest);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| AgentError::io(&tmp, e))?;
    let result = (|| {
        let vmlinux = src.join("vmlinux");
        std::fs::copy(&vmlinux, tmp.join(FILE_KERNEL)).map_err(|e| AgentError::io(&vmlinux, e))?;
        std::fs::write(tmp.join(FILE_KERNEL_CONFIG), &final_config)
            .map_err(|e| AgentError::io(tmp.join(FILE_KERNEL_CONFIG), e))?;
        let rootfs = tmp.join(FILE_ROOTFS);
        if std::fs::hard_link(base.rootfs(), &rootfs).is_err() {
            std::fs::copy(base.rootfs(), &rootfs).map_err(|e| AgentError::io(&rootfs, e))?;
        }
        let manifest = ImageManifest {
            version: name.clone(),
            kernel_release: release,
            kernel_package_version: prepared.package_version.clone(),
            kernel: FILE_KERNEL.into(),
            initrd: None,
            rootfs: FILE_ROOTFS.into(),
            rootfs_size_bytes: base.manifest.rootfs_size_bytes,
            boot_args: firecracker_boot_args(),
            envd_sha256: base.manifest.envd_sha256.clone(),
        };
        super::write_manifest(&tmp, &manifest)?;
        super::install_dir(&tmp, &dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result?;
    tracing::info!(
        image = %name,
        elapsed_s = started.elapsed().as_secs(),
        "Firecracker kernel ready"
    );
    let image = GuestImage::open(&dest)?;
    debug_assert!(image.dir.join(MANIFEST).is_file());
    Ok(image)
}

async fn make(src: &Path, args: &[&str]) -> AgentResult<()> {
    Cmd::new("make")
        .args(args)
        .current_dir(src)
        .env("KBUILD_BUILD_USER", "wrenn")
        .env("KBUILD_BUILD_HOST", "wrenn")
        .env("KBUILD_BUILD_TIMESTAMP", "2024-01-01")
        .hint(format!(
            "the kernel build failed in {}; the tail above says why (missing tools: apt-get install build-essential bc bison flex libelf-dev libssl-dev)",
            src.display()
        ))
        .stream()
        .await
}

/// `6.1` from `6.1.0-48-cloud-amd64`.
fn kernel_series(release: &str) -> Option<String> {
    let mut parts = release.split(['.', '-']);
    let (major, minor) = (parts.next()?, parts.next()?);
    (major.bytes().all(|b| b.is_ascii_digit()) && minor.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("{major}.{minor}"))
}

fn find_source_tarball(dir: &Path) -> AgentResult<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(|e| AgentError::io(dir, e))?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-source-") && n.contains(".tar"))
        })
        .ok_or_else(|| AgentError::Image(format!("no linux-source tarball in {}", dir.display())))
}

/// Fails early, naming the Debian packages to install, when a tool or header is missing.
fn check_build_tools(tools: &[&str], headers: &[&str]) -> AgentResult<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let has = |tool: &str| std::env::split_paths(&path).any(|d| d.join(tool).is_file());
    let mut missing: Vec<&str> = tools.iter().copied().filter(|t| !has(t)).collect();
    missing.extend(headers.iter().copied().filter(|h| !Path::new(h).is_file()));
    if missing.is_empty() {
        return Ok(());
    }
    Err(AgentError::Unavailable {
        what: format!("kernel build tools ({})", missing.join(", ")),
        hint: "apt-get install -y build-essential bc bison flex libelf-dev libssl-dev xz-utils"
            .into(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Excerpts of Debian 6.1's `config-6.1.0-*-cloud-amd64`, covering every kind of line the
    /// generator meets: modules, built-ins, unset symbols, strings and comments.
    const DEBIAN_CLOUD_EXCERPT: &str = r#"#
# Automatically generated file; DO NOT EDIT.
# Linux/x86 6.1.0 Kernel Configuration
#
CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"
CONFIG_LOCALVERSION=""
# CONFIG_LOCALVERSION_AUTO is not set
CONFIG_BUILD_SALT="6.1.0-48-cloud-amd64"
CONFIG_HYPERVISOR_GUEST=y
CONFIG_PARAVIRT=y
# CONFIG_PARAVIRT_DEBUG is not set
CONFIG_PARAVIRT_SPINLOCKS=y
CONFIG_X86_HV_CALLBACK_VECTOR=y
CONFIG_XEN=y
CONFIG_KVM_GUEST=y
CONFIG_ARCH_CPUIDLE_HALTPOLL=y
CONFIG_PVH=y
CONFIG_PARAVIRT_CLOCK=y
CONFIG_MODULE_SIG_FORMAT=y
CONFIG_MODULES=y
CONFIG_MODULE_SIG=y
# CONFIG_MODULE_SIG_FORCE is not set
CONFIG_MODULE_SIG_ALL=y
# CONFIG_MODULE_SIG_SHA1 is not set
CONFIG_MODULE_SIG_SHA256=y
CONFIG_MODULE_SIG_HASH="sha256"
CONFIG_IP_MULTICAST=y
# CONFIG_IP_PNP is not set
CONFIG_NET_IPIP=m
CONFIG_VSOCKETS=m
CONFIG_VSOCKETS_DIAG=m
CONFIG_VIRTIO_VSOCKETS=m
CONFIG_VIRTIO_VSOCKETS_COMMON=m
CONFIG_FAILOVER=m
CONFIG_DEVTMPFS=y
# CONFIG_DEVTMPFS_MOUNT is not set
CONFIG_BLK_DEV=y
CONFIG_VIRTIO_BLK=m
CONFIG_NETDEVICES=y
CONFIG_NET_CORE=y
CONFIG_VIRTIO_NET=m
CONFIG_NET_FAILOVER=m
CONFIG_SERIAL_8250=y
# CONFIG_SERIAL_8250_DEPRECATED_OPTIONS is not set
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_HW_RANDOM=m
CONFIG_HW_RANDOM_VIRTIO=m
CONFIG_VIRTIO_ANCHOR=y
CONFIG_VIRTIO=m
CONFIG_VIRTIO_PCI_LIB=m
CONFIG_VIRTIO_PCI_LIB_LEGACY=m
CONFIG_VIRTIO_MENU=y
CONFIG_VIRTIO_PCI=m
CONFIG_VIRTIO_BALLOON=m
CONFIG_VIRTIO_MMIO=m
# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set
CONFIG_EXT4_FS=y
CONFIG_JBD2=y
CONFIG_SYSTEM_TRUSTED_KEYRING=y
CONFIG_SYSTEM_TRUSTED_KEYS="debian/certs/debian-uefi-certs.pem"
CONFIG_SYSTEM_REVOCATION_LIST=y
CONFIG_SYSTEM_REVOCATION_KEYS="debian/certs/test-certs.pem"
CONFIG_CRYPTO_CRC32C=y
CONFIG_CRC16=y
CONFIG_LIBCRC32C=m
# CONFIG_DEBUG_INFO_NONE is not set
CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT=y
# CONFIG_DEBUG_INFO_DWARF4 is not set
# CONFIG_DEBUG_INFO_DWARF5 is not set
CONFIG_DEBUG_INFO_BTF=y
CONFIG_DEBUG_INFO_BTF_MODULES=y
"#;

    #[test]
    fn overrides_are_applied_in_place() {
        let out = firecracker_kernel_config(DEBIAN_CLOUD_EXCERPT);
        // Every override is present exactly once.
        for (sym, setting) in FIRECRACKER_OVERRIDES {
            let line = render(sym, *setting);
            let count = out.lines().filter(|l| *l == line).count();
            assert_eq!(count, 1, "{line} appears {count} times");
            let other = out
                .lines()
                .filter_map(parse_config_line)
                .filter(|(s, _)| s == sym)
                .count();
            assert_eq!(other, 1, "CONFIG_{sym} is defined {other} times");
        }
        assert_eq!(config_value(&out, "VIRTIO_MMIO"), Some("y"));
        assert_eq!(config_value(&out, "VIRTIO_MMIO_CMDLINE_DEVICES"), Some("y"));
        assert_eq!(config_value(&out, "IP_PNP"), Some("y"));
        assert_eq!(config_value(&out, "IP_PNP_DHCP"), None);
        assert_eq!(config_value(&out, "MODULE_SIG_FORCE"), None);
        assert_eq!(config_value(&out, "MODULE_SIG_ALL"), None);
        assert_eq!(config_value(&out, "SYSTEM_TRUSTED_KEYS"), Some("\"\""));
        assert_eq!(config_value(&out, "DEBUG_INFO_BTF"), None);
        assert_eq!(config_value(&out, "DEBUG_INFO_NONE"), Some("y"));
        assert_eq!(config_value(&out, "LOCALVERSION"), Some("\"-wrenn-fc\""));
        // Untouched lines survive, in order.
        assert!(
            out.contains("CONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0\"\n")
        );
        assert!(out.contains("CONFIG_XEN=y\n"));
        assert!(out.contains("# CONFIG_PARAVIRT_DEBUG is not set\n"));
        assert!(out.contains("CONFIG_VIRTIO_PCI=m\n"));
        let mmio = out.find("CONFIG_VIRTIO_MMIO=y").unwrap();
        let cmdline = out.find("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y").unwrap();
        assert!(mmio < cmdline && cmdline < out.find("CONFIG_EXT4_FS=y").unwrap());
        // Symbols missing from the base are appended after a marker.
        let marker = out.find("# Wrenn: Firecracker guest requirements").unwrap();
        assert!(out.find("# CONFIG_IP_PNP_DHCP is not set").unwrap() > marker);
        assert!(out.find("CONFIG_IP_PNP=y").unwrap() < marker);
        assert!(check_firecracker_config(&out).is_ok());
        // Applying twice changes nothing.
        assert_eq!(firecracker_kernel_config(&out), out);
    }

    #[test]
    fn base_config_fails_the_check() {
        let problems = check_firecracker_config(DEBIAN_CLOUD_EXCERPT).unwrap_err();
        let text = problems.join("\n");
        assert!(text.contains("CONFIG_VIRTIO_MMIO is m"), "{text}");
        assert!(text.contains("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set"));
        assert!(text.contains("CONFIG_IP_PNP is not set"));
        assert!(text.contains("CONFIG_DEBUG_INFO_BTF=y must be off"));
        assert!(!text.contains("EXT4"));
    }

    #[test]
    fn config_lines() {
        assert_eq!(parse_config_line("CONFIG_A=y"), Some(("A", Some("y"))));
        assert_eq!(
            parse_config_line("CONFIG_S=\"a=b\""),
            Some(("S", Some("\"a=b\"")))
        );
        assert_eq!(
            parse_config_line("# CONFIG_B is not set"),
            Some(("B", None))
        );
        assert_eq!(parse_config_line("# Wrenn"), None);
        assert_eq!(parse_config_line(""), None);
    }

    #[test]
    fn series_and_boot_args() {
        assert_eq!(
            kernel_series("6.1.0-48-cloud-amd64").as_deref(),
            Some("6.1")
        );
        assert_eq!(kernel_series("6.12.3").as_deref(), Some("6.12"));
        assert_eq!(kernel_series("weird"), None);
        let args = firecracker_boot_args();
        assert!(args.contains("pci=off"));
        assert!(args.contains("init=/sbin/wrenn-init"));
        assert!(args.contains("ip=169.254.0.21::169.254.0.22:255.255.255.252:capsule:eth0:off"));
        assert_eq!(
            firecracker_variant("0123456789abcdef"),
            "0123456789abcdef-fc"
        );
    }

    /// Downloads and unpacks the real kernel source and runs `make olddefconfig` on the
    /// generated config: proves the overrides survive Kconfig's dependency resolution.
    #[tokio::test]
    #[ignore = "downloads 140 MB and unpacks 1.4 GB of kernel source (minutes); needs images/current"]
    async fn prepare_real_source() {
        let opts = FirecrackerKernelOptions {
            images_dir: super::super::DEFAULT_IMAGES_DIR.into(),
            cache_dir: super::super::DEFAULT_CACHE_DIR.into(),
            base_version: None,
            jobs: None,
        };
        let prepared = prepare_firecracker_kernel_source(&opts).await.unwrap();
        let config = std::fs::read_to_string(prepared.dir.join(".config")).unwrap();
        check_firecracker_config(&config).unwrap();
        assert_eq!(config_value(&config, "MODULE_SIG_FORCE"), None);
        assert_eq!(config_value(&config, "MODULE_SIG_ALL"), None);
        assert_eq!(config_value(&config, "SYSTEM_TRUSTED_KEYS"), Some("\"\""));
        assert_eq!(config_value(&config, "DEBUG_INFO"), None);
        assert_eq!(config_value(&config, "IP_PNP_DHCP"), None);
        assert_eq!(config_value(&config, "VIRTIO_VSOCKETS"), Some("y"));
        assert_eq!(config_value(&config, "LOCALVERSION"), Some("\"-wrenn-fc\""));
    }

    /// The real config of the kernel in the build cache, if a build has run on this machine.
    #[test]
    #[ignore = "needs a prior image build (reads /var/tmp/wrenn-cache/image-build)"]
    fn real_debian_config() {
        let cache = Path::new(super::super::DEFAULT_CACHE_DIR).join("kernel");
        let mut found = false;
        for entry in std::fs::read_dir(&cache).unwrap().filter_map(Result::ok) {
            let boot = entry.path().join("boot");
            let Ok(files) = std::fs::read_dir(&boot) else {
                continue;
            };
            for f in files.filter_map(Result::ok) {
                if !f.file_name().to_string_lossy().starts_with("config-") {
                    continue;
                }
                let base = std::fs::read_to_string(f.path()).unwrap();
                assert!(check_firecracker_config(&base).is_err());
                let out = firecracker_kernel_config(&base);
                check_firecracker_config(&out).unwrap();
                for (sym, setting) in FIRECRACKER_OVERRIDES {
                    assert_eq!(
                        out.lines().filter(|l| *l == render(sym, *setting)).count(),
                        1
                    );
                }
                found = true;
            }
        }
        assert!(found, "no kernel config in {}", cache.display());
    }
}
