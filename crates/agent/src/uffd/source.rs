//! Where the page server gets guest memory from.

/// What one block of guest memory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageContent {
    /// `buf` was filled with the block's bytes.
    Data,
    /// The block is known to be all zeros; `buf` was not touched and need not be copied.
    Zero,
}

/// Guest memory as the snapshot stored it. Implemented by the snapshot store (header plus build
/// files) and by plain files in tests. Reads happen on the page server's threads, so they may
/// block.
pub trait PageSource: Send + Sync + 'static {
    /// Guest memory size in bytes (a multiple of [`block_size`](Self::block_size)).
    fn size(&self) -> u64;

    /// The unit the source stores and checksums memory in (4096, or 2 MiB for huge pages).
    fn block_size(&self) -> u64;

    /// Reads `buf.len()` bytes of guest memory starting at `offset`. `offset` and `buf.len()` are
    /// multiples of 4096 and stay inside one block. An error (I/O failure, checksum mismatch) is
    /// reported, never papered over with zeros.
    fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<PageContent>;
}
