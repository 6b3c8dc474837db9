//! Keys and values of positions already run, per layer, so a later chunk can attend to
//! them without recomputing them (generation; ROME's frozen prompt prefix).

use candle_core::Tensor;

use crate::error::{Error, Result};

/// One layer's cached keys and values, `[rows, n_kv_heads, len, head_dim]`, RoPE applied.
#[derive(Clone, Debug)]
pub struct LayerKv {
    pub k: Tensor,
    pub v: Tensor,
}

#[derive(Clone, Debug)]
pub struct KvCache {
    pub rows: usize,
    pub len: usize,
    /// `[rows * len]` position ids of the cached keys.
    pub positions: Vec<u32>,
    /// `[rows * len]`, false for pads.
    pub valid: Vec<bool>,
    /// Indexed by layer; `None` for layers the cache does not cover (below a start layer).
    pub layers: Vec<Option<LayerKv>>,
}

impl KvCache {
    pub fn layer(&self, l: usize) -> Result<&LayerKv> {
        self.layers
            .get(l)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::invalid(format!("the KV cache has no entry for layer {l}")))
    }

    /// The cache extended by a chunk's keys and values (positions/validity of the chunk).
    pub fn extend(
        &self,
        positions: &[u32],
        valid: &[bool],
        len: usize,
        layers: Vec<Option<LayerKv>>,
    ) -> Result<KvCache> {
        let mut out_layers = Vec::with_capacity(layers.len());
        for (l, new) in layers.into_iter().enumerate() {
            let old = self.layers.get(l).and_then(Option::as_ref);
            out_layers.push(match (old, new) {
                (Some(old), Some(new)) => Some(LayerKv {
                    k: Tensor::cat(&[&old.k, &new.k], 2)?,
                    v: Tensor::cat(&[&old.v, &new.v], 2)?,
                }),
                _ => None,
            });
        }
        Ok(KvCache {
            rows: self.rows,
            len: self.len + len,
            positions: interleave(&self.positions, self.len, positions, len, self.rows),
            valid: interleave(&self.valid, self.len, valid, len, self.rows),
            layers: out_layers,
        })
    }
}

/// Row-wise concatenation of two `[rows, a]` and `[rows, b]` host arrays.
pub(crate) fn interleave<T: Copy>(
    first: &[T],
    a: usize,
    second: &[T],
    b: usize,
    rows: usize,
) -> Vec<T> {
    let mut out = Vec::with_capacity(rows * (a + b));
    for r in 0..rows {
        out.extend_from_slice(&first[r * a..(r + 1) * a]);
        out.extend_from_slice(&second[r * b..(r + 1) * b]);
    }
    out
}
