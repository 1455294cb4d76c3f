//! Network slots: which slot numbers are taken, and the names and addresses that follow from a
//! slot number.
//!
//! Everything a slot owns on the host is derived from its number alone, so an agent that restarts
//! (or sweeps up after a crash) can find a slot's namespace, veth and nftables table again without
//! any saved state.

use crate::error::{AgentError, AgentResult};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

/// The highest slot number. Slot `i` uses the /31 at 10.12.0.0 + 2i, so 32767 is the last slot
/// whose pair still fits in 10.12.0.0/16.
pub const MAX_SLOTS: u32 = 32767;

/// Name of a slot's namespace: `wrenn-ns-<slot>`.
pub const NETNS_PREFIX: &str = "wrenn-ns-";
/// Name of a slot's host-side veth: `wrenn-v<slot>`. Upstream's `wrenn-veth-<slot>` would be 16
/// characters for slot 32767, one more than the kernel's interface names allow (IFNAMSIZ - 1).
pub const HOST_VETH_PREFIX: &str = "wrenn-v";
/// Name of the veth's peer inside every namespace.
pub const NS_VETH_NAME: &str = "eth0";
/// Longest interface name the kernel accepts (IFNAMSIZ is 16 including the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// Hands out slot numbers: always the lowest free one, so addresses stay dense and small.
///
/// Lives in memory only. After a restart the agent re-adopts the slots of the sandboxes it finds
/// with [`SlotAllocator::reserve`] before handing out new ones.
#[derive(Debug)]
pub struct SlotAllocator {
    first: u32,
    max: u32,
    state: Mutex<SlotState>,
}

/// Every slot below `next` is either in use or in `free`; every slot from `next` on is free. This
/// keeps allocation O(log n) instead of scanning the used slots.
#[derive(Debug)]
struct SlotState {
    next: u32,
    free: BTreeSet<u32>,
}

impl Default for SlotAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl SlotAllocator {
    /// An allocator over slots 1..=[`MAX_SLOTS`].
    pub fn new() -> Self {
        Self::with_max(MAX_SLOTS)
    }

    /// An allocator over slots 1..=`max` (capped at [`MAX_SLOTS`]); small limits are for tests.
    pub fn with_max(max: u32) -> Self {
        Self::with_range(1, max)
    }

    /// An allocator over slots `first..=last` (clamped to 1..=[`MAX_SLOTS`]): two agents on one
    /// host get disjoint ranges.
    pub fn with_range(first: u32, last: u32) -> Self {
        let first = first.max(1);
        Self {
            first,
            max: last.min(MAX_SLOTS),
            state: Mutex::new(SlotState {
                next: first,
                free: BTreeSet::new(),
            }),
        }
    }

    /// Takes the lowest free slot.
    pub fn allocate(&self) -> AgentResult<u32> {
        let mut state = self.lock();
        if let Some(slot) = state.free.pop_first() {
            return Ok(slot);
        }
        if state.next > self.max {
            return Err(AgentError::SlotsExhausted(self.max));
        }
        let slot = state.next;
        state.next += 1;
        Ok(slot)
    }

    /// Marks `slot` as taken (a sandbox that survived an agent restart). False if the slot is out
    /// of range or already taken.
    pub fn reserve(&self, slot: u32) -> bool {
        if slot < self.first || slot > self.max {
            return false;
        }
        let mut state = self.lock();
        if slot >= state.next {
            let skipped = state.next..slot;
            state.free.extend(skipped);
            state.next = slot + 1;
            true
        } else {
            state.free.remove(&slot)
        }
    }

    /// Returns `slot` to the pool. Releasing a free slot does nothing.
    pub fn release(&self, slot: u32) {
        let mut state = self.lock();
        if slot < self.first || slot >= state.next {
            return;
        }
        state.free.insert(slot);
        // Keep `free` small: free slots just below `next` are folded back into it.
        while state.next > self.first {
            let last = state.next - 1;
            if !state.free.remove(&last) {
                break;
            }
            state.next = last;
        }
    }

    /// The slots in use, in ascending order.
    pub fn in_use(&self) -> Vec<u32> {
        let state = self.lock();
        (self.first..state.next)
            .filter(|slot| !state.free.contains(slot))
            .collect()
    }

    /// A panic while the lock was held cannot leave the state half-updated in a way that hands
    /// out a slot twice, so a poisoned lock is still safe to use.
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Names and addresses of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotAddresses {
    pub slot: u32,
    /// The slot's network namespace, `wrenn-ns-<slot>`.
    pub netns: String,
    /// The host end of the veth pair, `wrenn-v<slot>`.
    pub host_veth: String,
    /// The namespace end of the veth pair (the same name in every namespace).
    pub ns_veth: &'static str,
    /// The TAP the VMM opens inside the namespace (the same name in every namespace).
    pub tap: &'static str,
    /// The address the host uses to reach the guest: 10.11.(slot >> 8).(slot & 255). The
    /// namespace DNATs it to the guest.
    pub host_ip: Ipv4Addr,
    /// The host end of the veth, 10.12.0.0 + 2 * slot (/31). The namespace's default gateway, and
    /// where the metadata server listens.
    pub veth_ip: Ipv4Addr,
    /// The namespace end of the veth, 10.12.0.0 + 2 * slot + 1 (/31). The guest's traffic leaves
    /// the namespace with this source address.
    pub vpeer_ip: Ipv4Addr,
}

impl SlotAddresses {
    /// Prefix length of the veth link: a /31 holds exactly the two ends.
    pub const VETH_PREFIX_LEN: u8 = 31;

