//! The root filesystem: a cached `debootstrap --variant=minbase` tree, customised in a throwaway
//! copy (user, envd, init, network files) and packed into ext4 with `mkfs.ext4 -d`, which needs
//! no loop device or mount (so it works in containers and unprivileged CI runners).

use super::apt::tmp_sibling;
use super::cmd::Cmd;
use crate::error::{AgentError, AgentResult};
use sha2::{Digest, Sha256};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Used when the host's apt configuration names no Debian mirror for the suite.
pub const FALLBACK_MIRROR: &str = "http://deb.debian.org/debian";

/// The guest's default non-root user (E2B's templates call it `user` too).
pub const GUEST_USER: &str = "user";
pub const GUEST_UID: u32 = 1000;

/// The Debian mirror for `suite` from the host's apt sources (deb822 `.sources` files first,
/// then the one-line `sources.list` format), or [`FALLBACK_MIRROR`].
pub fn default_mirror(suite: &str) -> String {
    let mut texts = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = dir
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "sources"))
            .collect();
        files.sort();
        for f in files {
            if let Ok(t) = std::fs::read_to_string(&f) {
                texts.push((true, t));
            }
        }
    }
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push((false, t));
    }
    texts
        .iter()
        .find_map(|(deb822, t)| {
            if *deb822 {
                mirror_from_deb822(t, suite)
            } else {
                mirror_from_list(t, suite)
            }
        })
        .unwrap_or_else(|| FALLBACK_MIRROR.to_string())
}

/// The first `URIs:` of a deb822 stanza with `Types: deb` whose `Suites:` has `suite` itself
/// (not `suite-security`, which is a different archive).
pub fn mirror_from_deb822(text: &str, suite: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let mut types = "";
        let mut uris = "";
        let mut suites = "";
        for line in stanza.lines() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "types" => types = v,
                    "uris" => uris = v,
                    "suites" => suites = v,
                    "enabled" if v.trim().eq_ignore_ascii_case("no") => {
                        types = "";
                        break;
                    }
                    _ => {}
                }
            }
        }
        if types.split_whitespace().any(|t| t == "deb")
            && suites.split_whitespace().any(|s| s == suite)
            && let Some(uri) = uris.split_whitespace().next()
        {
            return Some(uri.trim_end_matches('/').to_string());
        }
    }
    None
}

/// The URI of the first `deb [options] URI suite components` line for `suite`.
pub fn mirror_from_list(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let rest = line.strip_prefix("deb ")?.trim_start();
        let rest = if rest.starts_with('[') {
            rest.split_once(']')?.1.trim_start()
        } else {
            rest
        };
        let mut words = rest.split_whitespace();
        let uri = words.next()?;
        (words.next()? == suite).then(|| uri.trim_end_matches('/').to_string())
    })
}

/// The cache key of a debootstrap tree: everything that changes what debootstrap produces.
pub fn tree_key(builder_version: &str, suite: &str, mirror: &str, packages: &[&str]) -> String {
    let mut packages: Vec<&str> = packages.to_vec();
    packages.sort_unstable();
    let mut h = Sha256::new();
    for part in [builder_version, suite, mirror, &packages.join(",")] {
        h.update(part.len().to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

/// Unmounts whatever a crashed debootstrap left mounted under `dir` (it mounts /proc and /sys
/// in the target), so that deleting the half-built tree can never reach into the host's.
pub async fn unmount_below(dir: &Path) -> AgentResult<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().trim_end_matches('/').to_string();
    let mut targets: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    // Deepest first.
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        tracing::warn!(mount = %t, "unmounting a leftover mount of an interrupted debootstrap");
        Cmd::new("umount").args(["-l", &t]).output().await?;
    }
    Ok(())
}

/// Mount points in mountinfo escape space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes a directory tree after making sure nothing is mounted inside it.
pub async fn remove_tree(dir: &Path) -> AgentResult<()> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    unmount_below(dir).await?;
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&d))
        .await
        .map_err(|e| AgentError::Internal(format!("remove task: {e}")))?
        .map_err(|e| AgentError::io(dir, e))
}

