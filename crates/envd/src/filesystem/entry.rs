//! `EntryInfo`: what a client is told about a file.

use crate::error::{EnvdError, Result};
use crate::user::owner_names;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use wrenn_protocol::envd::filesystem::{EntryInfo, FileType};

/// Describes `path` without following a final symlink; `shown` is the path reported back.
pub fn entry_info(path: &Path, shown: &Path) -> Result<EntryInfo> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| EnvdError::io(format!("stat {}", shown.display()), e))?;
    let ft = meta.file_type();
    let file_type = if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_dir() {
        FileType::Directory
    } else {
        FileType::File
    };
    let symlink_target = if ft.is_symlink() {
        // The canonical target when it resolves, else the raw link text (a dangling link).
        Some(
            std::fs::canonicalize(path)
                .or_else(|_| std::fs::read_link(path))
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        )
    } else {
        None
    };
    let (owner, group) = owner_names(meta.uid(), meta.gid());
    let mode = meta.permissions().mode();
    Ok(EntryInfo {
        name: shown
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        r#type: file_type as i32,
        path: shown.display().to_string(),
        size: meta.len() as i64,
        mode: mode & 0o7777,
        permissions: permissions_string(mode, ft.is_symlink()),
        owner,
        group,
        modified_time: Some(pbjson_types::Timestamp {
            seconds: meta.mtime(),
            nanos: meta.mtime_nsec() as i32,
        }),
        symlink_target,
    })
}

/// `ls -l`-style mode, as Go's `FileMode.String` prints it (symlinks are `L`).
pub fn permissions_string(mode: u32, symlink: bool) -> String {
    let kind = match mode & libc::S_IFMT {
        _ if symlink => 'L',
        libc::S_IFDIR => 'd',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 'S',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'D',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    for shift in [6u32, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn permission_strings() {
        assert_eq!(permissions_string(0o100644, false), "-rw-r--r--");
        assert_eq!(permissions_string(0o040755, false), "drwxr-xr-x");
        assert_eq!(permissions_string(0o120777, true), "Lrwxrwxrwx");
    }

    #[test]
    fn symlink_entry() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.txt");
        std::fs::write(&target, b"abc").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = entry_info(&link, &link).unwrap();
        assert_eq!(e.r#type, FileType::Symlink as i32);
        assert_eq!(
            e.symlink_target.as_deref(),
            Some(std::fs::canonicalize(&target).unwrap().to_str().unwrap())
        );
        let f = entry_info(&target, &target).unwrap();
        assert_eq!(f.size, 3);
        assert_eq!(f.name, "t.txt");
    }
}
