//! How a canonical tensor is stored in a Hugging Face checkpoint, and the conversions
//! both ways.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::error::Result;
use crate::model::config::ModelConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfLayout {
    /// As is (`nn.Linear` weights are `[out, in]` like ours).
    Plain,
    /// GPT-2 `Conv1D`: `[in, out]`, transposed relative to ours.
    Conv1D,
    /// One third (0 = q, 1 = k, 2 = v) of GPT-2's fused `c_attn` (a Conv1D).
    Gpt2Qkv(usize),
    /// One part of GPT-NeoX's `query_key_value`, fused per head as `[q_h | k_h | v_h]`.
    NeoxQkv(usize),
    /// A norm weight `w` applied as `(1 + w)` (Gemma): canonical = 1 + w, so that the
    /// runtime has one RMSNorm.
    PlusOne,
}

impl HfLayout {
    /// The shape the checkpoint tensor must have for a canonical parameter of shape
    /// `canonical`. Checking it before converting matters for the fused layouts: a fused
    /// tensor that is too large still yields parts of the right shape.
    pub fn hf_shape(self, canonical: &[usize]) -> Vec<usize> {
        match (self, canonical) {
            (HfLayout::Conv1D, [out, inp]) => vec![*inp, *out],
            (HfLayout::Gpt2Qkv(_), [out, inp]) => vec![*inp, 3 * out],
            (HfLayout::NeoxQkv(_), [out, rest @ ..]) | (HfLayout::Gpt2Qkv(_), [out, rest @ ..]) => {
                let mut shape = vec![3 * out];
                shape.extend(rest);
                shape
            }
            _ => canonical.to_vec(),
        }
    }

    /// Converts a checkpoint tensor to the canonical layout.
    pub fn to_canonical(self, raw: &Tensor, cfg: &ModelConfig) -> Result<Tensor> {
        Ok(match self {
            HfLayout::Plain => raw.clone(),
            HfLayout::Conv1D => raw.t()?.contiguous()?,
            HfLayout::PlusOne => (raw + 1.0)?,
            HfLayout::Gpt2Qkv(part) => {
                // q, k and v are equally wide: GPT-2 has no grouped-query attention.
                let n = cfg.n_heads * cfg.head_dim;
                if raw.rank() == 2 {
                    raw.t()?.narrow(0, part * n, n)?.contiguous()?
                } else {
                    raw.narrow(0, part * n, n)?
                }
            }
            HfLayout::NeoxQkv(part) => {
                let (h, hd) = (cfg.n_heads, cfg.head_dim);
                let rest: Vec<usize> = raw.dims()[1..].to_vec();
                let mut split = vec![h, 3, hd];
                split.extend(&rest);
                let mut out = vec![h * hd];
                out.extend(&rest);
                raw.reshape(split)?
                    .narrow(1, part, 1)?
                    .contiguous()?
                    .reshape(out)?
            }
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfSlot {
    pub name: String,
    pub layout: HfLayout,
}

impl HfSlot {
    pub fn new(name: impl Into<String>, layout: HfLayout) -> Option<HfSlot> {
        Some(HfSlot {
            name: name.into(),
            layout,
        })
    }

    pub fn plain(name: impl Into<String>) -> Option<HfSlot> {
        Self::new(name, HfLayout::Plain)
    }
}

/// Collects canonical tensors into checkpoint tensors: the unfused ones converted at once,
/// the parts of a fused one joined when all are there.
#[derive(Default)]
pub struct HfWriter {
    out: BTreeMap<String, Tensor>,
    fused: BTreeMap<String, (HfLayout, Vec<(usize, Tensor)>)>,
}

impl HfWriter {
    pub fn add(&mut self, slot: HfSlot, t: &Tensor) -> Result<()> {
        match slot.layout {
            HfLayout::Plain => {
                self.out.insert(slot.name, t.clone());
            }
            HfLayout::Conv1D => {
                self.out.insert(slot.name, t.t()?.contiguous()?);
            }
            HfLayout::PlusOne => {
                self.out.insert(slot.name, (t - 1.0)?);
            }
            HfLayout::Gpt2Qkv(part) | HfLayout::NeoxQkv(part) => {
                self.fused
                    .entry(slot.name)
                    .or_insert_with(|| (slot.layout, Vec::new()))
                    .1
                    .push((part, t.clone()));
            }
        }
        Ok(())
    }

    pub fn finish(mut self, cfg: &ModelConfig) -> Result<BTreeMap<String, Tensor>> {
        for (name, (layout, mut parts)) in self.fused {
            parts.sort_by_key(|(p, _)| *p);
            let tensors: Vec<&Tensor> = parts.iter().map(|(_, t)| t).collect();
            let t = match layout {
                HfLayout::Gpt2Qkv(_) => {
                    let cat = Tensor::cat(&tensors, 0)?;
                    if cat.rank() == 2 {
                        cat.t()?.contiguous()?
                    } else {
                        cat
                    }
                }
                _ => {
                    let (h, hd) = (cfg.n_heads, cfg.head_dim);
                    let rest: Vec<usize> = tensors[0].dims()[1..].to_vec();
                    let mut per_head = vec![h, 1, hd];
                    per_head.extend(&rest);
                    let split: Vec<Tensor> = tensors
                        .iter()
                        .map(|t| t.reshape(per_head.clone()))
                        .collect::<candle_core::Result<_>>()?;
                    let mut out_shape = vec![3 * h * hd];
                    out_shape.extend(&rest);
                    Tensor::cat(&split, 1)?.reshape(out_shape)?
                }
            };
            self.out.insert(name, t);
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_shapes_of_transposed_and_fused_layouts() {
        assert_eq!(HfLayout::Plain.hf_shape(&[64, 128]), vec![64, 128]);
        assert_eq!(HfLayout::Conv1D.hf_shape(&[64, 128]), vec![128, 64]);
        assert_eq!(HfLayout::Gpt2Qkv(1).hf_shape(&[64, 64]), vec![64, 192]);
        assert_eq!(HfLayout::Gpt2Qkv(2).hf_shape(&[64]), vec![192]);
        assert_eq!(HfLayout::NeoxQkv(0).hf_shape(&[64, 64]), vec![192, 64]);
        assert_eq!(HfLayout::NeoxQkv(0).hf_shape(&[64]), vec![192]);
        assert_eq!(HfLayout::PlusOne.hf_shape(&[64]), vec![64]);
    }
}
