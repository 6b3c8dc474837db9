//! Model weights under canonical names, the same for every architecture.
//!
//! `blocks.{l}.mlp.out_proj.weight` is the MLP output (down) projection of layer `l` whether
//! the checkpoint called it `model.layers.{l}.mlp.down_proj`, `transformer.h.{l}.mlp.c_proj`
//! or `gpt_neox.layers.{l}.mlp.dense_4h_to_h`. Linear weights are always stored in the
//! `[out, in]` layout (GPT-2's Conv1D weights are transposed on load).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// A parameter inside one transformer block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockParam {
    AttnNormWeight,
    AttnNormBias,
    QWeight,
    QBias,
    KWeight,
    KBias,
    VWeight,
    VBias,
    OWeight,
    OBias,
    MlpNormWeight,
    MlpNormBias,
    GateWeight,
    InWeight,
    InBias,
    OutWeight,
    OutBias,
    /// RMSNorm over each query / key head before RoPE (Gemma 3).
    QNormWeight,
    KNormWeight,
    /// Norms of the attention and MLP outputs before they join the residual (Gemma 3).
    AttnPostNormWeight,
    MlpPostNormWeight,
}

impl BlockParam {
    pub const ALL: [BlockParam; 21] = [
        BlockParam::AttnNormWeight,
        BlockParam::AttnNormBias,
        BlockParam::QWeight,
        BlockParam::QBias,
        BlockParam::KWeight,
        BlockParam::KBias,
        BlockParam::VWeight,
        BlockParam::VBias,
        BlockParam::OWeight,
        BlockParam::OBias,
        BlockParam::MlpNormWeight,
        BlockParam::MlpNormBias,
        BlockParam::GateWeight,
        BlockParam::InWeight,
        BlockParam::InBias,
        BlockParam::OutWeight,
        BlockParam::OutBias,
        BlockParam::QNormWeight,
        BlockParam::KNormWeight,
        BlockParam::AttnPostNormWeight,
        BlockParam::MlpPostNormWeight,
    ];

    /// The canonical name relative to `blocks.{l}.`.
    pub fn suffix(self) -> &'static str {
        use BlockParam::*;
        match self {
            AttnNormWeight => "attn_norm.weight",
            AttnNormBias => "attn_norm.bias",
            QWeight => "attn.q_proj.weight",
            QBias => "attn.q_proj.bias",
            KWeight => "attn.k_proj.weight",
            KBias => "attn.k_proj.bias",
            VWeight => "attn.v_proj.weight",
            VBias => "attn.v_proj.bias",
            OWeight => "attn.o_proj.weight",
            OBias => "attn.o_proj.bias",
            MlpNormWeight => "mlp_norm.weight",
            MlpNormBias => "mlp_norm.bias",
            GateWeight => "mlp.gate_proj.weight",
            InWeight => "mlp.in_proj.weight",
            InBias => "mlp.in_proj.bias",
            OutWeight => "mlp.out_proj.weight",
            OutBias => "mlp.out_proj.bias",
            QNormWeight => "attn.q_norm.weight",
            KNormWeight => "attn.k_norm.weight",
            AttnPostNormWeight => "attn_post_norm.weight",
            MlpPostNormWeight => "mlp_post_norm.weight",
        }
    }
}

/// A parameter of the model, by canonical identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParamId {
    TokenEmbed,
    PositionEmbed,
    Block(usize, BlockParam),
    FinalNormWeight,
    FinalNormBias,
    LmHeadWeight,
    LmHeadBias,
}

impl ParamId {
    pub fn block(layer: usize, p: BlockParam) -> Self {
        ParamId::Block(layer, p)
    }

    /// The MLP output projection of a layer: what ROME, MEMIT and FT edit.
    pub fn mlp_out(layer: usize) -> Self {
        ParamId::Block(layer, BlockParam::OutWeight)
    }
}

impl fmt::Display for ParamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamId::TokenEmbed => f.write_str("embed.tokens.weight"),
            ParamId::PositionEmbed => f.write_str("embed.positions.weight"),
            ParamId::Block(l, p) => write!(f, "blocks.{l}.{}", p.suffix()),
            ParamId::FinalNormWeight => f.write_str("final_norm.weight"),
            ParamId::FinalNormBias => f.write_str("final_norm.bias"),
            ParamId::LmHeadWeight => f.write_str("lm_head.weight"),
            ParamId::LmHeadBias => f.write_str("lm_head.bias"),
        }
    }
}

impl FromStr for ParamId {
    type Err = Error;

