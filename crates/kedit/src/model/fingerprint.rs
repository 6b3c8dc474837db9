//! Fingerprints of the weights that determine an activation, for cache keys.
//!
//! Statistics of `blocks.{l}.mlp.key` depend on the configuration, the embeddings, every
//! block below `l` and block `l` up to (not including) its MLP output projection. Hashing
//! exactly those weights means an edited model never reuses stale statistics, while an edit
//! of layer `l`'s output projection (what ROME changes) keeps layer `l`'s statistics valid.
//! Whether the tokenizer puts a BOS first is hashed too: it changes every key of a text.

use candle_core::{CpuStorage, DType, Storage, Tensor};

use crate::error::Result;
use crate::hash::Fast64;
use crate::model::params::{BlockParam, ParamId};
use crate::model::Model;

/// The hash of a tensor's shape, dtype and values (bit patterns).
pub fn tensor_hash(t: &Tensor) -> Result<u64> {
    let mut h = Fast64::new();
    h.str(&format!("{:?}{:?}", t.dims(), t.dtype()));
    let (storage, layout) = t.storage_and_layout();
    let contiguous = layout.contiguous_offsets();
    match (&*storage, contiguous) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => h.f32s(&v[a..b]),
        (Storage::Cpu(CpuStorage::F64(v)), Some((a, b))) => h.f64s(&v[a..b]),
        _ => {
            // Rare (non-contiguous, other dtypes, devices): pay for a copy.
            drop(storage);
            match t.dtype() {
                DType::F64 => h.f64s(&t.flatten_all()?.to_vec1::<f64>()?),
                _ => h.f32s(&t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            }
        }
    }
    Ok(h.finish())
}

/// Whether the weight `id` takes part in computing the MLP keys of `layer`.
fn determines_keys_of(id: ParamId, layer: usize) -> bool {
    match id {
        ParamId::TokenEmbed | ParamId::PositionEmbed => true,
        ParamId::Block(b, p) => {
            b < layer || (b == layer && !matches!(p, BlockParam::OutWeight | BlockParam::OutBias))
        }
        ParamId::FinalNormWeight
        | ParamId::FinalNormBias
        | ParamId::LmHeadWeight
        | ParamId::LmHeadBias => false,
    }
}

impl Model {
    /// Fingerprints of the weights that determine the MLP keys of each of `layers` (see the
    /// module docs). Each tensor is hashed once however many layers are asked for.
    pub fn key_fingerprints(&self, layers: &[usize]) -> Result<Vec<u64>> {
        let top = layers.iter().copied().max();
        let mut tensor_hashes: Vec<(ParamId, u64)> = Vec::new();
        for (id, t) in self.params.iter() {
            if top.is_some_and(|l| determines_keys_of(*id, l)) {
                tensor_hashes.push((*id, tensor_hash(t)?));
            }
        }
        let config = serde_json::to_string(&self.config).expect("configs always serialise");
        let bos_first = self.tokenizer.as_ref().is_some_and(|t| t.adds_bos());
        Ok(layers
            .iter()
            .map(|&l| {
                let mut h = Fast64::new();
                h.str(&config);
                h.u64(l as u64);
                // Texts become keys through the tokenizer: a BOS put first changes every key.
                // (Only hashed when present, so earlier fingerprints stay valid.)
                if bos_first {
                    h.str("bos-first");
                }
                for (id, th) in tensor_hashes
                    .iter()
                    .filter(|(id, _)| determines_keys_of(*id, l))
                {
                    h.str(&id.to_string());
                    h.u64(*th);
                }
                h.finish()
            })
            .collect())
    }

    /// The fingerprint of the weights that determine the MLP keys of `layer`.
    pub fn key_fingerprint(&self, layer: usize) -> Result<u64> {
        Ok(self.key_fingerprints(&[layer])?[0])
    }

    /// The fingerprint of every weight and the configuration: what a whole forward pass
    /// depends on.
    pub fn fingerprint(&self) -> Result<u64> {
        let mut h = Fast64::new();
        h.str(&serde_json::to_string(&self.config).expect("configs always serialise"));
        for (id, t) in self.params.iter() {
            h.str(&id.to_string());
            h.u64(tensor_hash(t)?);
        }
        Ok(h.finish())
    }

    /// The fingerprint of the embeddings (token and learned position tables): what the
    /// `embed` site depends on.
    pub fn embedding_fingerprint(&self) -> Result<u64> {
        let mut h = Fast64::new();
        for id in [ParamId::TokenEmbed, ParamId::PositionEmbed] {
            if let Some(t) = self.params.get(id) {
                h.str(&id.to_string());
                h.u64(tensor_hash(t)?);
            }
        }
        Ok(h.finish())
    }
}
