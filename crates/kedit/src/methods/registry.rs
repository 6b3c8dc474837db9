//! The method registry: one table of every method — its names, EasyEdit's `alg_name`,
//! family, loader, shipped hyper-parameters per model, what it needs and, for methods that
//! train, its trainer. The command line's help and errors are made from this table, and
//! nothing elsewhere matches on a method's name.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::methods::hparams::{builtin, HparamsSource};
use crate::methods::train::TrainFn;
use crate::methods::{ft, grace, ike, ke, memit, mend, rome, serac, wise, LoadedMethod};
use crate::model::{Family, Model};

/// EasyEdit's taxonomy of editing methods (plus fine-tuning baselines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodFamily {
    FineTuning,
    LocateThenEdit,
    MemoryBased,
    MetaLearning,
}

impl fmt::Display for MethodFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MethodFamily::FineTuning => "fine-tuning",
            MethodFamily::LocateThenEdit => "locate-then-edit",
            MethodFamily::MemoryBased => "memory-based",
            MethodFamily::MetaLearning => "meta-learning",
        })
    }
}

/// What a method needs besides the model and the requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Second-moment statistics of MLP keys (cached, or computed from a corpus).
    KeyStatistics,
    /// A text corpus.
    Corpus,
    /// A pool of training records to retrieve from.
    RetrievalPool,
    /// A checkpoint trained by `kedit train` (named by `archive:` in the hparams).
    TrainedCheckpoint,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Need::KeyStatistics => "key statistics",
            Need::Corpus => "a corpus",
            Need::RetrievalPool => "a retrieval pool",
            Need::TrainedCheckpoint => "a trained checkpoint",
        })
    }
}

/// A hyper-parameter file shipped with kedit, for one model.
#[derive(Clone, Copy, Debug)]
pub struct Shipped {
    /// The path under `hparams/`.
    pub path: &'static str,
    /// The architecture it was written for.
    pub family: Family,
    pub text: &'static str,
}

/// Builds the method: `name` is the (lower-case) name asked for, so one loader can serve
/// variants (FT-L and FT-M; ROME and R-ROME).
pub type LoadFn = fn(name: &str, source: HparamsSource, model: &Model) -> Result<LoadedMethod>;

/// One row of the registry.
#[derive(Clone, Copy)]
pub struct MethodSpec {
    /// The name `--method` takes (lower case).
    pub name: &'static str,
    /// EasyEdit's `alg_name` a hyper-parameter file of this method carries.
    pub alg_name: &'static str,
    pub family: MethodFamily,
    pub summary: &'static str,
    pub needs: &'static [Need],
    /// Shipped defaults; the first is the fallback for models none was written for.
    pub shipped: &'static [Shipped],
    pub load: LoadFn,
    pub trainer: Option<TrainFn>,
    /// Hyper-parameter overrides (YAML) under which the method runs without key
    /// statistics, when it can (ROME without C, as EasyEdit ships it).
    pub without_statistics: Option<&'static str>,
}

const FT_SHIPPED: &[Shipped] = &[Shipped {
    path: "FT/smollm2-135m.yaml",
    family: Family::Llama,
    text: include_str!("../../../../hparams/FT/smollm2-135m.yaml"),
}];

const ROME_SHIPPED: &[Shipped] = &[Shipped {
    path: "ROME/smollm2-135m.yaml",
    family: Family::Llama,
    text: include_str!("../../../../hparams/ROME/smollm2-135m.yaml"),
}];

const MEMIT_SHIPPED: &[Shipped] = &[Shipped {
    path: "MEMIT/smollm2-135m.yaml",
    family: Family::Llama,
    text: include_str!("../../../../hparams/MEMIT/smollm2-135m.yaml"),
}];

const EMMET_SHIPPED: &[Shipped] = &[Shipped {
    path: "EMMET/smollm2-135m.yaml",
    family: Family::Llama,
    text: include_str!("../../../../hparams/EMMET/smollm2-135m.yaml"),
}];

const PMET_SHIPPED: &[Shipped] = &[Shipped {
    path: "PMET/smollm2-135m.yaml",
    family: Family::Llama,
    text: include_str!("../../../../hparams/PMET/smollm2-135m.yaml"),
}];

const ALPHAEDIT_SHIPPED: &[Shipped] = &[Shipped {
    path: "AlphaEdit/smollm2-135m.yaml",
    family: Family::Llama,
    text: include_str!("../../../../hparams/AlphaEdit/smollm2-135m.yaml"),
}];

