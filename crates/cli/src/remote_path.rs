//! `wrenn cp` operands: `<capsule-id>:<path>` is a path inside a capsule, anything else is local
//! (`-` being stdin/stdout).

use crate::error::{CliError, CliResult};

/// One `cp` operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A path in a capsule.
    Remote { capsule_id: String, path: String },
    /// A local file (or directory, for a download target).
    Local(String),
    /// `-`: stdin as a source, stdout as a destination.
    Std,
}

impl Location {
    /// `cl-abc:/etc/hosts` is remote; `./a:b`, `/x:y` and `-` are not. The id part must be
    /// non-empty and contain no `/`, so a local path with a colon can be written `./a:b`.
    pub fn parse(operand: &str) -> CliResult<Self> {
        if operand == "-" {
            return Ok(Self::Std);
        }
        match operand.split_once(':') {
            Some((id, path)) if !id.is_empty() && !id.contains('/') => {
                if path.is_empty() {
                    return Err(CliError::Usage(format!(
                        "{operand:?}: missing the path after `{id}:`"
                    )));
                }
                Ok(Self::Remote {
                    capsule_id: id.to_owned(),
                    path: path.to_owned(),
                })
            }
            _ => Ok(Self::Local(operand.to_owned())),
        }
    }
}

/// The two ways a copy can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transfer {
    /// Local file or stdin (`None`) → capsule path.
    Upload {
        source: Option<String>,
        capsule_id: String,
        path: String,
    },
    /// Capsule path → local file or stdout (`None`).
    Download {
        capsule_id: String,
        path: String,
        destination: Option<String>,
    },
}

impl Transfer {
    /// Exactly one side must be remote.
    pub fn from_operands(source: &str, destination: &str) -> CliResult<Self> {
        match (Location::parse(source)?, Location::parse(destination)?) {
            (Location::Remote { .. }, Location::Remote { .. }) => Err(CliError::Usage(
                "copying between two capsules is not supported: one side must be local".into(),
            )),
            (Location::Remote { capsule_id, path }, local) => Ok(Self::Download {
                capsule_id,
                path,
                destination: local_name(local),
            }),
            (local, Location::Remote { capsule_id, path }) => {
                let source = local_name(local);
                let path = match (&source, path.ends_with('/')) {
                    (Some(file), true) => format!("{path}{}", base_name(file)?),
                    (None, true) => {
                        return Err(CliError::Usage(format!(
                            "{path:?} is a directory: name the destination file when copying from stdin"
                        )));
                    }
                    (_, false) => path,
                };
                Ok(Self::Upload {
                    source,
                    capsule_id,
                    path,
                })
            }
            _ => Err(CliError::Usage(
                "one side must be <capsule-id>:<path> (e.g. cl-abc123:/root/file)".into(),
            )),
        }
    }
}

fn local_name(location: Location) -> Option<String> {
    match location {
        Location::Local(path) => Some(path),
        _ => None,
    }
}

/// The last path component (`a/b/c.txt` → `c.txt`).
pub fn base_name(path: &str) -> CliResult<String> {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|name| !name.is_empty() && *name != "." && *name != "..")
        .map(str::to_owned)
        .ok_or_else(|| CliError::Usage(format!("{path:?} has no file name")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(id: &str, path: &str) -> Location {
        Location::Remote {
            capsule_id: id.into(),
            path: path.into(),
        }
    }

    #[test]
    fn operands_parse() {
        assert_eq!(
            Location::parse("cl-abc:/etc/hosts").expect("ok"),
            remote("cl-abc", "/etc/hosts")
        );
        assert_eq!(
            Location::parse("cl-abc:a:b").expect("ok"),
            remote("cl-abc", "a:b")
        );
        assert_eq!(Location::parse("-").expect("ok"), Location::Std);
        assert_eq!(
            Location::parse("./a:b").expect("ok"),
            Location::Local("./a:b".into())
        );
        assert_eq!(
            Location::parse("/x:y").expect("ok"),
            Location::Local("/x:y".into())
        );
        assert_eq!(
            Location::parse(":x").expect("ok"),
            Location::Local(":x".into())
        );
        assert_eq!(
            Location::parse("plain").expect("ok"),
            Location::Local("plain".into())
        );
        assert!(Location::parse("cl-abc:").is_err());
    }

    #[test]
    fn exactly_one_side_is_remote() {
        assert!(Transfer::from_operands("a", "b").is_err());
        assert!(Transfer::from_operands("cl-a:/x", "cl-b:/y").is_err());
        assert!(Transfer::from_operands("-", "-").is_err());
        assert_eq!(
            Transfer::from_operands("cl-a:/x", "-").expect("ok"),
            Transfer::Download {
                capsule_id: "cl-a".into(),
                path: "/x".into(),
                destination: None
            }
        );
    }

    #[test]
    fn upload_into_a_directory_keeps_the_file_name() {
        assert_eq!(
            Transfer::from_operands("dir/data.bin", "cl-a:/tmp/").expect("ok"),
            Transfer::Upload {
                source: Some("dir/data.bin".into()),
                capsule_id: "cl-a".into(),
                path: "/tmp/data.bin".into()
            }
        );
        assert!(Transfer::from_operands("-", "cl-a:/tmp/").is_err());
        assert_eq!(base_name("a/b/").expect("ok"), "b");
        assert!(base_name("..").is_err());
    }
}
