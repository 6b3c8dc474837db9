//! A running sum of k kᵀ over key vectors: the uncentred second moment before division.
//!
//! Only the lower triangle is accumulated (faer's triangular product, a `syrk`): the sum is
//! symmetric, and computing half of it halves the cost that statistics add to the forward
//! pass — which is what makes several layers in one pass nearly as cheap as one.

use std::fmt;
use std::str::FromStr;

use candle_core::{Device, Tensor};
use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The float type the sum is accumulated in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// ROME's and EasyEdit's default (`mom2_dtype: float32`).
    #[default]
    F32,
    F64,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F64 => "f64",
        })
    }
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(Precision::F32),
            "f64" | "float64" => Ok(Precision::F64),
            other => Err(Error::config(format!(
                "unknown precision `{other}` (expected f32 or f64)"
            ))),
        }
    }
}

enum Lower {
    F32(Mat<f32>),
    F64(Mat<f64>),
}

/// Σ k kᵀ (lower triangle) and the number of vectors summed.
pub struct MomentSum {
    lower: Lower,
    pub n_tokens: u64,
}

impl MomentSum {
    pub fn zeros(width: usize, precision: Precision) -> Self {
        let lower = match precision {
            Precision::F32 => Lower::F32(Mat::zeros(width, width)),
            Precision::F64 => Lower::F64(Mat::zeros(width, width)),
        };
        MomentSum { lower, n_tokens: 0 }
    }

    pub fn width(&self) -> usize {
        match &self.lower {
            Lower::F32(m) => m.nrows(),
            Lower::F64(m) => m.nrows(),
        }
    }

    pub fn precision(&self) -> Precision {
        match self.lower {
            Lower::F32(_) => Precision::F32,
            Lower::F64(_) => Precision::F64,
        }
    }

    /// Adds the `n` row vectors of `rows` (row-major `[n, width]`).
    pub fn add_rows(&mut self, rows: &[f32]) -> Result<()> {
        let width = self.width();
        if rows.len() % width != 0 {
            return Err(Error::invalid(format!(
                "{} values are not whole rows of width {width}",
                rows.len()
            )));
        }
        let n = rows.len() / width;
        if n == 0 {
            return Ok(());
        }
        match &mut self.lower {
            Lower::F32(sum) => syrk_add(sum, MatRef::from_row_major_slice(rows, n, width), 1.0),
            Lower::F64(sum) => {
                let wide: Vec<f64> = rows.iter().map(|&x| x as f64).collect();
                syrk_add(sum, MatRef::from_row_major_slice(&wide, n, width), 1.0)
            }
        }
        self.n_tokens += n as u64;
        Ok(())
    }

    /// The full symmetric sum as a `[width, width]` tensor of the accumulation type.
    pub fn sum_tensor(&self) -> Result<Tensor> {
        let w = self.width();
        let t = match &self.lower {
            Lower::F32(m) => Tensor::from_vec(symmetric(m), (w, w), &Device::Cpu)?,
            Lower::F64(m) => Tensor::from_vec(symmetric(m), (w, w), &Device::Cpu)?,
        };
        Ok(t)
    }

    /// E[k kᵀ] = sum / n_tokens.
    pub fn moment(&self) -> Result<Tensor> {
        if self.n_tokens == 0 {
            return Err(Error::invalid(
                "no key vectors were summed: the corpus gave no tokens",
            ));
        }
        Ok((self.sum_tensor()? / self.n_tokens as f64)?)
    }

    /// Rebuilds a sum saved with `sum_tensor` (a checkpoint).
    pub fn from_sum_tensor(sum: &Tensor, n_tokens: u64, precision: Precision) -> Result<Self> {
        let (w, w2) = sum.dims2()?;
        if w != w2 {
            return Err(Error::invalid(format!(
                "a moment sum must be square; got [{w}, {w2}]"
            )));
        }
        let lower = match precision {
            Precision::F32 => {
                let v = sum
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                Lower::F32(Mat::from_fn(w, w, |i, j| v[i * w + j]))
            }
            Precision::F64 => {
                let v = sum
                    .to_dtype(candle_core::DType::F64)?
                    .flatten_all()?
                    .to_vec1::<f64>()?;
                Lower::F64(Mat::from_fn(w, w, |i, j| v[i * w + j]))
            }
        };
        Ok(MomentSum { lower, n_tokens })
    }
}

/// sum(lower) += Kᵀ K.
fn syrk_add<T: faer::traits::ComplexField>(sum: &mut Mat<T>, k: MatRef<'_, T>, one: T) {
    matmul(
        sum.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Add,
        k.transpose(),
        BlockStructure::Rectangular,
        k,
        BlockStructure::Rectangular,
        one,
        Par::rayon(0),
    );
}

/// Row-major values of the symmetric matrix whose lower triangle is `m`.
fn symmetric<T: Copy>(m: &Mat<T>) -> Vec<T> {
    let w = m.nrows();
    let mut out = Vec::with_capacity(w * w);
    for i in 0..w {
        for j in 0..w {
            out.push(if j <= i { m[(i, j)] } else { m[(j, i)] });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_explicit_kt_k_and_resumes_from_its_sum() {
        let rows: Vec<f32> = (0..5 * 3).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        for precision in [Precision::F32, Precision::F64] {
            let mut m = MomentSum::zeros(3, precision);
            m.add_rows(&rows[..6]).unwrap();
            let saved = m.sum_tensor().unwrap();
            let mut resumed = MomentSum::from_sum_tensor(&saved, m.n_tokens, precision).unwrap();
            resumed.add_rows(&rows[6..]).unwrap();
            let got = resumed
                .moment()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec2::<f64>()
                .unwrap();
            for i in 0..3 {
                for j in 0..3 {
                    let want: f64 = (0..5)
                        .map(|r| rows[r * 3 + i] as f64 * rows[r * 3 + j] as f64)
                        .sum::<f64>()
                        / 5.0;
                    assert!((got[i][j] - want).abs() < 1e-5, "{precision} ({i},{j})");
                }
            }
        }
        assert!(MomentSum::zeros(3, Precision::F32)
            .add_rows(&[1.0])
            .is_err());
        assert!(MomentSum::zeros(3, Precision::F32).moment().is_err());
    }
}
