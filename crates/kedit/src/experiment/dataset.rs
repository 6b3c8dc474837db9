//! A dataset evaluated into a run directory: what `kedit eval` and the Python package's
//! `evaluate` both do. Loads the records, the method and its hyper-parameters, renders the
//! prompts through the chat template when asked, opens (or resumes) the run store, runs the
//! mode on this shard's cases, and writes `summary.json` (and, for a stream, its picture).

use std::path::{Path, PathBuf};

use crate::data::{load_all, Format, LoadOptions};
use crate::editor::Editor;
use crate::error::{Error, Result};
use crate::evaluate::MetricOptions;
use crate::experiment::modes::{pre_edit, run, Mode, RunOptions};
use crate::experiment::report::{build_summary, RunConfig, RunSummary};
use crate::experiment::shard::Shard;
use crate::experiment::store::RunStore;
use crate::experiment::stream::{stream_points, write_stream};
use crate::methods::{EditContext, HparamsSource, Registry};
use crate::model::Model;
use crate::progress::Progress;

/// Everything a dataset run is asked to do.
#[derive(Clone, Debug)]
pub struct DatasetRun {
    /// `None`: only the pre-edit metrics.
    pub method: Option<String>,
    /// EasyEdit-style YAML; `None`: the shipped file for the model.
    pub hparams: Option<PathBuf>,
    /// Files streamed one after another.
    pub data: Vec<PathBuf>,
    pub format: Format,
    pub limit: Option<usize>,
    pub skip_invalid: bool,
    pub mode: Mode,
    /// Requests per method call (batch and sequential mode; single mode uses 1).
    pub batch_size: usize,
    /// Text corpus for key statistics when none are cached.
    pub corpus: Option<PathBuf>,
    pub seed: u64,
    pub fluency: bool,
    pub free_generation: bool,
    /// Render every prompt through the model's chat template (also switched on by
    /// `chat_template: true` in the hyper-parameters).
    pub chat: bool,
    pub shard: Option<Shard>,
    /// Another run directory whose pre-edit metrics this run takes instead of computing
    /// them again (its configuration must agree on what they depend on).
    pub pre_from: Option<PathBuf>,
    /// The run directory; the same run there resumes.
    pub out: PathBuf,
}

impl DatasetRun {
    /// A single-mode run of `method` on `data` into `out`, with every metric.
    pub fn new(method: Option<&str>, data: &[PathBuf], out: &Path) -> Self {
        DatasetRun {
            method: method.map(str::to_string),
            hparams: None,
            data: data.to_vec(),
            format: Format::Auto,
            limit: None,
            skip_invalid: false,
            mode: Mode::Single,
            batch_size: 1,
            corpus: None,
            seed: 0,
            fluency: true,
            free_generation: true,
            chat: false,
            shard: None,
            pre_from: None,
            out: out.to_path_buf(),
        }
    }
}

/// What a finished run reports besides its summary.
#[derive(Debug)]
pub struct DatasetOutcome {
    pub summary: RunSummary,
    /// Malformed records set aside (`skip_invalid`): index in the stream and why.
    pub skipped: Vec<(usize, String)>,
    /// The hyper-parameters' warnings (unknown keys, a shipped file for another model).
    pub warnings: Vec<String>,
    /// Cases already in the run directory when this call started.
    pub resumed: usize,
    /// Cases in the data (all shards).
    pub cases: usize,
    pub summary_path: PathBuf,
    /// `cases.jsonl`, or `pre.jsonl` for a pre-edit-only run.
    pub records_path: PathBuf,
    /// A sequential run's call-by-call picture.
    pub stream_png: Option<PathBuf>,
}

