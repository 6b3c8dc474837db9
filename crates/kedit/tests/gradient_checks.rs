//! Autograd against central finite differences, in f64, for every architecture: the
//! gradient of a loss over several positions with respect to (a) a delta added to an MLP
//! output at one position and (b) the MLP output projection weight.

use crate::common;

use candle_core::{DType, Tensor, Var};
use common::*;
use kedit::rng::Rng;
use kedit::runtime::{Intervention, LogitsAt, Site, TokenBatch, WeightOverrides};
use kedit::{Model, ParamId};

/// Relative error allowed between autograd and finite differences.
const RTOL: f64 = 1e-5;
/// Central-difference step: truncation error ~h², round-off ~1e-16/h; 1e-5 balances them in f64.
const STEP: f64 = 1e-5;

/// A scalar loss: mean NLL of fixed targets at several positions.
struct Objective<'a> {
    model: &'a Model,
    batch: &'a TokenBatch,
    at: Vec<(usize, usize)>,
    targets: Vec<u32>,
}

impl Objective<'_> {
    fn loss(&self, overrides: &WeightOverrides, iv: Option<Intervention>) -> Tensor {
        let out = self
            .model
            .forward(self.batch)
            .weights(overrides)
            .interventions(iv)
            .logits(LogitsAt::Entries(self.at.clone()))
            .run()
            .unwrap();
        mean_nll(out.logits().unwrap(), &self.targets)
    }

    fn value(&self, overrides: &WeightOverrides, iv: Option<Intervention>) -> f64 {
        self.loss(overrides, iv).to_scalar::<f64>().unwrap()
    }

    /// (L(x + h·dir) − L(x − h·dir)) / 2h, where `loss_at(s)` evaluates L(x + s·dir).
    fn central(&self, loss_at: impl Fn(f64) -> f64) -> f64 {
        (loss_at(STEP) - loss_at(-STEP)) / (2.0 * STEP)
    }

    /// Gradient w.r.t. a delta added at `mlp.out` of `layer`, entry `at`: relative error of
    /// autograd against finite differences over the coordinates `coords`.
    fn check_delta(&self, layer: usize, at: (usize, usize), coords: &[usize]) -> f64 {
        let d = self.model.config.d_model;
        let add = |v: Tensor| Intervention::add(Site::MlpOut(layer), vec![at], v);
        let delta = Var::zeros(d, DType::F64, self.model.device()).unwrap();
        let none = WeightOverrides::new();
        let loss = self.loss(&none, Some(add(delta.as_tensor().clone())));
        let grads = loss.backward().unwrap();
        let g = grads
            .get(delta.as_tensor())
            .expect("gradient of the delta")
            .to_vec1::<f64>()
            .unwrap();
        let (mut ad, mut fd) = (Vec::new(), Vec::new());
        for &i in coords {
            let loss_at = |s: f64| {
                let mut e = vec![0f64; d];
                e[i] = s;
                let v = Tensor::from_vec(e, d, self.model.device()).unwrap();
                self.value(&none, Some(add(v)))
            };
            ad.push(g[i]);
            fd.push(self.central(loss_at));
        }
        relative_error(&ad, &fd)
    }

    /// Gradient w.r.t. `blocks.{layer}.mlp.out_proj.weight`: relative errors over `n`
    /// random entries and along one random direction.
    fn check_weight(&self, layer: usize, n: usize, rng: &mut Rng) -> (f64, f64) {
        let id = ParamId::mlp_out(layer);
        let w0 = self.model.params.require(id).unwrap().clone();
        let (rows, cols) = w0.dims2().unwrap();
        let flat = w0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let w = Var::from_tensor(&w0).unwrap();
        let loss = self.loss(&WeightOverrides::from([(id, w.as_tensor().clone())]), None);
        let grads = loss.backward().unwrap();
        let g = grads
            .get(w.as_tensor())
            .expect("gradient of the weight")
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        // L(W + s·D) for a direction D given densely.
        let along = |dir: &[f64], s: f64| {
            let moved: Vec<f64> = flat.iter().zip(dir).map(|(x, d)| x + s * d).collect();
            let t = Tensor::from_vec(moved, (rows, cols), self.model.device()).unwrap();
            self.value(&WeightOverrides::from([(id, t)]), None)
        };
        let (mut ad, mut fd) = (Vec::new(), Vec::new());
        let mut picked = std::collections::BTreeSet::new();
        while picked.len() < n.min(flat.len()) {
            picked.insert((rng.next_u64() % flat.len() as u64) as usize);
        }
        for &k in &picked {
            let mut dir = vec![0f64; flat.len()];
            dir[k] = 1.0;
            ad.push(g[k]);
            fd.push(self.central(|s| along(&dir, s)));
        }
        let mut dir: Vec<f64> = (0..flat.len()).map(|_| rng.normal()).collect();
        let norm = dir.iter().map(|x| x * x).sum::<f64>().sqrt();
        dir.iter_mut().for_each(|x| *x /= norm);
        let ad_dir: f64 = g.iter().zip(&dir).map(|(a, b)| a * b).sum();
        let fd_dir = self.central(|s| along(&dir, s));
        (
            relative_error(&ad, &fd),
            relative_error(&[ad_dir], &[fd_dir]),
        )
    }
}

