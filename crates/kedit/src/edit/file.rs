//! One file format for every kind of edit: a safetensors file whose tensors are the
//! edit's arrays and whose `manifest` entry (JSON bytes) says what they are. Weight-edit
//! files of the first format (`kedit_weight_edit`) still load.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::edit::{
    AdaptorEdit, AdaptorPositions, ContextEdit, Delta, Edit, MemoryEdit, MemoryRecord, Router,
    SideMemory, SideMemoryEdit, SideMemoryInfo, WeightEdit,
};
use crate::error::{Error, Result};
use crate::hash::Fast64;
use crate::model::config::Activation;
use crate::model::fingerprint::tensor_hash;
use crate::model::safetensors_io::save_atomic;
use crate::model::ParamId;
use crate::runtime::Site;

const FORMAT: u32 = 2;

#[derive(Serialize, Deserialize)]
struct Manifest {
    /// 2 for this format; files of format 1 carry `kedit_weight_edit` instead.
    #[serde(default)]
    kedit_edit: Option<u32>,
    #[serde(default)]
    kedit_weight_edit: Option<u32>,
    #[serde(flatten)]
    body: Body,
    #[serde(default)]
    meta: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Body {
    Weights {
        deltas: Vec<DeltaEntry>,
        /// The parameter of each key tensor `k{i}` ([`WeightEdit::keys`]); absent when
        /// there are none, so other methods' files are as before.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        keys: Vec<String>,
    },
    Adaptor {
        site: String,
        positions: AdaptorPositions,
        radii: Vec<f64>,
    },
    SideMemory {
        layer: usize,
        activation: Activation,
        act_ratio: f64,
        total_edits: usize,
        /// One per memory `m{i}` (its `delta` the tensor `m{i}.delta`).
        memories: Vec<SideMemoryInfo>,
    },
    Memory {
        records: Vec<MemoryRecord>,
        router: Router,
    },
    Context {
        prefix: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        lead: String,
    },
}

#[derive(Serialize, Deserialize)]
struct DeltaEntry {
    param: String,
    kind: String,
}

impl Edit {
    /// Saves the edit to one safetensors file, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let (body, mut tensors) = self.to_parts()?;
        let manifest = Manifest {
            kedit_edit: Some(FORMAT),
            kedit_weight_edit: None,
            body,
            meta: self.meta().clone(),
        };
        let json = serde_json::to_string(&manifest).expect("manifests serialise");
        tensors.insert(
            "manifest".into(),
            Tensor::from_vec(json.into_bytes(), ((),), &Device::Cpu)?,
        );
        save_atomic(&tensors, path)
    }

    /// Loads an edit saved by [`Edit::save`] (or a format-1 weight edit).
    pub fn load(path: &Path) -> Result<Edit> {
        std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::model(path, format!("not a kedit edit file: {e}")))?;
        let bytes = tensors
            .remove("manifest")
            .ok_or_else(|| Error::tensor(path, "manifest", "is missing"))?
            .to_vec1::<u8>()?;
        let manifest: Manifest = match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(m) => m,
            Err(_) => legacy_manifest(&bytes)
                .map_err(|e| Error::tensor(path, "manifest", format!("invalid: {e}")))?,
        };
        if manifest.kedit_edit.is_none() && manifest.kedit_weight_edit.is_none() {
            return Err(Error::tensor(path, "manifest", "is not a kedit edit"));
        }
        if let Some(v) = manifest.kedit_edit.filter(|&v| v > FORMAT) {
            return Err(Error::tensor(
                path,
                "manifest",
                format!("format {v} is newer than this kedit reads ({FORMAT})"),
            ));
        }
        from_parts(path, manifest, &tensors)
    }

    /// A hash of everything the edit holds: equal fingerprints, equal edits.
    pub fn fingerprint(&self) -> Result<u64> {
        let (body, tensors) = self.to_parts()?;
        let mut h = Fast64::new();
        h.str(&serde_json::to_string(&body).expect("manifests serialise"));
        for (name, t) in &tensors {
            h.str(name);
            h.str(&format!("{:?}", t.dims()));
            h.u64(tensor_hash(t)?);
        }
        Ok(h.finish())
    }

    fn to_parts(&self) -> Result<(Body, BTreeMap<String, Tensor>)> {
        let mut tensors = BTreeMap::new();
        let body = match self {
            Edit::Weights(w) => {
                let mut deltas = Vec::new();
                for (i, (param, delta)) in w.deltas.iter().enumerate() {
                    let kind = match delta {
                        Delta::Dense(t) => {
                            tensors.insert(format!("d{i}.dense"), t.to_dtype(DType::F32)?);
                            "dense"
                        }
                        Delta::LowRank { u, v } => {
                            tensors.insert(format!("d{i}.u"), u.to_dtype(DType::F32)?);
                            tensors.insert(format!("d{i}.v"), v.to_dtype(DType::F32)?);
                            "low_rank"
                        }
                    };
                    deltas.push(DeltaEntry {
                        param: param.to_string(),
                        kind: kind.into(),
                    });
                }
                let mut keys = Vec::new();
                for (i, (param, k)) in w.keys.iter().enumerate() {
                    tensors.insert(format!("k{i}"), k.to_dtype(DType::F32)?);
                    keys.push(param.to_string());
                }
                Body::Weights { deltas, keys }
            }
            Edit::Adaptor(a) => {
                tensors.insert("keys".into(), a.keys.to_dtype(DType::F32)?);
                tensors.insert("values".into(), a.values.to_dtype(DType::F32)?);
                Body::Adaptor {
                    site: a.site.to_string(),
                    positions: a.positions,
                    radii: a.radii.clone(),
                }
            }
            Edit::SideMemory(e) => {
                for (i, m) in e.memories.iter().enumerate() {
                    tensors.insert(format!("m{i}.delta"), m.delta.to_dtype(DType::F32)?);
                }
                Body::SideMemory {
                    layer: e.layer,
                    activation: e.activation,
                    act_ratio: e.act_ratio,
                    total_edits: e.total_edits,
                    memories: e.memories.iter().map(|m| m.info.clone()).collect(),
                }
            }
            Edit::Memory(m) => Body::Memory {
                records: m.records.clone(),
                router: m.router.clone(),
            },
            Edit::Context(c) => Body::Context {
                prefix: c.prefix.clone(),
                lead: c.lead.clone(),
            },
        };
        Ok((body, tensors))
    }
}

