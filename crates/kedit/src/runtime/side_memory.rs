//! Side memories (WISE): copies of one MLP output projection, held as differences from
//! the main weight, each answering only the inputs that activate it.
//!
//! A side memory `W + Δ` answers an input row when the row's *activation distance*
//! — the mean over its tokens of ‖act(h_side) − act(h_main)‖, with `act` the model's MLP
//! activation and `h` the projection's output — exceeds the memory's threshold. Of several
//! memories over their thresholds the most activated answers; a row none answers keeps the
//! main output, bit for bit.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::model::config::Activation;
use crate::runtime::ops;
use crate::runtime::TokenBatch;

/// One side memory as the forward pass applies it.
#[derive(Clone, Debug)]
pub struct SideWeight {
    /// `Δ = W_side − W_main`, shaped as the projection's weight: `[out, in]`.
    pub delta: Tensor,
    /// The activation distance a row must exceed to be answered by this memory.
    pub threshold: f64,
}

/// The tokens whose distances route a row: its real tokens but a sequence's first. With no
/// BOS token (SmolLM2) the first token is the attention sink, whose MLP activations are
/// tens of times larger than any other's and differ from text to text: averaged in, it
/// decides the route by how the text begins, not by what it asks. (With a BOS token it
/// is the same for every input and says nothing either.)
pub fn routed_tokens(batch: &TokenBatch) -> Vec<bool> {
    batch
        .valid
        .iter()
        .zip(&batch.positions)
        .map(|(&v, &p)| v && p > 0)
        .collect()
}

/// The part of the projection's output a side memory changes: `key · Δᵀ`, `[rows, len, out]`
/// for a key `[rows, len, in]`. Differentiable in `delta`.
pub fn side_change(key: &Tensor, delta: &Tensor) -> Result<Tensor> {
    let (rows, len, width) = key.dims3()?;
    let out = delta.dim(0)?;
    if delta.dims() != [out, width] {
        return Err(Error::invalid(format!(
            "a side memory of shape {:?} does not fit keys of width {width}",
            delta.dims()
        )));
    }
    let flat = key.reshape((rows * len, width))?;
    let change = flat.matmul(&delta.to_dtype(key.dtype())?.t()?)?;
    Ok(change.reshape((rows, len, out))?)
}

/// The activation distance of each row, `[rows]`: the mean over the row's real tokens
/// (`valid`, `[rows * len]`) of ‖act(main + change) − act(main)‖. Differentiable in
/// `change`; a row without real tokens has distance 0.
pub fn activation_distance(
    main: &Tensor,
    change: &Tensor,
    valid: &[bool],
    act: Activation,
) -> Result<Tensor> {
    let (rows, len, _) = main.dims3()?;
    if valid.len() != rows * len {
        return Err(Error::invalid(format!(
            "{} validity flags for a batch of {rows} × {len}",
            valid.len()
        )));
    }
    let side = (main + change)?;
    let diff = (ops::activation(&side, act)? - ops::activation(main, act)?)?;
    // The small constant keeps the square root's gradient finite where a memory changes
    // nothing (every distance at the first step of an edit).
    let norms = (diff.sqr()?.sum(2)? + 1e-12)?.sqrt()?;
    let mut weights = vec![0f32; rows * len];
    for r in 0..rows {
        let real = valid[r * len..(r + 1) * len].iter().filter(|&&v| v).count();
        for t in 0..len {
            if valid[r * len + t] {
                weights[r * len + t] = 1.0 / real as f32;
            }
        }
    }
    let weights = Tensor::from_vec(weights, (rows, len), main.device())?.to_dtype(main.dtype())?;
    Ok((norms * weights)?.sum(1)?)
}

/// Which memory answers each row: an index into the memories, or `None` for the main
/// weight.
pub type Routes = Vec<Option<usize>>;

