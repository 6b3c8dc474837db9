//! The sentence encoder: all-MiniLM-L6-v2 (or any BERT checkpoint in a Hugging Face
//! directory) turning texts into unit vectors whose dot products are cosine similarities.
//! IKE retrieves demonstrations with it; SERAC's scope classifier is it, fine-tuned.
//! Embeddings match sentence-transformers' (mean pooling over the tokens, L2
//! normalisation, inputs truncated to 256 tokens): `scripts/reference/minilm_reference.py`.

pub mod bert;

use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::hash::Fast64;
use crate::model::safetensors_io::SafetensorFiles;
pub use bert::{BertConfig, BertWeights, EncoderBatch};

/// The directory `scripts/fetch-model minilm` writes, under `models/`.
pub const DEFAULT_ENCODER_DIR: &str = "all-MiniLM-L6-v2";

/// sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2.
pub const MAX_SEQ_LENGTH: usize = 256;

/// Rows encoded in one forward pass: enough to keep the products wide, few enough that
/// sorting by length leaves little padding.
const CHUNK_ROWS: usize = 64;

#[derive(Clone)]
pub struct SentenceEncoder {
    dir: PathBuf,
    pub config: BertConfig,
    pub weights: BertWeights,
    tokenizer: tokenizers::Tokenizer,
    fingerprint: u64,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("dir", &self.dir)
            .field("hidden", &self.config.hidden_size)
            .field("layers", &self.config.num_hidden_layers)
            .finish_non_exhaustive()
    }
}

impl SentenceEncoder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::model(
                dir,
                "no such encoder directory (run scripts/fetch-model minilm for the default one)",
            ));
        }
        let config = BertConfig::read(&dir.join("config.json"))?;
        let files = SafetensorFiles::open_dir(dir)?;
        let weights = BertWeights::read(&files, &config)?;
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"))?;
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > config.vocab_size {
            return Err(Error::model(
                dir,
                format!(
                    "tokenizer.json has {vocab} tokens; the encoder's embeddings have {}",
                    config.vocab_size
                ),
            ));
        }
        let fingerprint = fingerprint_of(&config, &weights)?;
        Ok(SentenceEncoder {
            dir: dir.to_path_buf(),
            config,
            weights,
            tokenizer,
            fingerprint,
        })
    }

    /// `$KEDIT_ENCODER`, else `models/all-MiniLM-L6-v2` at the workspace root (found from
    /// the current directory upwards).
    pub fn default_dir() -> PathBuf {
        if let Ok(p) = std::env::var("KEDIT_ENCODER") {
            return PathBuf::from(p);
        }
        let mut dir = std::env::current_dir().unwrap_or_default();
        loop {
            let candidate = dir.join("models").join(DEFAULT_ENCODER_DIR);
            if candidate.is_dir() {
                return candidate;
            }
            if !dir.pop() {
                return PathBuf::from("models").join(DEFAULT_ENCODER_DIR);
            }
        }
    }

    /// The directory a hyper-parameter names (EasyEdit's `sentence_model_name`,
    /// `cls_name`): a directory as given, or the fetched default for its name.
    pub fn dir_named(name: &str) -> PathBuf {
        let p = PathBuf::from(name);
        if !p.is_dir() && p.file_name().and_then(|f| f.to_str()) == Some(DEFAULT_ENCODER_DIR) {
            return Self::default_dir();
        }
        p
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Identifies the weights and shape: a classifier or index built on one encoder is
    /// refused with another.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// The same encoder with other weights (a fine-tuned copy).
    pub fn with_weights(&self, weights: BertWeights) -> Result<Self> {
        let fingerprint = fingerprint_of(&self.config, &weights)?;
        Ok(SentenceEncoder {
            weights,
            fingerprint,
            ..self.clone()
        })
    }

    /// Token ids with `[CLS]` and `[SEP]`, truncated to [`MAX_SEQ_LENGTH`].
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(format!("encoder tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Unit-norm sentence embeddings `[texts, dim]`, in the order given.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Tensor> {
        self.embed_with(&self.weights, texts)
    }

    /// One input of a cross-encoder: `[CLS] a [SEP] b [SEP]` from the two texts' own
    /// token ids (each as [`tokenize`](Self::tokenize) gives them), cut to
    /// [`MAX_SEQ_LENGTH`] with the final `[SEP]` kept.
    pub fn pair_ids(a: &[u32], b: &[u32]) -> Vec<u32> {
        let mut ids: Vec<u32> = a.iter().chain(b.iter().skip(1)).copied().collect();
        if ids.len() > MAX_SEQ_LENGTH {
            let sep = *ids.last().expect("a pair is not empty");
            ids.truncate(MAX_SEQ_LENGTH - 1);
            ids.push(sep);
        }
        ids
    }

    /// [`embed`](Self::embed) with other weights of the same shape (differentiable when
    /// they are `Var`s).
    pub fn embed_with<S: AsRef<str>>(&self, weights: &BertWeights, texts: &[S]) -> Result<Tensor> {
        let ids = texts
            .iter()
            .map(|t| self.tokenize(t.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        self.embed_rows(weights, &ids)
    }

    /// Unit embeddings of tokenized rows `[rows, dim]`, in the order given, encoded in
    /// chunks of similar length.
    pub fn embed_rows(&self, weights: &BertWeights, ids: &[Vec<u32>]) -> Result<Tensor> {
        if ids.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.dim()),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )?);
        }
        // Similar lengths together, then back in the caller's order.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut chunks = Vec::new();
        for part in order.chunks(CHUNK_ROWS) {
            let rows: Vec<Vec<u32>> = part.iter().map(|&i| ids[i].clone()).collect();
            chunks.push(self.embed_ids(weights, &rows)?);
        }
        let sorted = Tensor::cat(&chunks, 0)?;
        let mut back = vec![0u32; order.len()];
        for (pos, &i) in order.iter().enumerate() {
            back[i] = pos as u32;
        }
        let back = Tensor::from_vec(back, order.len(), sorted.device())?;
        Ok(sorted.index_select(&back, 0)?)
    }

    /// Embeddings of already tokenized rows.
    pub fn embed_ids(&self, weights: &BertWeights, rows: &[Vec<u32>]) -> Result<Tensor> {
        let batch = EncoderBatch::new(rows)?;
        let hidden = bert::forward(&self.config, weights, &batch)?;
        bert::l2_normalize(&bert::mean_pool(&hidden, &batch.mask)?)
    }
}

fn load_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer> {
    let mut tok = tokenizers::Tokenizer::from_file(path)
        .map_err(|e| Error::model(path, format!("cannot load tokenizer: {e}")))?;
    // The file pads every input to 128 and truncates at 128; sentence-transformers pads
    // per batch (we do) and truncates at its max_seq_length.
    tok.with_padding(None);
    tok.with_truncation(Some(tokenizers::TruncationParams {
        max_length: MAX_SEQ_LENGTH,
        ..Default::default()
    }))
    .map_err(|e| Error::model(path, format!("cannot set truncation: {e}")))?;
    Ok(tok)
}

fn fingerprint_of(config: &BertConfig, weights: &BertWeights) -> Result<u64> {
    let mut h = Fast64::new();
    h.str(&format!("{config:?}"));
    for (name, t) in weights.named() {
        h.str(&name);
        h.f32s(&t.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(h.finish())
}
