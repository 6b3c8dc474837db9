//! Running independent forward/backward passes on their own threads.
//!
//! Why: candle multiplies matrices on a rayon pool and synchronises it at every product. For
//! the small products of an edit's inner loop (a few hundred tokens) those barriers cost
//! more than the second core gives back; two half-size passes on two threads, each
//! multiplying on its own thread, finish sooner (the same finding as causal tracing's
//! workers). candle reads `RAYON_NUM_THREADS` at every product, so the switch can be scoped.

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// How many callers are inside [`on_threads`], and the variable's value before the first.
static SERIAL_PRODUCTS: Mutex<(usize, Option<OsString>)> = Mutex::new((0, None));

/// Whether [`on_threads`] is running passes side by side, each on one thread: the fused
/// kernels then stay on their caller's thread too. An atomic because the kernels ask at
/// every call, and reading the environment there would cost more than small kernels do.
static SERIAL: AtomicBool = AtomicBool::new(false);

/// Whether tensor work should stay on the calling thread.
pub fn serial() -> bool {
    SERIAL.load(Ordering::Relaxed) || rayon::current_num_threads() <= 1
}

/// While alive, candle's matrix products run on the calling thread. Nested and concurrent
/// guards share one switch; the last one out restores the user's setting.
struct SerialProducts;

impl SerialProducts {
    fn enter() -> Self {
        let mut state = SERIAL_PRODUCTS.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 == 0 {
            state.1 = std::env::var_os("RAYON_NUM_THREADS");
            std::env::set_var("RAYON_NUM_THREADS", "1");
            SERIAL.store(true, Ordering::Relaxed);
        }
        state.0 += 1;
        SerialProducts
    }
}

impl Drop for SerialProducts {
    fn drop(&mut self) {
        let mut state = SERIAL_PRODUCTS.lock().unwrap_or_else(|e| e.into_inner());
        state.0 -= 1;
        if state.0 == 0 {
            SERIAL.store(false, Ordering::Relaxed);
            match state.1.take() {
                Some(v) => std::env::set_var("RAYON_NUM_THREADS", v),
                None => std::env::remove_var("RAYON_NUM_THREADS"),
            }
        }
    }
}

/// `f` applied to every item, each on its own thread with single-threaded matrix products;
/// results in the items' order. One item runs on the calling thread as usual.
pub fn on_threads<T, U, F>(items: &mut [T], f: F) -> Result<Vec<U>>
where
    T: Send,
    U: Send,
    F: Fn(&mut T) -> Result<U> + Sync,
{
    if items.len() <= 1 {
        return items.iter_mut().map(&f).collect();
    }
    let _serial = SerialProducts::enter();
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .iter_mut()
            .map(|item| {
                let f = &f;
                scope.spawn(move || f(item))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| Error::invalid("a worker thread panicked"))?
            })
            .collect()
    })
}
