//! ROME (Meng et al., 2022): locate a fact in one MLP and rewrite it with a rank-one update.
//!
//! For a request (prompt about `subject` → `target`) at layer l:
//! 1. context templates: short model-written prefixes so the edit generalises;
//! 2. k* — the key at the subject's last token, averaged over the templates;
//! 3. u = C⁻¹k* (C = E[kkᵀ] over a corpus, with `mom2_adjustment`), normalised;
//! 4. v* — the MLP output that makes the model say the target (an optimisation);
//! 5. ΔW = (v* − W k) uᵀ / (uᵀk), with k the prompt key (ROME) or k* (R-ROME).

pub mod key;
pub mod moment;
pub mod templates;
pub mod update;
pub mod value;
pub mod wordings;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::edit::{Delta, WeightEdit};
use crate::editor::Editor;
use crate::error::{Error, Result};
use crate::methods::hparams::{
    lenient_f64, HparamsSource, MAX_FACTOR, MAX_LR, MAX_STEPS, MAX_STOP_LOSS,
};
use crate::methods::{
    check_subject_request, filter_warnings, Computed, EditContext, EditMethod, LoadedMethod,
    MethodReport,
};
use crate::model::{BlockParam, Model, ParamId};
use crate::progress::{Progress, Silent};
use crate::prompts::{answer_boundaries, fill, lookup, subject_template, target_ids, FactToken};
use crate::request::EditRequest;
use crate::stats::{
    cached_key_stats, require_key_stats, MixedSource, Precision, RecordSelection, StatsRequest,
};
use key::{key_star, keys_at, Lookup};
use moment::KeyCovariance;
use templates::{TemplateCache, TemplateSpec};
use value::{value_star, KlAt, ValueHparams, ValuePrompts};
use wordings::{WordingBank, WordingSource};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RomeHparams {
    pub layers: Vec<usize>,
    pub fact_token: FactToken,
    pub v_num_grad_steps: usize,
    #[serde(deserialize_with = "lenient_f64")]
    pub v_lr: f64,
    /// Accepted for compatibility: the loss is always read at the final logits (which is
    /// what EasyEdit's `v_loss_layer` = last layer amounts to).
    #[serde(default)]
    pub v_loss_layer: Option<usize>,
    #[serde(deserialize_with = "lenient_f64")]
    pub v_weight_decay: f64,
    #[serde(deserialize_with = "lenient_f64")]
    pub clamp_norm_factor: f64,
    #[serde(deserialize_with = "lenient_f64")]
    pub kl_factor: f64,
    pub mom2_adjustment: bool,
    pub context_template_length_params: Vec<(usize, usize)>,
    pub rewrite_module_tmp: String,
    /// A corpus path, or a name (EasyEdit's "wikipedia"); `--corpus` takes precedence.
    #[serde(default = "default_mom2_dataset")]
    pub mom2_dataset: String,
    #[serde(default = "default_mom2_n_samples")]
    pub mom2_n_samples: usize,
    #[serde(default = "default_mom2_dtype")]
    pub mom2_dtype: String,
    /// Further corpora for C, each weighted (a kedit extension; see [`Mom2Source`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mom2_extra: Vec<Mom2Source>,
    /// R-ROME: use the template-averaged key k* in the update as well (consistent keys).
    #[serde(default)]
    pub enable_random_prefix_keys: bool,
    /// Stop the v* optimisation below this loss (EasyEdit hard-codes 5e-2).
    #[serde(default = "default_v_early_stop", deserialize_with = "lenient_f64")]
    pub v_early_stop_loss: f64,
    /// Also stop once the target's NLL alone (mean over the rewriting prompts) is below this
    /// (a kedit extension; the total loss keeps the weight decay and KL terms, which need
    /// not fall below `v_early_stop_loss` however well the target is learnt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v_early_stop_nll: Option<f64>,
    /// Where the KL term reads "{subject} is a": `subject` (ROME: at the subject's last token),
    /// `last` (the word after "is a") or `both` (a kedit extension).
    #[serde(default)]
    pub kl_at: KlAt,
    /// Seed of the context-template sampling.
    #[serde(default)]
    pub context_template_seed: u64,
    /// Requests whose v* (MEMIT: z*) are optimised together in shared forward passes (a
    /// kedit extension; the results are the same, only the speed and memory change).
    #[serde(
        default = "default_v_batch_requests",
        skip_serializing_if = "is_default_wave"
    )]
    pub v_batch_requests: usize,
    /// Also train the answer to end after the target: each rewriting prompt scores
    /// −log p(a token that ends the answer) after the target's tokens (a kedit extension;
    /// see docs/mass-editing.md, "Free generation").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub v_answer_end: bool,
    /// Other wordings of each request's question, from a training file's prompts and
    /// paraphrases, added to v*'s prompts (a kedit extension; [`wordings`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v_wordings: Option<WordingSource>,
}

