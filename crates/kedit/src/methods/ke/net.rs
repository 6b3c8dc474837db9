//! KE's hypernetwork (De Cao et al. 2021, "Editing Factual Knowledge in Language
//! Models"): the edit's condition `c` is encoded to `h`; per edited matrix, feed-forward
//! heads give `α, β ∈ ℝ^{d_model}`, `γ, δ ∈ ℝ^{d_ff}` and a gate `η` from `h`, and the
//! update is `ΔW = −σ(η)·λ_l·(σ(α)γᵀ ⊙ ∇W/‖∇W‖ + σ(β)δᵀ)`. With `∇W = Σₜ gₜ kₜᵀ` the
//! first term is `Σₜ (σ(α)⊙gₜ)(γ⊙kₜ)ᵀ`, so the update stays low-rank (tokens + 1).
//!
//! Two departures from the paper, measured (docs/meta-learning.md): the condition is the
//! mean final-norm hidden state of the model itself over the edit text (prompt + target),
//! not a BiLSTM over its embeddings; and the gradient enters normalised to unit Frobenius
//! norm, with a learned per-layer step `λ_l`, as MEND's normalisation does for its inputs.

use candle_core::{DType, Device, Tensor, Var, D};

use crate::error::{Error, Result};
use crate::methods::meta::moments::Moments;
use crate::methods::meta::{Factors, Hypernet};
use crate::rng::Rng;

pub struct KeNet {
    layers: Vec<usize>,
    d_model: usize,
    d_ff: usize,
    encode_w: Var,
    encode_b: Var,
    heads_w: Vec<Var>,
    heads_b: Vec<Var>,
    edit_lrs: Var,
    /// With `standardise_keys`, running key statistics per layer: the update is built
    /// from standardised keys, as MEND's inputs are.
    keys: Option<Vec<Moments>>,
}

impl KeNet {
    pub fn new(
        layers: &[usize],
        d_model: usize,
        d_ff: usize,
        hidden: usize,
        edit_lr: f64,
        standardise_keys: bool,
        seed: u64,
    ) -> Result<Self> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(seed ^ 0x4b45);
        let bound = (6.0 / (d_model + hidden) as f64).sqrt();
        let w: Vec<f32> = (0..d_model * hidden)
            .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
            .collect();
        let width = 2 * d_model + 2 * d_ff + 1;
        // Heads start at their biases: α, β, δ, η at 0 (gates ½, no shift) and γ at 1, so
        // the first update is a scaled, normalised gradient step.
        let mut bias = vec![0f32; width];
        for b in &mut bias[2 * d_model..2 * d_model + d_ff] {
            *b = 1.0;
        }
        let mut heads_w = Vec::new();
        let mut heads_b = Vec::new();
        for _ in layers {
            heads_w.push(Var::zeros((hidden, width), DType::F32, &dev)?);
            heads_b.push(Var::from_tensor(&Tensor::from_vec(
                bias.clone(),
                width,
                &dev,
            )?)?);
        }
        let lrs = vec![edit_lr as f32; layers.len()];
        Ok(KeNet {
            layers: layers.to_vec(),
            d_model,
            d_ff,
            encode_w: Var::from_tensor(&Tensor::from_vec(w, (d_model, hidden), &dev)?)?,
            encode_b: Var::zeros(hidden, DType::F32, &dev)?,
            heads_w,
            heads_b,
            edit_lrs: Var::from_tensor(&Tensor::from_vec(lrs, layers.len(), &dev)?)?,
            keys: standardise_keys.then(|| layers.iter().map(|_| Moments::new(d_ff)).collect()),
        })
    }
}

fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok((x.neg()?.exp()? + 1.0)?.recip()?)
}

