//! The guest image builder: Debian packages in, `images/<version>/` out.
//!
//! 1. Resolve the candidate versions of Debian's cloud kernel and static busybox (host apt).
//! 2. Kernel: `apt-get download` + `dpkg -x` the `-unsigned` cloud kernel package, and pull the
//!    uncompressed ELF `vmlinux` out of its bzImage (QEMU's microvm and Firecracker boot ELF).
//! 3. Initramfs: busybox, the virtio modules and `guest/initramfs-init`, because that kernel has
//!    virtio as modules and ignores `ip=`.
//! 4. Root filesystem: `debootstrap --variant=minbase` of [`GUEST_PACKAGES`], cached by its
//!    inputs because it takes a minute or two.
//! 5. A copy of that tree gets the `user` account, envd, `guest/wrenn-init` and the network
//!    identity, and is packed with `mkfs.ext4 -d` (no loop mounts, so it works unprivileged by
//!    the kernel and in containers).
//! 6. Install: the folder is renamed into place atomically, `images/current` is repointed, and
//!    only the newest [`KEEP_IMAGES`] versions are kept.
//!
//! The version is a hash of every input ([`compute_version`]), so rebuilding with unchanged
//! inputs only repoints `current`, and a snapshot can name the exact image it was taken with.
//! Everything the builder downloads or unpacks stays in the cache directory; the host only
//! needs `apt`, `dpkg`, `debootstrap` and `e2fsprogs` (scripts/build-image.sh installs them).
//!
//! [`firecracker`] builds the variant kernel Firecracker needs (slow, on demand).

mod apt;
mod cmd;
pub mod firecracker;
mod initramfs;
mod kernel;
mod rootfs;

pub use firecracker::{
    FirecrackerKernelOptions, PreparedKernelSource, build_firecracker_kernel,
    firecracker_boot_args, firecracker_kernel_config, prepare_firecracker_kernel_source,
};

use crate::error::{AgentError, AgentResult};
use crate::image::{CURRENT, GuestImage, ImageManifest, MANIFEST};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bump when the builder's output changes for the same inputs (it is part of the version).
pub const BUILDER_VERSION: &str = "1";
/// The Debian release the root filesystem is bootstrapped from.
pub const SUITE: &str = "bookworm";
/// Debian's meta package that always depends on the newest cloud kernel.
pub const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";
/// Statically linked busybox for the initramfs (the builder extracts it; it need not be
/// installed on the host).
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// Packages on top of debootstrap's minbase: what envd, users and the init scripts need
/// (`tini` is PID 1 after wrenn-init, `iproute2` configures the network, `e2fsprogs` grows
/// the root filesystem online, `netbase` gives /etc/services and /etc/protocols).
pub const GUEST_PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "sudo",
    "curl",
    "ca-certificates",
    "git",
    "python3",
    "tini",
    "iproute2",
    "procps",
    "e2fsprogs",
    "netbase",
];
/// Kernel modules the initramfs loads, in dependency order.
pub const VIRTIO_MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_mmio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
];
/// Stage-1 init of the initramfs.
pub const INITRAMFS_INIT: &str = include_str!("../../guest/initramfs-init");
/// PID 1 of the root filesystem (`/sbin/wrenn-init`).
pub const WRENN_INIT: &str = include_str!("../../guest/wrenn-init");

/// The guest side of every sandbox's point-to-point link (the host side is the gateway).
pub const GUEST_ADDRESS: &str = "169.254.0.21";
pub const GUEST_GATEWAY: &str = "169.254.0.22";
pub const GUEST_NETMASK: &str = "255.255.255.252";
pub const GUEST_HOSTNAME: &str = "capsule";

/// Where the scripts and tests keep images and the build cache by default.
pub const DEFAULT_IMAGES_DIR: &str = "/var/tmp/wrenn-cache/images";
pub const DEFAULT_CACHE_DIR: &str = "/var/tmp/wrenn-cache/image-build";
/// How many image versions survive a build (plus whatever `current` points at).
pub const KEEP_IMAGES: usize = 3;

/// File names inside an image folder.
pub const FILE_KERNEL: &str = "vmlinux";
pub const FILE_INITRD: &str = "initrd.img";
pub const FILE_ROOTFS: &str = "rootfs.ext4";
/// The kernel's build config (`/boot/config-*`), kept for the Firecracker kernel build.
pub const FILE_KERNEL_CONFIG: &str = "kernel.config";
/// Every version input, for humans wondering why two images differ.
pub const FILE_INPUTS: &str = "inputs.json";

/// Timestamp used wherever the output would otherwise carry the build time (cpio entries,
/// the ext4 superblock), unless `SOURCE_DATE_EPOCH` says otherwise: 2024-01-01T00:00:00Z.
const DEFAULT_EPOCH: u64 = 1_704_067_200;

/// `ip=<client>::<gateway>:<netmask>:<hostname>:<device>:off`, the kernel's static syntax,
/// read by the initramfs, by wrenn-init and (Firecracker kernel) by the kernel itself.
pub fn ip_arg() -> String {
    format!("ip={GUEST_ADDRESS}::{GUEST_GATEWAY}:{GUEST_NETMASK}:{GUEST_HOSTNAME}:eth0:off")
}

