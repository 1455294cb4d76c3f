//! The snapshot store's error type and its mapping onto the agent's.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::AgentError;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot on disk is not what its header promises (bad checksum, truncated or missing
    /// file, inconsistent header). The message says what and where. Such a snapshot is never
    /// resumed.
    #[error("snapshot is damaged: {0}")]
    Damaged(String),
    /// Reading or writing a file failed for a reason other than damage (permissions, full disk).
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The caller handed in something the format cannot represent (a memory file whose size is
    /// not a multiple of the block size, a diff on a filesystem that allocates in larger
    /// blocks, an invalid file name). A bug or a host setup problem, not damage.
    #[error("invalid snapshot input: {0}")]
    Invalid(String),
}

impl SnapshotError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        SnapshotError::Io {
            path: path.into(),
            source,
        }
    }
}

/// `map_err(io_at(path))`: the common "which file failed" wrapper.
pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::io(path, source)
}

impl From<SnapshotError> for AgentError {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Damaged(msg) => AgentError::SnapshotDamaged(msg),
            SnapshotError::Io { path, source } => AgentError::Io { path, source },
            SnapshotError::Invalid(msg) => AgentError::Internal(format!("snapshot: {msg}")),
        }
    }
}

impl From<SnapshotError> for io::Error {
    /// For the page server: damage becomes `InvalidData` so it is never mistaken for a
    /// transient failure.
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Damaged(_) => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            SnapshotError::Io { path, source } => {
                io::Error::new(source.kind(), format!("{}: {source}", path.display()))
            }
            SnapshotError::Invalid(_) => io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
        }
    }
}