const IKE_SHIPPED: &[Shipped] = &[Shipped {
    path: "IKE/smollm2-135m.yaml",
    family: Family::Llama,
    text: include_str!("../../../../hparams/IKE/smollm2-135m.yaml"),
}];

const SERAC_SHIPPED: &[Shipped] = &[Shipped {
    path: "SERAC/smollm2-135m.yaml",
    family: Family::Llama,
    text: include_str!("../../../../hparams/SERAC/smollm2-135m.yaml"),
}];

const GRACE_SHIPPED: &[Shipped] = &[Shipped {
    path: "GRACE/smollm2-135m.yaml",
    family: Family::Llama,
    text: include_str!("../../../../hparams/GRACE/smollm2-135m.yaml"),
}];

const WISE_SHIPPED: &[Shipped] = &[Shipped {
    path: "WISE/smollm2-135m.yaml",
    family: Family::Llama,
    text: include_str!("../../../../hparams/WISE/smollm2-135m.yaml"),
}];

const MEND_SHIPPED: &[Shipped] = &[Shipped {
    path: "MEND/smollm2-135m.yaml",
    family: Family::Llama,
    text: include_str!("../../../../hparams/MEND/smollm2-135m.yaml"),
}];

const KE_SHIPPED: &[Shipped] = &[Shipped {
    path: "KE/smollm2-135m.yaml",
    family: Family::Llama,
    text: include_str!("../../../../hparams/KE/smollm2-135m.yaml"),
}];

