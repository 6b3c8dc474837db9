//! Fused CPU kernels with their own backward, for the operations a forward pass runs at
//! every layer: RMSNorm and LayerNorm, the attention softmax with its mask, RoPE, the gated
//! activation.
//!
//! Why: composed from candle's primitives, each of these is several full passes over
//! memory on one thread (candle's element-wise pool is off: see `.cargo/config.toml`), and
//! in a prefill they took as long as the matrix products. Each kernel here is one pass,
//! runs its rows on rayon's pool (the pool the matrix products use, so the two never
//! compete) and has a backward of the same shape. The composed versions in `ops` stay the
//! reference: tests check each kernel against them and against f64 finite differences.
//!
//! Kernels take f32 and f64; other dtypes, and devices other than the CPU, use the
//! composed versions.

pub mod gate;
pub mod norm;
pub(crate) mod real;
pub mod rope;
pub mod softmax;

use candle_core::{CpuStorage, DType, Layout, Tensor, WithDType};
use rayon::prelude::*;

pub use real::Real;

/// Whether the fused kernels can run on `t`.
pub fn fusable(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// The contiguous data of `storage` under `layout`.
fn data<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    let all = storage.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&all[start..end]),
        None => candle_core::bail!("{op} expects a contiguous input"),
    }
}

/// `CpuStorage` of `$body` computed in the inputs' float type: each `$v` is bound to the
/// data of its `(storage, layout)` as `&[f32]` or `&[f64]` (as the first input's), and
/// `$body` must give a `Vec` of that type. Inputs of another dtype are an error.
macro_rules! per_dtype {
    ($op:expr; $v0:ident = ($s0:expr, $l0:expr) $(, $v:ident = ($s:expr, $l:expr))* => $body:expr) => {
        match $s0 {
            CpuStorage::F32(_) => {
                let $v0 = data::<f32>($s0, $l0, $op)?;
                $(let $v = data::<f32>($s, $l, $op)?;)*
                CpuStorage::F32($body)
            }
            CpuStorage::F64(_) => {
                let $v0 = data::<f64>($s0, $l0, $op)?;
                $(let $v = data::<f64>($s, $l, $op)?;)*
                CpuStorage::F64($body)
            }
            other => candle_core::bail!(
                "{}: f32 or f64 only, not {:?}",
                $op,
                candle_core::backend::BackendStorage::dtype(other)
            ),
        }
    };
}
pub(crate) use per_dtype;

/// Elements per parallel task: below this, handing work to another thread costs more
/// than it saves.
const TASK_ELEMENTS: usize = 16 * 1024;

/// Runs `f(first_row, rows_chunk)` over `out` in chunks of whole rows of `width`, on
/// rayon's pool unless the tensor is small or passes run side by side on their own threads
/// (`runtime::threads`).
fn for_rows<T: Send>(out: &mut [T], width: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if width == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / width;
    let per_task = (TASK_ELEMENTS / width).max(1);
    if rows <= per_task || crate::runtime::threads::serial() {
        f(0, out);
        return;
    }
    out.par_chunks_mut(per_task * width)
        .enumerate()
        .for_each(|(i, chunk)| f(i * per_task, chunk));
}

/// Defines `fn $name<generics>(args)` that runs the `#[inline(always)]` function `$body`
/// compiled for the widest vector instructions this CPU has.
///
/// Why: the crate is built for baseline x86-64 (SSE2, 4 floats a vector) so that one binary
/// runs anywhere; a kernel's loop inlined into a function compiled for AVX-512 (16 floats)
/// or AVX2 with FMA (8) runs several times faster where the CPU has them (how `gemm`
/// dispatches its own kernels). The loop must be a named `#[inline(always)]` function called
/// directly: a closure or a function pointer is compiled out of line, for the baseline.
macro_rules! wide_fn {
    (fn $name:ident [$($gp:ident : $gb:path),*] ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:ident) => {
        #[allow(clippy::too_many_arguments, reason = "the loop's inputs, passed through")]
        fn $name<$($gp: $gb),*>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments, reason = "as above")]
                fn avx512<$($gp: $gb),*>($($arg: $ty),*) $(-> $ret)? {
                    $body::<$($gp),*>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments, reason = "as above")]
                fn avx2<$($gp: $gb),*>($($arg: $ty),*) $(-> $ret)? {
                    $body::<$($gp),*>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features `avx512` is compiled for.
                    return unsafe { avx512::<$($gp),*>($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2::<$($gp),*>($($arg),*) };
                }
            }
            $body::<$($gp),*>($($arg),*)
        }
    };
}
pub(crate) use wide_fn;

#[cfg(test)]
pub(crate) mod testing;
