//! What the handlers call. Each function takes the app state and an authenticated context, so
//! team scoping happens here, once, and handlers stay thin.
//!
//! - [`accounts`], [`teams`], [`api_keys`], [`admin`], [`audit_log`]: users, sessions, teams,
//!   keys, platform administration and the audit log.
//! - [`capsules`], [`capsule_create`], [`lifecycle`], [`scheduler`]: lookup, create, destroy,
//!   pause/resume/wake, ping; [`metrics`], [`usage`]: metrics, stats, usage.
//! - [`snapshots`], [`snapshot_create`]: templates, and snapshots of capsules.
//! - [`capsule_ops`]: exec, processes, files and terminals inside a running capsule.

pub mod accounts;
pub mod admin;
pub mod api_keys;
pub mod audit_log;
pub mod capsule_create;
pub mod capsule_ops;
pub mod capsules;
pub mod hosts;
pub mod lifecycle;
pub mod metrics;
pub mod scheduler;
pub mod snapshot_create;
pub mod snapshots;
pub mod teams;
pub mod usage;
