//! Users of the guest: who a request runs as, and where `~` and relative paths lead.

use crate::error::{EnvdError, Result};
use nix::unistd::{Gid, Group, Uid, User};
use std::path::{Component, Path, PathBuf};

/// A resolved account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
}

impl Account {
    /// Looks a user up by name in the guest's user database.
    pub fn lookup(name: &str) -> Result<Account> {
        if name.is_empty() || name.contains(['/', '\0', ':']) {
            return Err(EnvdError::InvalidArgument(format!(
                "invalid user name {name:?}"
            )));
        }
        match User::from_name(name) {
            Ok(Some(u)) => Ok(Account {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                home: u.dir,
                shell: u.shell,
            }),
            Ok(None) => Err(EnvdError::InvalidArgument(format!(
                "user {name:?} does not exist in the sandbox"
            ))),
            Err(e) => Err(EnvdError::Internal(format!(
                "looking up user {name:?}: {e}"
            ))),
        }
    }

    /// Resolves a path the way a shell of this user would: `~` and `~/x` are the home directory,
    /// relative paths are relative to the home directory. `..` components are normalised
    /// lexically so the path shown back to the client is the one acted on.
    pub fn resolve_path(&self, path: &str) -> Result<PathBuf> {
        if path.contains('\0') {
            return Err(EnvdError::InvalidArgument(
                "path contains a NUL byte".into(),
            ));
        }
        let raw = if path == "~" {
            self.home.clone()
        } else if let Some(rest) = path.strip_prefix("~/") {
            self.home.join(rest)
        } else if path.starts_with('~') {
            return Err(EnvdError::InvalidArgument(format!(
                "path {path:?}: only the current user's ~ is supported"
            )));
        } else if Path::new(path).is_absolute() {
            PathBuf::from(path)
        } else {
            self.home.join(path)
        };
        Ok(normalize(&raw))
    }
}

/// Lexical normalisation: drops `.`, folds `..` (never above `/`).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

/// Owner and group names for ls-style entries, falling back to the numeric id.
pub fn owner_names(uid: u32, gid: u32) -> (String, String) {
    let owner = User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    let group = Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string());
    (owner, group)
}

/// Creates `dir` and its missing parents, giving each directory it creates to `account`.
pub fn create_dir_all_owned(dir: &Path, account: &Account) -> Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(p) = cur {
        if p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    for p in missing.into_iter().rev() {
        match std::fs::create_dir(&p) {
            Ok(()) => chown(&p, account)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(EnvdError::io(format!("creating {}", p.display()), e)),
        }
    }
    if !dir.is_dir() {
        return Err(EnvdError::InvalidArgument(format!(
            "{} exists and is not a directory",
            dir.display()
        )));
    }
    Ok(())
}

/// Gives `path` to `account`. Without the privilege to do so (envd run as a plain user in tests)
/// the file keeps the caller's ownership, which is then already the right one.
pub fn chown(path: &Path, account: &Account) -> Result<()> {
    match std::os::unix::fs::lchown(path, Some(account.uid), Some(account.gid)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        Err(e) => Err(EnvdError::io(format!("chown {}", path.display()), e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn acct() -> Account {
        Account {
            name: "user".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/user".into(),
            shell: "/bin/bash".into(),
        }
    }

    #[test]
    fn resolves_home_and_relative() {
        let a = acct();
        assert_eq!(a.resolve_path("~").unwrap(), PathBuf::from("/home/user"));
        assert_eq!(
            a.resolve_path("~/x/y").unwrap(),
            PathBuf::from("/home/user/x/y")
        );
        assert_eq!(a.resolve_path("x").unwrap(), PathBuf::from("/home/user/x"));
        assert_eq!(
            a.resolve_path("/a/../b/./c").unwrap(),
            PathBuf::from("/b/c")
        );
        assert_eq!(a.resolve_path("/../../etc").unwrap(), PathBuf::from("/etc"));
        assert!(a.resolve_path("~root/x").is_err());
        assert!(a.resolve_path("a\0b").is_err());
    }

    #[test]
    fn unknown_user_is_invalid_argument() {
        let err = Account::lookup("no-such-user-wrenn").unwrap_err();
        assert!(matches!(err, EnvdError::InvalidArgument(_)));
        assert!(Account::lookup("root").is_ok());
        assert!(Account::lookup("../etc").is_err());
    }
}
