//! MEND's gradient editor (Mitchell et al. 2022): each layer's key `k` and output
//! gradient `δ` are standardised by running statistics, concatenated and passed through
//! one low-rank MLP shared by the edited layers (identity at initialisation, each layer
//! with its own scale and shift of the input), split back into `k̃`, `δ̃`; the layer's
//! update is `ΔW = −η_l Σₜ δ̃ₜ k̃ₜᵀ` with `η_l` a learned step size.

use candle_core::{DType, Device, Tensor, Var};

use crate::error::{Error, Result};
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

/// Running mean and variance (Chan's merge of batch moments), in f64.
#[derive(Clone, Debug)]
struct Moments {
    count: f64,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl Moments {
    fn new(dim: usize) -> Self {
        Moments {
            count: 0.0,
            mean: vec![0.0; dim],
            m2: vec![0.0; dim],
        }
    }

    fn add(&mut self, rows: &[Vec<f32>]) {
        let nb = rows.len() as f64;
        if nb == 0.0 {
            return;
        }
        let dim = self.mean.len();
        let mut mean_b = vec![0.0; dim];
        for r in rows {
            for (m, &x) in mean_b.iter_mut().zip(r) {
                *m += f64::from(x) / nb;
            }
        }
        let mut m2_b = vec![0.0; dim];
        for r in rows {
            for ((s, &x), m) in m2_b.iter_mut().zip(r).zip(&mean_b) {
                *s += (f64::from(x) - m).powi(2);
            }
        }
        let na = self.count;
        let n = na + nb;
        for i in 0..dim {
            let d = mean_b[i] - self.mean[i];
            self.mean[i] += d * nb / n;
            self.m2[i] += m2_b[i] + d * d * na * nb / n;
        }
        self.count = n;
    }

    fn std(&self) -> Vec<f64> {
        if self.count < 2.0 {
            return vec![1.0; self.mean.len()];
        }
        self.m2
            .iter()
            .map(|s| (s / (self.count - 1.0)).sqrt())
            .collect()
    }

    /// `[count, mean…, m2…]`
    fn to_tensor(&self) -> Result<Tensor> {
        let mut v = vec![self.count];
        v.extend(&self.mean);
        v.extend(&self.m2);
        let n = v.len();
        Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
    }

    fn set(&mut self, t: &Tensor) -> Result<()> {
        let v = t.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let dim = self.mean.len();
        if v.len() != 1 + 2 * dim {
            return Err(Error::invalid(format!(
                "statistics of {} values for a width of {dim}",
                v.len()
            )));
        }
        self.count = v[0];
        self.mean = v[1..1 + dim].to_vec();
        self.m2 = v[1 + dim..].to_vec();
        Ok(())
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

fn standardised(x: &Tensor, m: &Moments) -> Result<Tensor> {
    let dev = x.device();
    let mean: Vec<f32> = m.mean.iter().map(|&v| v as f32).collect();
    let inv: Vec<f32> = m.std().iter().map(|&s| (1.0 / (s + 1e-7)) as f32).collect();
    let n = mean.len();
    let mean = Tensor::from_vec(mean, n, dev)?;
    let inv = Tensor::from_vec(inv, n, dev)?;
    Ok(x.broadcast_sub(&mean)?.broadcast_mul(&inv)?)
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
            let k = standardised(&k.to_dtype(DType::F32)?, &self.keys[i])?;
            let g = standardised(&g.to_dtype(DType::F32)?, &self.grads[i])?;
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
