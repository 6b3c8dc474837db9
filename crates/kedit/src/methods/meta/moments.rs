//! Running per-column mean and variance of the vectors a meta-learned editor reads (keys,
//! output gradients), gathered while it trains and frozen when it edits.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Running mean and variance (Chan's merge of batch moments), in f64.
#[derive(Clone, Debug)]
pub struct Moments {
    count: f64,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl Moments {
    pub fn new(dim: usize) -> Self {
        Moments {
            count: 0.0,
            mean: vec![0.0; dim],
            m2: vec![0.0; dim],
        }
    }

    pub fn add(&mut self, rows: &[Vec<f32>]) {
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

    pub fn std(&self) -> Vec<f64> {
        if self.count < 2.0 {
            return vec![1.0; self.mean.len()];
        }
        self.m2
            .iter()
            .map(|s| (s / (self.count - 1.0)).sqrt())
            .collect()
    }

    /// `[count, mean…, m2…]`
    pub fn to_tensor(&self) -> Result<Tensor> {
        let mut v = vec![self.count];
        v.extend(&self.mean);
        v.extend(&self.m2);
        let n = v.len();
        Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
    }

    pub fn set(&mut self, t: &Tensor) -> Result<()> {
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

    /// `(x − mean) / (std + 1e-7)` per column of `x: [n, width]`.
    pub fn standardise(&self, x: &Tensor) -> Result<Tensor> {
        let dev = x.device();
        let mean: Vec<f32> = self.mean.iter().map(|&v| v as f32).collect();
        let inv: Vec<f32> = self
            .std()
            .iter()
            .map(|&s| (1.0 / (s + 1e-7)) as f32)
            .collect();
        let n = mean.len();
        let mean = Tensor::from_vec(mean, n, dev)?;
        let inv = Tensor::from_vec(inv, n, dev)?;
        Ok(x.broadcast_sub(&mean)?.broadcast_mul(&inv)?)
    }
}