/// A further corpus for the key statistics: `dataset` is a corpus file (as `mom2_dataset`),
/// or with `fields` and `records` a dataset file whose records `[start, end)` make one
/// document each of those fields joined by a space. Its keys count `weight` times in C.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mom2Source {
    pub dataset: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<[usize; 2]>,
    #[serde(deserialize_with = "lenient_f64")]
    pub weight: f64,
}

impl Mom2Source {
    /// The source as the statistics take it; its file must exist.
    fn mixed(&self, index: usize) -> Result<MixedSource> {
        let corpus = Cache::resolve_relative(Path::new(&self.dataset)).ok_or_else(|| {
            Error::config(format!(
                "mom2_extra[{index}].dataset: `{}` is not a file (relative paths are read from \
                 the working directory or the repository root)",
                self.dataset
            ))
        })?;
        let selection = self.records.map(|[start, end]| RecordSelection {
            fields: self.fields.clone(),
            start,
            end,
        });
        Ok(MixedSource {
            corpus,
            selection,
            weight: self.weight,
        })
    }

    fn check(&self, index: usize, source: &HparamsSource) -> Result<()> {
        let key = format!("mom2_extra[{index}]");
        if self.dataset.trim().is_empty() {
            return Err(source.error(&key, ": `dataset` is empty"));
        }
        if !(self.weight.is_finite() && self.weight > 0.0 && self.weight <= MAX_FACTOR) {
            return Err(source.error(
                &key,
                &format!(
                    ": `weight` is {}; it must be positive and at most {MAX_FACTOR}",
                    self.weight
                ),
            ));
        }
        match (self.fields.is_empty(), self.records) {
            (true, None) => Ok(()),
            (false, Some([start, end])) if start < end => Ok(()),
            (false, Some([start, end])) => Err(source.error(
                &key,
                &format!(": `records` [{start}, {end}] is empty (it is [start, end), from 0)"),
            )),
            _ => Err(source.error(
                &key,
                ": `fields` and `records` go together (the records' fields make the documents)",
            )),
        }
    }
}

fn default_v_batch_requests() -> usize {
    value::DEFAULT_WAVE
}

fn is_default_wave(n: &usize) -> bool {
    *n == value::DEFAULT_WAVE
}

/// The most documents `mom2_n_samples` may ask for.
pub const MAX_MOM2_SAMPLES: usize = 10_000_000;

