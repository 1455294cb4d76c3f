//! Debian packages through the host's own apt: resolving candidate versions, downloading `.deb`
//! files into the build cache and unpacking them without installing anything on the host.

use super::cmd::Cmd;
use crate::error::{AgentError, AgentResult};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A concrete package version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRef {
    pub name: String,
    pub version: String,
}

impl PackageRef {
    /// A file-name-safe `name_version` (epochs contain `:`).
    pub fn file_stem(&self) -> String {
        format!("{}_{}", self.name, self.version.replace(':', "%3a"))
    }
}

/// The fields of the first stanza of a Debian control text (`apt-cache show` output).
/// Continuation lines are joined with newlines.
pub fn parse_control(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !fields.is_empty() {
                break;
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(key) = &last
                && let Some(v) = fields.get_mut(key)
            {
                let v: &mut String = v;
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.trim().to_string(), v.trim().to_string());
            last = Some(k.trim().to_string());
        }
    }
    fields
}

/// The first `linux-image-*` dependency of a kernel meta package's `Depends:` field, with the
/// version it pins (`linux-image-6.1.0-48-cloud-amd64 (= 6.1.172-1)`).
pub fn kernel_dependency(depends: &str) -> Option<PackageRef> {
    depends
        .split(',')
        .flat_map(|alt| alt.split('|'))
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-"))
        .map(|d| {
            let (name, rest) = d.split_once(' ').unwrap_or((d, ""));
            let version = rest
                .trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .trim()
                .strip_prefix('=')
                .map(|v| v.trim().to_string())
                .unwrap_or_default();
            PackageRef {
                name: name.trim().to_string(),
                version,
            }
        })
}

