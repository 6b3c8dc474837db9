//! Throughput of the model runtime behind `kedit bench`: matrix products, prefill, and
//! forward+backward from the embeddings vs from a cached residual.

use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;

use crate::bench::median_seconds;
use crate::error::Result;
use crate::model::Model;
use crate::rng::Rng;
use crate::runtime::{Intervention, LogitsAt, Padding, Site, TokenBatch};

#[derive(Clone, Debug, Serialize)]
pub struct MatmulFigure {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub seconds: f64,
    pub gflops: f64,
}

/// f32 GFLOP/s of an (m×k)·(k×n) product.
pub fn matmul(m: usize, k: usize, n: usize, reps: usize) -> Result<MatmulFigure> {
    let mut rng = Rng::new(0);
    let a = Tensor::from_vec(rng.normal_vec(m * k), (m, k), &Device::Cpu)?;
    let b = Tensor::from_vec(rng.normal_vec(k * n), (k, n), &Device::Cpu)?;
    let seconds = median_seconds(reps, || {
        a.matmul(&b)?;
        Ok(())
    })?;
    Ok(MatmulFigure {
        m,
        k,
        n,
        seconds,
        gflops: 2.0 * (m * k * n) as f64 / seconds / 1e9,
    })
}

/// The same product by numpy (its BLAS, usually OpenBLAS) in `python3`, for the machine's
/// best available rate beside kedit's; `None` when python3 or numpy is missing or fails.
pub fn numpy_matmul(m: usize, k: usize, n: usize, reps: usize) -> Option<ReferenceMatmul> {
    const SCRIPT: &str = "import sys, time, numpy as np\n\
m, k, n, reps = map(int, sys.argv[1:])\n\
a = np.random.randn(m, k).astype(np.float32); b = np.random.randn(k, n).astype(np.float32)\n\
a @ b\n\
ts = []\n\
for _ in range(reps):\n    t = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t)\n\
ts.sort(); print(ts[len(ts) // 2], np.__version__)\n";
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .args([m, k, n, reps.max(1)].map(|v| v.to_string()))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let mut words = text.split_whitespace();
    let seconds: f64 = words.next()?.parse().ok()?;
    let numpy = words.next()?.to_string();
    (seconds > 0.0).then(|| ReferenceMatmul {
        library: format!("numpy {numpy}"),
        figure: MatmulFigure {
            m,
            k,
            n,
            seconds,
            gflops: 2.0 * (m * k * n) as f64 / seconds / 1e9,
        },
    })
}

/// A matrix rate measured outside kedit.
#[derive(Clone, Debug, Serialize)]
pub struct ReferenceMatmul {
    pub library: String,
    pub figure: MatmulFigure,
}

/// Multiply-add FLOPs of one forward pass over `rows × len` tokens with logits at the last
/// position of each row only (as generation's prefill does).
pub fn forward_flops(model: &Model, rows: usize, len: usize) -> f64 {
    let c = &model.config;
    let (d, ff) = (c.d_model as f64, c.d_ff as f64);
    let q = (c.n_heads * c.head_dim) as f64;
    let kv = (c.n_kv_heads * c.head_dim) as f64;
    let mlp_mats = if c.gated_mlp() { 3.0 } else { 2.0 };
    let per_token_layer = 2.0 * (d * q + 2.0 * d * kv + q * d + mlp_mats * d * ff);
    // Causal attention: each query attends to (len+1)/2 keys on average, QKᵀ and PV.
    let attention = 2.0 * 2.0 * q * (len as f64 + 1.0) / 2.0;
    let tokens = (rows * len) as f64;
    let body = tokens * c.n_layers as f64 * (per_token_layer + attention);
    let head = rows as f64 * 2.0 * d * c.vocab_size as f64;
    body + head
}

#[derive(Clone, Debug, Serialize)]
pub struct PrefillFigure {
    pub rows: usize,
    pub len: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub gflops: f64,
}

fn random_batch(model: &Model, rows: usize, len: usize, seed: u64) -> Result<TokenBatch> {
    let mut rng = Rng::new(seed);
    let vocab = model.config.vocab_size as u64;
    let seqs: Vec<Vec<u32>> = (0..rows)
        .map(|_| (0..len).map(|_| (rng.next_u64() % vocab) as u32).collect())
        .collect();
    TokenBatch::new(&seqs, Padding::Left, 0)
}

pub fn prefill(model: &Model, rows: usize, len: usize, reps: usize) -> Result<PrefillFigure> {
    let batch = random_batch(model, rows, len, 1)?;
    let seconds = median_seconds(reps, || {
        model.forward(&batch).run()?;
        Ok(())
    })?;
    Ok(PrefillFigure {
        rows,
        len,
        seconds,
        tokens_per_second: (rows * len) as f64 / seconds,
        gflops: forward_flops(model, rows, len) / seconds / 1e9,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct BackwardFigure {
    pub rows: usize,
    pub len: usize,
    pub layer: usize,
    pub from_embeddings_seconds: f64,
    pub from_cached_residual_seconds: f64,
}

/// Forward + backward of a loss on the last-position logits with respect to a delta added
/// at `blocks.{layer}.mlp.out`, run from the embeddings vs from the cached residual.
pub fn forward_backward(
    model: &Model,
    rows: usize,
    len: usize,
    layer: usize,
    reps: usize,
) -> Result<BackwardFigure> {
    let batch = random_batch(model, rows, len, 2)?;
    let delta = Var::zeros(model.config.d_model, DType::F32, model.device())?;
    let at: Vec<(usize, usize)> = (0..rows).map(|b| (b, len / 2)).collect();
    let add = Intervention::add(Site::MlpOut(layer), at, delta.as_tensor().clone());
    let step = |start: Option<&Tensor>| -> Result<()> {
        let mut f = model
            .forward(&batch)
            .intervene(add.clone())
            .logits(LogitsAt::Last);
        if let Some(resid) = start {
            f = f.start_at(layer, resid.clone());
        }
        let logits = f.run()?.logits.expect("asked for logits");
        let loss = crate::runtime::ops::log_softmax_last(&logits)?
            .narrow(1, 0, 1)?
            .mean_all()?;
        let grads = loss.backward()?;
        grads
            .get(delta.as_tensor())
            .expect("delta takes part in the loss");
        Ok(())
    };
    let from_embeddings_seconds = median_seconds(reps, || step(None))?;
    let cached = model.forward(&batch).resid_pre(layer)?;
    let from_cached_residual_seconds = median_seconds(reps, || step(Some(&cached)))?;
    Ok(BackwardFigure {
        rows,
        len,
        layer,
        from_embeddings_seconds,
        from_cached_residual_seconds,
    })
}
