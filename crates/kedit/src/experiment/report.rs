//! `summary.json`: a run's configuration and its mean scores.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::evaluate::metrics::Metrics;
use crate::experiment::modes::Mode;
use crate::experiment::shard::Shard;
use crate::experiment::store::RunStore;
use crate::experiment::summary::{summarize, Scores};

/// Where a run came from (what `run.json` holds, for resuming).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub kedit_version: String,
    pub method: String,
    pub hparams_origin: String,
    pub hparams: Value,
    pub model: String,
    pub model_fingerprint: String,
    pub data: String,
    /// The data file's contents: a resume over a changed file is refused.
    #[serde(default)]
    pub data_sha256: String,
    pub format: String,
    pub limit: Option<usize>,
    pub skip_invalid: bool,
    pub mode: Mode,
    pub batch_size: usize,
    pub seed: u64,
    /// Which optional metrics the run computes.
    #[serde(default = "yes")]
    pub fluency: bool,
    #[serde(default = "yes")]
    pub free_generation: bool,
    /// Every prompt rendered through the model's chat template (`--chat`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub chat: bool,
    /// This run is one shard of a larger one (`--shard K/N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub method: String,
    pub model: String,
    pub data: String,
    pub mode: Mode,
    /// Cases edited (with a record in `cases.jsonl`).
    pub n: usize,
    /// Cases whose edit was refused (left out of the post-edit scores).
    pub refused: usize,
    /// After each case's own edit (single: alone; sequential: with the earlier edits;
    /// batch: with its batch). Fractions in [0, 1]; fluency in bits.
    pub reliability: Option<f64>,
    pub generalization: Option<f64>,
    pub locality: Option<f64>,
    pub portability: Option<f64>,
    pub fluency: Option<f64>,
    /// Mean wall time of one edit (a batch call's time divided by its size).
    pub seconds_per_edit: Option<f64>,
    /// Largest resident-memory peak of any edit call.
    pub peak_rss_bytes: Option<u64>,
    /// Mean wall time of one case's post-edit evaluation.
    pub eval_seconds_per_case: Option<f64>,
    pub post: Scores,
    pub pre: Scores,
    /// Sequential mode: every case evaluated after all edits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_all_edits: Option<Scores>,
    /// Cases edited in a call with another request about their subject and a different
    /// target (`same_subject` in `cases.jsonl`), and the post-edit scores of the others.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub same_subject_cases: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_without_same_subject: Option<Scores>,
    pub config: RunConfig,
    /// The full-weight fingerprint after the run equals `config.model_fingerprint`
    /// (the harness also checks bit-identity after every revert).
    pub weights_identical_after_run: bool,
    /// `(case index, message)` of each refused edit.
    pub errors: Vec<(usize, String)>,
}

pub fn build_summary(
    store: &RunStore,
    config: &RunConfig,
    weights_identical_after_run: bool,
) -> RunSummary {
    let records: Vec<_> = store.cases.values().collect();
    let pre: Vec<&Metrics> = store.pre.values().collect();
    let post: Vec<&Metrics> = records.iter().filter_map(|r| r.post.as_ref()).collect();
    let after: Vec<&Metrics> = store.after_all.values().collect();
    let post_scores = summarize(&post);
    let same_subject_cases = records
        .iter()
        .filter(|r| !r.same_subject.is_empty())
        .count();
    let apart: Vec<&Metrics> = records
        .iter()
        .filter(|r| r.same_subject.is_empty())
        .filter_map(|r| r.post.as_ref())
        .collect();
    let n = records.len();
    let per_edit: Vec<f64> = records
        .iter()
        .map(|r| r.edit.seconds / r.edit.batch_size.max(1) as f64)
        .collect();
    let evals: Vec<f64> = records
        .iter()
        .filter(|r| r.post.is_some())
        .map(|r| r.edit.eval_seconds / r.edit.batch_size.max(1) as f64)
        .collect();
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    RunSummary {
        method: config.method.clone(),
        model: config.model.clone(),
        data: config.data.clone(),
        mode: config.mode,
        n,
        refused: records.iter().filter(|r| r.edit.error.is_some()).count(),
        reliability: post_scores.reliability,
        generalization: post_scores.generalization,
        locality: post_scores.locality,
        portability: post_scores.portability,
        fluency: post_scores.fluency,
        seconds_per_edit: mean(&per_edit),
        peak_rss_bytes: records.iter().filter_map(|r| r.edit.peak_rss_bytes).max(),
        eval_seconds_per_case: mean(&evals),
        post: post_scores,
        pre: summarize(&pre),
        after_all_edits: (config.mode == Mode::Sequential && !after.is_empty())
            .then(|| summarize(&after)),
        same_subject_cases,
        post_without_same_subject: (same_subject_cases > 0).then(|| summarize(&apart)),
        config: config.clone(),
        weights_identical_after_run,
        errors: records
            .iter()
            .filter_map(|r| r.edit.error.as_ref().map(|e| (r.index, e.clone())))
            .collect(),
    }
}
