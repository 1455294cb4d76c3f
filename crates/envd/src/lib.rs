//! envd, Wrenn's guest agent.
//!
//! One port (49983) serves the Connect RPC services `process.Process` and `filesystem.Filesystem`
//! (binary and JSON codecs, HTTP/1.1 and h2c) and the plain HTTP routes `/health`, `/init`,
//! `/envs`, `/metrics`, `/files` and `/snapshot/prepare`. It runs inside every sandbox VM, and as a
//! plain process on a host with `--isnotfc` (that is how most of its tests run).

pub mod auth;
pub mod cgroups;
pub mod config;
pub mod conntrack;
pub mod error;
pub mod filesystem;
pub mod guest;
pub mod http;
pub mod metadata;
pub mod port;
pub mod process;
pub mod router;
pub mod server;
pub mod state;
pub mod system_metrics;
pub mod user;

pub use config::Config;