impl RomeHparams {
    /// Every key against its range (see `docs/reliability.md`); the rewritten parameters
    /// by layer.
    /// Checks every key's range; returns the edited (layer, parameter) pairs.
    pub(crate) fn check(
        &self,
        source: &HparamsSource,
        model: &Model,
    ) -> Result<Vec<(usize, ParamId)>> {
        source.check_layers("layers", &self.layers, model)?;
        let ids = source.resolve_modules(
            "rewrite_module_tmp",
            &self.rewrite_module_tmp,
            &self.layers,
            model,
        )?;
        let mut params = Vec::new();
        for (&l, id) in self.layers.iter().zip(ids) {
            if id != ParamId::mlp_out(l) {
                return Err(source.error(
                    "rewrite_module_tmp",
                    &format!(" names `{id}`; ROME rewrites the MLP output projection"),
                ));
            }
            params.push((l, id));
        }
        source
            .check("v_num_grad_steps", self.v_num_grad_steps as f64)
            .in_range(1.0, MAX_STEPS as f64)?;
        source
            .check("v_lr", self.v_lr)
            .positive()?
            .at_most(MAX_LR)?;
        source
            .check("v_weight_decay", self.v_weight_decay)
            .in_range(0.0, MAX_FACTOR)?;
        // 0 would clamp δ to nothing: v* = v₀ and the update would change nothing.
        source
            .check("clamp_norm_factor", self.clamp_norm_factor)
            .positive()?;
        source
            .check("kl_factor", self.kl_factor)
            .in_range(0.0, MAX_FACTOR)?;
        templates::check_length_params(&self.context_template_length_params)
            .map_err(|e| source.error("context_template_length_params", &format!(": {e}")))?;
        if self.mom2_dataset.trim().is_empty() {
            return Err(source.error(
                "mom2_dataset",
                " is empty (a corpus file, or a name such as \"wikipedia\": cached statistics)",
            ));
        }
        source
            .check("mom2_n_samples", self.mom2_n_samples as f64)
            .in_range(1.0, MAX_MOM2_SAMPLES as f64)?;
        self.mom2_dtype
            .parse::<Precision>()
            .map_err(|e| source.error("mom2_dtype", &format!(": {e}")))?;
        for (i, extra) in self.mom2_extra.iter().enumerate() {
            extra.check(i, source)?;
        }
        source
            .check("v_early_stop_loss", self.v_early_stop_loss)
            .in_range(0.0, MAX_STOP_LOSS)?;
        if let Some(nll) = self.v_early_stop_nll {
            source
                .check("v_early_stop_nll", nll)
                .in_range(0.0, MAX_STOP_LOSS)?;
        }
        source
            .check("v_batch_requests", self.v_batch_requests as f64)
            .in_range(1.0, 4096.0)?;
        if let Some(wordings) = &self.v_wordings {
            WordingBank::load(wordings)
                .map_err(|e| source.error("v_wordings", &format!(": {e}")))?;
        }
        Ok(params)
    }
}

fn default_mom2_dataset() -> String {
    "wikipedia".into()
}
fn default_mom2_n_samples() -> usize {
    100_000
}
fn default_mom2_dtype() -> String {
    "float32".into()
}
fn default_v_early_stop() -> f64 {
    5e-2
}

/// A request's prompts as ROME and MEMIT optimise and read them.
pub(crate) struct RequestPrompts {
    pub rewriting: Vec<Lookup>,
    /// Other wordings of the question (`v_wordings`): v*'s prompts, not the key's.
    pub wordings: Vec<Lookup>,
    pub kl: Vec<Lookup>,
    pub plain: Vec<Lookup>,
    pub target: Vec<u32>,
}

impl RequestPrompts {
    /// What v* (z*) is optimised over: the rewriting prompts, then the other wordings.
    pub fn value_rewriting(&self) -> Vec<Lookup> {
        self.rewriting
            .iter()
            .chain(&self.wordings)
            .cloned()
            .collect()
    }
}

pub struct Rome {
    name: String,
    hp: RomeHparams,
    params: Vec<(usize, ParamId)>,
    /// Context templates per template spec, sampled from the unedited model: the one given
    /// to `prepare`, else the first one `compute` is given (EasyEdit also samples them once
    /// per process). Never from an edited model: in sequential mode every edit would then
    /// see other templates, and a resumed run others than an uninterrupted one.
    templates: TemplateCache,
    /// The factorised C per (layer, fingerprint of the weights below the key).
    covariances: Mutex<HashMap<(usize, u64), Arc<KeyCovariance>>>,
    /// The tokens that end an answer, when `v_answer_end` asks for them (read once).
    answer_end: Mutex<Option<Tensor>>,
    /// The wordings `v_wordings` names (read once).
    wordings: Mutex<Option<Arc<WordingBank>>>,
}