/// The command line of the images [`build_image`] makes (Debian kernel + initramfs). VMM
/// drivers append their own arguments (timer calibration under TCG, virtio-mmio devices...).
/// `panic=-1 reboot=t` turn a crash or a failed boot into an immediate VM exit.
pub fn boot_args() -> String {
    format!(
        "console=ttyS0 root=/dev/vda rw rootfstype=ext4 init=/sbin/wrenn-init panic=-1 reboot=t {} quiet",
        ip_arg()
    )
}

/// What [`build_image`] needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Where `<version>/` folders and the `current` symlink live.
    pub images_dir: PathBuf,
    /// Downloaded packages, unpacked kernels and the debootstrap tree (a few hundred MB).
    pub cache_dir: PathBuf,
    /// The envd binary to install (a static musl build, so it runs on any guest libc).
    pub envd_binary: PathBuf,
    /// Debian mirror for debootstrap; `None` = the host's apt configuration.
    pub mirror: Option<String>,
    /// Rebuild even when the version already exists.
    pub force: bool,
}

impl BuildOptions {
    pub fn new(
        images_dir: impl Into<PathBuf>,
        cache_dir: impl Into<PathBuf>,
        envd_binary: impl Into<PathBuf>,
    ) -> Self {
        BuildOptions {
            images_dir: images_dir.into(),
            cache_dir: cache_dir.into(),
            envd_binary: envd_binary.into(),
            mirror: None,
            force: false,
        }
    }
}

/// Everything an image's content depends on. The Debian mirror is deliberately not part of it:
/// it is a transport, and the package versions already pin what comes from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInputs {
    pub builder_version: String,
    pub kernel_package: String,
    pub kernel_package_version: String,
    pub busybox_version: String,
    pub suite: String,
    pub packages: Vec<String>,
    pub modules: Vec<String>,
    pub initramfs_init: String,
    pub wrenn_init: String,
    pub boot_args: String,
    pub envd_sha256: String,
}

impl VersionInputs {
    /// The inputs of this builder for the given package versions and envd.
    pub fn new(
        kernel_package: &str,
        kernel_package_version: &str,
        busybox_version: &str,
        envd_sha256: &str,
    ) -> Self {
        VersionInputs {
            builder_version: BUILDER_VERSION.into(),
            kernel_package: kernel_package.into(),
            kernel_package_version: kernel_package_version.into(),
            busybox_version: busybox_version.into(),
            suite: SUITE.into(),
            packages: GUEST_PACKAGES.iter().map(|s| s.to_string()).collect(),
            modules: VIRTIO_MODULES.iter().map(|s| s.to_string()).collect(),
            initramfs_init: INITRAMFS_INIT.into(),
            wrenn_init: WRENN_INIT.into(),
            boot_args: boot_args(),
            envd_sha256: envd_sha256.into(),
        }
    }
}

/// The image version: the first 16 hex digits of a sha256 over every input, each one
/// length-prefixed so no two input sets can collide by shifting text between fields. The order
/// of `packages` does not matter (debootstrap does not care either); module order does.
pub fn compute_version(inputs: &VersionInputs) -> String {
    let mut packages = inputs.packages.clone();
    packages.sort();
    let mut h = Sha256::new();
    let mut field = |name: &str, value: &str| {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((value.len() as u64).to_le_bytes());
        h.update(value.as_bytes());
    };
    field("builder", &inputs.builder_version);
    field("kernel-package", &inputs.kernel_package);
    field("kernel-version", &inputs.kernel_package_version);
    field("busybox-version", &inputs.busybox_version);
    field("suite", &inputs.suite);
    field("packages", &packages.join("\n"));
    field("modules", &inputs.modules.join("\n"));
    field("initramfs-init", &inputs.initramfs_init);
    field("wrenn-init", &inputs.wrenn_init);
    field("boot-args", &inputs.boot_args);
    field("envd", &inputs.envd_sha256);
    hex::encode(&h.finalize()[..8])
}

/// The hex sha256 of a file.
pub fn sha256_file(path: &Path) -> AgentResult<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| AgentError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| AgentError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The Debian mirror debootstrap uses when none is given: the host's own.
pub fn default_mirror() -> String {
    rootfs::default_mirror(SUITE)
}

