//! MEMIT (Meng et al., 2023): many facts at once, spread over several layers.
//!
//! For a batch of requests and edited layers l₁ < … < l_L (MLP output projections):
//! 1. z*: for each request, the residual stream after the last edited layer that makes the
//!    model say the target — found by ROME's own v* optimisation at that layer (adding δ to
//!    the MLP output there is adding it to the residual: z* = h + δ);
//! 2. for each layer in ascending order, on the model the lower layers already changed:
//!    the keys K (each request's key at its subject, averaged over the context templates),
//!    the residual still missing R = (z* − h)/(layers left), and ΔW = R Kᵀ(λC + KKᵀ)⁻¹
//!    ([`spread`]), C the layer's key statistics of the unedited model, λ =
//!    `mom2_update_weight`.
//!
//! EMMET (Gupta et al., 2024) is the same procedure with each layer's update under an
//! equality constraint instead ([`spread`]); `--method emmet` with EasyEdit's EMMET keys
//! (`emmet_lambda`, `update_norm_lambda`).
//!
//! PMET (Li et al., 2024) optimises two δs at the last edited layer together — on the
//! attention output and on the MLP output — and writes only the MLP's: z* is the MLP output
//! plus its δ, the gap each layer closes is z* − (the MLP output of the last layer on the
//! model as edited so far), and each layer takes 1/√(layers left) of it (EasyEdit's PMET;
//! the attention δ carries the part of the fact attention should, and is not written).
//!
//! AlphaEdit (Fang et al., 2025) is the same procedure with each layer's update projected
//! onto the null space of the layer's key statistics and kept off the keys of the edits
//! already applied ([`nullspace`]); `--method alphaedit` with EasyEdit's AlphaEdit keys
//! (`nullspace_threshold`, `L2`). Each AlphaEdit edit carries the keys it wrote
//! ([`WeightEdit::keys`]): like AlphaEdit's code (and EasyEdit's), they are read again
//! after every edited layer has been updated, on the edited model; the next call sums
//! KKᵀ over the keys of the edits the editor holds at that moment ([`Editor::applied_keys`]),
//! so reverting, restoring a checkpoint, saving and reloading edits and resuming a
//! sequential run all keep C_prev what the applied edits say it is.
//!
//! The hyper-parameters are EasyEdit's MEMIT file: ROME's keys plus `mom2_update_weight`
//! (and `layer_selection: all`); MEMIT's fixed context templates (five of ten tokens and
//! the bare prompt) are the default when `context_template_length_params` is absent.

pub mod nullspace;
pub mod reads;
pub mod spread;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor};
use faer::Mat;
use serde::{Deserialize, Serialize};

use crate::edit::WeightEdit;
use crate::editor::Editor;
use crate::error::{Error, Result};
use crate::methods::hparams::{lenient_f64, lenient_optional_f64, HparamsSource};
use crate::methods::rome::key::Lookup;
use crate::methods::rome::moment::moment_matrix;
use crate::methods::rome::value::{value_stars, ValuePrompts, POOL_GROUPS};
use crate::methods::rome::{RequestPrompts, Rome, RomeHparams};
use crate::methods::{
    filter_warnings, Computed, EditContext, EditMethod, LoadedMethod, MethodReport,
};
use crate::model::{Model, ParamId};
use crate::progress::{Progress, Silent};
use crate::request::EditRequest;
use crate::runtime::Site;
use crate::stats::{cached_key_stats, key_stats, require_key_stats};
use nullspace::{accumulated, null_space_projection, null_space_update, Projection};
use reads::LayerReads;
use spread::{layer_update, Objective};