const BUILTIN: &[MethodSpec] = &[
    MethodSpec {
        name: "ft-l",
        alg_name: "FT",
        family: MethodFamily::FineTuning,
        summary: "fine-tune MLP weights on the target read at the last prompt token",
        needs: &[],
        shipped: FT_SHIPPED,
        load: ft::Ft::load,
        trainer: None,
        without_statistics: None,
    },
    MethodSpec {
        name: "ft-m",
        alg_name: "FT",
        family: MethodFamily::FineTuning,
        summary: "fine-tune MLP weights on the teacher-forced target span",
        needs: &[],
        shipped: FT_SHIPPED,
        load: ft::Ft::load,
        trainer: None,
        without_statistics: None,
    },
    MethodSpec {
        name: "ft",
        alg_name: "FT",
        family: MethodFamily::FineTuning,
        summary: "fine-tuning with the objective the file names",
        needs: &[],
        shipped: FT_SHIPPED,
        load: ft::Ft::load,
        trainer: None,
        without_statistics: None,
    },
    MethodSpec {
        name: "rome",
        alg_name: "ROME",
        family: MethodFamily::LocateThenEdit,
        summary: "rank-one update of one MLP output projection (Meng et al. 2022)",
        needs: &[Need::KeyStatistics],
        shipped: ROME_SHIPPED,
        load: rome::Rome::load,
        trainer: None,
        without_statistics: Some("mom2_adjustment: false"),
    },
    MethodSpec {
        name: "r-rome",
        alg_name: "ROME",
        family: MethodFamily::LocateThenEdit,
        summary: "ROME with the key read from the prompt alone (Gupta et al. 2024)",
        needs: &[Need::KeyStatistics],
        shipped: ROME_SHIPPED,
        load: rome::Rome::load,
        trainer: None,
        without_statistics: Some("mom2_adjustment: false"),
    },
    MethodSpec {
        name: "memit",
        alg_name: "MEMIT",
        family: MethodFamily::LocateThenEdit,
        summary: "batches of facts spread over several MLP layers (Meng et al. 2023)",
        needs: &[Need::KeyStatistics],
        shipped: MEMIT_SHIPPED,
        load: memit::Memit::load,
        trainer: None,
        without_statistics: None,
    },
    MethodSpec {
        name: "emmet",
        alg_name: "EMMET",
        family: MethodFamily::LocateThenEdit,
        summary: "MEMIT with each layer's update under an equality constraint (Gupta et al. 2024)",
        needs: &[Need::KeyStatistics],
        shipped: EMMET_SHIPPED,
        load: memit::Memit::load,
        trainer: None,
        without_statistics: None,
    },
    MethodSpec {
        name: "pmet",
        alg_name: "PMET",
        family: MethodFamily::LocateThenEdit,
        summary: "MEMIT whose z* optimises attention and MLP outputs together and writes the MLP's (Li et al. 2024)",
        needs: &[Need::KeyStatistics],
        shipped: PMET_SHIPPED,
        load: memit::Memit::load,
        trainer: None,
        without_statistics: None,
    },
    MethodSpec {
        name: "alphaedit",
        alg_name: "AlphaEdit",
        family: MethodFamily::LocateThenEdit,
        summary: "MEMIT projected onto the null space of preserved keys (Fang et al. 2025)",
        needs: &[Need::KeyStatistics],
        shipped: ALPHAEDIT_SHIPPED,
        load: memit::Memit::load,
        trainer: None,
        without_statistics: None,
    },
    MethodSpec {
        name: "ike",
        alg_name: "IKE",
        family: MethodFamily::MemoryBased,
        summary: "in-context editing: retrieved demonstrations and the new fact as a context (Zheng et al. 2023)",
        needs: &[Need::RetrievalPool],
        shipped: IKE_SHIPPED,
        load: ike::Ike::load,
        trainer: None,
        without_statistics: None,
    },
    MethodSpec {
        name: "serac",
        alg_name: "SERAC",
        family: MethodFamily::MemoryBased,
        summary: "edit memory + trained scope classifier; in-scope inputs answered with their edit in context (Mitchell et al. 2022)",
        needs: &[Need::TrainedCheckpoint],
        shipped: SERAC_SHIPPED,
        load: serac::Serac::load,
        trainer: Some(serac::train::train),
        without_statistics: None,
    },
    MethodSpec {
        name: "grace",
        alg_name: "GRACE",
        family: MethodFamily::MemoryBased,
        summary: "a codebook at one layer: a hidden state near an edited prompt's key is replaced by a trained value (Hartvigsen et al. 2023)",
        needs: &[],
        shipped: GRACE_SHIPPED,
        load: grace::Grace::load,
        trainer: None,
        without_statistics: None,
    },
    MethodSpec {
        name: "wise",
        alg_name: "WISE",
        family: MethodFamily::MemoryBased,
        summary: "a side copy of one MLP projection, written in random subspace shards and routed by activation (Wang et al. 2024)",
        needs: &[],
        shipped: WISE_SHIPPED,
        load: wise::Wise::load,
        trainer: None,
        without_statistics: None,
    },
    MethodSpec {
        name: "mend",
        alg_name: "MEND",
        family: MethodFamily::MetaLearning,
        summary: "a trained hypernetwork maps the factors of the edit's gradient at MLP output projections to a low-rank update (Mitchell et al. 2022)",
        needs: &[Need::TrainedCheckpoint],
        shipped: MEND_SHIPPED,
        load: mend::Mend::load,
        trainer: Some(mend::train),
        without_statistics: None,
    },
    MethodSpec {
        name: "ke",
        alg_name: "KE",
        family: MethodFamily::MetaLearning,
        summary: "a trained hypernetwork, conditioned on the edit, gates and shifts the edit's gradient into an update (De Cao et al. 2021)",
        needs: &[Need::TrainedCheckpoint],
        shipped: KE_SHIPPED,
        load: ke::Ke::load,
        trainer: Some(ke::train),
        without_statistics: None,
    },
];

/// The methods a run can choose from.
#[derive(Clone)]
pub struct Registry {
    methods: Vec<MethodSpec>,
}

impl Registry {
    /// kedit's own methods.
    pub fn builtin() -> Self {
        Registry {
            methods: BUILTIN.to_vec(),
        }
    }

    /// Adds a method (or replaces one of the same name).
    pub fn register(&mut self, spec: MethodSpec) {
        self.methods.retain(|m| m.name != spec.name);
        self.methods.push(spec);
    }

    pub fn methods(&self) -> &[MethodSpec] {
        &self.methods
    }

