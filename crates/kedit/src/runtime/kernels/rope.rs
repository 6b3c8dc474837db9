//! Rotary position embedding of queries or keys, fused with the move of the heads ahead of
//! the positions that attention needs and with the query scale: one pass instead of
//! RoPE's half-dozen plus a transposing copy and a multiply.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};

use super::{data, for_rows, per_dtype, wide_fn, Real};

/// How to rotate: the first `rotary_dim` of each head's dimensions, in halves (Llama) or
/// in adjacent pairs (GPT-J), times `scale`.
#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    pub rotary_dim: usize,
    pub interleaved: bool,
    pub scale: f64,
}

/// `x: [rows, len, heads, head_dim]` rotated by the angles whose cos and sin are
/// `[rows, len, rotary_dim / 2]` (any shape with that many elements in that order), times
/// the scale, laid out `[rows, heads, len, head_dim]`.
pub fn rope_heads_first(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    rotation: Rotation,
) -> candle_core::Result<Tensor> {
    let (rows, len, _, hd) = x.dims4()?;
    let half = rotation.rotary_dim / 2;
    if rotation.rotary_dim % 2 != 0 || rotation.rotary_dim > hd {
        candle_core::bail!(
            "rope: rotary dimension {} for heads of {hd}",
            rotation.rotary_dim
        );
    }
    for t in [cos, sin] {
        if t.elem_count() != rows * len * half || t.dtype() != x.dtype() {
            candle_core::bail!("rope: a table of {:?} for input {:?}", t.shape(), x.shape());
        }
    }
    x.contiguous()?.apply_op1(Rope {
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
        rotation,
        backward: false,
    })
}

/// The same rotation, or its inverse (`backward`) that takes a gradient laid out
/// `[rows, heads, len, hd]` back to `[rows, len, heads, hd]`.
struct Rope {
    cos: Tensor,
    sin: Tensor,
    rotation: Rotation,
    backward: bool,
}

fn table<T: Real>(t: &Tensor) -> candle_core::Result<Vec<T>> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => Ok(data::<T>(s, layout, "rope")?.to_vec()),
        _ => candle_core::bail!("rope: tables must be on the CPU"),
    }
}

/// Rotates one head's vector `src` into `dst`: forward by (c, s), backward by (c, −s).
#[inline(always)]
fn rotate<T: Real>(src: &[T], dst: &mut [T], cos: &[T], sin: &[T], r: Rotation, back: bool) {
    let scale = T::of(r.scale);
    let half = r.rotary_dim / 2;
    for i in 0..half {
        let (c, s) = (cos[i], if back { -sin[i] } else { sin[i] });
        let (a, b) = if r.interleaved {
            (2 * i, 2 * i + 1)
        } else {
            (i, i + half)
        };
        let (xa, xb) = (src[a], src[b]);
        dst[a] = (xa * c - xb * s) * scale;
        dst[b] = (xb * c + xa * s) * scale;
    }
    for i in r.rotary_dim..src.len() {
        dst[i] = src[i] * scale;
    }
}

impl Rope {
    fn rotate<T: Real>(
        &self,
        x: &[T],
        dims: (usize, usize, usize, usize),
    ) -> candle_core::Result<Vec<T>> {
        let cos = table::<T>(&self.cos)?;
        let sin = table::<T>(&self.sin)?;
        let half = self.rotation.rotary_dim / 2;
        let mut out = vec![T::of(0.0); x.len()];
        let back = self.backward;
        // Forward: input (row, pos, head), output (row, head, pos); backward the reverse.
        let (_, len, heads, hd) = dims;
        let rotation = self.rotation;
        for_rows(&mut out, hd, |first, chunk| {
            rotate_rows_wide(
                x,
                &cos,
                &sin,
                (len, heads, hd, half),
                rotation,
                back,
                first,
                chunk,
            )
        });
        Ok(out)
    }
}

// Output rows `first..` of the rotation (see `Rope::rotate`).
wide_fn!(fn rotate_rows_wide [T: Real] (x: &[T], cos: &[T], sin: &[T], dims: (usize, usize, usize, usize), rotation: Rotation, back: bool, first: usize, chunk: &mut [T]) => rotate_rows);