/// MEMIT's own keys, beside ROME's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemitExtra {
    /// λ: how strongly the keys the corpus statistics describe are kept in place.
    #[serde(deserialize_with = "lenient_f64")]
    pub mom2_update_weight: f64,
    /// EasyEdit's `layer_selection`; only `all` (every layer in `layers`) exists.
    #[serde(default)]
    pub layer_selection: Option<String>,
    /// EMMET: the ridge ε on D = KᵀC'⁻¹K (EasyEdit: 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emmet_lambda: Option<f64>,
    /// EMMET: μ in C' = wC + μI (EasyEdit: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_norm_lambda: Option<f64>,
    /// PMET: the modules written; only the MLP output projection (EasyEdit's PMET files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_module_tmps: Option<Vec<String>>,
    /// PMET: the NLL's weight in the z* loss; only 1 (EasyEdit's files) is supported.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_optional_f64"
    )]
    pub nll_loss_factor: Option<f64>,
    /// AlphaEdit: eigenvalues of C below this span the null space its updates are
    /// projected onto (AlphaEdit and EasyEdit: 2e-2).
    #[serde(
        default,
        deserialize_with = "lenient_some_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub nullspace_threshold: Option<f64>,
    /// AlphaEdit: the ridge L2·I of its solve (AlphaEdit's files: 10; EasyEdit's LLaMA-3: 1).
    #[serde(
        default,
        rename = "L2",
        deserialize_with = "lenient_some_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub l2: Option<f64>,
    /// EasyEdit's AlphaEdit: a file of P computed beforehand (a PyTorch pickle). kedit
    /// computes P from the key statistics and does not read it.
    #[serde(default, rename = "P_loc", skip_serializing)]
    pub p_loc: Option<String>,
}

/// Which of the MEMIT-like procedures runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// MEMIT and EMMET: z* on the residual stream, shares 1/(layers left).
    Residual,
    /// PMET: z* on the MLP output (with an attention δ beside it), shares 1/√(layers left).
    Pmet,
}

/// [`lenient_f64`] for an optional key.
fn lenient_some_f64<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<f64>, D::Error> {
    lenient_f64(d).map(Some)
}

/// AlphaEdit's defaults (its own files and EasyEdit's agree on the threshold; the ridge is
/// the paper code's).
const NULLSPACE_THRESHOLD: f64 = 2e-2;
const L2: f64 = 10.0;

/// How a layer's update is solved.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Solver {
    /// MEMIT's or EMMET's solve with C ([`spread`]).
    Spread(Objective),
    /// AlphaEdit's null-space projected solve ([`nullspace`]).
    NullSpace { threshold: f64, l2: f64 },
}

pub struct Memit {
    name: String,
    variant: Variant,
    /// MEMIT's soft constraint, EMMET's equality constraint or AlphaEdit's projection.
    solver: Solver,
    /// ROME's parts: context templates, prompts, the v* optimisation, statistics requests.
    rome: Rome,
    extra: MemitExtra,
    /// Edited (layer, parameter), ascending.
    params: Vec<(usize, ParamId)>,
    /// C per layer, of the unedited model. Edits below a layer change its keys, but MEMIT
    /// keeps the statistics of the model it started from (so does EasyEdit): recomputing them
    /// after every batch would cost minutes and would let a stream of edits drift its prior.
    moments: Mutex<HashMap<usize, Arc<Mat<f64>>>>,
    /// AlphaEdit: P per layer, from the same C (which is then not kept).
    projections: Mutex<HashMap<usize, Arc<Projection>>>,
}

