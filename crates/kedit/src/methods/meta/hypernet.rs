//! What a meta-learned editor is to the trainer and to the edit: a network that turns the
//! factors of an edit's gradient into a low-rank change of each edited projection, and
//! its checkpoint — the trained tensors with a manifest naming the model and layers they
//! were trained for, so a checkpoint is never applied to a model it does not fit.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::factors::Factors;
use crate::error::{Error, Result};
use crate::model::safetensors_io::{save_atomic, SafetensorFiles};

/// A hypernetwork that edits MLP output projections.
pub trait Hypernet: Send + Sync {
    /// `MEND`, `KE`.
    fn kind(&self) -> &'static str;
    /// The layers whose output projections it edits, in the order of its updates.
    fn layers(&self) -> &[usize];
    /// The variables trained at the main learning rate, named for the checkpoint.
    fn vars(&self) -> Vec<(String, Var)>;
    /// The variables trained at `lr_lr` (MEND's per-layer step sizes).
    fn lr_vars(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
    /// State saved with the weights that no gradient trains (MEND's input statistics).
    fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }
    /// Restores [`Hypernet::buffers`].
    fn set_buffer(&mut self, name: &str, _value: &Tensor) -> Result<()> {
        Err(Error::invalid(format!("no buffer `{name}`")))
    }
    /// Learns from a training edit what is learnt without gradients (running statistics);
    /// called before [`Hypernet::updates`] on every training edit, never at edit time.
    fn observe(&mut self, _f: &Factors) -> Result<()> {
        Ok(())
    }
    /// Per edited layer, the change `ΔW = u·vᵀ` (`u: [d_model, r]`, `v: [d_ff, r]`),
    /// differentiable in the variables.
    fn updates(&self, f: &Factors) -> Result<Vec<(Tensor, Tensor)>>;
}

/// Version of the checkpoint layout.
const FORMAT: u32 = 1;

/// What a checkpoint says about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub kedit_hypernet: u32,
    pub kind: String,
    /// The fingerprint of the model trained on (every weight and the configuration).
    pub model: String,
    pub layers: Vec<usize>,
    /// Training step and validation figures, for people.
    pub meta: BTreeMap<String, String>,
}

/// Every tensor of `net` under its checkpoint name: `var.*`, `lr.*`, `buf.*`.
pub fn named_tensors(net: &dyn Hypernet) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (n, v) in net.vars() {
        out.insert(format!("var.{n}"), v.as_tensor().detach());
    }
    for (n, v) in net.lr_vars() {
        out.insert(format!("lr.{n}"), v.as_tensor().detach());
    }
    for (n, t) in net.buffers()? {
        out.insert(format!("buf.{n}"), t);
    }
    Ok(out)
}

/// Writes `net` with its manifest atomically; `extra` tensors (optimiser state) beside.
pub fn save(
    net: &dyn Hypernet,
    model_fingerprint: u64,
    meta: BTreeMap<String, String>,
    extra: BTreeMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    let mut tensors = named_tensors(net)?;
    tensors.extend(extra);
    let manifest = Manifest {
        kedit_hypernet: FORMAT,
        kind: net.kind().to_string(),
        model: format!("{model_fingerprint:016x}"),
        layers: net.layers().to_vec(),
        meta,
    };
    let json = serde_json::to_vec(&manifest).expect("manifests serialise");
    let n = json.len();
    tensors.insert("manifest".into(), Tensor::from_vec(json, n, &Device::Cpu)?);
    save_atomic(&tensors, path)
}

/// Opens a checkpoint and checks that it fits `net` and the model: its kind, the model's
/// fingerprint and the layers.
pub fn open(path: &Path, net: &dyn Hypernet, model_fingerprint: u64) -> Result<SafetensorFiles> {
    let files = SafetensorFiles::open_file(path)?;
    let bytes = files.get_raw_u8("manifest")?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        Error::tensor(
            path,
            "manifest",
            format!("not a kedit hypernetwork checkpoint: {e}"),
        )
    })?;
    if m.kedit_hypernet > FORMAT {
        return Err(Error::tensor(
            path,
            "manifest",
            format!(
                "layout version {} is newer than this kedit reads ({FORMAT})",
                m.kedit_hypernet
            ),
        ));
    }
    if m.kind != net.kind() {
        return Err(Error::tensor(
            path,
            "manifest.kind",
            format!("is a {} checkpoint, not {}", m.kind, net.kind()),
        ));
    }
    let want = format!("{model_fingerprint:016x}");
    if m.model != want {
        return Err(Error::tensor(
            path,
            "manifest.model",
            format!(
                "was trained on model {}; this model is {want} (a hypernetwork only fits \
                 the weights it was trained on)",
                m.model
            ),
        ));
    }
    if m.layers != net.layers() {
        return Err(Error::tensor(
            path,
            "manifest.layers",
            format!(
                "edits layers {:?}; the hyper-parameters name layers {:?}",
                m.layers,
                net.layers()
            ),
        ));
    }
    Ok(files)
}

/// Loads `net`'s tensors from a checkpoint opened with [`open`]; each must have the shape
/// the net has.
pub fn load_into(files: &SafetensorFiles, path: &Path, net: &mut dyn Hypernet) -> Result<()> {
    let read = |name: &str, like: &Tensor| -> Result<Tensor> {
        let t = files.get_stored(name)?;
        if t.dims() != like.dims() {
            return Err(Error::tensor(
                path,
                name,
                format!(
                    "has shape {:?}; the hyper-parameters make it {:?}",
                    t.dims(),
                    like.dims()
                ),
            ));
        }
        Ok(t.to_dtype(like.dtype())?)
    };
    let vars = net.vars().into_iter().map(|(n, v)| (format!("var.{n}"), v));
    let lr_vars = net
        .lr_vars()
        .into_iter()
        .map(|(n, v)| (format!("lr.{n}"), v));
    for (name, v) in vars.chain(lr_vars) {
        v.set(&read(&name, v.as_tensor())?)?;
    }
    for (n, t) in net.buffers()? {
        let value = read(&format!("buf.{n}"), &t)?;
        net.set_buffer(&n, &value)?;
    }
    Ok(())
}
