//! SERAC's scope classifier: is an input about a stored edit? Two kinds, as the paper has
//! them:
//! - the **embedding** classifier — the sentence encoder, fine-tuned, with a learned scale
//!   and offset on the cosine similarity: `p(in scope | x, e) = σ(s · cos(enc(x), enc(e)) + b)`;
//!   every stored edit is embedded once, so an input costs one encoding;
//! - the **cross-encoder** — the encoder reads the edit and the input together
//!   (`[CLS] e [SEP] x [SEP]`) and a learned direction of its pooled output gives the logit,
//!   `p = σ(s · (h · enc(e, x)) + b)`. An input costs one encoding per candidate edit, so
//!   the candidates are the `shortlist` stored edits nearest to it under the unchanged base
//!   encoder (the paper scores every edit; a shortlist keeps a thousand edits affordable).
//!
//! It is saved as one safetensors file (the encoder's weights under Hugging Face names,
//! `scope.scale`, `scope.bias`, the cross-encoder's `scope.head`, a JSON `manifest`) that
//! names the encoder it was fine-tuned from, so a checkpoint is refused with an encoder of
//! another shape or origin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::encoder::{BertWeights, SentenceEncoder};
use crate::error::{Error, Result};
use crate::hash::Fast64;
use crate::model::safetensors_io::{save_atomic, SafetensorFiles};

const FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
    kedit_scope_classifier: u32,
    /// The fingerprint of the encoder the weights were fine-tuned from.
    base_encoder: String,
    /// Where that encoder was (its config and tokenizer are read from there).
    base_dir: PathBuf,
    /// Absent in files written before the cross-encoder existed: an embedding classifier.
    #[serde(default)]
    kind: ScopeKind,
    #[serde(default)]
    meta: BTreeMap<String, String>,
}

/// How the classifier compares an input with a stored edit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScopeKind {
    /// Cosine of the two texts' embeddings, each encoded alone.
    #[default]
    Embedding,
    /// The two texts encoded together, for the `shortlist` stored edits nearest to the
    /// input under the base encoder.
    Cross { shortlist: usize },
}

/// The stored edits' prompts, ready for [`ScopeClassifier::best`]: their embeddings (by
/// the fine-tuned encoder for an embedding classifier, by the base encoder for a
/// cross-encoder's shortlist) and, for a cross-encoder, their token ids.
#[derive(Clone, Debug)]
pub struct ScopeKeys {
    embeddings: Tensor,
    ids: Vec<Vec<u32>>,
}