impl Memit {
    pub fn load(name: &str, mut source: HparamsSource, model: &Model) -> Result<LoadedMethod> {
        if source.value.get("context_template_length_params").is_none() {
            source.set(
                "context_template_length_params",
                serde_json::json!([[10, 5]]),
            );
        }
        let (hp, unknown_rome): (RomeHparams, Vec<String>) = source.deserialize()?;
        let (extra, unknown_extra): (MemitExtra, Vec<String>) = source.deserialize()?;
        let unknown: Vec<String> = unknown_rome
            .into_iter()
            .filter(|k| unknown_extra.contains(k))
            .collect();
        let mut params = hp.check(&source, model)?;
        params.sort_by_key(|(l, _)| *l);
        source
            .check("mom2_update_weight", extra.mom2_update_weight)
            .in_range(0.0, 1e12)?;
        if !hp.mom2_adjustment {
            return Err(source.error(
                "mom2_adjustment",
                " is false; MEMIT solves with the key statistics C (λC + KKᵀ) and needs them",
            ));
        }
        if let Some(sel) = extra.layer_selection.as_deref().filter(|s| *s != "all") {
            return Err(source.error(
                "layer_selection",
                &format!(" is \"{sel}\"; only \"all\" (every layer in `layers`) exists"),
            ));
        }
        let solver = if name == "alphaedit" {
            let threshold = extra.nullspace_threshold.unwrap_or(NULLSPACE_THRESHOLD);
            let l2 = extra.l2.unwrap_or(L2);
            source.check("nullspace_threshold", threshold).positive()?;
            source.check("L2", l2).positive()?.at_most(1e12)?;
            Solver::NullSpace { threshold, l2 }
        } else if name == "emmet" {
            let ridge = extra.emmet_lambda.unwrap_or(0.1);
            let norm = extra.update_norm_lambda.unwrap_or(0.0);
            source.check("emmet_lambda", ridge).in_range(0.0, 1e12)?;
            source
                .check("update_norm_lambda", norm)
                .in_range(0.0, 1e12)?;
            Solver::Spread(Objective::Emmet {
                weight: extra.mom2_update_weight,
                norm,
                ridge,
            })
        } else {
            Solver::Spread(Objective::Memit {
                lambda: extra.mom2_update_weight,
            })
        };
        let variant = if name == "pmet" {
            Variant::Pmet
        } else {
            Variant::Residual
        };
        if let Some(tmps) = &extra.rewrite_module_tmps {
            if tmps.iter().any(|t| *t != hp.rewrite_module_tmp) {
                return Err(source.error(
                    "rewrite_module_tmps",
                    &format!(
                        " is {tmps:?}; kedit's PMET writes only the MLP output projection \
                         (`rewrite_module_tmp`, \"{}\"), as EasyEdit's PMET files do: the key \
                         statistics it needs exist only for MLP keys",
                        hp.rewrite_module_tmp
                    ),
                ));
            }
        }
        if let Some(f) = extra.nll_loss_factor.filter(|&f| f != 1.0) {
            return Err(source.error(
                "nll_loss_factor",
                &format!(" is {f}; only 1 (the NLL at full weight) is supported"),
            ));
        }
        let warnings = filter_warnings(&source.origin, unknown);
        Ok(LoadedMethod {
            warnings,
            hparams_origin: source.origin.clone(),
            method: Box::new(Memit {
                variant,
                name: match name {
                    "emmet" => "EMMET",
                    "pmet" => "PMET",
                    "alphaedit" => "AlphaEdit",
                    _ => "MEMIT",
                }
                .into(),
                solver,
                rome: Rome::with_hparams(name, hp, params.clone()),
                extra,
                params,
                moments: Mutex::new(HashMap::new()),
                projections: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn layers(&self) -> Vec<usize> {
        self.params.iter().map(|&(l, _)| l).collect()
    }

    /// C of `layer` from the unedited model (cached by `prepare`, else read or computed now).
    fn moment(&self, system: &Editor, layer: usize, ctx: &EditContext) -> Result<Arc<Mat<f64>>> {
        if let Some(m) = self.moments.lock().expect("lock").get(&layer) {
            return Ok(m.clone());
        }
        let request = self.rome.stats_request_for(vec![layer], ctx)?;
        let original = system.original_model();
        let stats = require_key_stats(&original, layer, request.as_ref(), &ctx.cache, &mut Silent)?;
        let m = Arc::new(moment_matrix(&stats)?);
        self.moments.lock().expect("lock").insert(layer, m.clone());
        Ok(m)
    }

    /// AlphaEdit's P of `layer` (cached; C is dropped once P is made from it).
    fn projection(
        &self,
        system: &Editor,
        layer: usize,
        threshold: f64,
        ctx: &EditContext,
    ) -> Result<Arc<Projection>> {
        if let Some(p) = self.projections.lock().expect("lock").get(&layer) {
            return Ok(p.clone());
        }
        let c = self.moment(system, layer, ctx)?;
        let p = Arc::new(null_space_projection(&c, threshold)?);
        self.projections
            .lock()
            .expect("lock")
            .insert(layer, p.clone());
        self.moments.lock().expect("lock").remove(&layer);
        Ok(p)
    }
}

/// The weight of each rewriting prompt in a request's key: the bare prompt (first) and each
/// group of context templates (`[length, count]` pairs, in order) weigh alike, and the
/// templates within a group alike. A flat mean when the counts do not add up to `n`.
fn template_weights(groups: &[(usize, usize)], n: usize) -> Vec<f64> {
    let counts: Vec<usize> = groups.iter().map(|&(_, c)| c).filter(|&c| c > 0).collect();
    if 1 + counts.iter().sum::<usize>() != n {
        return vec![1.0 / n as f64; n];
    }
    let g = (1 + counts.len()) as f64;
    let mut w = vec![1.0 / g];
    for c in counts {
        w.extend(std::iter::repeat_n(1.0 / (g * c as f64), c));
    }
    w
}

impl EditMethod for Memit {
    fn name(&self) -> &str {
        &self.name
    }

    fn prepare(
        &self,
        original: &Model,
        ctx: &EditContext,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        // Context templates and every layer's C in one pass over the corpus.
        self.rome.templates(original, ctx)?;
        let stats = match self.rome.stats_request_for(self.layers(), ctx)? {
            Some(request) => key_stats(original, &request, &ctx.cache, progress)?,
            None => self
                .layers()
                .into_iter()
                .filter_map(|l| cached_key_stats(original, l, None, &ctx.cache).transpose())
                .collect::<Result<Vec<_>>>()?,
        };
        for s in &stats {
            let c = moment_matrix(s)?;
            if let Solver::NullSpace { threshold, .. } = self.solver {
                let p = null_space_projection(&c, threshold)?;
                progress.log(&format!(
                    "AlphaEdit: layer {}: P keeps {} of {} directions (eigenvalues of C below \
                     {threshold})",
                    s.layer, p.rank, p.width
                ));
                self.projections
                    .lock()
                    .expect("lock")
                    .insert(s.layer, Arc::new(p));
            } else {
                self.moments
                    .lock()
                    .expect("lock")
                    .insert(s.layer, Arc::new(c));
            }
        }
        Ok(())
    }

    fn missing_statistics(&self, model: &Model, ctx: &EditContext) -> Result<Option<String>> {
        // The same layers and statistics request as ROME's parts: its answer is ours.
        self.rome.missing_statistics(model, ctx)
    }

    fn max_batch(&self) -> Option<usize> {
        None
    }

    fn hparams_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.rome.hparams()).expect("hyper-parameters serialise");
        if let (Some(map), Ok(serde_json::Value::Object(extra))) =
            (v.as_object_mut(), serde_json::to_value(&self.extra))
        {
            map.extend(extra);
        }
        v
    }

    fn check_request(&self, model: &Model, request: &EditRequest) -> Result<()> {
        self.rome.check_request(model, request)
    }

    fn compute(
        &self,
        system: &Editor,
        requests: &[EditRequest],
        ctx: &EditContext,
    ) -> Result<Computed> {
        let model = system.model();
        let mut report = MethodReport::default();
        if requests.is_empty() {
            return Err(Error::invalid(format!(
                "{} was given no request",
                self.name
            )));
        }
        for r in requests {
            self.check_request(model, r)?;
        }
        let prompts: Vec<RequestPrompts> = requests
            .iter()
            .map(|r| self.rome.request_prompts(model, r, ctx, &mut report))
            .collect::<Result<_>>()?;
        let &(last, _) = self.params.last().expect("layers are checked non-empty");
        let plain: Vec<Lookup> = prompts.iter().map(|p| p.plain[0].clone()).collect();
        // What z* is a value of, read at the subject of each bare prompt.
        let z_site = match self.variant {
            Variant::Residual => Site::ResidPost(last),
            Variant::Pmet => Site::MlpOut(last),
        };
        // The residual z* replaces, read on the model as each layer's update leaves it.
        let mut plain_reads = LayerReads::new(model, &plain)?;
        let mut residual = |m: &Model, keep: usize| -> Result<Tensor> {
            Ok(plain_reads.read(m, z_site, keep)?.to_dtype(DType::F64)?)
        };

        // 1. z* for every request at the last edited layer.
        let mut vh = self.rome.value_hparams(model)?;
        vh.attention = self.variant == Variant::Pmet;
        if requests.len() > 1 {
            vh.groups = POOL_GROUPS;
        }
        let deltas = report.timed("z", |report| {
            let value_rewriting: Vec<Vec<Lookup>> =
                prompts.iter().map(|p| p.value_rewriting()).collect();
            let wordings: usize = prompts.iter().map(|p| p.wordings.len()).sum();
            if wordings > 0 {
                report.note(
                    "z_wordings_mean",
                    format!("{:.2}", wordings as f64 / prompts.len() as f64),
                );
            }
            let value_prompts: Vec<ValuePrompts> = prompts
                .iter()
                .zip(&value_rewriting)
                .map(|(p, rewriting)| ValuePrompts {
                    layer: last,
                    rewriting,
                    target: &p.target,
                    kl: &p.kl,
                })
                .collect();
            let stars = value_stars(model, &value_prompts, &vh, &mut report.log)?;
            let iterations: usize = stars.iter().map(|v| v.iterations).sum();
            report.note(
                "z_iterations_mean",
                format!("{:.1}", iterations as f64 / stars.len() as f64),
            );
            let deltas = stars
                .iter()
                .map(|v| v.delta.to_dtype(DType::F64))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(Tensor::stack(&deltas, 0)?)
        })?;
        let h = residual(model, self.params[0].0)?;
        // ‖δ‖ / ‖h‖ for the residual z* replaces: how far the requests move the residual
        // stream (the clamp bounds δ by the MLP output's norm, a different scale).
        let norm = |t: &Tensor| t.sqr()?.sum(1)?.sqrt();
        let ratio = (norm(&deltas)? / norm(&h)?)?
            .mean_all()?
            .to_scalar::<f64>()?;
        report.note("z_delta_over_residual_mean", format!("{ratio:.2}"));
        let z = (h + deltas)?;

        // 2. Each layer takes its share of what is still missing.
        let templates = prompts[0].rewriting.len();
        let rewriting: Vec<Lookup> = prompts.iter().flat_map(|p| p.rewriting.clone()).collect();
        if prompts.iter().any(|p| p.rewriting.len() != templates) {
            return Err(Error::invalid(
                "every request must have as many rewriting prompts",
            ));
        }
        // Each request's key at `layer` of `m`: as MEMIT's code averages it, over each group
        // of context templates (the bare prompt is a group of its own), then over the groups.
        let weights = Tensor::new(
            template_weights(
                &self.rome.hparams().context_template_length_params,
                templates,
            )
            .as_slice(),
            model.device(),
        )?
        .reshape((1, templates, 1))?;
        let layer_keys = |reads: &mut LayerReads, m: &Model, layer: usize| -> Result<Tensor> {
            let all = reads.read(m, Site::MlpKey(layer), layer)?;
            let d_ff = all.dim(1)?;
            Ok(all
                .to_dtype(DType::F64)?
                .reshape((requests.len(), templates, d_ff))?
                .broadcast_mul(&weights)?
                .sum(1)?)
        };
        let mut current = model.clone();
        let mut edit = WeightEdit::new();
        // Layers ascend, so each layer's update leaves the residual entering it unchanged.
        let mut key_reads = LayerReads::new(model, &rewriting)?;
        for (i, &(layer, param)) in self.params.iter().enumerate() {
            let keys = report.timed("keys", |_| layer_keys(&mut key_reads, &current, layer))?;
            let left = (self.params.len() - i) as f64;
            let share = match self.variant {
                Variant::Residual => left,
                Variant::Pmet => left.sqrt(),
            };
            let resid = report.timed("residuals", |_| {
                Ok(((&z - residual(&current, layer)?)? / share)?)
            })?;
            let delta = match self.solver {
                Solver::Spread(objective) => {
                    let c = report.timed("statistics", |_| self.moment(system, layer, ctx))?;
                    report.timed("solve", |_| {
                        layer_update(&keys, &resid, &c, objective, model.dtype())
                    })?
                }
                Solver::NullSpace { threshold, l2 } => {
                    let proj = report.timed("statistics", |_| {
                        self.projection(system, layer, threshold, ctx)
                    })?;
                    let earlier = system.applied_keys(param);
                    let n_earlier = earlier
                        .iter()
                        .map(|k| k.dim(0))
                        .sum::<candle_core::Result<usize>>()?;
                    report.note(
                        &format!("layer {layer} null space"),
                        format!("{}/{}", proj.rank, proj.width),
                    );
                    report.note(&format!("layer {layer} earlier keys"), n_earlier);
                    report.log.push(format!(
                        "AlphaEdit: layer {layer}: P keeps {} of {} directions; C_prev holds \
                         {n_earlier} keys of earlier edits",
                        proj.rank, proj.width
                    ));
                    if proj.rank == 0 {
                        return Err(Error::EditRefused(format!(
                            "AlphaEdit: no eigenvalue of layer {layer}'s key statistics is \
                             below nullspace_threshold = {threshold}, so the null space is \
                             empty and nothing can be written; raise `nullspace_threshold`"
                        )));
                    }
                    report.timed("solve", |_| {
                        let c_prev = accumulated(&earlier, proj.width)?;
                        null_space_update(&keys, &resid, &proj.p, &c_prev, l2, model.dtype())
                    })?
                }
            };
            let updated = delta.added_to(current.params.require(param)?)?;
            current.params.replace(param, updated)?;
            edit.push(param, delta);
        }
        if matches!(self.solver, Solver::NullSpace { .. }) {
            // The keys later edits keep in place: read on the model every layer's update
            // has changed, as AlphaEdit's code accumulates them.
            let mut final_reads = LayerReads::new(&current, &rewriting)?;
            for &(layer, param) in &self.params {
                let keys =
                    report.timed("keys", |_| layer_keys(&mut final_reads, &current, layer))?;
                edit.keys.push((param, keys.to_dtype(DType::F32)?));
            }
        }
        edit.meta.insert("method".into(), self.name.clone());
        edit.meta
            .insert("requests".into(), requests.len().to_string());
        Ok(Computed {
            edit: edit.into(),
            report,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::template_weights;

    #[test]
    fn the_bare_prompt_weighs_as_much_as_each_group_of_templates() {
        assert_eq!(
            template_weights(&[(10, 5)], 6),
            vec![0.5, 0.1, 0.1, 0.1, 0.1, 0.1]
        );
        let w = template_weights(&[(5, 10), (10, 10)], 21);
        assert!((w[0] - 1.0 / 3.0).abs() < 1e-15);
        assert!((w[1] - 1.0 / 30.0).abs() < 1e-15 && (w[20] - 1.0 / 30.0).abs() < 1e-15);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // Counts that do not match the prompts: the flat mean.
        assert_eq!(template_weights(&[(10, 5)], 4), vec![0.25; 4]);
    }
}