/// Builds (or finds) the image for the current inputs and points `images/current` at it.
///
/// Cold, this takes about a minute on a 2-core machine with a fast mirror (debootstrap is most
/// of it); with the debootstrap tree cached about 5 s; with an unchanged version a second or two
/// (apt lookups only). Holds a lock on the cache and images directories, so concurrent builds
/// wait for each other. Needs root (debootstrap, file ownership in the image).
pub async fn build_image(opts: &BuildOptions) -> AgentResult<GuestImage> {
    let started = Instant::now();
    for dir in [&opts.images_dir, &opts.cache_dir] {
        std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
    }
    let _cache_lock = lock_dir(&opts.cache_dir).await?;
    let _images_lock = lock_dir(&opts.images_dir).await?;
    remove_leftovers(opts).await;

    let envd_sha256 = check_envd(&opts.envd_binary)?;
    let epoch = source_date_epoch();

    // [1/6] Package versions decide the image version, so they come first.
    let t = Instant::now();
    tracing::info!("[1/6] resolving package versions (apt-cache)");
    let mut kernel_pkg = resolve_kernel_package().await?;
    let (mut busybox_pkg, _) = apt::resolve(BUSYBOX_PACKAGE).await?;
    let mut inputs = VersionInputs::new(
        &kernel_pkg.name,
        &kernel_pkg.version,
        &busybox_pkg.version,
        &envd_sha256,
    );
    let mut version = compute_version(&inputs);
    tracing::info!(
        version = %version,
        kernel = %format!("{} {}", kernel_pkg.name, kernel_pkg.version),
        busybox = %busybox_pkg.version,
        elapsed_ms = t.elapsed().as_millis() as u64,
        "[1/6] done"
    );
    if !opts.force
        && let Some(image) = existing(&opts.images_dir, &version)
    {
        // Newest again for pruning purposes, which go by manifest time.
        let manifest = image.dir.join(MANIFEST);
        if let Ok(f) = std::fs::File::options().write(true).open(&manifest) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        set_current(&opts.images_dir, &version)?;
        prune_images(&opts.images_dir, KEEP_IMAGES)?;
        tracing::info!(
            version = %version,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "image is up to date (cached); images/current points at it"
        );
        return Ok(image);
    }

    // [2/6] Kernel.
    let t = Instant::now();
    tracing::info!(
        "[2/6] kernel: downloading and unpacking {}",
        kernel_pkg.name
    );
    let debs = opts.cache_dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| AgentError::io(&debs, e))?;
    let (pkg, kernel_deb) =
        apt::download_or_update(&kernel_pkg, &debs, async || resolve_kernel_package().await)
            .await?;
    let (bb, busybox_deb) = apt::download_or_update(&busybox_pkg, &debs, async || {
        apt::resolve(BUSYBOX_PACKAGE).await.map(|(p, _)| p)
    })
    .await?;
    if pkg != kernel_pkg || bb != busybox_pkg {
        // apt-get update moved the candidates: the image is a different version now.
        kernel_pkg = pkg;
        busybox_pkg = bb;
        inputs = VersionInputs::new(
            &kernel_pkg.name,
            &kernel_pkg.version,
            &busybox_pkg.version,
            &envd_sha256,
        );
        version = compute_version(&inputs);
        tracing::info!(version = %version, "package versions changed after apt-get update");
    }
    let kernel_root = opts.cache_dir.join("kernel").join(kernel_pkg.file_stem());
    apt::unpack(&kernel_deb, &kernel_root).await?;
    let tree = kernel::KernelTree::find(&kernel_root)?;

    let staging_dir = opts
        .images_dir
        .join(format!("{version}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging_dir);
    std::fs::create_dir_all(&staging_dir).map_err(|e| AgentError::io(&staging_dir, e))?;
    let out = RemoveOnDrop(Some(staging_dir.clone()));

    let bzimage = std::fs::read(&tree.vmlinuz).map_err(|e| AgentError::io(&tree.vmlinuz, e))?;
    let vmlinux = kernel::extract_vmlinux(bzimage).await?;
    write_file(&staging_dir.join(FILE_KERNEL), &vmlinux)?;
    drop(vmlinux);
    std::fs::copy(&tree.config, staging_dir.join(FILE_KERNEL_CONFIG))
        .map_err(|e| AgentError::io(&tree.config, e))?;
    tracing::info!(
        release = %tree.release,
        elapsed_ms = t.elapsed().as_millis() as u64,
        "[2/6] kernel done"
    );

    // [3/6] Initramfs.
    let t = Instant::now();
    tracing::info!(
        "[3/6] initramfs: busybox {} and virtio modules",
        busybox_pkg.version
    );
    let busybox_root = opts.cache_dir.join("busybox").join(busybox_pkg.file_stem());
    apt::unpack(&busybox_deb, &busybox_root).await?;
    let busybox_bin = busybox_root.join("bin/busybox");
    let busybox = std::fs::read(&busybox_bin).map_err(|e| AgentError::io(&busybox_bin, e))?;
    let modules = collect_modules(&tree).await?;
    let initrd = tokio::task::spawn_blocking(move || {
        initramfs::build(busybox, modules, INITRAMFS_INIT, epoch as u32)
    })
    .await
    .map_err(|e| AgentError::Internal(format!("initramfs task: {e}")))??;
    write_file(&staging_dir.join(FILE_INITRD), &initrd)?;
    tracing::info!(
        bytes = initrd.len(),
        elapsed_ms = t.elapsed().as_millis() as u64,
        "[3/6] initramfs done"
    );

    // [4/6] debootstrap (cached).
    let t = Instant::now();
    let mirror = opts.mirror.clone().unwrap_or_else(default_mirror);
    let key = rootfs::tree_key(BUILDER_VERSION, SUITE, &mirror, GUEST_PACKAGES);
    let tree_cached = opts
        .cache_dir
        .join("rootfs")
        .join(&key)
        .join("complete.json")
        .is_file();
    if tree_cached {
        tracing::info!("[4/6] debootstrap {SUITE}: using the cached tree {key}");
    } else {
        tracing::info!(
            "[4/6] debootstrap {SUITE} from {mirror} (cached tree missing, takes about 1-2 minutes)..."
        );
    }
    let (deb_tree, _) =
        rootfs::ensure_tree(&opts.cache_dir, &key, SUITE, &mirror, GUEST_PACKAGES).await?;
    tracing::info!(
        elapsed_ms = t.elapsed().as_millis() as u64,
        "[4/6] debootstrap done"
    );

    // [5/6] Root filesystem.
    let t = Instant::now();
    tracing::info!("[5/6] root filesystem: customising a copy and packing ext4");
    let staging_tree = opts
        .cache_dir
        .join(format!("staging-{}", std::process::id()));
    let _staging_guard = RemoveOnDrop(Some(staging_tree.clone()));
    rootfs::copy_tree(&deb_tree, &staging_tree).await?;
    let envd =
        std::fs::read(&opts.envd_binary).map_err(|e| AgentError::io(&opts.envd_binary, e))?;
    let image_info = |size: u64| {
        format!(
            "WRENN_IMAGE_VERSION={version}\nKERNEL_RELEASE={}\nROOTFS_SIZE_BYTES={size}\n",
            tree.release
        )
    };
    let (root, info0) = (staging_tree.clone(), image_info(0));
    let used = tokio::task::spawn_blocking(move || -> AgentResult<u64> {
        rootfs::customize(
            &root,
            &rootfs::Customization {
                envd: &envd,
                wrenn_init: WRENN_INIT,
                hostname: GUEST_HOSTNAME,
                image_info: info0,
            },
        )?;
        rootfs::used_bytes(&root)
    })
    .await
    .map_err(|e| AgentError::Internal(format!("customise task: {e}")))??;
    let size = rootfs::filesystem_size(used);
    rootfs::write_guest_file(
        &staging_tree,
        "etc/wrenn-image",
        image_info(size).as_bytes(),
        0o644,
        (0, 0),
    )?;
    let t_mkfs = Instant::now();
    let rootfs_path = staging_dir.join(FILE_ROOTFS);
    rootfs::mkfs(&staging_tree, &rootfs_path, size, &version, epoch).await?;
    tracing::info!(
        used_mib = used >> 20,
        size_mib = size >> 20,
        mkfs_ms = t_mkfs.elapsed().as_millis() as u64,
        elapsed_ms = t.elapsed().as_millis() as u64,
        "[5/6] root filesystem done"
    );
    drop(_staging_guard);

    // [6/6] Install.
    let t = Instant::now();
    tracing::info!("[6/6] installing images/{version}");
    let manifest = ImageManifest {
        version: version.clone(),
        kernel_release: tree.release.clone(),
        kernel_package_version: kernel_pkg.version.clone(),
        kernel: FILE_KERNEL.into(),
        initrd: Some(FILE_INITRD.into()),
        rootfs: FILE_ROOTFS.into(),
        rootfs_size_bytes: size,
        boot_args: boot_args(),
        envd_sha256,
    };
    let inputs_json = serde_json::to_string_pretty(&inputs)
        .map_err(|e| AgentError::Internal(format!("inputs: {e}")))?;
    write_file(&staging_dir.join(FILE_INPUTS), inputs_json.as_bytes())?;
    for f in [FILE_KERNEL, FILE_INITRD, FILE_ROOTFS, FILE_KERNEL_CONFIG] {
        set_read_only(&staging_dir.join(f))?;
    }
    write_manifest(&staging_dir, &manifest)?;
    let dest = opts.images_dir.join(&version);
    install_dir(&staging_dir, &dest)?;
    drop(out); // the folder is gone (renamed), nothing to remove
    set_current(&opts.images_dir, &version)?;
    let removed = prune_images(&opts.images_dir, KEEP_IMAGES)?;
    prune_cache(&opts.cache_dir, &kernel_pkg, &busybox_pkg, &key);
    tracing::info!(
        removed = ?removed,
        elapsed_ms = t.elapsed().as_millis() as u64,
        "[6/6] install done"
    );
    let image = GuestImage::open(&dest)?;
    tracing::info!(
        version = %version,
        dir = %image.dir.display(),
        rootfs_mib = size >> 20,
        total_s = format!("{:.1}", started.elapsed().as_secs_f64()),
        "guest image ready; images/current points at it"
    );
    Ok(image)
}

/// The concrete `-unsigned` kernel package the cloud meta package currently depends on.
/// (The signed package has the same kernel with a Secure Boot signature we do not need, and
/// comes from a separate source package whose versions can lag.)
async fn resolve_kernel_package() -> AgentResult<apt::PackageRef> {
    let (meta, fields) = apt::resolve(KERNEL_META_PACKAGE).await?;
    let depends = fields.get("Depends").cloned().unwrap_or_default();
    let dep = apt::kernel_dependency(&depends).ok_or_else(|| {
        AgentError::Image(format!(
            "{KERNEL_META_PACKAGE} {} depends on no linux-image package (Depends: {depends})",
            meta.version
        ))
    })?;
    let name = if dep.name.ends_with("-unsigned") {
        dep.name
    } else {
        format!("{}-unsigned", dep.name)
    };
    let version = if dep.version.is_empty() {
        meta.version
    } else {
        dep.version
    };
    Ok(apt::PackageRef { name, version })
}

/// Reads [`VIRTIO_MODULES`] from the kernel tree, in order; modules built into this kernel are
/// skipped, a missing one is an error (the guest would not find its disk).
async fn collect_modules(tree: &kernel::KernelTree) -> AgentResult<Vec<(String, Vec<u8>)>> {
    let index = tree.module_index()?;
    let builtin = tree.builtin_modules();
    let mut out = Vec::new();
    for name in VIRTIO_MODULES {
        match index.get(*name) {
            Some(path) => out.push((name.to_string(), kernel::read_module(path).await?)),
            None if builtin.iter().any(|b| b == name) => {
                tracing::debug!(module = name, "built into the kernel");
            }
            None => {
                return Err(AgentError::Image(format!(
                    "kernel {} has no module {name} (neither a .ko under {} nor built in)",
                    tree.release,
                    tree.modules_dir.display()
                )));
            }
        }
    }
    Ok(out)
}

/// sha256 of envd after checking it is an executable ELF file.
fn check_envd(path: &Path) -> AgentResult<String> {
    let mut head = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut head)
    });
    if let Err(e) = read {
        return Err(AgentError::Image(format!(
            "cannot read the envd binary {} ({e}); build it with `cargo build --release --target x86_64-unknown-linux-musl -p envd`",
            path.display()
        )));
    }
    if &head != b"\x7fELF" {
        return Err(AgentError::Image(format!(
            "{} is not an ELF executable",
            path.display()
        )));
    }
    // A dynamically linked envd only runs if the guest's glibc is new enough; the .interp
    // section naming the loader sits in the first page of a dynamic executable.
    let mut first_page = Vec::with_capacity(4096);
    if std::fs::File::open(path)
        .and_then(|f| {
            use std::io::Read;
            f.take(4096).read_to_end(&mut first_page)
        })
        .is_ok()
        && first_page.windows(7).any(|w| w == b"ld-linu")
    {
        tracing::warn!(
            envd = %path.display(),
            "envd is dynamically linked: it runs only if the guest's glibc is compatible; prefer the static build (--target x86_64-unknown-linux-musl)"
        );
    }
    sha256_file(path)
}

fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|v| *v <= u64::from(u32::MAX))
        .unwrap_or(DEFAULT_EPOCH)
}

/// The image `images/<version>` if it is complete.
fn existing(images_dir: &Path, version: &str) -> Option<GuestImage> {
    let dir = images_dir.join(version);
    if !dir.join(MANIFEST).is_file() {
        return None;
    }
    match GuestImage::open(&dir) {
        Ok(image) if image.manifest.version == version => Some(image),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "existing image is incomplete; rebuilding it");
            None
        }
    }
}

fn write_file(path: &Path, data: &[u8]) -> AgentResult<()> {
    std::fs::write(path, data).map_err(|e| AgentError::io(path, e))
}

fn set_read_only(path: &Path) -> AgentResult<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
        .map_err(|e| AgentError::io(path, e))
}

/// Writes `manifest.json` (last, so its presence means the folder is complete).
fn write_manifest(dir: &Path, manifest: &ImageManifest) -> AgentResult<()> {
    let text = serde_json::to_string_pretty(manifest)
        .map_err(|e| AgentError::Internal(format!("manifest: {e}")))?;
    let path = dir.join(MANIFEST);
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    write_file(&tmp, format!("{text}\n").as_bytes())?;
    std::fs::rename(&tmp, &path).map_err(|e| AgentError::io(&path, e))
}

