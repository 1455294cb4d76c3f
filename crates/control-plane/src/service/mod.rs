//! What the handlers call. Each function takes the app state and an authenticated context, so
//! team scoping happens here, once, and handlers stay thin.
//!
//! - [`accounts`], [`teams`], [`api_keys`], [`admin`], [`audit_log`]: users, sessions, teams,
//!   keys, platform administration and the audit log.
//! - [`capsules`]: lookup, create, destroy, pause/resume, ping, metrics, stats, usage.
//! - [`capsule_ops`]: exec, processes, files and terminals inside a running capsule.

pub mod accounts;
pub mod admin;
pub mod api_keys;
pub mod audit_log;
pub mod capsule_ops;
pub mod capsules;
pub mod hosts;
pub mod metrics;
pub mod scheduler;
pub mod snapshots;
pub mod teams;
pub mod usage;
