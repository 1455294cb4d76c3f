//! HTTP plumbing shared by Wrenn's host agent and control plane.
//!
//! - [`server`]: the HTTP/1.1 server (header-read and idle timeouts, optional TLS, graceful
//!   shutdown).
//! - [`tls`]: rustls server and client configurations for the mTLS link between control plane
//!   and agents, with hot-swappable certificates.
//! - [`pki`]: the internal certificate authority that issues those certificates.
//! - [`proxy`]: reverse-proxy helpers (hop-by-hop headers, `Location` rewriting, upgrade
//!   relaying, streaming bodies).

pub mod error;
pub mod pki;
pub mod proxy;
pub mod server;
pub mod tls;

pub use error::{Error, Result};