/// Renames the finished `src` folder to `dest`, replacing an existing `dest` (a forced rebuild)
/// with two renames so readers see either the old or the new folder.
fn install_dir(src: &Path, dest: &Path) -> AgentResult<()> {
    if std::fs::symlink_metadata(dest).is_ok() {
        let mut old = dest.as_os_str().to_os_string();
        old.push(format!(".old-{}", std::process::id()));
        let old = PathBuf::from(old);
        std::fs::rename(dest, &old).map_err(|e| AgentError::io(dest, e))?;
        std::fs::rename(src, dest).map_err(|e| AgentError::io(dest, e))?;
        let _ = std::fs::remove_dir_all(&old);
        return Ok(());
    }
    std::fs::rename(src, dest).map_err(|e| AgentError::io(dest, e))
}

/// Points `images/current` at `version` atomically (a new symlink renamed over the old one).
/// The link is relative, so the images directory can be moved or mounted elsewhere.
pub fn set_current(images_dir: &Path, version: &str) -> AgentResult<()> {
    let link = images_dir.join(CURRENT);
    let tmp = images_dir.join(format!(".{CURRENT}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).map_err(|e| AgentError::io(&tmp, e))?;
    std::fs::rename(&tmp, &link).map_err(|e| AgentError::io(&link, e))
}

/// The version `images/current` points at.
pub fn current_version(images_dir: &Path) -> Option<String> {
    std::fs::read_link(images_dir.join(CURRENT))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Deletes all but the `keep` newest base images (by manifest time), never the one `current`
/// points at nor one a sandbox, snapshot or template still pins (see [`GuestImage::pin`]).
/// Variants (`<version>-fc`) go with their base. Returns the deleted folder names.
pub fn prune_images(images_dir: &Path, keep: usize) -> AgentResult<Vec<String>> {
    let current = current_version(images_dir);
    let protected_base = current
        .as_deref()
        .map(|c| c.split('-').next().unwrap_or(c).to_string());
    let entries = std::fs::read_dir(images_dir).map_err(|e| AgentError::io(images_dir, e))?;
    let mut bases: Vec<(std::time::SystemTime, String)> = Vec::new();
    let mut variants: Vec<String> = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.')
            || name == CURRENT
            || name.contains(".tmp-")
            || name.contains(".old-")
        {
            continue;
        }
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(entry.path().join(MANIFEST)) else {
            continue;
        };
        if name.contains('-') {
            variants.push(name);
        } else {
            bases.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), name));
        }
    }
    bases.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut removed = Vec::new();
    let mut kept_bases = Vec::new();
    for (i, (_, name)) in bases.into_iter().enumerate() {
        let pinned = super::is_pinned(&images_dir.join(&name))
            || variants.iter().any(|v| {
                v.starts_with(&format!("{name}-")) && super::is_pinned(&images_dir.join(v))
            });
        if i < keep || Some(&name) == protected_base.as_ref() || pinned {
            kept_bases.push(name);
        } else {
            removed.push(name);
        }
    }
    for v in variants {
        let base = v.split('-').next().unwrap_or(&v).to_string();
        if Some(&v) != current.as_ref() && !kept_bases.contains(&base) {
            removed.push(v);
        }
    }
    for name in &removed {
        let dir = images_dir.join(name);
        tracing::info!(image = %name, "removing an old guest image");
        std::fs::remove_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
    }
    Ok(removed)
}