/// `apt-cache show` of the candidate version, or `None` when apt does not know the package
/// (typically: the package lists were never downloaded).
pub async fn candidate(package: &str) -> AgentResult<Option<BTreeMap<String, String>>> {
    let result = Cmd::new("apt-cache")
        .args(["show", "--no-all-versions", package])
        .output()
        .await;
    match result {
        Ok(text) => {
            let fields = parse_control(&text);
            Ok((!fields.is_empty() && fields.contains_key("Version")).then_some(fields))
        }
        Err(AgentError::Command { detail, .. })
            if detail.contains("No packages found") || detail.contains("Unable to locate") =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Refreshes the host's package lists; done only when a lookup or download failed, since it
/// takes a while and changes what "candidate" means.
pub async fn update() -> AgentResult<()> {
    tracing::info!("refreshing the package lists (apt-get update)");
    Cmd::new("apt-get")
        .args(["update", "-q"])
        .hint("check the Debian mirror in /etc/apt/sources.list.d/ (or /etc/apt/sources.list) and the network")
        .stream()
        .await
}

/// The candidate version of `package`, refreshing the lists once if apt does not know it.
pub async fn resolve(package: &str) -> AgentResult<(PackageRef, BTreeMap<String, String>)> {
    let fields = match candidate(package).await? {
        Some(f) => f,
        None => {
            update().await?;
            candidate(package).await?.ok_or_else(|| {
                AgentError::Image(format!(
                    "apt knows no package {package}; check that /etc/apt/sources.list.d/ has Debian bookworm main (and bookworm-security)"
                ))
            })?
        }
    };
    let version = fields.get("Version").cloned().unwrap_or_default();
    Ok((
        PackageRef {
            name: package.to_string(),
            version,
        },
        fields,
    ))
}

/// Downloads `pkg` into `debs_dir` (kept there: a second build downloads nothing) and returns the
/// `.deb`'s path. Does not refresh the package lists; the caller retries after [`update`].
pub async fn download(pkg: &PackageRef, debs_dir: &Path) -> AgentResult<PathBuf> {
    let dest = debs_dir.join(format!("{}.deb", pkg.file_stem()));
    if dest.is_file() {
        return Ok(dest);
    }
    let work = debs_dir.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| AgentError::io(&work, e))?;
    let spec = if pkg.version.is_empty() {
        pkg.name.clone()
    } else {
        format!("{}={}", pkg.name, pkg.version)
    };
    let result = Cmd::new("apt-get")
        // The _apt sandbox user cannot write into root's cache folders; we are root anyway.
        .args(["-q", "-o", "APT::Sandbox::User=root", "download", &spec])
        .current_dir(&work)
        .hint("apt-get download failed: check the Debian mirror in /etc/apt/sources.list.d/ (or /etc/apt/sources.list) and the network")
        .output()
        .await;
    let found = result.and_then(|_| {
        let mut debs = std::fs::read_dir(&work)
            .map_err(|e| AgentError::io(&work, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "deb"));
        debs.next().ok_or_else(|| {
            AgentError::Image(format!("apt-get download {spec} produced no .deb file"))
        })
    });
    let renamed =
        found.and_then(|deb| std::fs::rename(&deb, &dest).map_err(|e| AgentError::io(&dest, e)));
    let _ = std::fs::remove_dir_all(&work);
    renamed.map(|()| dest)
}

/// [`download`], refreshing the package lists and resolving again once if it fails (the lists
/// may name a version the mirror no longer has). Returns the package actually downloaded.
pub async fn download_or_update(
    pkg: &PackageRef,
    debs_dir: &Path,
    re_resolve: impl AsyncFnOnce() -> AgentResult<PackageRef>,
) -> AgentResult<(PackageRef, PathBuf)> {
    match download(pkg, debs_dir).await {
        Ok(path) => Ok((pkg.clone(), path)),
        Err(first) => {
            tracing::warn!(error = %first, package = %pkg.name, "download failed; refreshing the package lists and retrying");
            update().await?;
            let pkg = re_resolve().await?;
            let path = download(&pkg, debs_dir).await?;
            Ok((pkg, path))
        }
    }
}

/// Unpacks `deb` into `dest` (`dpkg -x`), once: an existing `dest` is reused. Unpacks next to
/// it first and renames, so an interrupted unpack is never mistaken for a complete one.
pub async fn unpack(deb: &Path, dest: &Path) -> AgentResult<()> {
    if dest.is_dir() {
        return Ok(());
    }
    let parent = dest
        .parent()
        .ok_or_else(|| AgentError::Internal(format!("{} has no parent", dest.display())))?;
    std::fs::create_dir_all(parent).map_err(|e| AgentError::io(parent, e))?;
    let tmp = tmp_sibling(dest);
    let _ = std::fs::remove_dir_all(&tmp);
    Cmd::new("dpkg")
        .arg("-x")
        .arg(deb)
        .arg(&tmp)
        .hint(format!(
            "{} may be corrupt; delete it and rerun the build",
            deb.display()
        ))
        .output()
        .await?;
    std::fs::rename(&tmp, dest).map_err(|e| AgentError::io(dest, e))
}

/// `<path>.tmp-<pid>`.
pub fn tmp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SHOW: &str = "Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.172+1)
Version: 6.1.172-1
Installed-Size: 14
Depends: linux-image-6.1.0-48-cloud-amd64 (= 6.1.172-1)
Description-en: Linux for x86-64 cloud (meta-package)
 This package depends on the latest Linux kernel and modules for use on
 cloud platforms.

Package: linux-image-cloud-amd64
Version: 6.1.170-3
";

    #[test]
    fn control_first_stanza_only() {
        let f = parse_control(SHOW);
        assert_eq!(f["Version"], "6.1.172-1");
        assert_eq!(f["Source"], "linux-signed-amd64 (6.1.172+1)");
        assert!(f["Description-en"].contains("\nThis package depends"));
    }

    #[test]
    fn kernel_dependency_with_pin() {
        let f = parse_control(SHOW);
        let dep = kernel_dependency(&f["Depends"]).unwrap();
        assert_eq!(dep.name, "linux-image-6.1.0-48-cloud-amd64");
        assert_eq!(dep.version, "6.1.172-1");
        let dep = kernel_dependency("kmod, linux-image-6.1.0-9-cloud-amd64").unwrap();
        assert_eq!(dep.name, "linux-image-6.1.0-9-cloud-amd64");
        assert_eq!(dep.version, "");
        assert!(kernel_dependency("kmod, linux-base").is_none());
    }

    #[test]
    fn file_stem_escapes_epoch() {
        let p = PackageRef {
            name: "busybox-static".into(),
            version: "1:1.35.0-4+deb12u1+b1".into(),
        };
        assert_eq!(p.file_stem(), "busybox-static_1%3a1.35.0-4+deb12u1+b1");
    }
}