/// The debootstrap tree for these inputs under `cache/rootfs/<key>/tree`, created if missing.
/// Returns the tree and whether it came from the cache.
pub async fn ensure_tree(
    cache_dir: &Path,
    key: &str,
    suite: &str,
    mirror: &str,
    packages: &[&str],
) -> AgentResult<(PathBuf, bool)> {
    let base = cache_dir.join("rootfs");
    let dir = base.join(key);
    let tree = dir.join("tree");
    if dir.join("complete.json").is_file() && tree.is_dir() {
        return Ok((tree, true));
    }
    std::fs::create_dir_all(&base).map_err(|e| AgentError::io(&base, e))?;
    remove_tree(&dir).await?;
    let tmp = tmp_sibling(&dir);
    remove_tree(&tmp).await?;
    let tmp_tree = tmp.join("tree");
    std::fs::create_dir_all(&tmp_tree).map_err(|e| AgentError::io(&tmp_tree, e))?;
    let debs = cache_dir.join("debootstrap-debs");
    std::fs::create_dir_all(&debs).map_err(|e| AgentError::io(&debs, e))?;

    let result = Cmd::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", packages.join(",")))
        .arg("--components=main")
        .arg(format!("--cache-dir={}", debs.display()))
        .arg(suite)
        .arg(&tmp_tree)
        .arg(mirror)
        .hint(format!(
            "debootstrap failed: check that {mirror} is reachable (the mirror comes from /etc/apt/sources.list.d/ or --mirror); the log is {}/debootstrap/debootstrap.log",
            tmp_tree.display()
        ))
        .stream()
        .await;
    if let Err(e) = result {
        // Leave the failed tree for inspection (its debootstrap.log), but never mounted.
        let _ = unmount_below(&tmp).await;
        return Err(e);
    }
    unmount_below(&tmp).await?;
    let t = tmp_tree.clone();
    tokio::task::spawn_blocking(move || slim_tree(&t))
        .await
        .map_err(|e| AgentError::Internal(format!("cleanup task: {e}")))??;
    let installed = installed_packages(&tmp_tree);
    let record = serde_json::json!({
        "suite": suite,
        "mirror": mirror,
        "include": packages,
        "installed": installed,
    });
    let record_path = tmp.join("complete.json");
    std::fs::write(&record_path, record.to_string())
        .map_err(|e| AgentError::io(&record_path, e))?;
    std::fs::rename(&tmp, &dir).map_err(|e| AgentError::io(&dir, e))?;
    Ok((tree, false))
}

/// `name version` of every installed package, from the tree's dpkg status.
fn installed_packages(tree: &Path) -> Vec<String> {
    let status = std::fs::read_to_string(tree.join("var/lib/dpkg/status")).unwrap_or_default();
    let mut out = Vec::new();
    for stanza in status.split("\n\n") {
        let fields = super::apt::parse_control(stanza);
        if let (Some(p), Some(v)) = (fields.get("Package"), fields.get("Version")) {
            out.push(format!("{p} {v}"));
        }
    }
    out.sort();
    out
}

/// Drops what a sandbox never needs from the cached tree: apt's downloaded archives and package
/// lists (stale by the time anyone uses them; `apt-get update` fetches fresh ones), logs of the
/// bootstrap, man/info pages and documentation (copyright files stay).
fn slim_tree(tree: &Path) -> AgentResult<()> {
    for dir in [
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "usr/share/man",
        "usr/share/info",
        "var/log",
    ] {
        empty_dir(&tree.join(dir), &|p| {
            // Keep apt's lock files and partial/ folders.
            p.file_name().is_some_and(|n| n == "lock" || n == "partial")
        })?;
    }
    for f in [
        "var/cache/apt/pkgcache.bin",
        "var/cache/apt/srcpkgcache.bin",
    ] {
        let _ = std::fs::remove_file(tree.join(f));
    }
    let doc = tree.join("usr/share/doc");
    if let Ok(entries) = std::fs::read_dir(&doc) {
        for pkg in entries.filter_map(Result::ok) {
            if pkg.file_type().is_ok_and(|t| t.is_dir()) {
                empty_dir(&pkg.path(), &|p| {
                    p.file_name().is_some_and(|n| n == "copyright")
                })?;
            }
        }
    }
    Ok(())
}

/// Removes the entries of `dir` except those `keep` accepts.
fn empty_dir(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> AgentResult<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if keep(&path) {
            continue;
        }
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let r = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        r.map_err(|e| AgentError::io(&path, e))?;
    }
    Ok(())
}

/// Copies the cached tree into `staging` (`cp -a`, reflinked where the filesystem can), so the
/// cache is never modified.
pub async fn copy_tree(tree: &Path, staging: &Path) -> AgentResult<()> {
    remove_tree(staging).await?;
    Cmd::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(tree)
        .arg(staging)
        .hint("copying the cached root filesystem failed; check free space in the cache directory")
        .output()
        .await?;
    Ok(())
}

