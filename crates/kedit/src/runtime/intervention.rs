//! Interventions are values: a site, the (row, index) entries they touch and what to do
//! there. No callbacks, no hidden state — the same intervention applied twice does the
//! same thing, and a list of them can be stored, compared and sent elsewhere.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::config::Activation;
use crate::rng::Rng;
use crate::runtime::ops::host_tensor;
use crate::runtime::side_memory::{Routes, SideWeight};
use crate::runtime::sites::Site;

#[derive(Clone, Debug)]
pub enum Action {
    /// Write these values: `[n, width]` (one row per entry) or `[width]` (the same for all).
    Replace(Tensor),
    /// Add these values, shaped as for `Replace`. A `Var` here receives gradients.
    Add(Tensor),
    /// Add Gaussian noise of standard deviation `std`, drawn from `seed`: entry `i`,
    /// dimension `j` always receives the same draw.
    Noise { std: f64, seed: u64 },
    /// A codebook (GRACE): at each listed entry whose hidden state lies within `radii[k]`
    /// (Euclidean) of key `k` of `keys: [n, width]`, write `values[k]` (`[n, width]`); the
    /// nearest such key wins, and an entry near no key is left as it is.
    Codebook {
        keys: Tensor,
        values: Tensor,
        radii: Vec<f64>,
    },
    /// Side memories (WISE) of the MLP output projection, at an `MlpOut` site: each row of
    /// the batch is answered by the memory it activates most over its threshold, or by the
    /// main weight ([`crate::runtime::side_memory::route`]). Acts on whole rows; `at` is
    /// not read.
    SideMemory {
        memories: Vec<SideWeight>,
        activation: Activation,
        /// Routes decided by an earlier pass (one per row), used instead of deciding here.
        forced: Option<Routes>,
    },
}

#[derive(Clone, Debug)]
pub struct Intervention {
    pub site: Site,
    /// `(row, index)` pairs, indices within the padded chunk being run.
    pub at: Vec<(usize, usize)>,
    pub action: Action,
}

impl Intervention {
    pub fn replace(site: Site, at: Vec<(usize, usize)>, values: Tensor) -> Self {
        Intervention {
            site,
            at,
            action: Action::Replace(values),
        }
    }

    pub fn add(site: Site, at: Vec<(usize, usize)>, values: Tensor) -> Self {
        Intervention {
            site,
            at,
            action: Action::Add(values),
        }
    }

    pub fn noise(site: Site, at: Vec<(usize, usize)>, std: f64, seed: u64) -> Self {
        Intervention {
            site,
            at,
            action: Action::Noise { std, seed },
        }
    }

    pub fn codebook(
        site: Site,
        at: Vec<(usize, usize)>,
        keys: Tensor,
        values: Tensor,
        radii: Vec<f64>,
    ) -> Self {
        Intervention {
            site,
            at,
            action: Action::Codebook {
                keys,
                values,
                radii,
            },
        }
    }

    /// Side memories at the output projection of `layer`'s MLP, for every row.
    pub fn side_memory(layer: usize, memories: Vec<SideWeight>, activation: Activation) -> Self {
        Intervention {
            site: Site::MlpOut(layer),
            at: Vec::new(),
            action: Action::SideMemory {
                memories,
                activation,
                forced: None,
            },
        }
    }

    /// Applies the intervention to a site's tensor `h` of shape `[rows, len, width]`.
    pub(crate) fn apply(&self, h: &Tensor) -> Result<Tensor> {
        let (rows, len, width) = h.dims3()?;
        if let Action::SideMemory { .. } = self.action {
            return Err(Error::invalid(format!(
                "side memories act at an MLP output site with the MLP's key; `{}` is not one",
                self.site
            )));
        }
        let n = self.at.len();
        if n == 0 {
            return Ok(h.clone());
        }
        if let Action::Codebook {
            keys,
            values,
            radii,
        } = &self.action
        {
            return self.lookup(h, keys, values, radii)?.apply(h);
        }
        let mut seen = std::collections::HashSet::new();
        for &(b, t) in &self.at {
            if b >= rows || t >= len {
                return Err(Error::invalid(format!(
                    "intervention at `{}`: entry ({b}, {t}) is outside the batch [{rows}, {len}]",
                    self.site
                )));
            }
            if !seen.insert((b, t)) {
                return Err(Error::invalid(format!(
                    "intervention at `{}`: entry ({b}, {t}) is listed twice",
                    self.site
                )));
            }
        }
        let dtype = h.dtype();
        let device = h.device();
        let values = match &self.action {
            Action::Replace(v) | Action::Add(v) => self.expand(v, n, width)?,
            Action::Codebook { .. } | Action::SideMemory { .. } => {
                unreachable!("resolved above")
            }
            Action::Noise { std, seed } => {
                let mut rng = Rng::new(*seed);
                let noise: Vec<f32> = (0..n * width)
                    .map(|_| (rng.normal() * std) as f32)
                    .collect();
                host_tensor(noise, (n, width), dtype, device)?
            }
        };
        let values = values.to_dtype(dtype)?;
        let select = selection(&self.at, rows, len, dtype, device)?;
        let flat = h.reshape((rows * len, width))?;
        let placed = select.matmul(&values)?;
        let out = match self.action {
            Action::Replace(_) => {
                let mut keep = vec![1f32; rows * len];
                for &(b, t) in &self.at {
                    keep[b * len + t] = 0.0;
                }
                let keep = host_tensor(keep, (rows * len, 1), dtype, device)?;
                (flat.broadcast_mul(&keep)? + placed)?
            }
            Action::Add(_)
            | Action::Noise { .. }
            | Action::Codebook { .. }
            | Action::SideMemory { .. } => (flat + placed)?,
        };
        Ok(out.reshape((rows, len, width))?)
    }

