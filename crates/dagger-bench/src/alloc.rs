//! mimalloc as the bench's global allocator (`--features mimalloc`), asked for an alignment
//! only where a layout needs more than every mimalloc block has.
//!
//! The `mimalloc` crate's allocator hands every layout's alignment to `mi_malloc_aligned`.
//! In mimalloc 3 that call takes the fast path only while the page of the size class has a
//! free block at hand; otherwise, for a size that is not a power of two, it over-allocates
//! from a larger size class, and the blocks freed meanwhile to the first class's page are
//! not collected by it. On a worker's compute thread running a stencil, about five
//! allocations per task went that way, at several times the cost of the fast path. Every
//! block mimalloc hands out is aligned to a word (block sizes are whole words), so a layout
//! aligned to a word or less is asked for as a plain `mi_malloc`.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment of every block mimalloc hands out.
const BLOCK_ALIGN: usize = std::mem::size_of::<usize>();

/// mimalloc, asked for an alignment only where a layout needs more than a word.
pub struct MiMalloc;

// SAFETY: every method forwards to mimalloc with a size and, where the layout needs more
// than `BLOCK_ALIGN`, its alignment; mimalloc returns null on failure, blocks aligned to at
// least `BLOCK_ALIGN`, and frees or resizes any block it made, however it was asked for.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain calls into mimalloc (see above).
        unsafe {
            if layout.align() <= BLOCK_ALIGN {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if layout.align() <= BLOCK_ALIGN {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from mimalloc; the new block keeps the layout's alignment.
        unsafe {
            if layout.align() <= BLOCK_ALIGN {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_layouts_alignment() {
        let a = MiMalloc;
        for align in [1, 2, 4, 8, 16, 64, 4096] {
            for size in [1, 3, 7, 8, 12, 24, 40, 100, 1000, 5000, 70_000] {
                let size = size.max(align);
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; every block is freed with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size}, align {align}");
                    p.write_bytes(0xa5, size);
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0);
                    assert!(std::slice::from_raw_parts(q, size)
                        .iter()
                        .all(|&b| b == 0xa5));
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
