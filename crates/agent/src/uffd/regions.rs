//! Guest memory regions: where each piece of guest memory lives in the VMM's address space, and
//! per-page state (already served, freed by the guest) keyed by memory offset.
//!
//! State is keyed by *memory offset* (the offset into the snapshot's memory), not by host
//! address, so an `mremap` only moves a region's base and the per-page state stays valid.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

use crate::error::{AgentError, AgentResult};

/// The base page size of the host.
pub const BASE_PAGE: u64 = 4096;

/// One guest memory region as Firecracker announces it in the handshake
/// (`GuestRegionUffdMapping`), validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRegion {
    /// Where the region starts in the VMM's address space.
    pub base_host_virt_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Where the region starts in guest memory (the snapshot's memory file).
    pub offset: u64,
    /// Page size backing the region in bytes (4096, or 2 MiB for hugetlbfs).
    pub page_size: u64,
}

/// The handshake's JSON form. Firecracker ≥ 1.10 sends `page_size` (bytes); older versions send
/// `page_size_kib`, which upstream found to hold bytes too. Both are accepted.
#[derive(Debug, Deserialize)]
struct WireRegion {
    base_host_virt_addr: u64,
    size: u64,
    offset: u64,
    #[serde(default)]
    page_size: Option<u64>,
    #[serde(default)]
    page_size_kib: Option<u64>,
}

impl WireRegion {
    fn page_size(&self) -> Option<u64> {
        match (self.page_size, self.page_size_kib) {
            (Some(bytes), _) => Some(bytes),
            // Values below one base page cannot be bytes, so they are read as real KiB.
            (None, Some(v)) if v < BASE_PAGE => v.checked_mul(1024),
            (None, Some(v)) => Some(v),
            (None, None) => None,
        }
    }
}

/// Parses and validates the handshake's region list against a memory of `memory_size` bytes.
pub fn parse_regions(json: &[u8], memory_size: u64) -> AgentResult<Vec<GuestRegion>> {
    let wire: Vec<WireRegion> = serde_json::from_slice(json)
        .map_err(|e| AgentError::InvalidArgument(format!("bad uffd handshake JSON: {e}")))?;
    let mut regions = Vec::with_capacity(wire.len());
    for (index, w) in wire.iter().enumerate() {
        let page_size = w.page_size().ok_or_else(|| {
            AgentError::InvalidArgument(format!(
                "bad uffd handshake: region {index} has neither page_size nor page_size_kib"
            ))
        })?;
        regions.push(GuestRegion {
            base_host_virt_addr: w.base_host_virt_addr,
            size: w.size,
            offset: w.offset,
            page_size,
        });
    }
    validate_regions(&regions, memory_size)?;
    Ok(regions)
}

/// Checks that regions are non-empty, page-aligned, inside the memory and non-overlapping (both
/// in the host address space and in guest memory).
pub fn validate_regions(regions: &[GuestRegion], memory_size: u64) -> AgentResult<()> {
    let bad = |index: usize, what: String| {
        AgentError::InvalidArgument(format!("bad uffd region {index}: {what}"))
    };
    if regions.is_empty() {
        return Err(AgentError::InvalidArgument(
            "bad uffd handshake: no memory regions".into(),
        ));
    }
    for (i, r) in regions.iter().enumerate() {
        let ps = r.page_size;
        if ps < BASE_PAGE || !ps.is_power_of_two() {
            return Err(bad(
                i,
                format!("page size {ps} is not a power of two ≥ 4096"),
            ));
        }
        if r.size == 0 || r.size % ps != 0 || r.offset % ps != 0 || r.base_host_virt_addr % ps != 0
        {
            return Err(bad(
                i,
                format!(
                    "base 0x{:x}, size 0x{:x} and offset 0x{:x} must be non-zero multiples of the page size {ps}",
                    r.base_host_virt_addr, r.size, r.offset
                ),
            ));
        }
        let end = r.offset.checked_add(r.size);
        if end.is_none_or(|end| end > memory_size) {
            return Err(bad(
                i,
                format!(
                    "memory range 0x{:x}+0x{:x} is outside the snapshot's {memory_size} bytes",
                    r.offset, r.size
                ),
            ));
        }
        if r.base_host_virt_addr.checked_add(r.size).is_none() {
            return Err(bad(i, "host range overflows".into()));
        }
    }
    for (i, a) in regions.iter().enumerate() {
        for (j, b) in regions.iter().enumerate().skip(i + 1) {
            let host = overlaps(a.base_host_virt_addr, a.size, b.base_host_virt_addr, b.size);
            let memory = overlaps(a.offset, a.size, b.offset, b.size);
            if host || memory {
                let what = if host {
                    "host addresses"
                } else {
                    "memory offsets"
                };
                return Err(bad(j, format!("overlaps region {i} in {what}")));
            }
        }
    }
    Ok(())
}