/// Drops cached packages, unpacked trees and debootstrap trees this build did not use, so the
/// cache holds one generation (plus debootstrap's own .deb cache, which speeds up the next one).
fn prune_cache(
    cache_dir: &Path,
    kernel: &apt::PackageRef,
    busybox: &apt::PackageRef,
    tree_key: &str,
) {
    let keep_debs = [
        format!("{}.deb", kernel.file_stem()),
        format!("{}.deb", busybox.file_stem()),
    ];
    let prune = |dir: &Path, keep: &dyn Fn(&str) -> bool| {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            // Dot names and .tmp- folders are work in progress (a Firecracker build downloading).
            if keep(&name) || name.starts_with('.') || name.contains(".tmp-") {
                continue;
            }
            let path = e.path();
            let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(err) = r {
                tracing::warn!(path = %path.display(), error = %err, "cannot prune the build cache");
            }
        }
    };
    // linux-source debs belong to the Firecracker build; keep them.
    prune(&cache_dir.join("debs"), &|n| {
        keep_debs.iter().any(|k| k == n) || n.starts_with("linux-source-")
    });
    prune(&cache_dir.join("kernel"), &|n| n == kernel.file_stem());
    prune(&cache_dir.join("busybox"), &|n| n == busybox.file_stem());
    // A tree being debootstrapped by nobody (we hold the lock) is a leftover too.
    prune(&cache_dir.join("rootfs"), &|n| n == tree_key);
}

/// The pid in a scratch name (`x.tmp-<pid>`, `x.old-<pid>`, `staging-<pid>`,
/// `.download-<pid>`), if the name is one.
fn scratch_owner(name: &str) -> Option<u32> {
    [".tmp-", ".old-", "staging-", ".download-"]
        .iter()
        .find_map(|marker| {
            let at = name.rfind(marker)?;
            name[at + marker.len()..].parse().ok()
        })
}

/// Whether a scratch folder was left by a process that is gone (or by this one, which holds
/// the locks now, so its earlier scratch is finished with). A Firecracker kernel build, which
/// runs for an hour without the locks, keeps its scratch space.
fn is_leftover(name: &str) -> bool {
    match scratch_owner(name) {
        Some(pid) => pid == std::process::id() || !Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

/// Removes what interrupted builds left behind.
async fn remove_leftovers(opts: &BuildOptions) {
    let mut stale = Vec::new();
    let mut scan = |dir: &Path| {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.filter_map(Result::ok) {
                if is_leftover(&e.file_name().to_string_lossy()) {
                    stale.push(e.path());
                }
            }
        }
    };
    scan(&opts.images_dir);
    scan(&opts.cache_dir);
    for dir in ["rootfs", "kernel", "busybox", "firecracker", "debs"] {
        scan(&opts.cache_dir.join(dir));
    }
    for path in stale {
        tracing::info!(path = %path.display(), "removing a leftover of an interrupted build");
        let r = if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            rootfs::remove_tree(&path).await
        } else {
            std::fs::remove_file(&path).map_err(|e| AgentError::io(&path, e))
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot remove a leftover");
        }
    }
}

/// An exclusive `flock` on `<dir>/.build.lock`, released when dropped.
async fn lock_dir(dir: &Path) -> AgentResult<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    let path = dir.join(".build.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| AgentError::io(&path, e))?;
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => return Ok(lock),
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => file,
        Err((_, e)) => return Err(AgentError::io(&path, e.into())),
    };
    tracing::info!(lock = %path.display(), "another image build is running; waiting for it");
    let p = path.clone();
    tokio::task::spawn_blocking(move || Flock::lock(file, FlockArg::LockExclusive))
        .await
        .map_err(|e| AgentError::Internal(format!("lock task: {e}")))?
        .map_err(|(_, e)| AgentError::io(&p, e.into()))
}