/// ‖a − b‖₂ / ‖b‖₂ (b is the finite-difference estimate); fails loudly when b vanishes,
/// since then the check would say nothing.
fn relative_error(a: &[f64], b: &[f64]) -> f64 {
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let den = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    assert!(
        den > 1e-8,
        "finite-difference gradient is ~0 ({den:e}): nothing checked"
    );
    num / den
}

fn check_tiny(arch: &str) {
    check_tiny_dir(arch, tiny_dir(arch));
}

fn check_tiny_dir(arch: &str, dir: std::path::PathBuf) {
    let model = Model::load(&dir).unwrap().to_dtype(DType::F64).unwrap();
    assert_eq!(model.dtype(), DType::F64);
    let refs = load_tensors(dir.join("reference.safetensors"));
    let inp = tiny_inputs(&refs);
    let obj = Objective {
        model: &model,
        batch: &inp.batch,
        at: inp.target_at.clone(),
        targets: inp.targets.clone(),
    };
    let mut rng = Rng::new(7);
    let all: Vec<usize> = (0..model.config.d_model).collect();
    let mut lines = Vec::new();
    for layer in 0..model.config.n_layers {
        // Row 1 (right-padded), token 3: its change reaches positions 3..7 of that row.
        let e_delta = obj.check_delta(layer, (1, 3), &all);
        let (e_entries, e_dir) = obj.check_weight(layer, 20, &mut rng);
        lines.push(format!(
            "layer {layer}: δ@mlp.out {e_delta:.1e}, W entries {e_entries:.1e}, W direction {e_dir:.1e}"
        ));
        assert!(
            e_delta <= RTOL && e_entries <= RTOL && e_dir <= RTOL,
            "{arch}: {}",
            lines.last().unwrap()
        );
    }
    println!("{arch} (f64, h={STEP:e}): {}", lines.join("; "));
}

#[test]
fn llama_gradients_match_finite_differences() {
    check_tiny("llama");
}

#[test]
fn qwen2_gradients_match_finite_differences() {
    check_tiny("qwen2");
}

#[test]
fn mistral_gradients_match_finite_differences() {
    check_tiny("mistral");
}

#[test]
fn gpt2_gradients_match_finite_differences() {
    check_tiny("gpt2");
}

#[test]
fn gptj_gradients_match_finite_differences() {
    check_tiny("gptj");
}

#[test]
fn gpt_neox_gradients_match_finite_differences() {
    check_tiny("gpt_neox");
}

#[test]
fn gemma3_gradients_match_finite_differences() {
    check_tiny_dir("gemma3", gemma3_tiny_dir());
}

/// The real SmolLM2 in f64: a delta at layer 5's MLP output, a few coordinates.
#[test]
fn smollm2_delta_gradient_matches_finite_differences() {
    let started = std::time::Instant::now();
    let model = smollm2().to_dtype(DType::F64).unwrap();
    let ids = model
        .tokenizer()
        .unwrap()
        .encode("The Eiffel Tower is in")
        .unwrap();
    assert_eq!(ids.len(), 6, "{ids:?}");
    let batch = TokenBatch::single(&ids);
    // Each position from 2 on predicts the next token (and the last one " Paris").
    let paris = model.tokenizer().unwrap().encode(" Paris").unwrap();
    let mut targets = ids[3..].to_vec();
    targets.extend(&paris);
    let obj = Objective {
        model: &model,
        batch: &batch,
        at: (2..6).map(|t| (0, t)).collect(),
        targets,
    };
    let mut rng = Rng::new(3);
    let coords: Vec<usize> = (0..4)
        .map(|_| (rng.next_u64() % model.config.d_model as u64) as usize)
        .collect();
    let e = obj.check_delta(5, (0, 2), &coords);
    println!(
        "smollm2 (f64, h={STEP:e}): δ@blocks.5.mlp.out coords {coords:?}: rel error {e:.1e} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert!(e <= RTOL, "smollm2 delta gradient rel error {e}");
}