impl Rome {
    pub fn load(name: &str, source: HparamsSource, model: &Model) -> Result<LoadedMethod> {
        let (mut hp, unknown): (RomeHparams, _) = source.deserialize()?;
        if name == "r-rome" {
            hp.enable_random_prefix_keys = true;
        }
        let mut params = hp.check(&source, model)?;
        params.sort_by_key(|(l, _)| *l);
        let display = if hp.enable_random_prefix_keys {
            "R-ROME"
        } else {
            "ROME"
        };
        let mut warnings = filter_warnings(&source.origin, unknown);
        warnings.extend(
            templates::count_warnings(&hp.context_template_length_params).map(|w| {
                format!(
                    "{}: `context_template_length_params`: {w}",
                    source.origin.display()
                )
            }),
        );
        let last = model.config.n_layers - 1;
        if let Some(l) = hp.v_loss_layer.filter(|&l| l != last) {
            warnings.push(format!(
                "{}: `v_loss_layer: {l}` is ignored: the loss is read at the final logits \
                 (after layer {last})",
                source.origin.display()
            ));
        }
        Ok(LoadedMethod {
            warnings,
            hparams_origin: source.origin.clone(),
            method: Box::new(Rome {
                name: display.into(),
                hp,
                params,
                templates: TemplateCache::default(),
                covariances: Mutex::new(HashMap::new()),
                answer_end: Mutex::new(None),
                wordings: Mutex::new(None),
            }),
        })
    }

    /// A ROME over checked hyper-parameters, for methods built on its parts (MEMIT).
    pub(crate) fn with_hparams(name: &str, hp: RomeHparams, params: Vec<(usize, ParamId)>) -> Rome {
        Rome {
            name: name.into(),
            hp,
            params,
            templates: TemplateCache::default(),
            covariances: Mutex::new(HashMap::new()),
            answer_end: Mutex::new(None),
            wordings: Mutex::new(None),
        }
    }

    pub fn hparams(&self) -> &RomeHparams {
        &self.hp
    }

    fn template_spec(&self, ctx: &EditContext) -> TemplateSpec {
        TemplateSpec {
            length_params: self.hp.context_template_length_params.clone(),
            seed: self.hp.context_template_seed ^ ctx.seed,
        }
    }

    pub(crate) fn templates(&self, model: &Model, ctx: &EditContext) -> Result<Vec<String>> {
        self.templates
            .get(model, self.template_spec(ctx), &ctx.cache)
    }

    /// The corpus and sample count for C: `--corpus` (the context's), else `mom2_dataset`
    /// when it names a file; `None` means "use whatever statistics are cached".
    fn stats_request(&self, layer: usize, ctx: &EditContext) -> Result<Option<StatsRequest>> {
        self.stats_request_for(vec![layer], ctx)
    }

    /// [`Self::stats_request`] for several layers, computed in one pass.
    pub(crate) fn stats_request_for(
        &self,
        layers: Vec<usize>,
        ctx: &EditContext,
    ) -> Result<Option<StatsRequest>> {
        let corpus: Option<PathBuf> = ctx
            .corpus
            .clone()
            .or_else(|| Cache::resolve_relative(Path::new(&self.hp.mom2_dataset)));
        let Some(corpus) = corpus else {
            if !self.hp.mom2_extra.is_empty() {
                // Cached statistics of an unknown corpus cannot be mixed faithfully.
                return Err(Error::config(format!(
                    "mom2_extra needs the main corpus too, but `mom2_dataset: {}` is not a file \
                     and no --corpus was given",
                    self.hp.mom2_dataset
                )));
            }
            return Ok(None);
        };
        let mut request = StatsRequest::new(layers, corpus);
        request.n_docs = self.hp.mom2_n_samples;
        request.precision = self.hp.mom2_dtype.parse::<Precision>()?;
        request.mix = self
            .hp
            .mom2_extra
            .iter()
            .enumerate()
            .map(|(i, s)| s.mixed(i))
            .collect::<Result<_>>()?;
        Ok(Some(request))
    }

    /// C of `layer` factorised, with `mom2_adjustment` (None without).
    fn key_covariance(
        &self,
        model: &Model,
        layer: usize,
        ctx: &EditContext,
        report: &mut MethodReport,
    ) -> Result<Option<Arc<KeyCovariance>>> {
        if !self.hp.mom2_adjustment {
            return Ok(None);
        }
        // Keyed by the weights the keys depend on: an edit of this layer's output
        // projection (ours) keeps C valid, an edit below it does not.
        let key = (layer, model.key_fingerprint(layer)?);
        if let Some(c) = self.covariances.lock().expect("lock").get(&key) {
            return Ok(Some(c.clone()));
        }
        let request = self.stats_request(layer, ctx)?;
        // Normally cached by `prepare`, which reports the long computation's progress.
        let stats = require_key_stats(model, layer, request.as_ref(), &ctx.cache, &mut Silent)?;
        let c = Arc::new(KeyCovariance::from_stats(&stats)?);
        report.note("mom2_tokens", c.n_tokens);
        report.note("mom2_ridge", format!("{:.3e}", c.ridge));
        self.covariances
            .lock()
            .expect("lock")
            .insert(key, c.clone());
        Ok(Some(c))
    }

