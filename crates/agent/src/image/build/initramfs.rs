//! The stage-1 initramfs: static busybox, the virtio modules and `/init` (guest/initramfs-init).
//!
//! Written as a `newc` cpio archive directly (the format is a fixed ASCII header per entry), so
//! the output is byte-for-byte reproducible: entries sorted, fixed inode numbers and mtimes, no
//! host owners leaking in. gzip-compressed because every kernel can unpack that.

use crate::error::{AgentError, AgentResult};
use std::io::Write;

/// busybox applets the stage-1 `/init` calls, linked under `/bin`.
pub const APPLETS: &[&str] = &[
    "sh",
    "cat",
    "echo",
    "findfs",
    "insmod",
    "ip",
    "ls",
    "mkdir",
    "mount",
    "poweroff",
    "reboot",
    "sleep",
    "switch_root",
    "umount",
    "usleep",
];

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

/// One archive entry; `path` is relative (`bin/busybox`), `perm` the permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub perm: u32,
    pub kind: EntryKind,
}

impl Entry {
    pub fn dir(path: &str) -> Self {
        Entry {
            path: path.into(),
            perm: 0o755,
            kind: EntryKind::Dir,
        }
    }
    pub fn file(path: &str, perm: u32, data: Vec<u8>) -> Self {
        Entry {
            path: path.into(),
            perm,
            kind: EntryKind::File(data),
        }
    }
    pub fn symlink(path: &str, target: &str) -> Self {
        Entry {
            path: path.into(),
            perm: 0o777,
            kind: EntryKind::Symlink(target.into()),
        }
    }

    fn mode(&self) -> u32 {
        let kind = match self.kind {
            EntryKind::Dir => 0o040000,
            EntryKind::File(_) => 0o100000,
            EntryKind::Symlink(_) => 0o120000,
            EntryKind::CharDevice { .. } => 0o020000,
        };
        kind | (self.perm & 0o7777)
    }
}

/// A `newc` (`070701`) archive of `entries`, sorted by path (so parents precede children), all
/// owned by root, with `mtime` on every entry.
pub fn write_newc(entries: &[Entry], mtime: u32) -> AgentResult<Vec<u8>> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for pair in sorted.windows(2) {
        if pair[0].path == pair[1].path {
            return Err(AgentError::Internal(format!(
                "initramfs entry {} appears twice",
                pair[0].path
            )));
        }
    }
    let mut out = Vec::new();
    for (i, e) in sorted.iter().enumerate() {
        if e.path.is_empty() || e.path.starts_with('/') || e.path.contains("..") {
            return Err(AgentError::Internal(format!(
                "bad initramfs path {:?}",
                e.path
            )));
        }
        let (data, nlink, rdev): (&[u8], u32, (u32, u32)) = match &e.kind {
            EntryKind::Dir => (&[], 2, (0, 0)),
            EntryKind::File(d) => (d, 1, (0, 0)),
            EntryKind::Symlink(t) => (t.as_bytes(), 1, (0, 0)),
            EntryKind::CharDevice { major, minor } => (&[], 1, (*major, *minor)),
        };
        let ino = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let size = u32::try_from(data.len()).map_err(|_| {
            AgentError::Internal(format!("initramfs entry {} is over 4 GiB", e.path))
        })?;
        push_entry(
            &mut out,
            &e.path,
            [
                ino,
                e.mode(),
                0,
                0,
                nlink,
                mtime,
                size,
                0,
                0,
                rdev.0,
                rdev.1,
            ],
            data,
        );
    }
    push_entry(
        &mut out,
        "TRAILER!!!",
        [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
        &[],
    );
    Ok(out)
}

/// Header fields: ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
/// rdevminor (namesize and check are computed here).
fn push_entry(out: &mut Vec<u8>, name: &str, fields: [u32; 11], data: &[u8]) {
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(format!("{:08X}", name.len() + 1).as_bytes());
    out.extend_from_slice(b"00000000");
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// gzip with a fixed header (no name, mtime 0), so equal input gives equal output.
pub fn gzip(data: &[u8]) -> AgentResult<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(data)
        .and_then(|()| enc.finish())
        .map_err(|e| AgentError::Internal(format!("gzip: {e}")))
}

