//! What a process running kedit should set before any tensor work: thread counts and the
//! allocator. The CLI calls [`configure_process`] first thing; a program embedding the
//! library should too.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the user set `RAYON_NUM_THREADS` (before [`configure_process`] filled it in).
static RAYON_THREADS_FROM_USER: AtomicBool = AtomicBool::new(false);
static CONFIGURED: AtomicBool = AtomicBool::new(false);

/// Whether `RAYON_NUM_THREADS` is the user's choice, to be left alone.
pub fn rayon_threads_from_user() -> bool {
    RAYON_THREADS_FROM_USER.load(Ordering::Relaxed)
        || (std::env::var_os("RAYON_NUM_THREADS").is_some() && !CONFIGURED.load(Ordering::Relaxed))
}

/// Sets the thread counts and the allocator a process should run with; call first thing in
/// `main`, before any tensor work starts threads (the CLI does).
///
/// - `CANDLE_NUM_THREADS=1` unless set: candle's element-wise pool fights the matrix
///   products' pool for the cores (see `.cargo/config.toml`); the fused kernels
///   (`runtime::kernels`) run element-wise work on the products' pool instead.
/// - `RAYON_NUM_THREADS` to the available parallelism unless set: when it is unset, candle
///   counts physical cores by reading `/proc/cpuinfo` at every matrix product, which
///   costs as much as a small product.
/// - glibc's allocator keeps freed memory for reuse (see [`keep_freed_memory`]).
pub fn configure_process() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let user = std::env::var_os("RAYON_NUM_THREADS").is_some();
    RAYON_THREADS_FROM_USER.store(user, Ordering::Relaxed);
    if !user {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    CONFIGURED.store(true, Ordering::Relaxed);
    keep_freed_memory();
}

/// Tells glibc's malloc to serve tensors of up to 32 MiB from its heap and not to hand
/// freed memory back to the kernel.
///
/// Why: by default glibc maps each large block afresh and unmaps it on free (its threshold
/// grows only as far as the largest block freed so far), and trims the heap top. A pass
/// allocates and frees the same few dozen activation-sized tensors at every layer, so each
/// was a new mapping whose pages the kernel faulted in and zeroed: forward+backward of
/// 6×20 tokens took 0.26 s, 0.19 s with both settings (either alone was slower still:
/// docs/performance.md). The cost is that the process's resident memory stays at its peak.
/// Does nothing outside glibc, or when `GLIBC_TUNABLES` sets malloc options itself.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc")) {
            return;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only sets allocator parameters; glibc validates the values.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}
