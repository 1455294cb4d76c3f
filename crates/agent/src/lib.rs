//! Wrenn's host agent.
//!
//! - [`vmm`]: the VMM trait and its QEMU and Firecracker drivers.
//! - [`network`]: per-sandbox network namespaces, TAPs, veths and NAT.
//! - [`disk`]: copy-on-write sandbox disks over a read-only base image.
//! - [`image`]: the guest image (kernel, initramfs, root filesystem) and its builder.
//! - [`metadata`]: an MMDS-compatible metadata server for VMMs without one (QEMU).
//! - [`sandbox`]: the sandbox manager: create, destroy, list, TTL, metrics, envd client.
//! - [`snapshot`]: the on-disk snapshot format: memory headers, build files, diffs, checksums.
//! - [`uffd`]: the userfaultfd page server that feeds a restored Firecracker VM its memory.
//! - [`rpc`]: the `hostagent.v1.HostAgentService` Connect service the control plane calls.
//! - [`proxy`]: the `/proxy/{id}/{port}/...` reverse proxy to guest ports.
//! - [`tls`]: the TLS listener from certificate files (standalone agents).
//! - [`controlplane`]: registration with the control plane, heartbeats, credential refresh, and
//!   the mTLS listener built from the credentials.
//!
//! The HTTP server, TLS machinery and proxy helpers are shared with the control plane in
//! `wrenn-http`; logging in `wrenn-logging`.

pub mod config;
pub mod controlplane;
pub mod disk;
pub mod error;
pub mod image;
pub mod layout;
pub mod metadata;
pub mod network;
pub mod proxy;
pub mod rpc;
pub mod sandbox;
pub mod snapshot;
#[doc(hidden)]
pub mod testing;
pub mod tls;
pub mod uffd;
pub mod vmm;

pub use error::{AgentError, AgentResult};
