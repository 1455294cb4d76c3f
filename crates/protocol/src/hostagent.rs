//! The host agent's generated protobuf messages (`hostagent.v1.HostAgentService`).

#[allow(clippy::all, missing_docs, clippy::unwrap_used)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/hostagent.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/hostagent.v1.serde.rs"));
}

pub use generated::*;

/// Fully qualified service name, the first path segment of every RPC.
pub const SERVICE: &str = "hostagent.v1.HostAgentService";

/// The port the host agent listens on by default.
pub const DEFAULT_PORT: u16 = 50051;