/// Format 1 had no `kind`: every file was a weight edit.
fn legacy_manifest(bytes: &[u8]) -> serde_json::Result<Manifest> {
    #[derive(Deserialize)]
    struct V1 {
        kedit_weight_edit: u32,
        deltas: Vec<DeltaEntry>,
        #[serde(default)]
        meta: BTreeMap<String, String>,
    }
    let v1: V1 = serde_json::from_slice(bytes)?;
    Ok(Manifest {
        kedit_edit: None,
        kedit_weight_edit: Some(v1.kedit_weight_edit),
        body: Body::Weights {
            deltas: v1.deltas,
            keys: Vec::new(),
        },
        meta: v1.meta,
    })
}

fn from_parts(
    path: &Path,
    manifest: Manifest,
    tensors: &std::collections::HashMap<String, Tensor>,
) -> Result<Edit> {
    let get = |name: &str| {
        tensors
            .get(name)
            .cloned()
            .ok_or_else(|| Error::tensor(path, name, "is missing"))
    };
    let meta = manifest.meta;
    Ok(match manifest.body {
        Body::Weights { deltas, keys } => {
            let mut edit = WeightEdit {
                deltas: Vec::new(),
                keys: Vec::new(),
                meta,
            };
            for (i, entry) in deltas.iter().enumerate() {
                let param: ParamId = entry.param.parse()?;
                let delta = match entry.kind.as_str() {
                    "dense" => Delta::Dense(get(&format!("d{i}.dense"))?),
                    "low_rank" => Delta::LowRank {
                        u: get(&format!("d{i}.u"))?,
                        v: get(&format!("d{i}.v"))?,
                    },
                    other => {
                        return Err(Error::tensor(
                            path,
                            "manifest",
                            format!("unknown delta kind `{other}`"),
                        ))
                    }
                };
                edit.push(param, delta);
            }
            for (i, param) in keys.iter().enumerate() {
                edit.keys.push((param.parse()?, get(&format!("k{i}"))?));
            }
            Edit::Weights(edit)
        }
        Body::Adaptor {
            site,
            positions,
            radii,
        } => {
            let site: Site = site
                .parse()
                .map_err(|e| Error::tensor(path, "manifest", format!("site: {e}")))?;
            Edit::Adaptor(AdaptorEdit {
                site,
                positions,
                keys: get("keys")?,
                values: get("values")?,
                radii,
                meta,
            })
        }
        Body::SideMemory {
            layer,
            activation,
            act_ratio,
            total_edits,
            memories,
        } => Edit::SideMemory(SideMemoryEdit {
            layer,
            activation,
            act_ratio,
            total_edits,
            memories: memories
                .into_iter()
                .enumerate()
                .map(|(i, info)| {
                    Ok(SideMemory {
                        delta: get(&format!("m{i}.delta"))?,
                        info,
                    })
                })
                .collect::<Result<_>>()?,
            meta,
        }),
        Body::Memory { records, router } => Edit::Memory(MemoryEdit {
            records,
            router,
            meta,
        }),
        Body::Context { prefix, lead } => Edit::Context(ContextEdit { prefix, lead, meta }),
    })
}