/// Resolves `rel` inside `root` as the guest would see it: symlinks (absolute ones relative to
/// `root`) are followed, and nothing can escape `root`. Writing through a guest's absolute
/// symlink (say `/etc/resolv.conf -> /run/...`) would otherwise write to the host.
pub fn guest_path(root: &Path, rel: &str) -> AgentResult<PathBuf> {
    let mut resolved = PathBuf::new(); // relative to root
    let mut pending: Vec<String> = components(rel);
    pending.reverse();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&c);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() && !pending.is_empty() => {
                hops += 1;
                if hops > 40 {
                    return Err(AgentError::Image(format!(
                        "too many symlinks resolving /{rel} in the guest tree"
                    )));
                }
                let target = std::fs::read_link(&full).map_err(|e| AgentError::io(&full, e))?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    resolved = PathBuf::new();
                }
                let mut more = components(&target);
                more.reverse();
                pending.extend(more);
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

fn components(p: &str) -> Vec<String> {
    Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Writes a file in the guest tree, replacing whatever was there (including a symlink, which is
/// removed rather than followed), with `mode` and owner `uid:gid`.
pub fn write_guest_file(
    root: &Path,
    rel: &str,
    data: &[u8],
    mode: u32,
    owner: (u32, u32),
) -> AgentResult<()> {
    let path = guest_path(root, rel)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| AgentError::io(parent, e))?;
    }
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => {
            return Err(AgentError::Image(format!(
                "/{rel} is a directory in the guest tree"
            )));
        }
        Ok(_) => std::fs::remove_file(&path).map_err(|e| AgentError::io(&path, e))?,
        Err(_) => {}
    }
    std::fs::write(&path, data).map_err(|e| AgentError::io(&path, e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| AgentError::io(&path, e))?;
    std::os::unix::fs::chown(&path, Some(owner.0), Some(owner.1))
        .map_err(|e| AgentError::io(&path, e))
}

/// What the builder puts into the copy of the tree.
#[derive(Debug)]
pub struct Customization<'a> {
    pub envd: &'a [u8],
    pub wrenn_init: &'a str,
    pub hostname: &'a str,
    /// Content of `/etc/wrenn-image` (KEY=value lines, read by wrenn-init).
    pub image_info: String,
}

/// Adds the user, envd, wrenn-init and the network identity to a staging tree.
pub fn customize(root: &Path, c: &Customization<'_>) -> AgentResult<()> {
    let root_owner = (0, 0);
    write_guest_file(root, "usr/local/bin/envd", c.envd, 0o755, root_owner)?;
    write_guest_file(
        root,
        "sbin/wrenn-init",
        c.wrenn_init.as_bytes(),
        0o755,
        root_owner,
    )?;
    write_guest_file(
        root,
        "etc/hostname",
        format!("{}\n", c.hostname).as_bytes(),
        0o644,
        root_owner,
    )?;
    let hosts = format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{h}\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n",
        h = c.hostname
    );
    write_guest_file(root, "etc/hosts", hosts.as_bytes(), 0o644, root_owner)?;
    write_guest_file(
        root,
        "etc/resolv.conf",
        b"nameserver 8.8.8.8\nnameserver 8.8.4.4\n",
        0o644,
        root_owner,
    )?;
    write_guest_file(
        root,
        "etc/wrenn-image",
        c.image_info.as_bytes(),
        0o644,
        root_owner,
    )?;
    add_user(root)
}