    /// The names and addresses of `slot`. Meaningful for 1..=[`MAX_SLOTS`]; larger numbers wrap
    /// into other slots' addresses, so callers validate the range first.
    pub fn for_slot(slot: u32) -> Self {
        let host_ip = Ipv4Addr::new(10, 11, (slot >> 8) as u8, (slot & 0xff) as u8);
        let veth_base = u32::from(Ipv4Addr::new(10, 12, 0, 0)) + 2 * (slot & 0xffff);
        SlotAddresses {
            slot,
            netns: format!("{NETNS_PREFIX}{slot}"),
            host_veth: format!("{HOST_VETH_PREFIX}{slot}"),
            ns_veth: NS_VETH_NAME,
            tap: super::TAP_NAME,
            host_ip,
            veth_ip: Ipv4Addr::from(veth_base),
            vpeer_ip: Ipv4Addr::from(veth_base + 1),
        }
    }
}

/// The slot of a namespace named `wrenn-ns-<slot>`, or None for any other name.
pub fn slot_of_netns(name: &str) -> Option<u32> {
    parse_slot(name.strip_prefix(NETNS_PREFIX)?)
}

/// The slot of a host veth named `wrenn-v<slot>`, or None for any other name.
pub fn slot_of_host_veth(name: &str) -> Option<u32> {
    parse_slot(name.strip_prefix(HOST_VETH_PREFIX)?)
}

/// A slot number in its canonical spelling. `wrenn-v012` is not slot 12's veth (its veth is
/// `wrenn-v12`), so cleaning "slot 12" would not remove it; such names are not ours.
pub(crate) fn parse_slot(digits: &str) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    let slot: u32 = digits.parse().ok()?;
    (1..=MAX_SLOTS).contains(&slot).then_some(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ranged_allocator_stays_in_its_range() {
        let a = SlotAllocator::with_range(100, 102);
        assert_eq!(a.allocate().expect("slot"), 100);
        assert!(!a.reserve(99), "below the range");
        assert!(!a.reserve(103), "above the range");
        assert!(a.reserve(102));
        assert_eq!(a.allocate().expect("slot"), 101);
        assert!(a.allocate().is_err(), "range exhausted");
        a.release(100);
        assert_eq!(a.in_use(), vec![101, 102]);
        assert_eq!(a.allocate().expect("slot"), 100);
    }

    #[test]
    fn addresses_of_slot_1() {
        let a = SlotAddresses::for_slot(1);
        assert_eq!(a.netns, "wrenn-ns-1");
        assert_eq!(a.host_veth, "wrenn-v1");
        assert_eq!(a.ns_veth, "eth0");
        assert_eq!(a.tap, "tap0");
        assert_eq!(a.host_ip, Ipv4Addr::new(10, 11, 0, 1));
        assert_eq!(a.veth_ip, Ipv4Addr::new(10, 12, 0, 2));
        assert_eq!(a.vpeer_ip, Ipv4Addr::new(10, 12, 0, 3));
    }

    #[test]
    fn addresses_of_slot_255_and_256_cross_an_octet() {
        let a = SlotAddresses::for_slot(255);
        assert_eq!(a.host_ip, Ipv4Addr::new(10, 11, 0, 255));
        assert_eq!(a.veth_ip, Ipv4Addr::new(10, 12, 1, 254));
        assert_eq!(a.vpeer_ip, Ipv4Addr::new(10, 12, 1, 255));

        let b = SlotAddresses::for_slot(256);
        assert_eq!(b.host_ip, Ipv4Addr::new(10, 11, 1, 0));
        assert_eq!(b.veth_ip, Ipv4Addr::new(10, 12, 2, 0));
        assert_eq!(b.vpeer_ip, Ipv4Addr::new(10, 12, 2, 1));
    }

    #[test]
    fn addresses_of_the_last_slot_fill_the_range() {
        let a = SlotAddresses::for_slot(MAX_SLOTS);
        assert_eq!(a.host_ip, Ipv4Addr::new(10, 11, 127, 255));
        assert_eq!(a.veth_ip, Ipv4Addr::new(10, 12, 255, 254));
        assert_eq!(a.vpeer_ip, Ipv4Addr::new(10, 12, 255, 255));
        assert_eq!(a.netns, "wrenn-ns-32767");
        assert_eq!(a.host_veth, "wrenn-v32767");
    }

    #[test]
    fn veth_pairs_are_aligned_31s() {
        for slot in [1, 2, 255, 256, 1000, MAX_SLOTS] {
            let a = SlotAddresses::for_slot(slot);
            assert_eq!(u32::from(a.veth_ip) % 2, 0, "slot {slot}");
            assert_eq!(u32::from(a.vpeer_ip), u32::from(a.veth_ip) + 1);
        }
    }

    #[test]
    fn interface_names_fit_ifnamsiz() {
        let a = SlotAddresses::for_slot(MAX_SLOTS);
        assert!(a.host_veth.len() <= MAX_IFNAME_LEN, "{}", a.host_veth);
        assert!(a.ns_veth.len() <= MAX_IFNAME_LEN);
        assert!(a.tap.len() <= MAX_IFNAME_LEN);
    }

    #[test]
    fn names_parse_back_to_their_slot() {
        for slot in [1, 9, 10, 255, 32000, MAX_SLOTS] {
            let a = SlotAddresses::for_slot(slot);
            assert_eq!(slot_of_netns(&a.netns), Some(slot));
            assert_eq!(slot_of_host_veth(&a.host_veth), Some(slot));
        }
        for name in [
            "wrenn-v",
            "wrenn-v0",
            "wrenn-v012",
            "wrenn-v32768",
            "wrenn-veth-3",
            "wrenn-v1a",
            "wrenn-v-1",
            "eth0",
        ] {
            assert_eq!(slot_of_host_veth(name), None, "{name}");
        }
        assert_eq!(slot_of_netns("wrenn-ns-"), None);
        assert_eq!(slot_of_netns("wrenn-ns-99999999999"), None);
        assert_eq!(slot_of_netns("other-ns-3"), None);
    }

    #[test]
    fn allocator_hands_out_the_lowest_free_slot() {
        let alloc = SlotAllocator::new();
        assert_eq!(alloc.allocate().expect("slot"), 1);
        assert_eq!(alloc.allocate().expect("slot"), 2);
        assert_eq!(alloc.allocate().expect("slot"), 3);
        alloc.release(2);
        assert_eq!(
            alloc.allocate().expect("slot"),
            2,
            "a released slot is reused"
        );
        assert_eq!(alloc.allocate().expect("slot"), 4);
        alloc.release(1);
        alloc.release(1);
        assert_eq!(alloc.in_use(), vec![2, 3, 4]);
        assert_eq!(alloc.allocate().expect("slot"), 1);
    }

    #[test]
    fn allocator_reports_exhaustion() {
        let alloc = SlotAllocator::with_max(3);
        for expected in 1..=3 {
            assert_eq!(alloc.allocate().expect("slot"), expected);
        }
        let err = alloc.allocate().expect_err("exhausted");
        assert!(matches!(err, AgentError::SlotsExhausted(3)), "{err}");
        alloc.release(2);
        assert_eq!(alloc.allocate().expect("slot"), 2);
    }

    #[test]
    fn allocator_can_use_every_slot() {
        let alloc = SlotAllocator::new();
        for expected in 1..=MAX_SLOTS {
            assert_eq!(alloc.allocate().expect("slot"), expected);
        }
        assert!(matches!(
            alloc.allocate(),
            Err(AgentError::SlotsExhausted(MAX_SLOTS))
        ));
    }

    #[test]
    fn reserved_slots_are_skipped() {
        let alloc = SlotAllocator::new();
        assert!(alloc.reserve(1));
        assert!(alloc.reserve(3));
        assert!(!alloc.reserve(3), "already taken");
        assert!(!alloc.reserve(0), "out of range");
        assert!(!alloc.reserve(MAX_SLOTS + 1), "out of range");
        assert_eq!(alloc.allocate().expect("slot"), 2);
        assert_eq!(alloc.allocate().expect("slot"), 4);
        assert_eq!(alloc.in_use(), vec![1, 2, 3, 4]);
    }

    #[test]
    fn reserving_a_high_slot_leaves_the_lower_ones_free() {
        let alloc = SlotAllocator::new();
        assert!(alloc.reserve(100));
        assert_eq!(alloc.allocate().expect("slot"), 1);
        assert_eq!(alloc.in_use(), vec![1, 100]);
        assert!(!alloc.reserve(100));
        assert!(alloc.reserve(50), "a skipped slot can still be reserved");
        alloc.release(100);
        alloc.release(50);
        assert_eq!(alloc.in_use(), vec![1]);
        assert_eq!(alloc.allocate().expect("slot"), 2);
        assert!(alloc.reserve(100));
        assert_eq!(alloc.in_use(), vec![1, 2, 100]);
    }

    #[test]
    fn allocator_is_safe_to_share() {
        let alloc = std::sync::Arc::new(SlotAllocator::new());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let alloc = alloc.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .map(|_| alloc.allocate().expect("slot"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u32> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (1..=800).collect::<Vec<_>>(),
            "no slot handed out twice"
        );
    }
}
