//! cgroup v2 groups for the processes envd starts (VM only).
//!
//! Terminals get a larger CPU share than background user processes, and user processes are kept
//! under a memory ceiling so the guest has room left for envd itself. Processes join their group
//! between fork and exec by writing to an already-open `cgroup.procs`, which is async-signal-safe.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// A group processes can be placed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupKind {
    /// Processes started with a terminal (interactive shells).
    Pty,
    /// Every other user process, including `--cmd`.
    User,
    /// Reserved for port-forwarder helpers; the forwarder runs inside envd today, so nothing
    /// joins it yet.
    Ports,
}

impl CgroupKind {
    const ALL: [CgroupKind; 3] = [CgroupKind::Pty, CgroupKind::User, CgroupKind::Ports];

    pub fn name(self) -> &'static str {
        match self {
            CgroupKind::Pty => "pty",
            CgroupKind::User => "user",
            CgroupKind::Ports => "ports",
        }
    }

    fn index(self) -> usize {
        match self {
            CgroupKind::Pty => 0,
            CgroupKind::User => 1,
            CgroupKind::Ports => 2,
        }
    }
}

/// Where processes are placed; `Arc<dyn CgroupManager>` lives in the shared state.
pub trait CgroupManager: Send + Sync {
    /// An open `cgroup.procs` of `group` (valid while the manager lives), or `None` when
    /// processes are not placed in cgroups.
    fn procs_fd(&self, group: CgroupKind) -> Option<RawFd>;
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{0} is not a cgroup v2 hierarchy (no cgroup.controllers)")]
    NotV2(PathBuf),
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Used with `--isnotfc`, or when the cgroup hierarchy cannot be set up.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCgroups;

impl CgroupManager for NoCgroups {
    fn procs_fd(&self, _group: CgroupKind) -> Option<RawFd> {
        None
    }
}

/// The groups `<root>/wrenn/{pty,user,ports}` of a cgroup v2 hierarchy.
#[derive(Debug)]
pub struct CgroupV2 {
    /// `cgroup.procs` of each group, in `CgroupKind::index` order; kept open so children can
    /// join without opening anything after fork.
    procs: [File; 3],
}

const CONTROLLERS: &str = "+cpu +memory";
const MIB: u64 = 1024 * 1024;

/// `memory.high` of the user group: all memory but a reserve for envd and the kernel (an eighth
/// of it, at most 128 MiB).
pub fn user_memory_high(total_bytes: u64) -> u64 {
    total_bytes.saturating_sub((total_bytes / 8).min(128 * MIB))
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

fn properties(kind: CgroupKind, mem_total: Option<u64>) -> Vec<(&'static str, String)> {
    match kind {
        CgroupKind::Pty => vec![("cpu.weight", "200".into())],
        CgroupKind::Ports => vec![
            ("cpu.weight", "150".into()),
            ("memory.min", (5 * MIB).to_string()),
            ("memory.low", (8 * MIB).to_string()),
        ],
        CgroupKind::User => {
            let mut p = vec![("cpu.weight", "50".into())];
            match mem_total {
                Some(total) => p.push(("memory.high", user_memory_high(total).to_string())),
                None => tracing::debug!("MemTotal unknown; user group has no memory.high"),
            }
            p
        }
    }
}

/// Writes a control file that must already exist (cgroupfs creates them); a missing file (its
/// controller is not enabled) or a refused write only loses that one property.
fn write_property(path: &Path, value: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    f.write_all(value.as_bytes())
}

fn set_property(path: &Path, value: &str) {
    if let Err(e) = write_property(path, value) {
        match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::ENOENT) => {
                tracing::debug!(path = %path.display(), value, error = %e, "cgroup property not set")
            }
            _ => {
                tracing::warn!(path = %path.display(), value, error = %e, "cgroup property not set")
            }
        }
    }
}

/// Enables the controllers for a group's children; one at a time if the kernel refuses the pair
/// (it rejects the whole write when one controller is unavailable).
fn enable_controllers(dir: &Path) {
    let path = dir.join("cgroup.subtree_control");
    match write_property(&path, CONTROLLERS) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !path.exists() => {
            tracing::debug!(path = %path.display(), "no cgroup.subtree_control");
        }
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "enabling controllers one by one");
            for c in CONTROLLERS.split_whitespace() {
                set_property(&path, c);
            }
        }
    }
}