fn overlaps(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    a < b + b_len && b < a + a_len
}

/// A currently mapped piece of a region (a region shrinks or splits on `munmap`, moves on
/// `mremap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub host: u64,
    pub len: u64,
    pub memory: u64,
    pub page_size: u64,
    /// Index of the handshake region it came from (for error messages).
    pub region: usize,
}

impl Mapping {
    fn host_end(&self) -> u64 {
        self.host + self.len
    }

    /// The part of this mapping inside `[start, end)`, if any.
    fn clip(&self, start: u64, end: u64) -> Option<Mapping> {
        let s = start.max(self.host);
        let e = end.min(self.host_end());
        (s < e).then(|| Mapping {
            host: s,
            len: e - s,
            memory: self.memory + (s - self.host),
            ..*self
        })
    }
}

/// The host-address → memory-offset map, updated by UNMAP and REMAP events.
#[derive(Debug, Clone, Default)]
pub struct RegionTable {
    mappings: Vec<Mapping>,
}

impl RegionTable {
    pub fn new(regions: &[GuestRegion]) -> Self {
        let mappings = regions
            .iter()
            .enumerate()
            .map(|(region, r)| Mapping {
                host: r.base_host_virt_addr,
                len: r.size,
                memory: r.offset,
                page_size: r.page_size,
                region,
            })
            .collect();
        RegionTable { mappings }
    }

    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// The mapping holding `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&Mapping> {
        self.mappings
            .iter()
            .find(|m| addr >= m.host && addr < m.host_end())
    }

    /// The mapped pieces inside `[start, end)`.
    pub fn clipped(&self, start: u64, end: u64) -> Vec<Mapping> {
        self.mappings
            .iter()
            .filter_map(|m| m.clip(start, end))
            .collect()
    }

    /// Forgets `[start, end)`: mappings there are cut, split in two if needed.
    pub fn unmap(&mut self, start: u64, end: u64) {
        let mut kept = Vec::with_capacity(self.mappings.len() + 1);
        for m in &self.mappings {
            if m.clip(start, end).is_none() {
                kept.push(*m);
                continue;
            }
            kept.extend(m.clip(m.host, start));
            kept.extend(m.clip(end, m.host_end()));
        }
        self.mappings = kept;
    }

    /// Moves `[from, from + len)` to `to`: whatever was mapped at the destination is gone, and
    /// the moved pieces keep their memory offsets.
    pub fn remap(&mut self, from: u64, to: u64, len: u64) {
        let moved: Vec<Mapping> = self
            .clipped(from, from.saturating_add(len))
            .into_iter()
            .map(|m| Mapping {
                host: m.host - from + to,
                ..m
            })
            .collect();
        self.unmap(from, from.saturating_add(len));
        self.unmap(to, to.saturating_add(len));
        self.mappings.extend(moved);
    }
}

/// One bit per 4 KiB page of guest memory, settable from many threads.
#[derive(Debug)]
pub struct PageBits {
    words: Vec<AtomicU64>,
}

