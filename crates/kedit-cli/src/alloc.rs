//! The binary's allocator: the system one, counting live bytes, their peak and the
//! largest single allocation, and refusing any allocation above a bound once one is set
//! (`kedit fuzz`: a hostile file must never make kedit allocate without bound).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The case running now (for the message when an allocation is refused).
pub static CASE: AtomicU64 = AtomicU64::new(u64::MAX);
/// The case that made the largest allocation.
static LARGEST_CASE: AtomicU64 = AtomicU64::new(u64::MAX);

/// The case that made the largest allocation so far.
pub fn largest_case() -> u64 {
    LARGEST_CASE.load(Relaxed)
}

/// The figures so far: (peak live bytes, largest single allocation).
pub fn figures() -> (usize, usize) {
    (PEAK.load(Relaxed), LARGEST.load(Relaxed))
}

/// Starts counting the peak afresh (from the bytes live now).
pub fn reset_peak() {
    PEAK.store(LIVE.load(Relaxed), Relaxed);
    LARGEST.store(0, Relaxed);
}

/// Refuse (abort on) any single allocation, or live total, above `bytes`.
pub fn set_limit(bytes: usize) {
    LIMIT.store(bytes, Relaxed);
}

/// Writes a number without allocating.
fn digits(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

fn refuse(size: usize) {
    let mut a = [0u8; 20];
    let mut b = [0u8; 20];
    let mut err = std::io::stderr();
    let _ = err.write_all(b"\nkedit fuzz: allocation of ");
    let _ = err.write_all(digits(size as u64, &mut a));
    let _ = err.write_all(b" bytes refused (above the bound) in case ");
    let _ = err.write_all(digits(CASE.load(Relaxed), &mut b));
    let _ = err.write_all(b"\n");
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        let limit = LIMIT.load(Relaxed);
        if size > limit || LIVE.load(Relaxed).saturating_add(size) > limit {
            refuse(size);
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout, passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(size, Relaxed) + size;
            PEAK.fetch_max(live, Relaxed);
            if LARGEST.fetch_max(size, Relaxed) < size {
                LARGEST_CASE.store(CASE.load(Relaxed), Relaxed);
            }
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        let limit = LIMIT.load(Relaxed);
        if new_size > limit
            || (new_size > old && LIVE.load(Relaxed).saturating_add(new_size - old) > limit)
        {
            refuse(new_size);
            return std::ptr::null_mut();
        }
        // SAFETY: as the caller promises for `realloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= old {
                let live = LIVE.fetch_add(new_size - old, Relaxed) + (new_size - old);
                PEAK.fetch_max(live, Relaxed);
            } else {
                LIVE.fetch_sub(old - new_size, Relaxed);
            }
            if LARGEST.fetch_max(new_size, Relaxed) < new_size {
                LARGEST_CASE.store(CASE.load(Relaxed), Relaxed);
            }
        }
        p
    }
}