    /// Parses a canonical name; a module name without `.weight` means its weight
    /// (`blocks.5.mlp.out_proj` = `blocks.5.mlp.out_proj.weight`).
    fn from_str(s: &str) -> Result<Self> {
        let full = if s.ends_with(".weight") || s.ends_with(".bias") {
            s.to_string()
        } else {
            format!("{s}.weight")
        };
        let top = [
            ParamId::TokenEmbed,
            ParamId::PositionEmbed,
            ParamId::FinalNormWeight,
            ParamId::FinalNormBias,
            ParamId::LmHeadWeight,
            ParamId::LmHeadBias,
        ];
        if let Some(id) = top.into_iter().find(|id| id.to_string() == full) {
            return Ok(id);
        }
        let bad = || {
            Error::invalid(format!(
                "unknown parameter name `{s}` (expected e.g. `blocks.5.mlp.out_proj`, \
                 `blocks.0.attn.q_proj.weight`, `embed.tokens`, `lm_head`)"
            ))
        };
        let rest = full.strip_prefix("blocks.").ok_or_else(bad)?;
        let (layer, suffix) = rest.split_once('.').ok_or_else(bad)?;
        let layer: usize = layer.parse().map_err(|_| bad())?;
        BlockParam::ALL
            .into_iter()
            .find(|p| p.suffix() == suffix)
            .map(|p| ParamId::Block(layer, p))
            .ok_or_else(bad)
    }
}

/// The weights of a model. Tensors are immutable and reference-counted, so a copy of
/// this map is a cheap, exact checkpoint: restoring it gives bit-identical weights.
#[derive(Clone, Debug, Default)]
pub struct Params {
    map: BTreeMap<ParamId, Entry>,
}

/// A weight and, made on first use, its transpose laid out contiguously.
///
/// Why keep a second copy: `gemm` multiplies a few rows by a transposed *view* of a weight at
/// 40–75 GFLOP/s on this CPU but by a contiguous transpose at ~100–110 (measured for SmolLM2's
/// shapes, 6–128 rows), and the optimisations of editing methods (ROME's v*, a few dozen
/// rows, hundreds of passes) are made of exactly such products; so is inference (prefill of
/// 1×64 tokens ran at 21% of the machine's matrix rate through the views, 45% through the
/// transposes: docs/performance.md). The copy belongs to this
/// tensor: replacing the weight starts a new, empty one, and clones of `Params` that hold the
/// same tensor share it.
#[derive(Clone, Debug)]
struct Entry {
    tensor: Tensor,
    transposed: Arc<OnceLock<Tensor>>,
}

impl Entry {
    fn new(tensor: Tensor) -> Self {
        Entry {
            tensor,
            transposed: Arc::new(OnceLock::new()),
        }
    }
}

impl Params {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, id: ParamId, t: Tensor) {
        self.map.insert(id, Entry::new(t));
    }

    pub fn get(&self, id: ParamId) -> Option<&Tensor> {
        self.map.get(&id).map(|e| &e.tensor)
    }

    fn entry(&self, id: ParamId) -> Result<&Entry> {
        self.map
            .get(&id)
            .ok_or_else(|| Error::invalid(format!("the model has no parameter `{id}`")))
    }

    /// The tensor, or an error naming the missing parameter.
    pub fn require(&self, id: ParamId) -> Result<&Tensor> {
        Ok(&self.entry(id)?.tensor)
    }

    /// The matrix `id` transposed into a contiguous tensor, made once per weight (see
    /// [`Entry`] for why).
    pub fn transposed(&self, id: ParamId) -> Result<&Tensor> {
        let entry = self.entry(id)?;
        if let Some(t) = entry.transposed.get() {
            return Ok(t);
        }
        let t = entry.tensor.t()?.contiguous()?;
        Ok(entry.transposed.get_or_init(|| t))
    }

    pub fn contains(&self, id: ParamId) -> bool {
        self.map.contains_key(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ParamId, &Tensor)> {
        self.map.iter().map(|(id, e)| (id, &e.tensor))
    }

    pub fn ids(&self) -> impl Iterator<Item = ParamId> + '_ {
        self.map.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Replaces an existing parameter with a tensor of the same shape and dtype.
    pub fn replace(&mut self, id: ParamId, t: Tensor) -> Result<Tensor> {
        let old = self.require(id)?;
        if old.dims() != t.dims() || old.dtype() != t.dtype() {
            return Err(Error::invalid(format!(
                "parameter `{id}` is {:?} {:?}; refusing a {:?} {:?} replacement",
                old.dims(),
                old.dtype(),
                t.dims(),
                t.dtype()
            )));
        }
        Ok(self
            .map
            .insert(id, Entry::new(t))
            .expect("checked above")
            .tensor)
    }

    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.map.values().map(|e| e.tensor.elem_count()).sum()
    }

    /// The same weights converted to another float type (f64 for finite differences).
    pub fn to_dtype(&self, dtype: DType) -> Result<Params> {
        let mut out = Params::new();
        for (id, t) in self.iter() {
            out.insert(*id, t.to_dtype(dtype)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_round_trip() {
        for p in BlockParam::ALL {
            let id = ParamId::Block(12, p);
            assert_eq!(id.to_string().parse::<ParamId>().unwrap(), id);
        }
        assert_eq!(
            "blocks.5.mlp.out_proj".parse::<ParamId>().unwrap(),
            ParamId::mlp_out(5)
        );
        assert_eq!("lm_head".parse::<ParamId>().unwrap(), ParamId::LmHeadWeight);
        assert!("blocks.x.mlp.out_proj".parse::<ParamId>().is_err());
        assert!("blocks.3.mlp.down_proj".parse::<ParamId>().is_err());
    }
}