impl ScopeKeys {
    pub fn len(&self) -> usize {
        self.embeddings.dim(0).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// These keys followed by `more`'s.
    pub fn extend(&mut self, more: ScopeKeys) -> Result<()> {
        self.embeddings = Tensor::cat(&[&self.embeddings, &more.embeddings], 0)?;
        self.ids.extend(more.ids);
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct ScopeClassifier {
    pub encoder: SentenceEncoder,
    pub scale: f64,
    pub bias: f64,
    pub kind: ScopeKind,
    /// The cross-encoder's direction `[dim]` (absent for an embedding classifier).
    pub head: Option<Tensor>,
    /// The encoder before fine-tuning (a cross-encoder's shortlist is made with it).
    base: SentenceEncoder,
}

/// Pairs encoded in one call when scoring shortlists.
const PAIR_ROWS: usize = 256;

impl ScopeClassifier {
    /// An embedding classifier on `encoder` as it is (before fine-tuning).
    pub fn new(encoder: SentenceEncoder, scale: f64, bias: f64) -> Self {
        ScopeClassifier {
            base: encoder.clone(),
            encoder,
            scale,
            bias,
            kind: ScopeKind::Embedding,
            head: None,
        }
    }

    /// A cross-encoder on `encoder` as it is, scoring `shortlist` candidates along `head`.
    pub fn cross(
        encoder: SentenceEncoder,
        shortlist: usize,
        scale: f64,
        bias: f64,
        head: Tensor,
    ) -> Result<Self> {
        if shortlist == 0 {
            return Err(Error::config(
                "a cross-encoder's shortlist must hold at least one stored edit",
            ));
        }
        if head.dims() != [encoder.dim()] {
            return Err(Error::config(format!(
                "the cross-encoder's head has shape {:?}; the encoder's width is {}",
                head.dims(),
                encoder.dim()
            )));
        }
        Ok(ScopeClassifier {
            head: Some(head.to_dtype(DType::F32)?),
            kind: ScopeKind::Cross { shortlist },
            ..ScopeClassifier::new(encoder, scale, bias)
        })
    }

    /// The same classifier with fine-tuned weights (and, for a cross-encoder, head).
    pub fn with_parts(&self, weights: BertWeights, scale: f64, bias: f64) -> Result<Self> {
        Ok(ScopeClassifier {
            encoder: self.encoder.with_weights(weights)?,
            scale,
            bias,
            ..self.clone()
        })
    }

    /// Identifies the weights, scale, offset, kind and head together.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fast64::new();
        h.u64(self.encoder.fingerprint());
        h.f64s(&[self.scale, self.bias]);
        if let (ScopeKind::Cross { shortlist }, Some(head)) = (self.kind, &self.head) {
            h.u64(shortlist as u64);
            let v = head.to_vec1::<f32>().unwrap_or_default();
            h.f64s(&v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
        }
        h.finish()
    }

    /// The stored edits' prompts as keys to route against.
    pub fn keys<S: AsRef<str>>(&self, prompts: &[S]) -> Result<ScopeKeys> {
        Ok(match self.kind {
            ScopeKind::Embedding => ScopeKeys {
                embeddings: self.embed(prompts)?,
                ids: Vec::new(),
            },
            ScopeKind::Cross { .. } => ScopeKeys {
                embeddings: self.base.embed(prompts)?,
                ids: prompts
                    .iter()
                    .map(|p| self.encoder.tokenize(p.as_ref()))
                    .collect::<Result<_>>()?,
            },
        })
    }

    /// For each input, its most likely stored edit (index into `keys`) and that edit's
    /// in-scope logit; `None` only when there are no keys.
    pub fn best<S: AsRef<str>>(
        &self,
        inputs: &[S],
        keys: &ScopeKeys,
    ) -> Result<Vec<Option<(usize, f32)>>> {
        if keys.is_empty() || inputs.is_empty() {
            return Ok(vec![None; inputs.len()]);
        }
        match self.kind {
            ScopeKind::Embedding => {
                let logits = self
                    .logits(&self.embed(inputs)?, &keys.embeddings)?
                    .to_vec2::<f32>()?;
                Ok(logits.iter().map(|row| argmax(row)).collect())
            }
            ScopeKind::Cross { shortlist } => self.best_by_pairs(inputs, keys, shortlist),
        }
    }

    fn best_by_pairs<S: AsRef<str>>(
        &self,
        inputs: &[S],
        keys: &ScopeKeys,
        shortlist: usize,
    ) -> Result<Vec<Option<(usize, f32)>>> {
        let near = self
            .base
            .embed(inputs)?
            .matmul(&keys.embeddings.t()?)?
            .to_vec2::<f32>()?;
        let mut pairs = Vec::new();
        let mut owner = Vec::new();
        for (i, (row, text)) in near.iter().zip(inputs).enumerate() {
            let x = self.encoder.tokenize(text.as_ref())?;
            for j in top_k(row, shortlist) {
                pairs.push(SentenceEncoder::pair_ids(&keys.ids[j], &x));
                owner.push((i, j));
            }
        }
        let mut best: Vec<Option<(usize, f32)>> = vec![None; inputs.len()];
        for (chunk, who) in pairs.chunks(PAIR_ROWS).zip(owner.chunks(PAIR_ROWS)) {
            let logits = self.pair_logits(chunk)?;
            for (&(i, j), l) in who.iter().zip(logits.to_vec1::<f32>()?) {
                if best[i].is_none_or(|(_, b)| l > b) {
                    best[i] = Some((j, l));
                }
            }
        }
        Ok(best)
    }

    /// A cross-encoder's logits `[pairs]` of tokenized pairs.
    fn pair_logits(&self, pairs: &[Vec<u32>]) -> Result<Tensor> {
        let head = self.head.as_ref().ok_or_else(|| {
            Error::config("pair logits asked of an embedding classifier (it has no head)")
        })?;
        let pooled = self.encoder.embed_rows(&self.encoder.weights, pairs)?;
        let dev = Device::Cpu;
        cross_logits(
            &pooled,
            head,
            &Tensor::new(&[self.scale as f32], &dev)?,
            &Tensor::new(&[self.bias as f32], &dev)?,
        )
    }

    /// Unit embeddings `[texts, dim]`.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Tensor> {
        self.encoder.embed(texts)
    }

    /// In-scope logits `[inputs, keys]` of unit embeddings.
    pub fn logits(&self, inputs: &Tensor, keys: &Tensor) -> Result<Tensor> {
        Ok(((inputs.matmul(&keys.t()?)? * self.scale)? + self.bias)?)
    }

    /// Saves the classifier atomically.
    pub fn save(&self, path: &Path, meta: BTreeMap<String, String>) -> Result<()> {
        let mut tensors: BTreeMap<String, Tensor> = self
            .encoder
            .weights
            .named()
            .into_iter()
            .map(|(n, t)| (n, t.clone()))
            .collect();
        let dev = Device::Cpu;
        tensors.insert(
            "scope.scale".into(),
            Tensor::new(&[self.scale as f32], &dev)?,
        );
        tensors.insert("scope.bias".into(), Tensor::new(&[self.bias as f32], &dev)?);
        if let Some(head) = &self.head {
            tensors.insert("scope.head".into(), head.clone());
        }
        let manifest = Manifest {
            kedit_scope_classifier: FORMAT,
            base_encoder: format!("{:016x}", self.base.fingerprint()),
            base_dir: self.encoder.dir().to_path_buf(),
            kind: self.kind,
            meta,
        };
        let json = serde_json::to_vec(&manifest).expect("manifests serialise");
        let n = json.len();
        tensors.insert("manifest".into(), Tensor::from_vec(json, n, &dev)?);
        save_atomic(&tensors, path)
    }

    /// Loads a classifier saved by [`save`](Self::save) onto `base`, the encoder it was
    /// fine-tuned from (its fingerprint must match the one the file names).
    pub fn load(path: &Path, base: &SentenceEncoder) -> Result<Self> {
        let manifest = read_manifest(path)?;
        let want = format!("{:016x}", base.fingerprint());
        if manifest.base_encoder != want {
            return Err(Error::model(
                path,
                format!(
                    "the scope classifier was fine-tuned from encoder {} ({}); the encoder given \
                     is {want} ({})",
                    manifest.base_encoder,
                    manifest.base_dir.display(),
                    base.dir().display()
                ),
            ));
        }
        let files = SafetensorFiles::open_file(path)?;
        let weights = BertWeights::read(&files, &base.config)?;
        let scalar = |name: &str| -> Result<f64> {
            let t = files.get(name)?;
            let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            match v.as_slice() {
                [x] if x.is_finite() => Ok(*x),
                _ => Err(Error::tensor(path, name, "is not one finite number")),
            }
        };
        let (scale, bias) = (scalar("scope.scale")?, scalar("scope.bias")?);
        let c = match manifest.kind {
            ScopeKind::Embedding => ScopeClassifier::new(base.clone(), scale, bias),
            ScopeKind::Cross { shortlist } => {
                let head = files.get("scope.head")?;
                let finite = head
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?
                    .iter()
                    .all(|x| x.is_finite());
                if !finite {
                    return Err(Error::tensor(
                        path,
                        "scope.head",
                        "holds a non-finite value",
                    ));
                }
                ScopeClassifier::cross(base.clone(), shortlist, scale, bias, head)
                    .map_err(|e| Error::model(path, e.to_string()))?
            }
        };
        c.with_parts(weights, scale, bias)
    }

    /// The directory of the encoder a saved classifier was fine-tuned from.
    pub fn base_dir_of(path: &Path) -> Result<PathBuf> {
        Ok(read_manifest(path)?.base_dir)
    }
}

/// `s · (pooled · head) + b` for each row of `pooled` `[rows, dim]`, with `s` and `b`
/// one-element tensors (differentiable when any of them are `Var`s: training uses it too).
pub fn cross_logits(
    pooled: &Tensor,
    head: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    Ok(pooled
        .matmul(&head.unsqueeze(1)?)?
        .squeeze(1)?
        .broadcast_mul(scale)?
        .broadcast_add(bias)?)
}

fn argmax(row: &[f32]) -> Option<(usize, f32)> {
    row.iter()
        .copied()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// The indices of the `k` largest values, largest first.
fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    order.truncate(k);
    order
}

fn read_manifest(path: &Path) -> Result<Manifest> {
    let files = SafetensorFiles::open_file(path)?;
    let bytes = files.get_raw_u8("manifest")?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        Error::tensor(
            path,
            "manifest",
            format!("not a kedit scope classifier: {e}"),
        )
    })?;
    if manifest.kedit_scope_classifier > FORMAT {
        return Err(Error::tensor(
            path,
            "manifest",
            format!(
                "format {} is newer than this kedit reads ({FORMAT})",
                manifest.kedit_scope_classifier
            ),
        ));
    }
    Ok(manifest)
}
