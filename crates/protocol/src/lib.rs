//! Wire types shared by Wrenn's programs.
//!
//! - [`envd`]: the protobuf messages of envd's `process.Process` and `filesystem.Filesystem`
//!   services, with serde impls that follow the proto3 JSON mapping.
//! - [`hostagent`]: the messages of the host agent's `hostagent.v1.HostAgentService`, which the
//!   control plane calls on every host.
//! - [`connect`]: the Connect RPC protocol (codecs, envelopes, errors), the server-side helpers envd
//!   uses, and the client the host agent and tests use to talk to envd.

pub mod connect;
pub mod envd;
pub mod hostagent;
