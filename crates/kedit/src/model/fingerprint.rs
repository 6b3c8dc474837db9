//! Content fingerprints of weights, for cache keys: an edited model must never be served
//! results cached for another model.

use candle_core::{Storage, Tensor};

use crate::model::{Model, ParamId};

/// A fast 64-bit hash (FxHash-style mixing over 8-byte words); not cryptographic — it
/// only needs to tell different weights apart.
#[derive(Clone, Copy, Debug)]
pub struct Hasher64(u64);

impl Default for Hasher64 {
    fn default() -> Self {
        Hasher64(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher64 {
    pub fn word(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7cc1_b727_220a_95);
    }

    pub fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let mut last = [0u8; 8];
        last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.word(u64::from_le_bytes(last) ^ (b.len() as u64) << 56);
    }

    /// Hashes a tensor's shape and every element's bits.
    pub fn tensor(&mut self, t: &Tensor) {
        for &d in t.dims() {
            self.word(d as u64);
        }
        let (storage, layout) = t.storage_and_layout();
        let contiguous = layout.contiguous_offsets();
        match (&*storage, contiguous) {
            (Storage::Cpu(cpu), Some((start, end))) => match cpu {
                candle_core::CpuStorage::F32(v) => v[start..end].chunks(2).for_each(|p| {
                    let hi = p.get(1).map_or(0, |x| x.to_bits() as u64);
                    self.word((p[0].to_bits() as u64) | hi << 32)
                }),
                candle_core::CpuStorage::F64(v) => {
                    v[start..end].iter().for_each(|x| self.word(x.to_bits()))
                }
                _ => self.other(t),
            },
            _ => self.other(t),
        }
    }

    fn other(&mut self, t: &Tensor) {
        let v = t
            .flatten_all()
            .and_then(|f| f.to_dtype(candle_core::DType::F64))
            .and_then(|f| f.to_vec1::<f64>())
            .unwrap_or_default();
        v.iter().for_each(|x| self.word(x.to_bits()));
    }

    pub fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Model {
    /// A fingerprint of the configuration and every weight.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint_of(|_| true)
    }

    /// A fingerprint of the configuration and the weights `keep` selects.
    pub fn fingerprint_of(&self, keep: impl Fn(ParamId) -> bool) -> u64 {
        let mut h = Hasher64::default();
        h.bytes(self.config.describe().as_bytes());
        for (id, t) in self.params.iter() {
            if keep(*id) {
                h.bytes(id.to_string().as_bytes());
                h.tensor(t);
            }
        }
        h.finish()
    }
}
