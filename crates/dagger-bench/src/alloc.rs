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
//!
//! [`configure`] also lets a thread take over the pages of other threads it frees blocks to
//! (see there).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::{c_int, c_long, c_void};

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

/// mimalloc 3's `mi_option_page_reclaim_on_free` (its place in `mi_option_t`; the
/// `libmimalloc-sys` bindings give only mimalloc 2's options). A test checks the name.
const PAGE_RECLAIM_ON_FREE: c_int = 35;
/// The environment variable that sets it (it then wins over [`configure`]).
const PAGE_RECLAIM_ON_FREE_VAR: &str = "MIMALLOC_PAGE_RECLAIM_ON_FREE";

extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
}

/// Sets mimalloc's options for a cluster's threads; call it first thing in `main`, in every
/// process.
///
/// mimalloc 3 gives up a thread's full pages (abandons them); a block freed by another thread
/// to such a page then has that thread collect the page and try to take it over, which by
/// default it may do only for pages its own heap made. On a head process the I/O thread frees
/// every finished task, which the program thread allocated when it spawned the graph: each
/// of those frees went through the collect-and-give-back path. With reclaiming allowed across
/// threads the I/O thread keeps those pages and reuses them for its own allocations (Task
/// Bench stencil under callgrind: 12.9 k → 11.9 k instructions per task on the head's I/O
/// thread, cache misses unchanged).
pub fn configure() {
    if std::env::var_os(PAGE_RECLAIM_ON_FREE_VAR).is_none() {
        // SAFETY: mimalloc checks the option's range; setting an option is thread-safe.
        unsafe { mi_option_set(PAGE_RECLAIM_ON_FREE, 1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option set by [`configure`] is the one named `page_reclaim_on_free` (its place in
    /// mimalloc's list changes between versions).
    #[test]
    fn reclaim_option_is_the_one_meant() {
        extern "C" {
            fn mi_option_get(option: c_int) -> c_long;
            fn mi_options_print_out(
                out: extern "C" fn(*const std::ffi::c_char, *mut c_void),
                arg: *mut c_void,
            );
        }
        extern "C" fn collect(msg: *const std::ffi::c_char, arg: *mut c_void) {
            // SAFETY: mimalloc passes a C string, and `arg` is the `String` below.
            unsafe {
                let text = &mut *arg.cast::<String>();
                text.push_str(&std::ffi::CStr::from_ptr(msg).to_string_lossy());
            }
        }
        configure();
        let mut text = String::new();
        // SAFETY: `collect` only appends to `text`, which outlives the call.
        let value = unsafe {
            mi_options_print_out(collect, (&mut text as *mut String).cast());
            mi_option_get(PAGE_RECLAIM_ON_FREE)
        };
        // mimalloc prints its options in the order of `mi_option_t`.
        let line = text
            .lines()
            .filter(|l| l.contains("option '"))
            .nth(PAGE_RECLAIM_ON_FREE as usize)
            .unwrap_or_else(|| panic!("too few options in mimalloc's list:\n{text}"));
        let expected = std::env::var(PAGE_RECLAIM_ON_FREE_VAR)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        assert_eq!(value, expected);
        assert!(
            line.contains(&format!("'page_reclaim_on_free': {value}")),
            "option {PAGE_RECLAIM_ON_FREE} is not page_reclaim_on_free set to {value}: {line}"
        );
    }

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
