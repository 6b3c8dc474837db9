//! Shared helpers for integration tests: the real model, `../shared` data and fixtures.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use kedit::Model;

/// The workspace root (two levels above this crate).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// `../shared` beside the workspace; panics with instructions when absent.
pub fn shared() -> PathBuf {
    let p = workspace().join("../shared");
    assert!(
        p.join("fixtures").exists(),
        "../shared (fixtures and data) is missing beside the repository: {}",
        p.display()
    );
    p
}

pub fn fixture(rel: &str) -> PathBuf {
    shared().join("fixtures").join(rel)
}

pub fn data(rel: &str) -> PathBuf {
    shared().join("data").join(rel)
}

pub fn model_path() -> PathBuf {
    let p = workspace()
        .join("models")
        .join(kedit::model::DEFAULT_MODEL_FILE);
    assert!(
        p.exists(),
        "the default model is missing: run scripts/fetch-model (or scripts/test, which does)"
    );
    p
}

/// The real SmolLM2, loaded once per test binary.
pub fn smollm2() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(model_path()).expect("load SmolLM2"))
}

pub fn load_tensors(path: PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn json(path: PathBuf) -> serde_json::Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Max |a - b| over all elements (as f64).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap();
    let b = b
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap();
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let a = a
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap();
    let b = b
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap();
    let num = (&a - &b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let den = b
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    (num / den).sqrt()
}

/// Max over rows of ‖a_row − b_row‖∞ / ‖b_row‖₂ for `[.., width]` tensors: hidden states
/// are compared relative to their row norm (SmolLM2's residual stream reaches 22,552).
pub fn max_row_relative(a: &Tensor, b: &Tensor) -> f64 {
    let width = *b.dims().last().unwrap();
    let a = a
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .reshape(((), width))
        .unwrap();
    let b = b
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .reshape(((), width))
        .unwrap();
    let av = a.to_vec2::<f64>().unwrap();
    let bv = b.to_vec2::<f64>().unwrap();
    av.iter()
        .zip(&bv)
        .map(|(x, y)| {
            let norm = y.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f64::max)
                / norm
        })
        .fold(0.0, f64::max)
}

pub fn ids_of(t: &Tensor) -> Vec<u32> {
    t.to_dtype(candle_core::DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}