impl PageBits {
    pub fn new(memory_size: u64) -> Self {
        let pages = memory_size.div_ceil(BASE_PAGE);
        PageBits {
            words: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn pages(offset: u64, len: u64) -> std::ops::Range<u64> {
        offset / BASE_PAGE..(offset + len).div_ceil(BASE_PAGE)
    }

    fn word(&self, page: u64) -> Option<(&AtomicU64, u64)> {
        let index = usize::try_from(page / 64).ok()?;
        self.words.get(index).map(|w| (w, 1u64 << (page % 64)))
    }

    pub fn set(&self, offset: u64, len: u64) {
        for page in Self::pages(offset, len) {
            if let Some((word, bit)) = self.word(page) {
                word.fetch_or(bit, Ordering::AcqRel);
            }
        }
    }

    pub fn clear(&self, offset: u64, len: u64) {
        for page in Self::pages(offset, len) {
            if let Some((word, bit)) = self.word(page) {
                word.fetch_and(!bit, Ordering::AcqRel);
            }
        }
    }

    pub fn get(&self, page_offset: u64) -> bool {
        self.word(page_offset / BASE_PAGE)
            .is_some_and(|(word, bit)| word.load(Ordering::Acquire) & bit != 0)
    }

    pub fn any(&self, offset: u64, len: u64) -> bool {
        Self::pages(offset, len).any(|p| self.get(p * BASE_PAGE))
    }

    pub fn all(&self, offset: u64, len: u64) -> bool {
        Self::pages(offset, len).all(|p| self.get(p * BASE_PAGE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn parses_both_page_size_spellings() {
        let json = br#"[
            {"base_host_virt_addr": 1048576, "size": 1048576, "offset": 0, "page_size": 4096},
            {"base_host_virt_addr": 4194304, "size": 2097152, "offset": 1048576, "page_size_kib": 4096},
            {"base_host_virt_addr": 8388608, "size": 2097152, "offset": 4194304, "page_size_kib": 2048}
        ]"#;
        let regions = parse_regions(json, 8 * MIB).expect("valid regions");
        let sizes: Vec<u64> = regions.iter().map(|r| r.page_size).collect();
        assert_eq!(sizes, [4096, 4096, 2 * MIB]);
    }

    #[test]
    fn rejects_bad_regions_with_a_reason() {
        let cases: [(&[u8], &str); 5] = [
            (b"{not json", "JSON"),
            (
                br#"[{"base_host_virt_addr": 4096, "size": 8192, "offset": 0}]"#,
                "page_size",
            ),
            (
                br#"[{"base_host_virt_addr": 4097, "size": 8192, "offset": 0, "page_size": 4096}]"#,
                "multiples",
            ),
            (
                br#"[{"base_host_virt_addr": 4096, "size": 8192, "offset": 1048576, "page_size": 4096}]"#,
                "outside",
            ),
            (
                br#"[{"base_host_virt_addr": 4096, "size": 8192, "offset": 0, "page_size": 4096},
                   {"base_host_virt_addr": 8192, "size": 4096, "offset": 8192, "page_size": 4096}]"#,
                "overlaps",
            ),
        ];
        for (json, expected) in cases {
            let err = parse_regions(json, MIB)
                .expect_err("invalid regions")
                .to_string();
            assert!(err.contains(expected), "{err:?} should mention {expected}");
        }
    }

    fn table() -> RegionTable {
        RegionTable::new(&[GuestRegion {
            base_host_virt_addr: 0x10000,
            size: 0x10000,
            offset: 0x4000,
            page_size: BASE_PAGE,
        }])
    }

    #[test]
    fn unmap_splits_and_remap_moves_keeping_memory_offsets() {
        let mut t = table();
        t.unmap(0x14000, 0x16000);
        assert_eq!(t.mappings().len(), 2);
        assert!(t.lookup(0x15000).is_none());
        assert_eq!(t.lookup(0x16000).map(|m| m.memory), Some(0xA000));

        t.remap(0x18000, 0x90000, 0x4000);
        assert!(t.lookup(0x18000).is_none());
        let moved = t.lookup(0x91000).expect("moved mapping");
        assert_eq!(moved.memory + (0x91000 - moved.host), 0xD000);
        let rest = t.lookup(0x17000).expect("unmoved rest");
        assert_eq!(
            (rest.host, rest.len, rest.memory),
            (0x16000, 0x2000, 0xA000)
        );
    }

    #[test]
    fn page_bits_track_ranges() {
        let bits = PageBits::new(MIB);
        bits.set(0x3000, 0x3000);
        assert!(bits.all(0x3000, 0x3000));
        assert!(!bits.any(0, 0x3000));
        bits.clear(0x4000, 0x1000);
        assert!(bits.get(0x3000) && !bits.get(0x4000) && bits.get(0x5000));
        bits.set(MIB * 4, BASE_PAGE); // out of range: ignored
        assert!(!bits.get(MIB * 4));
    }
}