/// Adds `user` (uid/gid 1000, bash, home from /etc/skel) with passwordless sudo, editing the
/// account files directly: `useradd` would need a chroot and stamps today's date into
/// /etc/shadow, which breaks reproducibility.
fn add_user(root: &Path) -> AgentResult<()> {
    let (uid, user) = (GUEST_UID, GUEST_USER);
    let edits: [(&str, String, u32); 4] = [
        (
            "etc/passwd",
            format!("{user}:x:{uid}:{uid}::/home/{user}:/bin/bash"),
            0o644,
        ),
        ("etc/group", format!("{user}:x:{uid}:"), 0o644),
        // Locked password: sudo needs none, and nobody logs in with one.
        ("etc/shadow", format!("{user}:!::0:99999:7:::"), 0o640),
        ("etc/gshadow", format!("{user}:!::"), 0o640),
    ];
    for (file, line, mode) in edits {
        let path = guest_path(root, file)?;
        let text = std::fs::read_to_string(&path).map_err(|e| AgentError::io(&path, e))?;
        let id_taken = |l: &&str| {
            let f: Vec<&str> = l.split(':').collect();
            (file == "etc/passwd" || file == "etc/group")
                && f.get(2).is_some_and(|id| *id == uid.to_string())
                && f.first().is_some_and(|n| *n != user)
        };
        if let Some(l) = text.lines().find(id_taken) {
            return Err(AgentError::Image(format!(
                "uid/gid {uid} is already used in the guest's /{file}: {l}"
            )));
        }
        let mut lines: Vec<&str> = text
            .lines()
            .filter(|l| l.split(':').next() != Some(user))
            .collect();
        lines.push(&line);
        let mut out = lines.join("\n");
        out.push('\n');
        let gid = std::fs::metadata(&path)
            .map(|m| m.gid())
            .map_err(|e| AgentError::io(&path, e))?;
        write_guest_file(root, file, out.as_bytes(), mode, (0, gid))?;
    }
    write_guest_file(
        root,
        &format!("etc/sudoers.d/{user}"),
        format!("{user} ALL=(ALL:ALL) NOPASSWD: ALL\n").as_bytes(),
        0o440,
        (0, 0),
    )?;

    let home = guest_path(root, &format!("home/{user}"))?;
    std::fs::create_dir_all(&home).map_err(|e| AgentError::io(&home, e))?;
    let skel = guest_path(root, "etc/skel")?;
    if let Ok(entries) = std::fs::read_dir(&skel) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                let dest = home.join(entry.file_name());
                std::fs::copy(entry.path(), &dest).map_err(|e| AgentError::io(&dest, e))?;
                std::os::unix::fs::chown(&dest, Some(uid), Some(uid))
                    .map_err(|e| AgentError::io(&dest, e))?;
            }
        }
    }
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o750))
        .map_err(|e| AgentError::io(&home, e))?;
    std::os::unix::fs::chown(&home, Some(uid), Some(uid)).map_err(|e| AgentError::io(&home, e))
}

/// Bytes the tree occupies (allocated blocks; hard links counted once).
pub fn used_bytes(root: &Path) -> AgentResult<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| AgentError::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| AgentError::io(&dir, e))?;
            let path = entry.path();
            let m = std::fs::symlink_metadata(&path).map_err(|e| AgentError::io(&path, e))?;
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            // ext4 allocates whole 4 KiB blocks; the host filesystem may pack tails differently.
            total += m.len().next_multiple_of(4096).max(m.blocks() * 512);
            if m.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(total)
}

/// Filesystem size for `used` bytes of content: +25% and 64 MiB of headroom (ext4 metadata,
/// journal, and room for a sandbox that never grows its disk), rounded up to a MiB.
pub fn filesystem_size(used: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    (used + used / 4 + 64 * MIB).next_multiple_of(MIB)
}

