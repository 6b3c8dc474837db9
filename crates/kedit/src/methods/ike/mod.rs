//! IKE (Zheng et al. 2023, "Can We Edit Factual Knowledge by In-Context Learning?"): no
//! weight changes. The edit is a context — `k` demonstrations retrieved with the sentence
//! encoder from a pool of training records, then `New Fact: {prompt} {target}` — put in
//! front of every input, which is then asked as `Prompt: {input}`. EasyEdit's IKE with its
//! hyper-parameter keys; see docs/memory-based.md for where its locality is weak and why.

mod demos;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::data::{self, Format, LoadOptions};
use crate::edit::{ContextEdit, Edit};
use crate::editor::Editor;
use crate::encoder::{SentenceEncoder, DEFAULT_ENCODER_DIR};
use crate::error::{Error, Result};
use crate::methods::{
    check_requests, filter_warnings, Computed, EditContext, EditMethod, HparamsSource,
    LoadedMethod, MethodReport,
};
use crate::model::Model;
use crate::progress::Progress;
use crate::request::EditRequest;
pub use demos::{demonstrations, new_fact, query, DemoStore};

/// Tokens kept free after the context for the input and its answer.
const ROOM_FOR_INPUT: usize = 256;

/// Where the retrieved demonstrations go relative to each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DemoOrder {
    /// The most similar first, as EasyEdit lists its search hits.
    #[default]
    MostSimilarFirst,
    /// The most similar last, next to the new fact.
    MostSimilarLast,
}

/// EasyEdit's IKE keys, and the pool EasyEdit takes as `train_ds` in code.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IkeHparams {
    /// An encoder directory, or `all-MiniLM-L6-v2` for the fetched default.
    #[serde(default = "default_encoder")]
    pub sentence_model_name: String,
    /// Demonstrations retrieved per edit.
    pub k: usize,
    /// Off: no demonstrations, only the new fact (EasyEdit's PROMPT method).
    #[serde(default = "default_true")]
    pub use_icl_examples: bool,
    /// The training records demonstrations are built from (relative paths: see
    /// `HparamsSource::path_key`).
    #[serde(default)]
    pub pool: Option<String>,
    /// Only the first this many records of `pool` (kedit's; EasyEdit slices `train_ds` in
    /// code): a smaller pool embeds in seconds rather than a minute, at some cost in how
    /// close the retrieved demonstrations are.
    #[serde(default)]
    pub pool_limit: Option<usize>,
    #[serde(default)]
    pub order: DemoOrder,
    /// EasyEdit's embedding cache directory; kedit caches in its own cache directory.
    #[serde(default, skip_serializing)]
    pub results_dir: Option<String>,
}

fn default_encoder() -> String {
    DEFAULT_ENCODER_DIR.into()
}

fn default_true() -> bool {
    true
}

pub struct Ike {
    hp: IkeHparams,
    encoder: Arc<SentenceEncoder>,
    /// The pool file and its records (empty without demonstrations).
    pool: Option<(PathBuf, Vec<EditRequest>)>,
    /// Built once per run, in `prepare` or at the first edit.
    store: Mutex<Option<Arc<DemoStore>>>,
    /// Malformed records of the pool file, left out.
    skipped: usize,
}

impl Ike {
    pub fn load(_name: &str, source: HparamsSource, _model: &Model) -> Result<LoadedMethod> {
        let (hp, unknown): (IkeHparams, _) = source.deserialize()?;
        if hp.use_icl_examples && hp.k == 0 {
            return Err(source.error("k", " must be at least 1 (or set use_icl_examples: false)"));
        }
        let encoder = Arc::new(SentenceEncoder::load(&SentenceEncoder::dir_named(
            &hp.sentence_model_name,
        ))?);
        let warnings = filter_warnings(&source.origin, unknown);
        let mut skipped = 0;
        let pool = if hp.use_icl_examples {
            let path = source.path_key("pool")?.ok_or_else(|| {
                source.error(
                    "pool",
                    " is missing: IKE retrieves its demonstrations from a file of training \
                     records (e.g. ../shared/data/zsre/zsre_mend_train-1k.json)",
                )
            })?;
            if hp.pool_limit == Some(0) {
                return Err(source.error("pool_limit", " must be at least 1 (or leave it out)"));
            }
            let opts = LoadOptions {
                skip_invalid: true,
                limit: hp.pool_limit,
            };
            let loaded = data::load(&path, Format::Auto, &opts)?;
            // Not a warning about the settings: the pool file's malformed records (ZsRE's
            // training file has two empty targets) are left out, and each edit's report says
            // how many.
            skipped = loaded.skipped.len();
            let records = loaded.requests;
            if records.is_empty() {
                return Err(Error::invalid(format!(
                    "{}: the retrieval pool holds no record",
                    path.display()
                )));
            }
            Some((path, records))
        } else {
            None
        };
        Ok(LoadedMethod {
            warnings,
            hparams_origin: source.origin.clone(),
            method: Box::new(Ike {
                hp,
                encoder,
                pool,
                store: Mutex::new(None),
                skipped,
            }),
        })
    }