    /// Every `--method` name, comma-separated (for help and errors).
    pub fn names(&self) -> String {
        self.methods
            .iter()
            .map(|m| m.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The method called `name` (case-insensitive).
    pub fn find(&self, name: &str) -> Result<&MethodSpec> {
        self.methods
            .iter()
            .find(|m| m.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                Error::config(format!("unknown method `{name}`; known: {}", self.names()))
            })
    }

    /// Builds `name` from a hyper-parameter file, or from the shipped default for `model`.
    pub fn load(&self, name: &str, hparams: Option<&Path>, model: &Model) -> Result<LoadedMethod> {
        let source = hparams.map(HparamsSource::read).transpose()?;
        self.load_source(name, source, model)
    }

    /// [`Registry::load`] from hyper-parameters already read.
    pub fn load_source(
        &self,
        name: &str,
        source: Option<HparamsSource>,
        model: &Model,
    ) -> Result<LoadedMethod> {
        let spec = self.find(name)?;
        let (source, warning) = match source {
            Some(s) => (s, None),
            None => spec.default_hparams(model),
        };
        if let Some(alg) = source.alg_name() {
            if !alg.eq_ignore_ascii_case(spec.alg_name) && !alg.eq_ignore_ascii_case(spec.name) {
                return Err(Error::config(format!(
                    "{}: alg_name is `{alg}`, but the method asked for is `{name}` (alg_name `{}`)",
                    source.origin.display(),
                    spec.alg_name
                )));
            }
        }
        let mut loaded = (spec.load)(&spec.name.to_ascii_lowercase(), source, model)?;
        loaded.warnings.extend(warning);
        Ok(loaded)
    }

    /// `name` with its shipped hyper-parameters for `model` and, when it cannot get the key
    /// statistics it reads and runs without them, the overrides that make it; the reason
    /// it runs without is returned beside the method.
    pub fn load_or_without_statistics(
        &self,
        name: &str,
        model: &Model,
        ctx: &crate::methods::EditContext,
    ) -> Result<(LoadedMethod, Option<String>)> {
        let loaded = self.load_source(name, None, model)?;
        let spec = self.find(name)?;
        let (Some(why), Some(overrides)) = (
            loaded.method.missing_statistics(model, ctx)?,
            spec.without_statistics,
        ) else {
            return Ok((loaded, None));
        };
        let (mut source, _) = spec.default_hparams(model);
        let extra = HparamsSource::parse(Path::new("built-in:overrides.yaml"), overrides)?;
        for (k, v) in extra.value.as_object().into_iter().flatten() {
            source.set(k, v.clone());
        }
        Ok((self.load_source(name, Some(source), model)?, Some(why)))
    }

    /// A table of every method: name, EasyEdit name, family, needs, trainer, summary.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for m in &self.methods {
            let needs: Vec<String> = m.needs.iter().map(Need::to_string).collect();
            out.push_str(&format!(
                "{:<9} {:<9} {:<17} {:<24} {}\n",
                m.name,
                m.alg_name,
                m.family.to_string(),
                if needs.is_empty() {
                    "-".to_string()
                } else {
                    needs.join(", ")
                },
                m.summary
            ));
        }
        out
    }
}

impl MethodSpec {
    /// The shipped hyper-parameters for `model`: the file written for its name, else one
    /// written for its architecture, else the first — with a warning naming the file used
    /// whenever it was not written for this model.
    pub fn default_hparams(&self, model: &Model) -> (HparamsSource, Option<String>) {
        if self.shipped.is_empty() {
            let empty = HparamsSource::parse(Path::new(&format!("built-in:{}", self.name)), "{}")
                .expect("an empty mapping parses");
            return (empty, None);
        }
        let label = normalised(&model_label(model));
        let parsed: Vec<(Shipped, HparamsSource)> = self
            .shipped
            .iter()
            .map(|s| (*s, builtin(s.path, s.text)))
            .collect();
        let by_name = parsed.iter().find(|(_, src)| {
            src.value
                .get("model_name")
                .and_then(|v| v.as_str())
                .map(normalised)
                .is_some_and(|n| !n.is_empty() && label.contains(&n))
        });
        if let Some((_, src)) = by_name {
            return (src.clone(), None);
        }
        let (chosen, src) = parsed
            .iter()
            .find(|(s, _)| s.family == model.config.family)
            .unwrap_or(&parsed[0]);
        let written_for = src
            .value
            .get("model_name")
            .and_then(|v| v.as_str())
            .unwrap_or("another model");
        let warning = format!(
            "no shipped {} hyper-parameters for this model ({}); using hparams/{} (written \
             for {written_for}, {:?}) — pass --hparams to choose",
            self.alg_name,
            model.config.family.hf_class(),
            chosen.path,
            chosen.family
        );
        (src.clone(), Some(warning))
    }
}

/// The model's name as a file or directory shows it (GGUF file stem, HF directory name or
/// `_name_or_path`).
fn model_label(model: &Model) -> String {
    let mut label = model
        .source
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(name) = model
        .hf_config
        .get("_name_or_path")
        .and_then(|v| v.as_str())
    {
        label.push(' ');
        label.push_str(name);
    }
    label
}

/// Lower case, letters and digits only: "SmolLM2-135M-Instruct" and
/// "smollm2_135m_instruct.Q4_1" compare.
fn normalised(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}
