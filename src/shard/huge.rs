//! Large tables on 2 MiB pages. A core's reservation table and its id index are allocated
//! once, at their full size, and then read and written at random: with 4 KiB pages, filling
//! them costs one page fault per 4 KiB and a lookup in a table of millions of records
//! misses the TLB as well as the cache. Linux backs memory with transparent huge pages
//! where the process asks for them (`madvise(MADV_HUGEPAGE)`, the default setting of
//! `/sys/kernel/mm/transparent_hugepage/enabled`); this module asks, for allocations of at
//! least [`HUGE_MIN_BYTES`]. It is a hint: where the kernel has huge pages disabled, or
//! on another OS, nothing changes.

use std::alloc::Layout;
use std::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator, Global};

/// Allocations smaller than this stay on ordinary pages: they fit in a few of them.
pub const HUGE_MIN_BYTES: usize = 4 << 20;

const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the whole 2 MiB pages inside `bytes` bytes at `ptr` with huge
/// pages. Call it before the memory is first written, so that faults come in 2 MiB.
pub fn advise(ptr: *const u8, bytes: usize) {
    if bytes < HUGE_MIN_BYTES {
        return;
    }
    let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
    let end = (ptr as usize + bytes) & !(HUGE_PAGE - 1);
    if end <= start {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: the range lies inside an allocation this process owns; MADV_HUGEPAGE changes
    // how it is backed, never its contents, and an error (kernel without THP) is harmless.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
}

/// Asks for huge pages for the spare capacity of `v` (allocated, never written).
pub fn advise_spare<T>(v: &mut Vec<T>) {
    let spare = v.spare_capacity_mut();
    advise(spare.as_ptr().cast(), std::mem::size_of_val(spare));
}

/// The global allocator, with [`advise`] on every large block (for hash tables).
#[derive(Clone, Copy, Debug, Default)]
pub struct HugeAlloc;

// SAFETY: every call goes to `Global`, which upholds the contract; `advise` only adds a
// hint on the block it returned.
unsafe impl Allocator for HugeAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let block = Global.allocate(layout)?;
        advise(block.as_ptr().cast(), block.len());
        Ok(block)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: `ptr` came from `allocate` above, that is from `Global`, with `layout`.
        unsafe { Global.deallocate(ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_work_like_any_other() {
        let mut table: hashbrown::HashTable<u32, HugeAlloc> =
            hashbrown::HashTable::with_capacity_in(2 << 20, HugeAlloc);
        let hash = |v: &u32| (*v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for v in 0..100_000u32 {
            table.insert_unique(hash(&v), v, hash);
        }
        assert!(table.allocation_size() >= HUGE_MIN_BYTES);
        assert_eq!(table.find(hash(&77), |&v| v == 77), Some(&77));
        assert_eq!(table.len(), 100_000);

        let mut slab: Vec<u64> = Vec::with_capacity(1 << 20);
        advise_spare(&mut slab);
        slab.extend(0..1 << 20);
        assert_eq!(slab.iter().sum::<u64>(), (1u64 << 20) * ((1 << 20) - 1) / 2);
    }
}