/// A UUID-formatted value derived from `seed`, so equal inputs give an identical filesystem.
pub fn uuid_from(seed: &str, purpose: &str) -> String {
    let d = Sha256::digest(format!("{purpose}:{seed}"));
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40; // version 4 layout (random-looking, as mke2fs expects)
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Packs `staging` into a new ext4 image `out` of `size` bytes.
///
/// 4 KiB blocks and 256-byte inodes are forced (mke2fs would pick its "small" profile, 1 KiB
/// blocks and 128-byte inodes, below 512 MiB, which grows badly); one inode per 8 KiB leaves room
/// for many small files; inode tables and the journal are initialised now so the guest kernel
/// never runs `ext4lazyinit` (slow under emulation); no blocks are reserved for root (a sandbox
/// belongs to one tenant).
pub async fn mkfs(
    staging: &Path,
    out: &Path,
    size: u64,
    seed: &str,
    epoch: u64,
) -> AgentResult<()> {
    let _ = std::fs::remove_file(out);
    let uuid = uuid_from(seed, "fs-uuid");
    let hash_seed = uuid_from(seed, "hash-seed");
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-t", "ext4", "-L", "root", "-b", "4096", "-I", "256", "-i", "8192"])
        .args(["-m", "0", "-U", &uuid])
        .arg("-E")
        .arg(format!(
            "root_owner=0:0,hash_seed={hash_seed},lazy_itable_init=0,lazy_journal_init=0"
        ))
        .arg("-d")
        .arg(staging)
        .arg(out)
        .arg(format!("{}k", size / 1024))
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .hint("mkfs.ext4 failed: check free space next to the images directory and that e2fsprogs is 1.45 or newer (mkfs.ext4 -d)")
        .output()
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn deb822_mirror() {
        let text = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://deb.debian.org/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(
            mirror_from_deb822(text, "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(
            mirror_from_deb822(text, "bookworm-security").as_deref(),
            Some("http://deb.debian.org/debian-security")
        );
        assert_eq!(mirror_from_deb822(text, "trixie"), None);
        let disabled = "Types: deb\nURIs: http://x/debian\nSuites: bookworm\nEnabled: no\n";
        assert_eq!(mirror_from_deb822(disabled, "bookworm"), None);
        let src_only = "Types: deb-src\nURIs: http://x/debian\nSuites: bookworm\n";
        assert_eq!(mirror_from_deb822(src_only, "bookworm"), None);
    }

    #[test]
    fn one_line_mirror() {
        let text = "# comment\ndeb-src http://src/debian bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main contrib\ndeb http://security.debian.org/debian-security bookworm-security main\n";
        assert_eq!(
            mirror_from_list(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            mirror_from_list("deb http://a/debian bullseye main", "bookworm"),
            None
        );
    }

    #[test]
    fn tree_key_ignores_package_order() {
        let a = tree_key("1", "bookworm", "http://m", &["bash", "curl"]);
        assert_eq!(a, tree_key("1", "bookworm", "http://m", &["curl", "bash"]));
        assert_ne!(
            a,
            tree_key("1", "bookworm", "http://other", &["curl", "bash"])
        );
        assert_ne!(a, tree_key("2", "bookworm", "http://m", &["curl", "bash"]));
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn guest_paths_never_escape() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
        std::fs::create_dir_all(root.join("run/systemd")).unwrap();
        std::os::unix::fs::symlink("usr/sbin", root.join("sbin")).unwrap();
        std::os::unix::fs::symlink("/run/systemd", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/", root.join("up")).unwrap();
        assert_eq!(
            guest_path(root, "sbin/wrenn-init").unwrap(),
            root.join("usr/sbin/wrenn-init")
        );
        assert_eq!(
            guest_path(root, "etc/resolv.conf").unwrap(),
            root.join("run/systemd/resolv.conf")
        );
        assert_eq!(guest_path(root, "../../usr/x").unwrap(), root.join("usr/x"));
        assert_eq!(guest_path(root, "up/../x").unwrap(), root.join("x"));

        // A final-component symlink is replaced, not followed.
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("data/link")).unwrap();
        write_guest_file(root, "data/link", b"x", 0o600, (0, 0)).unwrap();
        let m = std::fs::symlink_metadata(root.join("data/link")).unwrap();
        assert!(m.is_file());
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn customize_adds_user_and_files() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("needs root (chown); skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/skel")).unwrap();
        std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
        std::os::unix::fs::symlink("usr/sbin", root.join("sbin")).unwrap();
        std::fs::write(root.join("etc/skel/.bashrc"), "# bashrc\n").unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nsudo:x:27:\n").unwrap();
        std::fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        std::fs::write(root.join("etc/gshadow"), "root:*::\n").unwrap();
        let c = Customization {
            envd: b"\x7fELFenvd",
            wrenn_init: "#!/bin/sh\n",
            hostname: "capsule",
            image_info: "ROOTFS_SIZE_BYTES=1\n".into(),
        };
        customize(root, &c).unwrap();
        customize(root, &c).unwrap(); // idempotent
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert_eq!(
            passwd,
            "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n"
        );
        let shadow = std::fs::read_to_string(root.join("etc/shadow")).unwrap();
        assert!(shadow.ends_with("user:!::0:99999:7:::\n"), "{shadow}");
        assert_eq!(
            std::fs::read_to_string(root.join("etc/sudoers.d/user")).unwrap(),
            "user ALL=(ALL:ALL) NOPASSWD: ALL\n"
        );
        let init = std::fs::metadata(root.join("usr/sbin/wrenn-init")).unwrap();
        assert_eq!(init.permissions().mode() & 0o777, 0o755);
        let home = std::fs::metadata(root.join("home/user")).unwrap();
        assert_eq!((home.uid(), home.gid()), (1000, 1000));
        assert!(root.join("home/user/.bashrc").is_file());
        assert_eq!(
            std::fs::read_to_string(root.join("etc/resolv.conf")).unwrap(),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );

        std::fs::write(root.join("etc/passwd"), "other:x:1000:1000::/:/bin/sh\n").unwrap();
        assert!(customize(root, &c).is_err());
    }

    #[test]
    fn sizes_and_uuids() {
        assert_eq!(filesystem_size(0), 64 << 20);
        assert_eq!(filesystem_size(400 << 20), (500 + 64) << 20);
        assert_eq!(filesystem_size(1), (64 << 20) + (1 << 20));
        let u = uuid_from("abc", "fs-uuid");
        assert_eq!(u.len(), 36);
        assert_eq!(u, uuid_from("abc", "fs-uuid"));
        assert_ne!(u, uuid_from("abc", "hash-seed"));
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
