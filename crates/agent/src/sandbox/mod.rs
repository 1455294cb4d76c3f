//! The sandbox manager and what it keeps per sandbox.
//!
//! - [`manager`]: create, destroy, list, ping, the idle reaper and recovery after a restart.
//! - [`envd`]: the client for a sandbox's envd.
//! - [`metrics`]: the per-sandbox metrics ring.
//! - [`record`]: the on-disk record that lets a restarted agent find its VMs.

pub mod envd;
pub mod envd_ops;
pub mod manager;
pub mod metrics;
pub mod record;

pub use manager::{
    CreateRequest, ManagerConfig, PauseReport, PausedSandbox, ResumeOverrides, Sandbox,
    SandboxManager, SandboxStatus, TrafficGate,
};