/// Deletes a folder when dropped (the build's scratch space on every error path).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take()
            && std::fs::symlink_metadata(&p).is_ok()
            && let Err(e) = std::fs::remove_dir_all(&p)
        {
            tracing::warn!(path = %p.display(), error = %e, "cannot remove a scratch folder");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn inputs() -> VersionInputs {
        VersionInputs::new(
            "linux-image-6.1.0-48-cloud-amd64-unsigned",
            "6.1.172-1",
            "1:1.35.0-4+deb12u1+b1",
            "ab".repeat(32).as_str(),
        )
    }

    #[test]
    fn version_is_stable() {
        let v = compute_version(&inputs());
        assert_eq!(v.len(), 16);
        assert!(v.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(v, compute_version(&inputs()));
        // Package order is irrelevant.
        let mut reordered = inputs();
        reordered.packages.reverse();
        assert_eq!(v, compute_version(&reordered));
    }

    #[test]
    fn version_changes_with_every_input() {
        let base = compute_version(&inputs());
        let mutations: Vec<fn(&mut VersionInputs)> = vec![
            |i| i.builder_version.push('x'),
            |i| i.kernel_package.push('x'),
            |i| i.kernel_package_version = "6.1.173-1".into(),
            |i| i.busybox_version.push('x'),
            |i| i.suite = "trixie".into(),
            |i| i.packages.push("vim".into()),
            |i| i.modules.swap(0, 1),
            |i| i.initramfs_init.push('\n'),
            |i| i.wrenn_init.push('\n'),
            |i| i.boot_args.push_str(" debug"),
            |i| i.envd_sha256 = "cd".repeat(32),
        ];
        let mut seen = std::collections::HashSet::new();
        seen.insert(base.clone());
        for m in mutations {
            let mut i = inputs();
            m(&mut i);
            assert!(seen.insert(compute_version(&i)), "collision for {i:?}");
        }
        // Shifting text between fields is not a collision.
        let mut a = inputs();
        a.kernel_package = "ab".into();
        a.kernel_package_version = "c".into();
        let mut b = inputs();
        b.kernel_package = "a".into();
        b.kernel_package_version = "bc".into();
        assert_ne!(compute_version(&a), compute_version(&b));
    }

    #[test]
    fn boot_args_have_what_the_guest_needs() {
        let args = boot_args();
        for needed in [
            "console=ttyS0",
            "root=/dev/vda",
            " rw ",
            "rootfstype=ext4",
            "init=/sbin/wrenn-init",
            "panic=-1",
            "reboot=t",
            "ip=169.254.0.21::169.254.0.22:255.255.255.252:capsule:eth0:off",
            "quiet",
        ] {
            assert!(args.contains(needed), "{needed} missing from {args}");
        }
    }

    #[test]
    fn embedded_scripts_are_the_guest_files() {
        assert!(INITRAMFS_INIT.starts_with("#!/bin/sh\n"));
        assert!(WRENN_INIT.starts_with("#!/bin/sh\n"));
        assert!(WRENN_INIT.contains("tini -s -- /usr/local/bin/envd"));
        assert!(!WRENN_INIT.contains("--isnotfc"));
    }

    fn manifest(version: &str) -> ImageManifest {
        ImageManifest {
            version: version.into(),
            kernel_release: "6.1.0-48-cloud-amd64".into(),
            kernel_package_version: "6.1.172-1".into(),
            kernel: FILE_KERNEL.into(),
            initrd: Some(FILE_INITRD.into()),
            rootfs: FILE_ROOTFS.into(),
            rootfs_size_bytes: 123 << 20,
            boot_args: boot_args(),
            envd_sha256: "ab".repeat(32),
        }
    }

    fn fake_image(images: &Path, version: &str) {
        let dir = images.join(version);
        std::fs::create_dir_all(&dir).unwrap();
        for f in [FILE_KERNEL, FILE_INITRD, FILE_ROOTFS] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        write_manifest(&dir, &manifest(version)).unwrap();
    }

    #[test]
    fn manifest_round_trip_and_current() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path();
        fake_image(images, "00000000000000aa");
        set_current(images, "00000000000000aa").unwrap();
        let image = GuestImage::current(images).unwrap();
        assert_eq!(image.manifest, manifest("00000000000000aa"));
        assert_eq!(
            image.dir,
            images.canonicalize().unwrap().join("00000000000000aa")
        );
        assert_eq!(image.initrd().unwrap(), image.dir.join(FILE_INITRD));
        assert_eq!(
            std::fs::read_link(images.join(CURRENT)).unwrap(),
            Path::new("00000000000000aa")
        );
        // Repointing replaces the link atomically.
        fake_image(images, "00000000000000bb");
        set_current(images, "00000000000000bb").unwrap();
        assert_eq!(current_version(images).as_deref(), Some("00000000000000bb"));
        assert!(existing(images, "00000000000000bb").is_some());
        assert!(existing(images, "00000000000000cc").is_none());
        std::fs::remove_file(images.join("00000000000000bb").join(FILE_ROOTFS)).unwrap();
        assert!(existing(images, "00000000000000bb").is_none());
    }

    #[test]
    fn prune_keeps_newest_and_current() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path();
        let names = [
            "000000000000000a",
            "000000000000000b",
            "000000000000000c",
            "000000000000000d",
            "000000000000000e",
        ];
        for (i, n) in names.iter().enumerate() {
            fake_image(images, n);
            let t =
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
            let f = std::fs::File::options()
                .write(true)
                .open(images.join(n).join(MANIFEST))
                .unwrap();
            f.set_modified(t).unwrap();
        }
        fake_image(images, "000000000000000a-fc");
        fake_image(images, "000000000000000e-fc");
        std::fs::create_dir_all(images.join("000000000000000f.tmp-1")).unwrap();
        set_current(images, "000000000000000a").unwrap();
        // A paused sandbox still needs the oldest non-current image.
        std::fs::create_dir_all(images.join("000000000000000b").join(crate::image::PINS)).unwrap();
        std::fs::write(
            images
                .join("000000000000000b")
                .join(crate::image::PINS)
                .join("sandbox.cl-1"),
            b"",
        )
        .unwrap();
        assert_eq!(prune_images(images, 3).unwrap(), Vec::<String>::new());
        crate::image::unpin(images, "sandbox.cl-1");
        let mut removed = prune_images(images, 3).unwrap();
        removed.sort();
        assert_eq!(removed, ["000000000000000b"]);
        set_current(images, "000000000000000e").unwrap();
        let mut removed = prune_images(images, 3).unwrap();
        removed.sort();
        assert_eq!(removed, ["000000000000000a", "000000000000000a-fc"]);
        assert!(images.join("000000000000000e-fc").is_dir());
        assert!(
            images.join("000000000000000f.tmp-1").is_dir(),
            "not ours to judge"
        );
    }

    #[test]
    fn leftovers_are_recognised_by_owner() {
        assert_eq!(scratch_owner("0123456789abcdef.tmp-42"), Some(42));
        assert_eq!(scratch_owner("0123456789abcdef.old-7"), Some(7));
        assert_eq!(scratch_owner("staging-99"), Some(99));
        assert_eq!(scratch_owner("0123456789abcdef"), None);
        assert_eq!(scratch_owner("x.tmp-notapid"), None);
        assert!(is_leftover(&format!("x.tmp-{}", std::process::id())));
        assert!(!is_leftover("x.tmp-1")); // pid 1 is always alive
        assert!(is_leftover("x.tmp-4294967295"));
        assert!(!is_leftover("current"));
    }

    #[test]
    fn install_replaces_existing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("new");
        let dest = dir.path().join("v");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), "new").unwrap();
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::write(dest.join("f"), "old").unwrap();
        install_dir(&src, &dest).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("f")).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// Runs the init scripts' own parsing functions (sourced with WRENN_INIT_LIB=1) under the
    /// shells they run on in the guest: busybox ash (initramfs) and dash (wrenn-init).
    #[test]
    fn init_scripts_parse_ip_and_netmask() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &str, &[&str]); 3] = [
            ("initramfs-init", INITRAMFS_INIT, &["busybox", "sh"]),
            ("initramfs-init", INITRAMFS_INIT, &["dash"]),
            ("wrenn-init", WRENN_INIT, &["dash"]),
        ];
        let probe = format!(
            r#"
parse_cmdline "console=ttyS0 root=/dev/vdb rw init=/sbin/other {ip} quiet"
echo "ROOT=$ROOT IPSPEC=$IPSPEC"
parse_ip "$IPSPEC"
echo "client=$IP_CLIENT gw=$IP_GW mask=$IP_MASK dev=$IP_DEV"
mask_to_prefix "$IP_MASK" && echo "prefix=$PREFIX"
mask_to_prefix 255.255.0.0 && echo "prefix=$PREFIX"
mask_to_prefix 24 && echo "prefix=$PREFIX"
mask_to_prefix 255.0.255.0 || echo "bad"
mask_to_prefix 1.2.3 || echo "bad"
parse_ip "10.0.0.2:::255.255.255.0::"
echo "client=$IP_CLIENT gw=$IP_GW dev=$IP_DEV"
"#,
            ip = ip_arg()
        );
        let mut ran = 0;
        for (name, script, shell) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("{script}\n{probe}")).unwrap();
            let out = std::process::Command::new(shell[0])
                .args(&shell[1..])
                .arg(&path)
                .env("WRENN_INIT_LIB", "1")
                .output();
            let Ok(out) = out else {
                eprintln!("{} not installed; skipping", shell.join(" "));
                continue;
            };
            ran += 1;
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{name} under {shell:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(text.contains("ROOT=/dev/vdb IPSPEC=169.254.0.21::169.254.0.22:255.255.255.252:capsule:eth0:off"), "{text}");
            assert!(
                text.contains("client=169.254.0.21 gw=169.254.0.22 mask=255.255.255.252 dev=eth0"),
                "{text}"
            );
            assert!(
                text.contains("prefix=30\nprefix=16\nprefix=24\nbad\nbad\n"),
                "{name}: {text}"
            );
            assert!(text.contains("client=10.0.0.2 gw= dev=eth0"), "{text}");
        }
        assert!(ran > 0, "no shell to test with");
    }
}
