//! (being written)
use std::net::Ipv4Addr;

/// (being written)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotAddresses {
    pub host_ip: Ipv4Addr,
}

#[derive(Debug, Default)]
pub struct SlotAllocator;
