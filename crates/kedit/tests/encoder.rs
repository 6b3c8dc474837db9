//! The sentence encoder against transformers' BertModel with sentence-transformers'
//! pooling (`scripts/reference/minilm_reference.py`): token ids equal, cosine ≥ 0.9999 on
//! every string; and gradients through the encoder against finite differences.

use crate::common;

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Tensor, Var};
use kedit::encoder::{bert, EncoderBatch, SentenceEncoder};

fn encoder_dir() -> PathBuf {
    let p = common::workspace().join("models/all-MiniLM-L6-v2");
    assert!(
        p.join("model.safetensors").exists(),
        "the encoder is missing: run scripts/fetch-model minilm (or scripts/test, which does)"
    );
    p
}

fn encoder() -> &'static SentenceEncoder {
    static E: OnceLock<SentenceEncoder> = OnceLock::new();
    E.get_or_init(|| SentenceEncoder::load(&encoder_dir()).expect("load all-MiniLM-L6-v2"))
}

fn reference() -> serde_json::Value {
    common::json(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm/reference.json"),
    )
}

#[test]
fn embeddings_match_sentence_transformers() {
    let reference = reference();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    for (c, text) in cases.iter().zip(&texts) {
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(encoder().tokenize(text).unwrap(), want, "ids of {text:?}");
    }
    // All at once: the batch is sorted by length and padded, so this also checks padding.
    let got = encoder().embed(&texts).unwrap();
    assert_eq!(got.dims(), [texts.len(), 384]);
    let mut worst = f64::INFINITY;
    for (i, c) in cases.iter().enumerate() {
        let want: Vec<f32> = c["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let row = got.get(i).unwrap().to_vec1::<f32>().unwrap();
        let cos: f64 = row
            .iter()
            .zip(&want)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        assert!(
            cos >= 0.9999,
            "cosine {cos} with sentence-transformers on {:?}",
            texts[i]
        );
        worst = worst.min(cos);
    }
    eprintln!("worst cosine over {} strings: {worst:.7}", cases.len());
    // One at a time gives the same vectors as in a padded batch.
    let alone = encoder().embed(&[texts[0]]).unwrap();
    assert!(common::max_abs_diff(&alone.get(0).unwrap(), &got.get(0).unwrap()) < 1e-5);
}

#[test]
fn similar_sentences_are_closer_than_unrelated_ones() {
    let e = encoder()
        .embed(&[
            "Where is the Eiffel Tower?",
            "The Eiffel Tower is located in the city of",
            "The stock market fell sharply today.",
        ])
        .unwrap();
    let sims = e.matmul(&e.t().unwrap()).unwrap().to_vec2::<f32>().unwrap();
    assert!(sims[0][1] > sims[0][2] + 0.3, "{sims:?}");
}

#[test]
fn a_missing_or_foreign_directory_is_a_clear_error() {
    let err = SentenceEncoder::load(&PathBuf::from("/nonexistent/encoder")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/encoder"), "{err}");
    // A decoder's directory is not a BERT encoder.
    let dir = tempdir();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    let err = SentenceEncoder::load(&dir).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("BERT"), "{err}");
}

fn tempdir() -> PathBuf {
    let d = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-encoder-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The gradient of a scalar of the pooled embedding with respect to one weight, against
/// central differences in f64 (a truncated copy of the encoder: two layers).
#[test]
fn gradients_through_the_encoder_match_finite_differences() {
    let enc = encoder();
    let mut cfg = enc.config.clone();
    cfg.num_hidden_layers = 2;
    let mut w = enc.weights.clone();
    w.layers.truncate(2);
    let to64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let map = |w: &kedit::encoder::BertWeights, f: &dyn Fn(&Tensor) -> Tensor| {
        let mut out = w.clone();
        out.word = f(&w.word);
        out.position = f(&w.position);
        out.token_type = f(&w.token_type);
        out.embed_norm.w = f(&w.embed_norm.w);
        out.embed_norm.b = f(&w.embed_norm.b);
        for l in &mut out.layers {
            for d in [
                &mut l.query,
                &mut l.key,
                &mut l.value,
                &mut l.attn_out,
                &mut l.intermediate,
                &mut l.output,
            ] {
                d.w = f(&d.w);
                d.b = f(&d.b);
            }
            for n in [&mut l.attn_norm, &mut l.out_norm] {
                n.w = f(&n.w);
                n.b = f(&n.b);
            }
        }
        out
    };
    let w64 = map(&w, &to64);
    let rows = vec![
        enc.tokenize("The Eiffel Tower is in Paris").unwrap(),
        enc.tokenize("Where is it?").unwrap(),
    ];
    let batch = EncoderBatch::new(&rows).unwrap();
    let batch = EncoderBatch {
        mask: batch.mask.to_dtype(DType::F64).unwrap(),
        ..batch
    };
    let probe = Tensor::randn(0f64, 1.0, (2, 384), &candle_core::Device::Cpu).unwrap();
    let loss = |w: &kedit::encoder::BertWeights| -> Tensor {
        let h = bert::forward(&cfg, w, &batch).unwrap();
        let pooled = bert::l2_normalize(&bert::mean_pool(&h, &batch.mask).unwrap()).unwrap();
        (pooled * &probe).unwrap().sum_all().unwrap()
    };
    let var = Var::from_tensor(&w64.layers[1].query.w).unwrap();
    let mut wv = w64.clone();
    wv.layers[1].query.w = var.as_tensor().clone();
    let grads = loss(&wv).backward().unwrap();
    let g = grads
        .get(var.as_tensor())
        .expect("a gradient for the query weight");
    let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let base = w64.layers[1]
        .query
        .w
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let eps = 1e-5;
    for &i in &[0usize, 777, 40_000, 147_455] {
        let at = |d: f64| {
            let mut v = base.clone();
            v[i] += d;
            let mut wd = w64.clone();
            wd.layers[1].query.w =
                Tensor::from_vec(v, (384, 384), &candle_core::Device::Cpu).unwrap();
            loss(&wd).to_scalar::<f64>().unwrap()
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        assert!(
            (fd - g[i]).abs() <= 1e-6 + 1e-4 * fd.abs(),
            "entry {i}: autograd {} vs finite differences {fd}",
            g[i]
        );
    }
}
