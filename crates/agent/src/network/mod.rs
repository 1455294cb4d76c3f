//! Per-sandbox networking: a network namespace per sandbox, a veth pair to the host, a TAP for the
//! VM, and NAT on both sides.
//!
//! Every sandbox sees the same world from the inside: the guest is always 169.254.0.21 behind
//! 169.254.0.22 on `tap0`, with the same MAC. That is what lets one memory snapshot be restored in
//! any slot. From the host, slot `i` is reached at its host address 10.11.(i>>8).(i&255), which the
//! namespace DNATs to the guest; the guest's egress is SNATed to the namespace's veth address and
//! masqueraded on the host.
//!
//! - [`slots`]: the slot allocator and each slot's names and addresses (pure, unit-tested).
//! - [`nat`]: the nftables rule sets, generated as text (pure, unit-tested).
//! - [`linux`]: the real implementation (`ip`, `nft`, sysctl), which needs root.

pub mod linux;
pub mod nat;
pub mod slots;

use crate::error::AgentResult;
use async_trait::async_trait;
use std::net::Ipv4Addr;

pub use slots::{SlotAddresses, SlotAllocator};

/// The guest's address inside every namespace.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 21);
/// The TAP's address inside every namespace: the guest's gateway.
pub const TAP_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 22);
/// Netmask of the TAP link (/30).
pub const TAP_PREFIX_LEN: u8 = 30;
pub const GUEST_NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 252);
/// The guest's MAC address, the same in every sandbox.
pub const GUEST_MAC: &str = "02:FC:00:00:00:05";
/// The TAP's own MAC, fixed too: a guest restored from a snapshot into a fresh namespace still
/// has the old gateway in its ARP cache, and a random MAC would make it talk to nobody.
pub const TAP_MAC: &str = "02:FC:00:00:00:06";
/// The TAP device name inside every namespace.
pub const TAP_NAME: &str = "tap0";
/// The metadata address the guest asks (Firecracker's MMDS address).
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// TX queue length of the TAP (the default of 1000 drops packets under bursts).
pub const TAP_TXQUEUELEN: u32 = 5000;
/// Names of everything the agent creates start with this, so a restart can find leftovers.
pub const NAME_PREFIX: &str = "wrenn";

/// What the host gets back from creating a slot's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotNetwork {
    pub slot: u32,
    pub addresses: SlotAddresses,
}

/// Options for a slot's network.
#[derive(Debug, Clone, Default)]
pub struct NetworkOptions {
    /// When set, the namespace DNATs the guest's requests to 169.254.169.254:80 to this port on the
    /// host end of the veth (the agent's MMDS-compatible metadata server, for VMMs without MMDS).
    pub metadata_port: Option<u16>,
}

/// What a start-up sweep found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub namespaces: Vec<String>,
    pub links: Vec<String>,
    pub nft_tables: Vec<String>,
}

/// Creates and removes slot networks. Hardware sits behind this trait so the sandbox manager can
/// be tested without root.
#[async_trait]
pub trait Network: Send + Sync + std::fmt::Debug {
    /// One-time host preparation: IPv4 forwarding on, required tools present.
    async fn prepare_host(&self) -> AgentResult<()>;

    /// Creates slot `slot`'s namespace, veth pair, TAP and NAT. On failure nothing is left behind.
    async fn create(&self, slot: u32, options: &NetworkOptions) -> AgentResult<SlotNetwork>;

    /// Removes everything `create` made for `slot`. Succeeds if it is already gone.
    async fn destroy(&self, slot: u32) -> AgentResult<()>;

    /// Removes the namespaces, links and nftables tables of every slot in `range` that is not in
    /// `keep` (leftovers of a crashed agent). Slots outside `range` belong to another agent.
    async fn cleanup_stale(
        &self,
        range: std::ops::RangeInclusive<u32>,
        keep: &[u32],
    ) -> AgentResult<CleanupReport>;
}
