//! envd's generated protobuf messages and the paths of its RPCs.

#[allow(clippy::all, missing_docs, clippy::unwrap_used)]
pub mod process {
    include!(concat!(env!("OUT_DIR"), "/process.rs"));
    include!(concat!(env!("OUT_DIR"), "/process.serde.rs"));

    /// Fully qualified service name, the first path segment of every RPC.
    pub const SERVICE: &str = "process.Process";
}

#[allow(clippy::all, missing_docs, clippy::unwrap_used)]
pub mod filesystem {
    include!(concat!(env!("OUT_DIR"), "/filesystem.rs"));
    include!(concat!(env!("OUT_DIR"), "/filesystem.serde.rs"));

    /// Fully qualified service name, the first path segment of every RPC.
    pub const SERVICE: &str = "filesystem.Filesystem";
}

/// The HTTP path of an RPC: `/<package>.<Service>/<Method>`.
pub fn rpc_path(service: &str, method: &str) -> String {
    format!("/{service}/{method}")
}

/// The envd version reported by `/health`. E2B's SDK gates features on it; 0.6.4 and later means
/// every feature the SDK knows of (recursive watch, stdin toggle, CloseStdin, octet-stream upload).
pub const ENVD_VERSION: &str = "0.6.4";

/// The port envd listens on inside every sandbox.
pub const ENVD_PORT: u16 = 49983;