/// Runs `spec` on `model` and writes the run directory. The model comes back to its
/// original weights; a run whose weights differ afterwards is an error (after the summary,
/// which records it, is written).
pub fn run_dataset(
    model: Model,
    spec: &DatasetRun,
    progress: &mut dyn Progress,
) -> Result<DatasetOutcome> {
    let names = spec
        .data
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    let data = load_all(
        &spec.data,
        spec.format,
        &LoadOptions {
            skip_invalid: spec.skip_invalid,
            limit: spec.limit,
        },
    )
    .map_err(|e| Error::config(format!("loading {names}: {e}")))?;
    for (i, why) in &data.skipped {
        progress.notice(&format!("skipped record {i}: {why}"));
    }
    if data.requests.is_empty() {
        return Err(Error::config(format!("{names}: no usable record")));
    }
    let batch_size = if spec.mode == Mode::Single {
        1
    } else {
        spec.batch_size
    };
    let loaded = spec
        .method
        .as_deref()
        .map(|name| Registry::builtin().load(name, spec.hparams.as_deref(), &model))
        .transpose()?;
    for w in loaded.iter().flat_map(|l| &l.warnings) {
        progress.notice(&format!("warning: {w}"));
    }
    let chat = spec.chat
        || match &spec.hparams {
            Some(p) if loaded.is_some() => HparamsSource::read(p)?.chat_template()?,
            _ => false,
        };
    let requests = if chat {
        crate::prompts::chat_requests(model.tokenizer()?, &data.requests)?
    } else {
        data.requests.clone()
    };
    let config = RunConfig {
        kedit_version: env!("CARGO_PKG_VERSION").to_string(),
        method: match (&loaded, &spec.method) {
            (Some(_), Some(name)) => name.to_ascii_lowercase(),
            _ => "none (pre-edit metrics only)".into(),
        },
        hparams_origin: loaded
            .as_ref()
            .map(|l| l.hparams_origin.display().to_string())
            .unwrap_or_default(),
        hparams: loaded
            .as_ref()
            .map_or(serde_json::Value::Null, |l| l.method.hparams_json()),
        model: model.source.path.display().to_string(),
        model_fingerprint: format!("{:016x}", model.fingerprint()?),
        data: names.clone(),
        data_sha256: spec
            .data
            .iter()
            .map(|p| crate::hash::sha256_file(p))
            .collect::<Result<Vec<_>>>()?
            .join(" + "),
        format: format!("{:?}", data.format).to_ascii_lowercase(),
        limit: spec.limit,
        skip_invalid: spec.skip_invalid,
        mode: spec.mode,
        batch_size,
        seed: spec.seed,
        fluency: spec.fluency,
        free_generation: spec.free_generation,
        chat,
        shard: spec.shard,
    };
    let opts = RunOptions {
        mode: spec.mode,
        batch_size,
        metrics: MetricOptions {
            seed: spec.seed,
            fluency: spec.fluency,
            free_generation: spec.free_generation,
        },
        shard: spec.shard,
    };
    opts.check(loaded.as_ref().map(|l| l.method.as_ref()))?;
    let header = serde_json::to_value(&config).map_err(|e| Error::invalid(e.to_string()))?;
    let mut store = RunStore::open(&spec.out, &header)?;
    let resumed = store.cases.len();
    if resumed > 0 {
        progress.notice(&format!(
            "resuming: {resumed} case(s) already in {}",
            spec.out.join("cases.jsonl").display()
        ));
    }
    if let Some(from) = &spec.pre_from {
        let ids: Vec<String> = requests.iter().map(|r| r.case_id.clone()).collect();
        let taken = store.import_pre(from, &header, &ids)?;
        progress.notice(&format!(
            "took {taken} case(s)' pre-edit metrics from {}",
            from.display()
        ));
    }
    let mut editor = Editor::new(model);
    let ctx = EditContext {
        corpus: spec.corpus.clone(),
        seed: spec.seed,
        ..Default::default()
    };
    match &loaded {
        Some(l) => run(
            &mut editor,
            l.method.as_ref(),
            &ctx,
            &requests,
            &opts,
            &mut store,
            progress,
        )?,
        None => pre_edit(&editor, &requests, &opts, &mut store, progress)?,
    }
    let after = format!("{:016x}", editor.model().fingerprint()?);
    let identical = after == config.model_fingerprint;
    let summary = build_summary(&store, &config, identical);
    let summary_path = spec.out.join("summary.json");
    let text = serde_json::to_string_pretty(&summary).map_err(|e| Error::invalid(e.to_string()))?;
    crate::fsio::write_atomic(&summary_path, text.as_bytes())?;
    if !identical {
        return Err(Error::invalid(format!(
            "the weights after the run differ from the original ones (fingerprint {after})"
        )));
    }
    let mut stream_png = None;
    if spec.mode == Mode::Sequential && loaded.is_some() {
        let points = stream_points(&store, requests.len(), batch_size);
        let title = format!("{} stream", config.method);
        stream_png = write_stream(&spec.out, &title, &points)?.map(|w| w.png);
    }
    Ok(DatasetOutcome {
        summary,
        skipped: data
            .skipped
            .iter()
            .map(|(i, e)| (*i, e.to_string()))
            .collect(),
        warnings: loaded.map(|l| l.warnings).unwrap_or_default(),
        resumed,
        cases: requests.len(),
        summary_path,
        records_path: spec.out.join(if spec.method.is_some() {
            "cases.jsonl"
        } else {
            "pre.jsonl"
        }),
        stream_png,
    })
}
