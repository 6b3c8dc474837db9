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

/// The first `n` records of the ZsRE dev file (MEND's, with GPT-4 portability questions).
pub fn zsre_dev(n: usize) -> Vec<kedit::request::EditRequest> {
    use kedit::data::{load, Format, LoadOptions};
    let opts = LoadOptions {
        limit: Some(n),
        ..Default::default()
    };
    load(
        &data("zsre/zsre_mend_eval_portability_gpt4.dev.json"),
        Format::Zsre,
        &opts,
    )
    .unwrap()
    .requests
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
    MODEL.get_or_init(|| {
        // The allocator setting the CLI makes (`configure_process`), without its thread
        // counts: `scripts/test` sets those for the whole run. Without it every large
        // activation is a fresh mapping the kernel zeroes (the suite's system time).
        kedit::runtime::process::keep_freed_memory();
        Model::load(model_path()).expect("load SmolLM2")
    })
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

/// Fixtures of this crate (`tests/fixtures/`), made by `scripts/reference/`.
pub fn own_fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The tiny random Gemma 3 (config.json, model.safetensors, reference.safetensors).
pub fn gemma3_tiny_dir() -> PathBuf {
    own_fixture("gemma3/tiny")
}

/// Gemma 3 270M as fetched by `scripts/fetch-model gemma3`, if it has been.
pub fn gemma3_path() -> Option<PathBuf> {
    let p = workspace().join("models/gemma-3-270m-q4_k_m.gguf");
    p.exists().then_some(p)
}

/// The six tiny Hugging Face models under `fixtures/tiny/`.
pub const TINY_ARCHS: [&str; 6] = ["llama", "qwen2", "mistral", "gpt2", "gptj", "gpt_neox"];

pub fn tiny_dir(arch: &str) -> PathBuf {
    fixture(&format!("tiny/{arch}"))
}

/// The `[n, width]` rows of a `[rows, len, width]` tensor at the given `(row, index)` entries.
pub fn at_entries(t: &Tensor, entries: &[(usize, usize)]) -> Tensor {
    let (rows, len, width) = t.dims3().unwrap();
    let idx: Vec<u32> = entries.iter().map(|&(b, i)| (b * len + i) as u32).collect();
    let idx = Tensor::new(idx.as_slice(), t.device()).unwrap();
    t.reshape((rows * len, width))
        .unwrap()
        .index_select(&idx, 0)
        .unwrap()
}

/// Mean negative log-likelihood of `targets[i]` under row `i` of `logits: [n, vocab]`.
pub fn mean_nll(logits: &Tensor, targets: &[u32]) -> Tensor {
    let lp = kedit::runtime::ops::log_softmax_last(logits).unwrap();
    let idx = Tensor::new(targets, logits.device())
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    (lp.gather(&idx, 1).unwrap().mean_all().unwrap() * -1.0).unwrap()
}

/// The inputs of a tiny-model fixture (`reference.safetensors`): a right-padded batch.
pub struct TinyInputs {
    pub batch: kedit::TokenBatch,
    /// `(row, index)` of every real token (attention_mask == 1).
    pub real: Vec<(usize, usize)>,
    /// `(row, index)` whose logits predict the next label, and that label (−100 skipped).
    pub target_at: Vec<(usize, usize)>,
    pub targets: Vec<u32>,
}

pub fn tiny_inputs(refs: &HashMap<String, Tensor>) -> TinyInputs {
    let ids = refs["input_ids"].to_vec2::<i64>().unwrap();
    let mask = refs["attention_mask"].to_vec2::<i64>().unwrap();
    let labels = refs["labels"].to_vec2::<i64>().unwrap();
    let seqs: Vec<Vec<u32>> = ids
        .iter()
        .zip(&mask)
        .map(|(row, m)| {
            row.iter()
                .zip(m)
                .filter(|(_, &v)| v == 1)
                .map(|(&t, _)| t as u32)
                .collect()
        })
        .collect();
    let batch = kedit::TokenBatch::new(&seqs, kedit::Padding::Right, 0).unwrap();
    // Right padding with pad id 0 must reproduce the fixture's ids exactly.
    assert_eq!(
        batch.ids,
        ids.concat().iter().map(|&x| x as u32).collect::<Vec<_>>()
    );
    let mut inputs = TinyInputs {
        batch,
        real: Vec::new(),
        target_at: Vec::new(),
        targets: Vec::new(),
    };
    for (b, row) in mask.iter().enumerate() {
        for (t, &v) in row.iter().enumerate() {
            if v == 1 {
                inputs.real.push((b, t));
            }
            if t + 1 < row.len() && labels[b][t + 1] != -100 {
                inputs.target_at.push((b, t));
                inputs.targets.push(labels[b][t + 1] as u32);
            }
        }
    }
    inputs
}

/// A fresh directory in cargo's scratch space for integration tests, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// `name` must be unique within the test binary; the process id keeps binaries apart.
    pub fn new(name: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The model's most likely next token after `prompt`, decoded (greedy, one forward).
pub fn top1(e: &kedit::editor::Editor, prompt: &str) -> String {
    let tok = e.model().tokenizer().unwrap();
    let ids = tok.encode(prompt).unwrap();
    let logits = e
        .model()
        .forward(&kedit::TokenBatch::single(&ids))
        .run()
        .unwrap()
        .logits
        .unwrap();
    argmax_token(tok, &logits)
}

/// The most likely token of next-token logits `[1, vocab]`, decoded.
pub fn argmax_token(tok: &kedit::tokenizer::Tokenizer, logits: &Tensor) -> String {
    let id = logits
        .squeeze(0)
        .unwrap()
        .argmax(0)
        .unwrap()
        .to_scalar::<u32>()
        .unwrap();
    tok.decode(&[id], false).unwrap()
}

/// Runs `method` over `requests` in `mode` (calls of 2 requests in batch and sequential
/// mode) on a fresh editor, which must be pristine afterwards.
pub fn run_mode(
    method: &dyn kedit::methods::EditMethod,
    requests: &[kedit::request::EditRequest],
    mode: kedit::experiment::Mode,
    metrics: kedit::evaluate::MetricOptions,
) -> kedit::experiment::RunStore {
    let mut editor = kedit::editor::Editor::new(smollm2().clone());
    let mut store = kedit::experiment::RunStore::in_memory();
    let opts = kedit::experiment::RunOptions {
        mode,
        batch_size: 2,
        metrics,
        shard: None,
    };
    kedit::experiment::run(
        &mut editor,
        method,
        &kedit::methods::EditContext::default(),
        requests,
        &opts,
        &mut store,
        &mut kedit::progress::Silent,
    )
    .unwrap();
    assert!(
        editor.is_pristine().unwrap(),
        "{} {mode:?}: pristine after the run",
        method.name()
    );
    store
}

/// Three tests, `$check::single`, `$check::sequential` and `$check::batch`, each calling
/// `$check(mode)`: the harness's modes as tests of their own, so they run side by side.
/// (`tests/suite.rs` declares this module `#[macro_use]` first, so every file sees it.)
macro_rules! in_every_mode {
    ($check:ident) => {
        mod $check {
            use kedit::experiment::Mode;
            #[test]
            fn single() {
                super::$check(Mode::Single);
            }
            #[test]
            fn sequential() {
                super::$check(Mode::Sequential);
            }
            #[test]
            fn batch() {
                super::$check(Mode::Batch);
            }
        }
    };
}

/// Held for the whole of a test whose optimiser runs on threads of its own (ROME's v*
/// groups): two such tests side by side, among the four `scripts/test` runs at a time, fight
/// over the two cores (measured: `rome.rs` took 191 s so, 59 s with this lock).
pub fn own_threads() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The cache every test that edits with small statistics shares (MEMIT, EMMET, PMET,
/// AlphaEdit): statistics, null-space projections and context templates are keyed by model,
/// corpus, layer and settings, so each is computed once per `cargo test` — the first test
/// that needs it pays, the others read it — instead of once per test (about 45 s each).
/// Tests about computing or refusing statistics keep caches of their own.
pub fn shared_cache() -> kedit::cache::Cache {
    kedit::cache::Cache::new(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kedit-test-cache"))
}

/// `method.prepare` on the shared cache, one test of the binary at a time, so that two tests
/// needing the same statistics compute them once rather than side by side.
pub fn prepare_shared(
    method: &dyn kedit::methods::EditMethod,
    model: &Model,
    ctx: &kedit::methods::EditContext,
) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    method
        .prepare(model, ctx, &mut kedit::progress::Silent)
        .unwrap();
}

/// The scores of a run's cases after their own edits (every case must have been edited).
pub fn post_scores(store: &kedit::experiment::RunStore) -> kedit::experiment::summary::Scores {
    let post: Vec<&kedit::evaluate::Metrics> = store
        .cases
        .values()
        .map(|c| c.post.as_ref().expect("not refused"))
        .collect();
    kedit::experiment::summary::summarize(&post)
}

/// `hparams/<method_dir>/smollm2-135m.yaml` with C from 100 documents of the small test
/// corpus and, where the file weighs questions in (`mom2_extra`), its first 200 questions
/// (seconds, not the minutes of the shipped 100,000 documents and 1,000 questions), and
/// `extra` keys set, written to `dir/<method_dir lower-cased>.json`.
pub fn hparams_with_small_stats(
    method_dir: &str,
    dir: &std::path::Path,
    extra: &[(&str, serde_json::Value)],
) -> PathBuf {
    let mut hp = kedit::methods::HparamsSource::read(
        &workspace().join(format!("hparams/{method_dir}/smollm2-135m.yaml")),
    )
    .unwrap();
    let corpus = data("corpus/wikitext2_test.txt");
    hp.set(
        "mom2_dataset",
        serde_json::json!(corpus.display().to_string()),
    );
    hp.set("mom2_n_samples", serde_json::json!(100));
    if let Some(serde_json::Value::Array(sources)) = hp.value.get("mom2_extra").cloned() {
        let fewer: Vec<serde_json::Value> = sources
            .into_iter()
            .map(|mut source| {
                source["records"] = serde_json::json!([0, 200]);
                source
            })
            .collect();
        hp.set("mom2_extra", serde_json::Value::Array(fewer));
    }
    for (k, v) in extra {
        hp.set(k, v.clone());
    }
    let path = dir.join(format!("{}.json", method_dir.to_lowercase()));
    std::fs::write(&path, serde_json::to_string(&hp.value).unwrap()).unwrap();
    path
}

/// A fact every memory-based test edits, and prompts that have nothing to do with it.
pub const EIFFEL: &str = "The Eiffel Tower is located in the city of";
pub const UNRELATED: [&str; 3] = [
    "The capital of Japan is",
    "Water boils at a temperature of",
    "The author of Hamlet is",
];

/// A request of a prompt and a target alone (no subject, probes or paraphrases).
pub fn bare_request(prompt: &str, target: &str) -> kedit::request::EditRequest {
    kedit::request::EditRequest {
        case_id: format!("{prompt} -> {target}"),
        prompt: prompt.into(),
        subject: String::new(),
        target_new: target.into(),
        ..Default::default()
    }
}

/// The teacher-forced metrics only (no fluency, no free generation): seconds, not minutes.
pub fn teacher_forced() -> kedit::evaluate::MetricOptions {
    kedit::evaluate::MetricOptions {
        fluency: false,
        free_generation: false,
        seed: 0,
    }
}

/// An edited system's most likely next token after `prompt`, decoded (adaptors and
/// memories act here, unlike in [`top1`], which runs the editor's bare model).
pub fn system_top1(lm: &dyn kedit::lm::LanguageModel, prompt: &str) -> String {
    let ids = lm.tokenizer().unwrap().encode(prompt).unwrap();
    argmax_token(lm.tokenizer().unwrap(), &lm.next_logits(&[ids]).unwrap())
}
