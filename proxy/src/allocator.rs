//! The process's global allocator: mimalloc, asked the way the system allocator is asked.
//!
//! The `mimalloc` crate passes every allocation to `mi_malloc_aligned`, alignment 8 included.
//! mimalloc's aligned path only finds a block quickly when a small page has one free; otherwise
//! (any size above 1 KiB, or a page just used up) it keeps the block only if its size class is
//! a power of two, and for every other size allocates `size + alignment - 1` and marks the page
//! as holding interior pointers, which slows each later free on it. Pingora's header and body
//! buffers are such sizes. A plain `mi_malloc` aligns any block above 8 bytes to 16,
//! so an alignment that small needs no aligned call at all: the rule Rust's `System` allocator
//! applies to `malloc`. Callgrind counts: docs/benchmarks/latency.md.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// What mimalloc guarantees of every block without being asked (`MI_MAX_ALIGN_SIZE`).
const PLAIN_ALIGN: usize = 16;

/// mimalloc behind `GlobalAlloc`, with plain calls wherever its own alignment suffices.
pub struct MiMalloc;

/// A block of `size` bytes from a plain call is aligned to `align`: on 64-bit targets mimalloc
/// rounds its size classes to two words, so a block of 9 bytes or more is 16-aligned and one of
/// 8 or fewer is 8-aligned, which covers any power-of-two `align` no larger than `size`.
fn plain_suffices(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

/// A new block for `layout` from `plain` where mimalloc's own alignment suffices, else from
/// `aligned`; inlined, so each call site calls the mimalloc function directly.
///
/// # Safety
/// `plain` and `aligned` are mimalloc's allocating pair (`mi_malloc`/`mi_malloc_aligned` or
/// `mi_zalloc`/`mi_zalloc_aligned`).
#[inline(always)]
unsafe fn allocate(
    layout: Layout,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    // SAFETY: plain C allocation calls; a null return is passed on as failure.
    unsafe {
        if plain_suffices(layout.align(), layout.size()) {
            plain(layout.size()).cast()
        } else {
            aligned(layout.size(), layout.align()).cast()
        }
    }
}

// SAFETY: each method forwards to mimalloc, which returns blocks aligned as `plain_suffices`
// says or as the aligned call was told, and frees any block it returned with `mi_free`.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocating pair.
        unsafe { allocate(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's zeroing pair.
        unsafe { allocate(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator; the new block keeps the old alignment.
        unsafe {
            if plain_suffices(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

/// mimalloc commits its arenas eagerly (untouched pages cost nothing), but where transparent
/// huge pages are on (`always`, as on Debian's kernels) the kernel backs each touched part of
/// an arena with a 2 MiB page, and the resident set grows with the arenas rather than with what
/// is used: 5,000 held streams took 875 MiB against 274 MiB on the system allocator, and
/// 268 MiB with THP off for the process (docs/benchmarks/latency.md). mimalloc turns THP off
/// itself only when told before its first allocation (`MIMALLOC_ALLOW_THP=0`), which is before
/// `main`; the flag also binds pages not yet touched in arenas mapped already.
#[cfg(target_os = "linux")]
pub fn keep_off_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    let refused = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0;
    if refused {
        eprintln!(
            "wes-proxy: could not turn transparent huge pages off for the process: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plain_calls_only_where_mimalloc_aligns_by_itself() {
        assert!(plain_suffices(8, 1500));
        assert!(plain_suffices(16, 16));
        assert!(plain_suffices(1, 1));
        // Tokio's task cells ask for 128.
        assert!(!plain_suffices(128, 1024));
        assert!(!plain_suffices(32, 64));
        // A 16-aligned request smaller than 16 bytes gets a smaller block: ask explicitly.
        assert!(!plain_suffices(16, 8));
    }

    /// Every path through the allocator keeps the alignment asked for and the bytes held.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes_across_realloc() {
        let a = MiMalloc;
        for &(size, align, grown) in &[
            (24, 8, 1500),
            (1500, 8, 70_000),
            (1024, 128, 4096),
            (64, 64, 32),
            (3, 1, 2),
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a layout of non-zero size; each block is freed once, by this allocator.
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "alloc {size}/{align}");
                for i in 0..size {
                    *p.add(i) = i as u8;
                }
                let q = a.realloc(p, layout, grown);
                assert!(!q.is_null());
                assert_eq!(q as usize % align, 0, "realloc {size}/{align} → {grown}");
                for i in 0..size.min(grown) {
                    assert_eq!(*q.add(i), i as u8);
                }
                a.dealloc(q, Layout::from_size_align(grown, align).unwrap());
                let z = a.alloc_zeroed(layout);
                assert_eq!(z as usize % align, 0, "alloc_zeroed {size}/{align}");
                assert!((0..size).all(|i| *z.add(i) == 0));
                a.dealloc(z, layout);
            }
        }
    }
}
