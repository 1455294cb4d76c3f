//! Wrenn's public API contract, shared by the control plane (which serves it) and the `wrenn` CLI
//! (which calls it). Field names, enum strings and optionality follow what the official Python SDK
//! validates (see `wrenn-client-contract.md`): optional fields are omitted rather than sent as
//! `null`, timestamps are RFC 3339 with a timezone, and metadata values are strings.
//!
//! - [`error`]: the `{"error":{"code","message"}}` envelope and its codes.
//! - [`capsule`]: capsules, their status, create, metrics, stats and usage.
//! - [`exec`]: foreground and background exec, the process list.
//! - [`files`]: file entries and the file routes' bodies.
//! - [`snapshots`]: snapshot templates.
//! - [`events`]: the server-sent event feed.
//! - [`ws`]: WebSocket messages of the exec stream, process stream and PTY.
//! - [`auth`]: signup, login, API keys, teams.
//! - [`hosts`]: host registration, credentials and heartbeats (agent ↔ control plane).

pub mod auth;
pub mod capsule;
pub mod error;
pub mod events;
pub mod exec;
pub mod files;
pub mod hosts;
pub mod snapshots;
pub mod ws;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};

/// Every API timestamp is a `chrono::DateTime<Utc>`: RFC 3339 in UTC (`…Z`), as the SDK requires.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// User labels and system keys; values are always strings.
pub type Metadata = std::collections::BTreeMap<String, String>;

/// The header the SDK authenticates with.
pub const API_KEY_HEADER: &str = "X-API-Key";
/// The header a host agent authenticates with (its host JWT).
pub const HOST_TOKEN_HEADER: &str = "X-Host-Token";