    /// The bank `v_wordings` names, read on first use.
    fn wording_bank(&self) -> Result<Option<Arc<WordingBank>>> {
        let Some(source) = &self.hp.v_wordings else {
            return Ok(None);
        };
        let mut cached = self.wordings.lock().expect("lock");
        if cached.is_none() {
            *cached = Some(Arc::new(WordingBank::load(source)?));
        }
        Ok(cached.clone())
    }

    /// The settings of the v* optimisation (MEMIT's z* uses the same).
    pub(crate) fn value_hparams(&self, model: &Model) -> Result<ValueHparams> {
        let answer_end = if self.hp.v_answer_end {
            let mut cached = self.answer_end.lock().expect("lock");
            if cached.is_none() {
                let ends: Vec<f32> = answer_boundaries(model.tokenizer()?)?
                    .into_iter()
                    .map(|e| if e { 1.0 } else { 0.0 })
                    .collect();
                *cached = Some(Tensor::new(ends.as_slice(), model.device())?);
            }
            cached.clone()
        } else {
            None
        };
        Ok(ValueHparams {
            steps: self.hp.v_num_grad_steps,
            lr: self.hp.v_lr,
            weight_decay: self.hp.v_weight_decay,
            clamp_norm_factor: self.hp.clamp_norm_factor,
            kl_factor: self.hp.kl_factor,
            kl_at: self.hp.kl_at,
            early_stop_loss: self.hp.v_early_stop_loss,
            early_stop_nll: self.hp.v_early_stop_nll.unwrap_or(0.0),
            groups: value::DEFAULT_GROUPS,
            wave: self.hp.v_batch_requests,
            answer_end,
            attention: false,
        })
    }

    /// A request's prompts, tokenised with their looked-up subject tokens: the context
    /// templates filled with the prompt (the rewriting prompts; the bare prompt first), the
    /// KL prompt "{subject} is a", the bare prompt, and the target's tokens.
    pub(crate) fn request_prompts(
        &self,
        model: &Model,
        r: &EditRequest,
        ctx: &EditContext,
        report: &mut MethodReport,
    ) -> Result<RequestPrompts> {
        let tok = model.tokenizer()?;
        let prompt = subject_template(&r.prompt, &r.subject)?;
        let target = target_ids(tok, &r.target_new)?;
        let templates = report.timed("templates", |_| self.templates(model, ctx))?;
        let contexts: Vec<String> = templates.iter().map(|t| fill(t, &prompt)).collect();
        let strategy = self.hp.fact_token;
        let lookups = |texts: &[String]| -> Result<Vec<Lookup>> {
            texts
                .iter()
                .map(|t| {
                    lookup(tok, t, &r.subject, strategy).map(|(ids, index)| Lookup { ids, index })
                })
                .collect()
        };
        let wordings = match self.wording_bank()? {
            Some(bank) => bank.wordings(&prompt),
            None => Vec::new(),
        };
        Ok(RequestPrompts {
            rewriting: lookups(&contexts)?,
            wordings: lookups(&wordings)?,
            kl: lookups(&["{} is a".to_string()])?,
            plain: lookups(std::slice::from_ref(&prompt))?,
            target,
        })
    }

