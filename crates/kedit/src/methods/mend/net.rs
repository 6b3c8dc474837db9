//! MEND's gradient editor (Mitchell et al. 2022): each layer's key `k` and output
//! gradient `δ` are standardised by running statistics, concatenated and passed through
//! one low-rank MLP shared by the edited layers (identity at initialisation, each layer
//! with its own scale and shift of the input), split back into `k̃`, `δ̃`; the layer's
//! update is `ΔW = −η_l Σₜ δ̃ₜ k̃ₜᵀ` with `η_l` a learned step size.

use candle_core::{DType, Device, Tensor, Var};

use crate::error::{Error, Result};
use crate::methods::meta::moments::Moments;
use crate::methods::meta::{Factors, Hypernet};
use crate::rng::Rng;

/// `x ↦ act(U·V·x' + b) + x'` with `x' = x ⊙ (1 + scale_mode) + shift_mode`; `U` starts at
/// zero, so the layer starts as the identity.
struct LowRankLinear {
    u: Var,
    v: Var,
    bias: Var,
    scale: Var,
    shift: Var,
    relu: bool,
}

impl LowRankLinear {
    fn new(dim: usize, rank: usize, modes: usize, relu: bool, rng: &mut Rng) -> Result<Self> {
        let dev = Device::Cpu;
        // Xavier-uniform V, as MEND initialises it.
        let bound = (6.0 / (dim + rank) as f64).sqrt();
        let v: Vec<f32> = (0..rank * dim)
            .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
            .collect();
        Ok(LowRankLinear {
            u: Var::zeros((dim, rank), DType::F32, &dev)?,
            v: Var::from_tensor(&Tensor::from_vec(v, (rank, dim), &dev)?)?,
            bias: Var::zeros(dim, DType::F32, &dev)?,
            scale: Var::zeros((modes, dim), DType::F32, &dev)?,
            shift: Var::zeros((modes, dim), DType::F32, &dev)?,
            relu,
        })
    }

    fn forward(&self, x: &Tensor, mode: usize) -> Result<Tensor> {
        let scale = (self.scale.as_tensor().get(mode)? + 1.0)?;
        let shift = self.shift.as_tensor().get(mode)?;
        let x = x.broadcast_mul(&scale)?.broadcast_add(&shift)?;
        let pre = x
            .matmul(&self.v.as_tensor().t()?)?
            .matmul(&self.u.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())?;
        let act = if self.relu { pre.relu()? } else { pre };
        Ok((act + x)?)
    }

    fn named(&self, prefix: &str) -> Vec<(String, Var)> {
        [
            ("u", &self.u),
            ("v", &self.v),
            ("bias", &self.bias),
            ("mode_scale", &self.scale),
            ("mode_shift", &self.shift),
        ]
        .into_iter()
        .map(|(n, v)| (format!("{prefix}.{n}"), v.clone()))
        .collect()
    }
}

pub struct MendNet {
    layers: Vec<usize>,
    d_ff: usize,
    mlp: Vec<LowRankLinear>,
    edit_lrs: Var,
    keys: Vec<Moments>,
    grads: Vec<Moments>,
}

impl MendNet {
    /// A fresh editor for `layers` of a model with widths `d_model`, `d_ff`.
    pub fn new(
        layers: &[usize],
        d_model: usize,
        d_ff: usize,
        rank: usize,
        n_hidden: usize,
        edit_lr: f64,
        seed: u64,
    ) -> Result<Self> {
        let dim = d_model + d_ff;
        let mut rng = Rng::new(seed ^ 0x4d45_4e44);
        let mlp = (0..=n_hidden)
            .map(|i| LowRankLinear::new(dim, rank, layers.len(), i < n_hidden, &mut rng))
            .collect::<Result<_>>()?;
        let lrs = vec![edit_lr as f32; layers.len()];
        Ok(MendNet {
            layers: layers.to_vec(),
            d_ff,
            mlp,
            edit_lrs: Var::from_tensor(&Tensor::from_vec(lrs, layers.len(), &Device::Cpu)?)?,
            keys: layers.iter().map(|_| Moments::new(d_ff)).collect(),
            grads: layers.iter().map(|_| Moments::new(d_model)).collect(),
        })
    }
}