    fn store(
        &self,
        ctx: &EditContext,
        progress: &mut dyn Progress,
    ) -> Result<Option<Arc<DemoStore>>> {
        let Some((path, records)) = &self.pool else {
            return Ok(None);
        };
        let mut slot = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slot.as_ref() {
            return Ok(Some(s.clone()));
        }
        let built = Arc::new(DemoStore::build(
            path,
            records,
            &self.encoder,
            &ctx.cache,
            progress,
        )?);
        *slot = Some(built.clone());
        Ok(Some(built))
    }
}

impl EditMethod for Ike {
    fn name(&self) -> &str {
        if self.hp.use_icl_examples {
            "IKE"
        } else {
            "PROMPT"
        }
    }

    fn max_batch(&self) -> Option<usize> {
        None
    }

    fn hparams_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.hp).expect("hyper-parameters serialise")
    }

    fn prepare(
        &self,
        _original: &Model,
        ctx: &EditContext,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        self.store(ctx, progress).map(|_| ())
    }

    fn compute(
        &self,
        system: &Editor,
        requests: &[EditRequest],
        ctx: &EditContext,
    ) -> Result<Computed> {
        let model = system.model();
        check_requests(self, model, requests)?;
        let mut report = MethodReport::default();
        let mut prefix = String::new();
        if let Some(store) = report.timed("demonstrations", |_| self.store(ctx, &mut ()))? {
            let hits = report.timed("retrieve", |_| {
                let queries: Vec<String> = requests.iter().map(query).collect();
                store.nearest(&self.encoder.embed(&queries)?, self.hp.k)
            })?;
            if let (Some(first), Some(last)) = (hits.first(), hits.last()) {
                report.note("similarity", format!("{:.3}..{:.3}", last.1, first.1));
            }
            let mut chosen: Vec<&str> = hits
                .iter()
                .map(|&(i, _)| store.sentences[i].as_str())
                .collect();
            if self.hp.order == DemoOrder::MostSimilarLast {
                chosen.reverse();
            }
            prefix.extend(chosen);
        }
        prefix.extend(requests.iter().map(new_fact));
        let tok = model.tokenizer()?;
        let held: usize = system
            .contexts()
            .iter()
            .map(|c| tok.encode(&c.prefix).map(|t| t.len()))
            .sum::<Result<usize>>()?;
        let own = tok.encode(&prefix)?.len();
        let limit = model.config.max_positions.saturating_sub(ROOM_FOR_INPUT);
        if held + own > limit {
            return Err(Error::EditRefused(format!(
                "the context would be {} tokens ({held} already held + {own} for this edit); \
                 the model reads {} and {ROOM_FOR_INPUT} are kept for the input — fewer \
                 demonstrations (k) or fewer edits in sequence",
                held + own,
                model.config.max_positions
            )));
        }
        report.note("context_tokens", own);
        if self.skipped > 0 {
            report.note("pool_records_left_out", self.skipped);
        }
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("method".into(), self.name().to_string());
        meta.insert(
            "requests".into(),
            requests
                .iter()
                .map(|r| r.case_id.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        Ok(Computed {
            edit: Edit::Context(ContextEdit {
                prefix,
                lead: "Prompt: ".into(),
                meta,
            }),
            report,
        })
    }
}