impl CgroupV2 {
    /// Creates the groups under `root` (a cgroup v2 mount) and sets their properties.
    pub fn setup(root: &Path) -> Result<CgroupV2, CgroupError> {
        let mem_total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| parse_mem_total(&m));
        Self::setup_with(root, mem_total)
    }

    fn setup_with(root: &Path, mem_total: Option<u64>) -> Result<CgroupV2, CgroupError> {
        if !root.join("cgroup.controllers").is_file() {
            return Err(CgroupError::NotV2(root.to_path_buf()));
        }
        let base = root.join("wrenn");
        std::fs::create_dir_all(&base).map_err(|source| CgroupError::Io {
            context: "creating",
            path: base.clone(),
            source,
        })?;
        enable_controllers(root);
        enable_controllers(&base);

        let open = |kind: CgroupKind| -> Result<File, CgroupError> {
            let dir = base.join(kind.name());
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(CgroupError::Io {
                        context: "creating",
                        path: dir,
                        source,
                    });
                }
            }
            for (name, value) in properties(kind, mem_total) {
                set_property(&dir.join(name), &value);
            }
            let procs = dir.join("cgroup.procs");
            // std opens with O_CLOEXEC: the fd reaches forked children but no exec'd program.
            std::fs::OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(|source| CgroupError::Io {
                    context: "opening",
                    path: procs,
                    source,
                })
        };
        let procs = [
            open(CgroupKind::ALL[0])?,
            open(CgroupKind::ALL[1])?,
            open(CgroupKind::ALL[2])?,
        ];
        tracing::info!(root = %base.display(), "process cgroups ready");
        Ok(CgroupV2 { procs })
    }
}

impl CgroupManager for CgroupV2 {
    fn procs_fd(&self, group: CgroupKind) -> Option<RawFd> {
        Some(self.procs[group.index()].as_raw_fd())
    }
}