    /// Edits one request at one layer of `model`.
    fn edit_layer(
        &self,
        model: &Model,
        r: &EditRequest,
        layer: usize,
        param: ParamId,
        ctx: &EditContext,
        report: &mut MethodReport,
    ) -> Result<Delta> {
        let prompts = self.request_prompts(model, r, ctx, report)?;
        if self.hp.v_wordings.is_some() {
            report.note("v_wordings", prompts.wordings.len());
        }
        let value_rewriting = prompts.value_rewriting();
        let RequestPrompts {
            rewriting,
            kl,
            plain,
            target,
            ..
        } = prompts;

        let covariance = report.timed("statistics", |report| {
            self.key_covariance(model, layer, ctx, report)
        })?;
        let (k_star, u) = report.timed("key", |_| {
            let k_star = key_star(model, layer, &rewriting)?;
            let direction = match &covariance {
                Some(c) => c.solve(&k_star)?,
                None => k_star.clone(),
            };
            Ok((k_star, update::left_vector(&direction)?))
        })?;
        let vh = self.value_hparams(model)?;
        let v = report.timed("value", |report| {
            let prompts = ValuePrompts {
                layer,
                rewriting: &value_rewriting,
                target: &target,
                kl: &kl,
            };
            value_star(model, &prompts, &vh, &mut report.log)
        })?;
        report.note("v_iterations", v.iterations);
        report.note("v_loss", format!("{:.4}", v.loss));
        report.note("v_target_prob", format!("{:.4}", v.target_prob));
        report.timed("update", |_| {
            let k = if self.hp.enable_random_prefix_keys {
                k_star.clone()
            } else {
                keys_at(model, layer, &plain)?.squeeze(0)?
            };
            let w = model.params.require(param)?;
            let bias = model.params.get(ParamId::Block(layer, BlockParam::OutBias));
            update::rank_one_update(w, bias, &k, &v.v_star()?, &u)
        })
    }
}

impl EditMethod for Rome {
    fn name(&self) -> &str {
        &self.name
    }

    fn prepare(
        &self,
        original: &Model,
        ctx: &EditContext,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        self.templates
            .take_from(original, self.template_spec(ctx), &ctx.cache)?;
        if !self.hp.mom2_adjustment {
            return Ok(());
        }
        for &(layer, _) in &self.params {
            if let Some(request) = self.stats_request(layer, ctx)? {
                require_key_stats(original, layer, Some(&request), &ctx.cache, progress)?;
            }
        }
        Ok(())
    }

    fn missing_statistics(&self, model: &Model, ctx: &EditContext) -> Result<Option<String>> {
        if !self.hp.mom2_adjustment {
            return Ok(None);
        }
        for &(layer, _) in &self.params {
            let request = self.stats_request(layer, ctx)?;
            if request.is_none() && cached_key_stats(model, layer, None, &ctx.cache)?.is_none() {
                return Ok(Some(format!(
                    "no key statistics of layer {layer} are cached and no corpus is given \
                     (`mom2_dataset: {}` is not a file)",
                    self.hp.mom2_dataset
                )));
            }
        }
        Ok(None)
    }

    fn max_batch(&self) -> Option<usize> {
        Some(1)
    }

    fn hparams_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.hp).expect("hyper-parameters serialise")
    }

    /// The subject must occur in the prompt; the prompt and target, behind the longest
    /// context template, must fit the model's context.
    fn check_request(&self, model: &Model, request: &EditRequest) -> Result<()> {
        let longest = self
            .hp
            .context_template_length_params
            .iter()
            .map(|&(len, _)| len + 2) // + ". "
            .max()
            .unwrap_or(0);
        check_subject_request(model, request, longest)
    }

    fn compute(
        &self,
        system: &Editor,
        requests: &[EditRequest],
        ctx: &EditContext,
    ) -> Result<Computed> {
        let model = system.model();
        let mut report = MethodReport::default();
        let [r] = requests else {
            return Err(Error::invalid(format!(
                "{} edits one request at a time; got {}",
                self.name,
                requests.len()
            )));
        };
        self.check_request(model, r)?;
        let mut edit = WeightEdit::new();
        // Several layers are edited in order, each on the model the previous ones changed.
        let mut current = model.clone();
        for &(layer, param) in &self.params {
            let delta = self.edit_layer(&current, r, layer, param, ctx, &mut report)?;
            if self.params.len() > 1 {
                let updated = delta.added_to(current.params.require(param)?)?;
                current.params.replace(param, updated)?;
            }
            edit.push(param, delta);
        }
        edit.meta.insert("method".into(), self.name.clone());
        edit.meta.insert("case_id".into(), r.case_id.clone());
        Ok(Computed {
            edit: edit.into(),
            report,
        })
    }
}