impl Hypernet for KeNet {
    fn kind(&self) -> &'static str {
        "KE"
    }

    fn layers(&self) -> &[usize] {
        &self.layers
    }

    fn vars(&self) -> Vec<(String, Var)> {
        let mut out = vec![
            ("encode.w".to_string(), self.encode_w.clone()),
            ("encode.b".to_string(), self.encode_b.clone()),
        ];
        for (i, (w, b)) in self.heads_w.iter().zip(&self.heads_b).enumerate() {
            out.push((format!("head{i}.w"), w.clone()));
            out.push((format!("head{i}.b"), b.clone()));
        }
        out
    }

    fn lr_vars(&self) -> Vec<(String, Var)> {
        vec![("edit_lrs".into(), self.edit_lrs.clone())]
    }

    fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        let Some(keys) = &self.keys else {
            return Ok(Vec::new());
        };
        keys.iter()
            .enumerate()
            .map(|(i, m)| Ok((format!("key_moments{i}"), m.to_tensor()?)))
            .collect()
    }

    fn set_buffer(&mut self, name: &str, value: &Tensor) -> Result<()> {
        let i = name
            .strip_prefix("key_moments")
            .and_then(|i| i.parse::<usize>().ok());
        match (&mut self.keys, i) {
            (Some(keys), Some(i)) if i < keys.len() => keys[i].set(value),
            _ => Err(Error::invalid(format!("KE has no buffer `{name}`"))),
        }
    }

    fn observe(&mut self, f: &Factors) -> Result<()> {
        if let Some(keys) = &mut self.keys {
            for (m, k) in keys.iter_mut().zip(&f.keys) {
                m.add(&k.to_dtype(DType::F32)?.to_vec2::<f32>()?);
            }
        }
        Ok(())
    }

    fn updates(&self, f: &Factors) -> Result<Vec<(Tensor, Tensor)>> {
        let c = f.condition.to_dtype(DType::F32)?;
        let rms = c.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?;
        if !(rms.is_finite() && rms > 0.0) {
            return Err(Error::EditRefused(
                "the edit's condition is degenerate".into(),
            ));
        }
        let c = (c / f64::from(rms))?.unsqueeze(0)?;
        let h = c
            .matmul(self.encode_w.as_tensor())?
            .broadcast_add(self.encode_b.as_tensor())?
            .tanh()?;
        let (d, dff) = (self.d_model, self.d_ff);
        let mut out = Vec::with_capacity(self.layers.len());
        for i in 0..self.layers.len() {
            let o = h
                .matmul(self.heads_w[i].as_tensor())?
                .broadcast_add(self.heads_b[i].as_tensor())?
                .squeeze(0)?;
            let alpha = sigmoid(&o.narrow(0, 0, d)?)?;
            let beta = sigmoid(&o.narrow(0, d, d)?)?;
            let gamma = o.narrow(0, 2 * d, dff)?;
            let delta = o.narrow(0, 2 * d + dff, dff)?;
            let gate = sigmoid(&o.narrow(0, 2 * d + 2 * dff, 1)?)?;
            let g = f.grads[i].to_dtype(DType::F32)?;
            let k = f.keys[i].to_dtype(DType::F32)?;
            let k = match &self.keys {
                Some(m) => m[i].standardise(&k)?,
                None => k,
            };
            // ‖Σₜ gₜkₜᵀ‖_F² = Σ (G Gᵀ ⊙ K Kᵀ).
            let sq = (g.matmul(&g.t()?)? * k.matmul(&k.t()?)?)?
                .sum_all()?
                .to_scalar::<f32>()?;
            if !(sq.is_finite() && sq > 0.0) {
                return Err(Error::EditRefused(
                    "the edit's loss has no gradient at the edited layers".into(),
                ));
            }
            let lr = self.edit_lrs.as_tensor().narrow(0, i, 1)?;
            let scale = (gate * lr)?.neg()?; // [1]
            let a = g.broadcast_mul(&alpha.unsqueeze(0)?)?; // [n, d]
            let b = k.broadcast_mul(&gamma.unsqueeze(0)?)?; // [n, d_ff]
            let a = (a / f64::from(sq.sqrt()))?;
            let u =
                Tensor::cat(&[&a.t()?, &beta.unsqueeze(1)?], D::Minus1)?.broadcast_mul(&scale)?;
            let v = Tensor::cat(&[&b.t()?, &delta.unsqueeze(1)?], D::Minus1)?;
            out.push((u, v));
        }
        Ok(out)
    }
}