/// The projection's output with each row answered by the side memory it activates most
/// (over that memory's threshold), or by the main weight; with the routes taken. `forced`
/// routes rows as an earlier pass decided (generation: the prompt decides, and the tokens
/// generated after it are answered by the same memory).
pub fn route(
    main: &Tensor,
    key: &Tensor,
    valid: &[bool],
    memories: &[SideWeight],
    act: Activation,
    forced: Option<&[Option<usize>]>,
) -> Result<(Tensor, Routes)> {
    let (rows, _, _) = main.dims3()?;
    // Each memory's change to the output, computed once: for the distances, then for the
    // rows it answers.
    let mut changes: Vec<Option<Tensor>> = vec![None; memories.len()];
    let routes: Routes = match forced {
        Some(f) => {
            if f.len() != rows || f.iter().flatten().any(|&m| m >= memories.len()) {
                return Err(Error::invalid(format!(
                    "side-memory routes for {} rows over {} memories do not fit a batch of {rows}",
                    f.len(),
                    memories.len()
                )));
            }
            f.to_vec()
        }
        None => {
            let mut best: Vec<Option<(usize, f64)>> = vec![None; rows];
            for (m, memory) in memories.iter().enumerate() {
                let change = side_change(key, &memory.delta)?;
                let dist = activation_distance(main, &change, valid, act)?
                    .to_dtype(DType::F64)?
                    .to_vec1::<f64>()?;
                for (r, &d) in dist.iter().enumerate() {
                    if d > memory.threshold && best[r].is_none_or(|(_, b)| d > b) {
                        best[r] = Some((m, d));
                    }
                }
                changes[m] = Some(change);
            }
            best.into_iter().map(|b| b.map(|(m, _)| m)).collect()
        }
    };
    let mut out = main.clone();
    for (m, memory) in memories.iter().enumerate() {
        let pick: Vec<f32> = routes
            .iter()
            .map(|r| if *r == Some(m) { 1.0 } else { 0.0 })
            .collect();
        if pick.iter().all(|&p| p == 0.0) {
            continue;
        }
        let change = match changes[m].take() {
            Some(c) => c,
            None => side_change(key, &memory.delta)?,
        };
        let pick = Tensor::from_vec(pick, (rows, 1, 1), main.device())?.to_dtype(main.dtype())?;
        // Rows answered by memory m become `main + change`, computed as the side weight
        // computes them; the others gain exactly zero.
        let side = (main + change)?;
        let keep = (1.0 - &pick)?;
        out = (out.broadcast_mul(&keep)? + side.broadcast_mul(&pick)?)?;
    }
    Ok((out, routes))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn tensor(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn rows_over_a_threshold_take_the_side_output_and_the_others_stay_bit_identical() {
        let (rows, len, width, out) = (3, 4, 5, 6);
        let key = tensor(&[rows, len, width], 1).to_dtype(DType::F32).unwrap();
        let main = tensor(&[rows, len, out], 2).to_dtype(DType::F32).unwrap();
        let delta = tensor(&[out, width], 3).to_dtype(DType::F32).unwrap();
        // Row 1 has one real token, row 2 none.
        let mut valid = vec![true; rows * len];
        for t in 1..len {
            valid[len + t] = false;
        }
        for t in 0..len {
            valid[2 * len + t] = false;
        }
        let change = side_change(&key, &delta).unwrap();
        let dist = activation_distance(&main, &change, &valid, Activation::Silu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(dist[2], 0.0, "a row without real tokens");
        // A threshold between rows 0 and 1 picks one of them.
        let (hi, lo) = if dist[0] > dist[1] { (0, 1) } else { (1, 0) };
        let threshold = f64::from(dist[lo] + dist[hi]) / 2.0;
        let memories = [SideWeight { delta, threshold }];
        let (routed, routes) =
            route(&main, &key, &valid, &memories, Activation::Silu, None).unwrap();
        assert_eq!(routes[hi], Some(0));
        assert_eq!(routes[lo], None);
        let side = (&main + &change).unwrap();
        let bits = |t: &Tensor, r: usize| -> Vec<u32> {
            t.get(r)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        assert_eq!(bits(&routed, hi), bits(&side, hi));
        assert_eq!(bits(&routed, lo), bits(&main, lo));
        assert_eq!(bits(&routed, 2), bits(&main, 2));
        // Forced routes are taken as they are.
        let all = [Some(0); 3];
        let (forced, _) =
            route(&main, &key, &valid, &memories, Activation::Silu, Some(&all)).unwrap();
        assert_eq!(bits(&forced, lo), bits(&side, lo));
    }

    #[test]
    fn the_distance_gradient_matches_central_differences() {
        let key = tensor(&[2, 3, 4], 4);
        let main = tensor(&[2, 3, 5], 5);
        let delta = Var::from_tensor(&(tensor(&[5, 4], 6) * 0.3).unwrap()).unwrap();
        let valid = vec![true, true, false, true, true, true];
        let act = Activation::Silu;
        // A weighted sum of both rows' distances, so each row's gradient counts.
        let f = |d: &Tensor| -> Tensor {
            let dist =
                activation_distance(&main, &side_change(&key, d).unwrap(), &valid, act).unwrap();
            (dist.get(0).unwrap() * 2.0 + dist.get(1).unwrap()).unwrap()
        };
        let grads = f(delta.as_tensor()).backward().unwrap();
        let g = grads
            .get(delta.as_tensor())
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        let base = delta.as_tensor().to_vec2::<f64>().unwrap();
        let h = 1e-6;
        for i in 0..5 {
            for j in 0..4 {
                let at = |eps: f64| {
                    let mut m = base.clone();
                    m[i][j] += eps;
                    let t = Tensor::new(m, &Device::Cpu).unwrap();
                    f(&t).to_scalar::<f64>().unwrap()
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                assert!(
                    (fd - g[i][j]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "({i}, {j}): autograd {} vs differences {fd}",
                    g[i][j]
                );
            }
        }
    }
}