/// The rows of `t: [n, w]` whose gradient row is not all zero (MEND skips tokens the loss
/// does not reach).
fn reached_rows(keys: &Tensor, grads: &Tensor) -> Result<(Tensor, Tensor)> {
    let norms = grads.sqr()?.sum(1)?.to_vec1::<f32>()?;
    let keep: Vec<u32> = norms
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0.0)
        .map(|(i, _)| i as u32)
        .collect();
    if keep.len() == norms.len() {
        return Ok((keys.clone(), grads.clone()));
    }
    if keep.is_empty() {
        return Err(Error::EditRefused(
            "the edit's loss has no gradient at the edited layers".into(),
        ));
    }
    let idx = Tensor::new(keep.as_slice(), keys.device())?;
    Ok((keys.index_select(&idx, 0)?, grads.index_select(&idx, 0)?))
}

impl Hypernet for MendNet {
    fn kind(&self) -> &'static str {
        "MEND"
    }

    fn layers(&self) -> &[usize] {
        &self.layers
    }

    fn vars(&self) -> Vec<(String, Var)> {
        self.mlp
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.named(&format!("mlp{i}")))
            .collect()
    }

    fn lr_vars(&self) -> Vec<(String, Var)> {
        vec![("edit_lrs".into(), self.edit_lrs.clone())]
    }

    fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (i, (k, g)) in self.keys.iter().zip(&self.grads).enumerate() {
            out.push((format!("key_moments{i}"), k.to_tensor()?));
            out.push((format!("grad_moments{i}"), g.to_tensor()?));
        }
        Ok(out)
    }

    fn set_buffer(&mut self, name: &str, value: &Tensor) -> Result<()> {
        let parse = |p: &str| name.strip_prefix(p).and_then(|i| i.parse::<usize>().ok());
        match (parse("key_moments"), parse("grad_moments")) {
            (Some(i), _) if i < self.keys.len() => self.keys[i].set(value),
            (_, Some(i)) if i < self.grads.len() => self.grads[i].set(value),
            _ => Err(Error::invalid(format!("MEND has no buffer `{name}`"))),
        }
    }

    fn observe(&mut self, f: &Factors) -> Result<()> {
        for i in 0..self.layers.len() {
            let (k, g) = reached_rows(&f.keys[i], &f.grads[i])?;
            self.keys[i].add(&k.to_dtype(DType::F32)?.to_vec2::<f32>()?);
            self.grads[i].add(&g.to_dtype(DType::F32)?.to_vec2::<f32>()?);
        }
        Ok(())
    }

    fn updates(&self, f: &Factors) -> Result<Vec<(Tensor, Tensor)>> {
        let mut out = Vec::with_capacity(self.layers.len());
        for i in 0..self.layers.len() {
            let (k, g) = reached_rows(&f.keys[i], &f.grads[i])?;
            let k = self.keys[i].standardise(&k.to_dtype(DType::F32)?)?;
            let g = self.grads[i].standardise(&g.to_dtype(DType::F32)?)?;
            let mut x = Tensor::cat(&[&k, &g], 1)?;
            for layer in &self.mlp {
                x = layer.forward(&x, i)?;
            }
            let k_t = x.narrow(1, 0, self.d_ff)?;
            let g_t = x.narrow(1, self.d_ff, x.dim(1)? - self.d_ff)?;
            let lr = self.edit_lrs.as_tensor().get(i)?;
            // ΔW = −η δ̃ᵀ k̃: u = −η δ̃ᵀ [d_model, n], v = k̃ᵀ [d_ff, n].
            let u = g_t.t()?.broadcast_mul(&lr.neg()?)?;
            out.push((u, k_t.t()?));
        }
        Ok(out)
    }
}