#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "one loop's inputs")]
fn rotate_rows<T: Real>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    (len, heads, hd, half): (usize, usize, usize, usize),
    rotation: Rotation,
    back: bool,
    first: usize,
    chunk: &mut [T],
) {
    for (k, dst) in chunk.chunks_mut(hd).enumerate() {
        let o = first + k;
        let (b, h, t) = if back {
            (o / (len * heads), o % heads, (o / heads) % len)
        } else {
            (o / (heads * len), (o / len) % heads, o % len)
        };
        let src_row = if back {
            (b * heads + h) * len + t
        } else {
            (b * len + t) * heads + h
        };
        let at = (b * len + t) * half;
        rotate(
            &x[src_row * hd..][..hd],
            dst,
            &cos[at..at + half],
            &sin[at..at + half],
            rotation,
            back,
        );
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        if self.backward {
            "fused-rope-backward"
        } else {
            "fused-rope"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b, c, hd) = l.shape().dims4()?;
        // Forward input (rows, len, heads); backward input (rows, heads, len).
        let (dims, out_shape) = if self.backward {
            ((a, c, b, hd), Shape::from((a, c, b, hd)))
        } else {
            ((a, b, c, hd), Shape::from((a, c, b, hd)))
        };
        let n = self.name();
        let out = per_dtype!(n; x = (s, l) => self.rotate(x, dims)?);
        Ok((out, out_shape))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let inverse = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            rotation: self.rotation,
            backward: true,
        };
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(&inverse)?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;
    use crate::runtime::kernels::testing::{assert_close, check_gradients, rand};

    /// RoPE from primitives as `forward.rs` composed it, then the transpose and scale.
    fn composed(
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        r: Rotation,
    ) -> crate::error::Result<Tensor> {
        let (rows, len, heads, hd) = x.dims4()?;
        let rot = r.rotary_dim;
        let half = rot / 2;
        let cos = cos.reshape((rows, len, 1, half))?;
        let sin = sin.reshape((rows, len, 1, half))?;
        let x_rot = x.narrow(3, 0, rot)?;
        let rotated = if r.interleaved {
            let pairs = x_rot.reshape((rows, len, heads, half, 2))?;
            let even = pairs.narrow(4, 0, 1)?.squeeze(4)?;
            let odd = pairs.narrow(4, 1, 1)?.squeeze(4)?;
            let e = (even.broadcast_mul(&cos)? - odd.broadcast_mul(&sin)?)?;
            let o = (odd.broadcast_mul(&cos)? + even.broadcast_mul(&sin)?)?;
            Tensor::stack(&[e, o], 4)?.reshape((rows, len, heads, rot))?
        } else {
            let x1 = x_rot.narrow(3, 0, half)?;
            let x2 = x_rot.narrow(3, half, half)?;
            let a = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
            let b = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
            Tensor::cat(&[a, b], 3)?
        };
        let full = if rot == hd {
            rotated
        } else {
            Tensor::cat(&[rotated, x.narrow(3, rot, hd - rot)?], 3)?
        };
        Ok((full.transpose(1, 2)?.contiguous()? * r.scale)?)
    }

    fn angles(rows: usize, len: usize, half: usize, dtype: DType) -> (Tensor, Tensor) {
        let a = (rand(&[rows, len, half], 7, DType::F64) * 3.0).unwrap();
        let to = |t: Tensor| t.to_dtype(dtype).unwrap();
        (to(a.cos().unwrap()), to(a.sin().unwrap()))
    }

    #[test]
    fn matches_the_composed_rotation_every_way() {
        for (hd, rot, interleaved) in [(8, 8, false), (8, 4, false), (8, 8, true), (8, 4, true)] {
            let r = Rotation {
                rotary_dim: rot,
                interleaved,
                scale: 0.35,
            };
            let x = rand(&[2, 5, 3, hd], 1, DType::F32);
            let (cos, sin) = angles(2, 5, rot / 2, DType::F32);
            let fused = rope_heads_first(&x, &cos, &sin, r).unwrap();
            assert_close(&fused, &composed(&x, &cos, &sin, r).unwrap(), 1e-6);
        }
    }

    #[test]
    fn gradients_match_finite_differences_and_the_composed_backward() {
        for (rot, interleaved) in [(6, false), (4, true)] {
            let r = Rotation {
                rotary_dim: rot,
                interleaved,
                scale: 0.5,
            };
            let x = rand(&[2, 3, 2, 6], 2, DType::F64);
            let (cos, sin) = angles(2, 3, rot / 2, DType::F64);
            check_gradients(
                &[x],
                |t| Ok(rope_heads_first(&t[0], &cos, &sin, r)?),
                |t| composed(&t[0], &cos, &sin, r),
            );
        }
    }
}