    /// The replacement a codebook makes on `h`: the entries that fall within a key's radius,
    /// each with its nearest such key's value.
    fn lookup(
        &self,
        h: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        radii: &[f64],
    ) -> Result<Intervention> {
        let (_, len, width) = h.dims3()?;
        let n_keys = radii.len();
        if keys.dims() != [n_keys, width] || values.dims() != [n_keys, width] {
            return Err(Error::invalid(format!(
                "codebook at `{}`: {n_keys} radii, keys {:?} and values {:?} do not agree \
                 with the site's width {width}",
                self.site,
                keys.dims(),
                values.dims()
            )));
        }
        let flat_keys = keys.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let index: Vec<u32> = self.at.iter().map(|&(b, t)| (b * len + t) as u32).collect();
        let index = Tensor::from_vec(index, self.at.len(), h.device())?;
        let states = h
            .reshape(((), width))?
            .index_select(&index, 0)?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        let mut at = Vec::new();
        let mut chosen = Vec::new();
        for (&entry, state) in self.at.iter().zip(&states) {
            let nearest = flat_keys
                .iter()
                .zip(radii)
                .enumerate()
                .map(|(k, (key, r))| {
                    let d = key
                        .iter()
                        .zip(state)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f64>()
                        .sqrt();
                    (k, d, *r)
                })
                .filter(|(_, d, r)| d <= r)
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((k, _, _)) = nearest {
                at.push(entry);
                chosen.push(k as u32);
            }
        }
        let picked = if chosen.is_empty() {
            values.narrow(0, 0, 0)?
        } else {
            let idx = Tensor::from_vec(chosen.clone(), chosen.len(), values.device())?;
            values.index_select(&idx, 0)?
        };
        Ok(Intervention::replace(self.site, at, picked))
    }

    fn expand(&self, v: &Tensor, n: usize, width: usize) -> Result<Tensor> {
        match v.dims() {
            [w] if *w == width => Ok(v.unsqueeze(0)?.broadcast_as((n, width))?),
            [m, w] if *m == n && *w == width => Ok(v.clone()),
            other => Err(Error::invalid(format!(
                "intervention at `{}`: values of shape {other:?} do not fit {n} entries of width {width}",
                self.site
            ))),
        }
    }
}

/// `[rows·len, n]` one-hot matrix placing value row `i` at entry `at[i]`: a matmul keeps the
/// placement differentiable with respect to the values.
fn selection(
    at: &[(usize, usize)],
    rows: usize,
    len: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let n = at.len();
    let mut s = vec![0f32; rows * len * n];
    for (i, &(b, t)) in at.iter().enumerate() {
        s[(b * len + t) * n + i] = 1.0;
    }
    host_tensor(s, (rows * len, n), dtype, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> Tensor {
        Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 2))
            .unwrap()
    }

    #[test]
    fn replace_add_and_noise_touch_only_their_entries() {
        let v = Tensor::new(&[100f32, 200.0], &Device::Cpu).unwrap();
        let r = Intervention::replace(Site::Embed, vec![(1, 2)], v.clone())
            .apply(&h())
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert_eq!(r[1][2], vec![100.0, 200.0]);
        assert_eq!(r[0][0], vec![0.0, 1.0]);
        let a = Intervention::add(Site::Embed, vec![(0, 1), (1, 0)], v)
            .apply(&h())
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert_eq!(a[0][1], vec![102.0, 203.0]);
        assert_eq!(a[1][0], vec![106.0, 207.0]);
        assert_eq!(a[1][1], vec![8.0, 9.0]);
        let n1 = Intervention::noise(Site::Embed, vec![(0, 0)], 3.0, 9)
            .apply(&h())
            .unwrap();
        let n2 = Intervention::noise(Site::Embed, vec![(0, 0)], 3.0, 9)
            .apply(&h())
            .unwrap();
        let (n1, n2) = (n1.to_vec3::<f32>().unwrap(), n2.to_vec3::<f32>().unwrap());
        assert_eq!(n1, n2);
        assert_ne!(n1[0][0], vec![0.0, 1.0]);
        assert_eq!(n1[0][1], vec![2.0, 3.0]);
    }

    #[test]
    fn out_of_range_or_duplicate_entries_are_errors() {
        let v = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        assert!(Intervention::add(Site::Embed, vec![(2, 0)], v.clone())
            .apply(&h())
            .is_err());
        assert!(
            Intervention::add(Site::Embed, vec![(0, 0), (0, 0)], v.clone())
                .apply(&h())
                .is_err()
        );
        let wrong = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        assert!(Intervention::add(Site::Embed, vec![(0, 0)], wrong)
            .apply(&h())
            .is_err());
    }
}