/// Moves the calling process into the group whose `cgroup.procs` is `fd` ("0" means "me").
/// Async-signal-safe, for `pre_exec`; a failure leaves the process where it was.
pub fn join_in_child(fd: RawFd) {
    // SAFETY: a plain write(2) of a static one-byte buffer; a bad fd only yields EBADF.
    unsafe {
        let _ = libc::write(fd, b"0".as_ptr().cast(), 1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A tree shaped like cgroupfs: control files exist before anything writes them.
    fn fake_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory io\n").unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        std::fs::create_dir_all(root.join("wrenn")).unwrap();
        std::fs::write(root.join("wrenn/cgroup.subtree_control"), "").unwrap();
        for kind in CgroupKind::ALL {
            let g = root.join("wrenn").join(kind.name());
            std::fs::create_dir_all(&g).unwrap();
            for f in [
                "cgroup.procs",
                "cpu.weight",
                "memory.min",
                "memory.low",
                "memory.high",
            ] {
                std::fs::write(g.join(f), "").unwrap();
            }
        }
        dir
    }

    fn read(root: &Path, rel: &str) -> String {
        std::fs::read_to_string(root.join(rel)).unwrap()
    }

    #[test]
    fn memory_high_arithmetic() {
        // Small guests keep an eighth back.
        assert_eq!(user_memory_high(512 * MIB), 448 * MIB);
        // Large ones keep 128 MiB back.
        assert_eq!(user_memory_high(4096 * MIB), 3968 * MIB);
        assert_eq!(user_memory_high(1024 * MIB), 896 * MIB);
        assert_eq!(user_memory_high(0), 0);
        assert_eq!(user_memory_high(u64::MAX), u64::MAX - 128 * MIB);
    }

    #[test]
    fn meminfo_parsing() {
        let m = "MemTotal:        2030000 kB\nMemFree:  100 kB\n";
        assert_eq!(parse_mem_total(m), Some(2_030_000 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: 1 MB\n"), None);
        assert_eq!(
            parse_mem_total(&format!("MemTotal: {} kB\n", u64::MAX)),
            None
        );
    }

    #[test]
    fn setup_writes_groups_and_properties() {
        let tree = fake_tree();
        let root = tree.path();
        let mgr = CgroupV2::setup_with(root, Some(1024 * MIB)).unwrap();
        assert_eq!(read(root, "cgroup.subtree_control"), "+cpu +memory");
        assert_eq!(read(root, "wrenn/cgroup.subtree_control"), "+cpu +memory");
        assert_eq!(read(root, "wrenn/pty/cpu.weight"), "200");
        assert_eq!(read(root, "wrenn/ports/cpu.weight"), "150");
        assert_eq!(read(root, "wrenn/ports/memory.min"), "5242880");
        assert_eq!(read(root, "wrenn/ports/memory.low"), "8388608");
        assert_eq!(read(root, "wrenn/user/cpu.weight"), "50");
        assert_eq!(
            read(root, "wrenn/user/memory.high"),
            (896 * MIB).to_string()
        );
        // Properties a group does not get stay untouched.
        assert_eq!(read(root, "wrenn/pty/memory.high"), "");

        // The fds are the groups' cgroup.procs: joining writes "0" there.
        for kind in CgroupKind::ALL {
            let fd = mgr.procs_fd(kind).unwrap();
            join_in_child(fd);
            let rel = format!("wrenn/{}/cgroup.procs", kind.name());
            assert_eq!(read(root, &rel), "0", "{rel}");
        }
    }

    #[test]
    fn missing_property_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("cgroup.controllers"), "cpu\n").unwrap();
        for kind in CgroupKind::ALL {
            let g = root.join("wrenn").join(kind.name());
            std::fs::create_dir_all(&g).unwrap();
            std::fs::write(g.join("cgroup.procs"), "").unwrap();
        }
        let mgr = CgroupV2::setup_with(root, None).unwrap();
        assert!(mgr.procs_fd(CgroupKind::User).is_some());
        // Nothing was created where cgroupfs had no file.
        assert!(!root.join("cgroup.subtree_control").exists());
        assert!(!root.join("wrenn/user/cpu.weight").exists());
        assert!(!root.join("wrenn/ports/memory.min").exists());
    }

    #[test]
    fn not_a_v2_hierarchy() {
        let dir = tempfile::tempdir().unwrap();
        let err = CgroupV2::setup_with(dir.path(), Some(MIB)).unwrap_err();
        assert!(matches!(err, CgroupError::NotV2(_)), "{err}");
        assert!(!dir.path().join("wrenn").exists());
    }

    #[test]
    fn groups_without_cgroup_procs_fail() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "").unwrap();
        let err = CgroupV2::setup_with(dir.path(), Some(MIB)).unwrap_err();
        assert!(matches!(err, CgroupError::Io { .. }), "{err}");
        assert!(err.to_string().contains("cgroup.procs"), "{err}");
    }

    #[test]
    fn no_cgroups_places_nothing() {
        let m: std::sync::Arc<dyn CgroupManager> = std::sync::Arc::new(NoCgroups);
        for kind in CgroupKind::ALL {
            assert_eq!(m.procs_fd(kind), None);
        }
    }

    /// Removes a throwaway cgroup tree, innermost first (cgroupfs only removes empty groups).
    struct RemoveGroups(Vec<PathBuf>);

    impl Drop for RemoveGroups {
        fn drop(&mut self) {
            for p in self.0.iter().rev() {
                if let Err(e) = std::fs::remove_dir(p)
                    && p.exists()
                {
                    eprintln!("could not remove cgroup {}: {e}", p.display());
                }
            }
        }
    }

    #[test]
    fn real_cgroup_v2() {
        let sys = Path::new("/sys/fs/cgroup");
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping real_cgroup_v2: not root");
            return;
        }
        match std::fs::read_to_string(sys.join("cgroup.controllers")) {
            Ok(c) if c.split_whitespace().any(|c| c == "cpu") => {}
            Ok(_) => {
                eprintln!("skipping real_cgroup_v2: the cpu controller is not available");
                return;
            }
            Err(e) => {
                eprintln!("skipping real_cgroup_v2: {sys:?} is not a cgroup v2 root ({e})");
                return;
            }
        }
        let root = sys.join(format!("envd-test-{}", std::process::id()));
        let wrenn = root.join("wrenn");
        let cleanup = RemoveGroups(vec![
            root.clone(),
            wrenn.clone(),
            wrenn.join("pty"),
            wrenn.join("user"),
            wrenn.join("ports"),
        ]);
        if let Err(e) = std::fs::create_dir(&root) {
            eprintln!("skipping real_cgroup_v2: cannot create {root:?}: {e}");
            return;
        }
        let mgr = CgroupV2::setup(&root).unwrap();
        let fd = mgr.procs_fd(CgroupKind::User).unwrap();
        let mut cmd = std::process::Command::new("cat");
        cmd.arg("/proc/self/cgroup");
        // SAFETY: join_in_child is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                join_in_child(fd);
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        drop(mgr);
        drop(cleanup);
        let text = String::from_utf8_lossy(&out.stdout);
        let expected = format!("envd-test-{}/wrenn/user", std::process::id());
        assert!(text.contains(&expected), "{text}");
        assert!(!root.exists(), "throwaway cgroup left behind");
    }
}
