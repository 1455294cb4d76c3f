//! Wrenn's control plane.
//!
//! - [`api`]: REST, WebSocket and SSE handlers (thin), the OpenAPI document.
//! - [`service`]: what the handlers call: capsules, exec, files, accounts, teams, hosts.
//! - [`agents`]: mTLS Connect clients for the host agents.
//! - [`auth`]: API keys, passwords, JWTs and the extractors that check them.
//! - [`events`]: the PostgreSQL-backed event feed (LISTEN/NOTIFY).
//! - [`audit`]: the audit log.
//! - [`db`], [`config`], [`ids`], [`error`], [`state`], [`email`].

pub mod agents;
pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod db;
pub mod email;
pub mod error;
pub mod events;
pub mod ids;
pub mod internal_pki;
pub mod port_proxy;
pub mod run;
pub mod service;
pub mod state;
pub mod workers;

pub use error::{ApiError, ApiResult};
pub use state::{App, AppState};
