//! File routes: entries, and the small JSON bodies of read/list/mkdir/remove.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    File,
    Directory,
    Symlink,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileEntry {
    /// Base name only.
    pub name: String,
    /// Absolute path.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: FileType,
    pub size: i64,
    pub mode: u32,
    /// Human form, e.g. `-rwxr-xr-x`.
    pub permissions: String,
    pub owner: String,
    pub group: String,
    /// Unix seconds.
    pub modified_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

/// Body of `files/read`, `files/mkdir`, `files/remove`, `files/stream/read`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PathRequest {
    pub path: String,
}

/// Body of `files/list`. Depth 0 is treated as 1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ListDirRequest {
    pub path: String,
    #[serde(default)]
    pub depth: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ListDirResponse {
    pub entries: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MakeDirResponse {
    pub entry: FileEntry,
}

/// Cap on the buffered `files/write` and `files/read` routes; the stream routes have none.
pub const BUFFERED_FILE_LIMIT: u64 = 100 * 1024 * 1024;
