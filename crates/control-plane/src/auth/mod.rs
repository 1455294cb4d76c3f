//! Authentication: who is calling, and for which team.
//!
//! - [`secrets`]: API keys and one-time tokens (random, stored as SHA-256).
//! - [`password`]: Argon2id password hashes.
//! - [`jwt`]: user session tokens and host tokens.
//! - [`context`]: the extractors handlers declare (`AuthContext`, `UserSession`, `AdminSession`,
//!   `HostSession`). A handler that takes none of them is public; there is no other bypass (no
//!   header, such as `Upgrade`, ever skips authentication).

pub mod context;
pub mod jwt;
pub mod password;
pub mod secrets;

pub use context::{AdminSession, AuthContext, HostSession, Principal, UserSession};