/// The complete stage-1 archive (gzip-compressed): busybox with its applet links, the modules
/// (loaded by `/init` in the order of `/etc/wrenn-modules`), `/dev/console` for the kernel to
/// open before `/init` runs, and `/init` itself.
pub fn build(
    busybox: Vec<u8>,
    modules: Vec<(String, Vec<u8>)>,
    init_script: &str,
    mtime: u32,
) -> AgentResult<Vec<u8>> {
    let mut entries = vec![
        Entry::dir("bin"),
        Entry::dir("dev"),
        Entry::dir("etc"),
        Entry::dir("lib"),
        Entry::dir("lib/modules"),
        Entry::dir("newroot"),
        Entry::dir("proc"),
        Entry::dir("sys"),
        Entry::dir("run"),
        Entry {
            path: "dev/console".into(),
            perm: 0o600,
            kind: EntryKind::CharDevice { major: 5, minor: 1 },
        },
        Entry::file("bin/busybox", 0o755, busybox),
        Entry::file("init", 0o755, init_script.as_bytes().to_vec()),
    ];
    for applet in APPLETS {
        entries.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    let mut order = String::new();
    for (name, data) in modules {
        order.push_str(&name);
        order.push('\n');
        entries.push(Entry::file(&format!("lib/modules/{name}.ko"), 0o644, data));
    }
    entries.push(Entry::file("etc/wrenn-modules", 0o644, order.into_bytes()));
    gzip(&write_newc(&entries, mtime)?)
}

/// Parses a `newc` archive back (for the tests).
#[cfg(test)]
pub fn read_newc(mut data: &[u8]) -> Result<Vec<(String, u32, Vec<u8>)>, String> {
    let total = data.len();
    let mut out = Vec::new();
    loop {
        let offset = total - data.len();
        let header = data.get(..110).ok_or("truncated header")?;
        if &header[..6] != b"070701" {
            return Err(format!("bad magic at offset {offset}"));
        }
        let field = |i: usize| -> Result<usize, String> {
            let s = std::str::from_utf8(&header[6 + i * 8..14 + i * 8])
                .map_err(|_| "non-ASCII header")?;
            usize::from_str_radix(s, 16).map_err(|_| format!("bad header field {s:?}"))
        };
        let mode = field(1)? as u32;
        let size = field(6)?;
        let namesize = field(11)?;
        let name_end = 110 + namesize;
        let name = data.get(110..name_end - 1).ok_or("truncated name")?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| "non-UTF-8 name")?;
        let data_start = (offset + name_end).next_multiple_of(4) - offset;
        let body = data
            .get(data_start..data_start + size)
            .ok_or("truncated data")?
            .to_vec();
        let next = (offset + data_start + size).next_multiple_of(4) - offset;
        data = data.get(next.min(data.len())..).unwrap_or(&[]);
        if name == "TRAILER!!!" {
            return Ok(out);
        }
        out.push((name, mode, body));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry::file("init", 0o755, b"#!/bin/sh\necho hi\n".to_vec()),
            Entry::dir("bin"),
            Entry::symlink("bin/sh", "busybox"),
            Entry::file("bin/busybox", 0o755, vec![7; 1001]),
            Entry::dir("dev"),
            Entry {
                path: "dev/console".into(),
                perm: 0o600,
                kind: EntryKind::CharDevice { major: 5, minor: 1 },
            },
        ]
    }

    #[test]
    fn newc_round_trip_and_order() {
        let archive = write_newc(&sample(), 1_700_000_000).unwrap();
        assert_eq!(archive.len() % 4, 0);
        let back = read_newc(&archive).unwrap();
        let names: Vec<&str> = back.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "bin/busybox", "bin/sh", "dev", "dev/console", "init"]
        );
        assert_eq!(back[0].1, 0o040755);
        assert_eq!(back[1].2, vec![7; 1001]);
        assert_eq!(back[2].1, 0o120777);
        assert_eq!(back[2].2, b"busybox");
        assert_eq!(back[4].1, 0o020600);
        assert_eq!(back[5].2, b"#!/bin/sh\necho hi\n");
    }

    #[test]
    fn newc_is_deterministic_and_rejects_duplicates() {
        let mut reversed = sample();
        reversed.reverse();
        assert_eq!(
            write_newc(&sample(), 5).unwrap(),
            write_newc(&reversed, 5).unwrap()
        );
        let mut dup = sample();
        dup.push(Entry::dir("bin"));
        assert!(write_newc(&dup, 5).is_err());
        assert!(write_newc(&[Entry::dir("/abs")], 5).is_err());
    }

    /// GNU cpio must read what we write (it is the reference implementation of the format).
    #[test]
    fn gnu_cpio_lists_the_archive() {
        let archive = write_newc(&sample(), 5).unwrap();
        let child = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("cpio not installed; skipping");
            return;
        };
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "bin\nbin/busybox\nbin/sh\ndev\ndev/console\ninit\n"
        );
    }

    #[test]
    fn full_initramfs_contents() {
        let gz = build(
            b"\x7fELFbusybox".to_vec(),
            vec![
                ("virtio".into(), b"\x7fELF1".to_vec()),
                ("virtio_blk".into(), b"\x7fELF2".to_vec()),
            ],
            "#!/bin/sh\n",
            0,
        )
        .unwrap();
        let mut cpio = Vec::new();
        use std::io::Read;
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut cpio)
            .unwrap();
        let entries = read_newc(&cpio).unwrap();
        let get = |n: &str| entries.iter().find(|e| e.0 == n).unwrap().clone();
        assert_eq!(get("etc/wrenn-modules").2, b"virtio\nvirtio_blk\n");
        assert_eq!(get("lib/modules/virtio_blk.ko").2, b"\x7fELF2");
        assert_eq!(get("bin/switch_root").2, b"busybox");
        assert_eq!(get("init").1, 0o100755);
        assert!(entries.iter().any(|e| e.0 == "newroot"));
    }
}
