//! Measurements behind the `kedit bench*` commands. Figures are printed, never asserted.
//!
//! The top layer: a benchmark may time anything below it, from a matrix product to a whole
//! edit.
//!
//! - [`runtime`]: matrix products, prefill, forward+backward (`kedit bench`);
//! - [`locate`]: key statistics and causal tracing (`kedit bench-stats`, `kedit bench-trace`);
//! - [`edit`]: seconds per edit, phase by phase, and peak memory (`kedit bench-edit`);
//! - [`eval`]: batched vs per-prompt metric forwards (`kedit bench-eval`);
//! - [`memory`]: adding edits to a memory and scoring through it (`kedit bench-memory`).

pub mod edit;
pub mod eval;
pub mod locate;
pub mod memory;
pub mod runtime;

use std::time::Instant;

use crate::error::Result;

/// The median of `values` (the mean of the middle two of an even count); `None` when empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// The run of median `seconds` (the upper middle one of an even count): one real run, so
/// that the figures reported beside its time are its own.
///
/// # Panics
/// When `runs` is empty.
pub fn median_run<T>(mut runs: Vec<T>, seconds: impl Fn(&T) -> f64) -> T {
    runs.sort_by(|a, b| seconds(a).total_cmp(&seconds(b)));
    let middle = runs.len() / 2;
    runs.swap_remove(middle)
}

/// Median wall time of `reps` runs of `f` after one warm-up, in seconds.
pub fn median_seconds(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median_run(times, |&t| t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median_run(vec![4.0, 1.0, 3.0, 2.0], |&t| t), 3.0);
        assert_eq!(
            median_run(vec![(2.0, 'b'), (1.0, 'a')], |r| r.0),
            (2.0, 'b')
        );
    }
}
