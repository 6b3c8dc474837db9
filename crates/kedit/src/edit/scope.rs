//! SERAC's scope classifier: is an input about a stored edit? The paper's embedding
//! classifier — the sentence encoder, fine-tuned, with a learned scale and offset on the
//! cosine similarity: `p(in scope | x, e) = σ(s · cos(enc(x), enc(e)) + b)`. It is saved as
//! one safetensors file (the encoder's weights under Hugging Face names, `scope.scale`,
//! `scope.bias`, a JSON `manifest`) that names the encoder it was fine-tuned from, so a
//! checkpoint is refused with an encoder of another shape or origin.

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
    #[serde(default)]
    meta: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct ScopeClassifier {
    pub encoder: SentenceEncoder,
    pub scale: f64,
    pub bias: f64,
    base_fingerprint: u64,
}

impl ScopeClassifier {
    /// A classifier on `encoder` as it is (before fine-tuning).
    pub fn new(encoder: SentenceEncoder, scale: f64, bias: f64) -> Self {
        let base_fingerprint = encoder.fingerprint();
        ScopeClassifier {
            encoder,
            scale,
            bias,
            base_fingerprint,
        }
    }

    /// The same classifier with fine-tuned weights.
    pub fn with_parts(&self, weights: BertWeights, scale: f64, bias: f64) -> Result<Self> {
        Ok(ScopeClassifier {
            encoder: self.encoder.with_weights(weights)?,
            scale,
            bias,
            base_fingerprint: self.base_fingerprint,
        })
    }

    /// Identifies the weights, scale and offset together.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fast64::new();
        h.u64(self.encoder.fingerprint());
        h.f64s(&[self.scale, self.bias]);
        h.finish()
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
        let manifest = Manifest {
            kedit_scope_classifier: FORMAT,
            base_encoder: format!("{:016x}", self.base_fingerprint),
            base_dir: self.encoder.dir().to_path_buf(),
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
        let mut c = ScopeClassifier::new(base.clone(), scale, bias);
        c.encoder = base.with_weights(weights)?;
        Ok(c)
    }

    /// The directory of the encoder a saved classifier was fine-tuned from.
    pub fn base_dir_of(path: &Path) -> Result<PathBuf> {
        Ok(read_manifest(path)?.base_dir)
    }
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
