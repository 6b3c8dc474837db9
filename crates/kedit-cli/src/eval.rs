//! `kedit eval`: edit and evaluate a dataset, write `cases.jsonl` and `summary.json`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kedit::data::{load_all, Format, LoadOptions};
use kedit::editor::Editor;
use kedit::evaluate::MetricOptions;
use kedit::experiment::modes::pre_edit;
use kedit::experiment::report::{build_summary, RunConfig, RunSummary};
use kedit::experiment::stream::{stream_points, write_stream};
use kedit::experiment::summary::Scores;
use kedit::experiment::{run, Mode, RunOptions, RunStore};
use kedit::methods::{EditContext, Registry};

use crate::bounds;
use crate::output::table;
use crate::progress::Bars;
use crate::ModelArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    #[arg(long, required_unless_present = "pre_only", help = crate::method_help())]
    method: Option<String>,
    /// Only compute the pre-edit metrics (no method, no edit).
    #[arg(long)]
    pre_only: bool,
    /// EasyEdit-style hyper-parameter YAML [default: the shipped one for the model].
    #[arg(long)]
    hparams: Option<PathBuf>,
    /// Dataset file (JSON); repeat to stream one file after another (e.g. ZsRE dev, then
    /// ZsRE train, for a 1000-edit lifelong run).
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// auto, zsre, knowedit, counterfact, counterfact-rome.
    #[arg(long, default_value = "auto")]
    format: String,
    /// Use only the first N records.
    #[arg(long, value_parser = bounds::count(1, bounds::MAX_RECORDS))]
    limit: Option<usize>,
    /// single, sequential or batch.
    #[arg(long, default_value = "single")]
    mode: String,
    /// Requests per method call in batch and sequential mode (sequential: a stream of
    /// calls of this many requests, each evaluated right after its edit).
    #[arg(long, default_value_t = 1, value_parser = bounds::count(1, 100_000))]
    batch_size: usize,
    /// Text corpus for key statistics (ROME), when none are cached.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Skip malformed records instead of stopping.
    #[arg(long)]
    skip_invalid: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Skip the fluency metric (100 sampled tokens per case: most of the evaluation time).
    #[arg(long)]
    no_fluency: bool,
    /// Skip the free-generation exact-match metrics.
    #[arg(long)]
    no_free_generation: bool,
    /// Run directory; rerunning the same command there resumes the run.
    #[arg(long)]
    out: PathBuf,
}

pub fn run_cmd(args: Args) -> Result<()> {
    let model = args.model.load()?;
    let mode: Mode = args.mode.parse()?;
    let format: Format = args.format.parse()?;
    let names = args
        .data
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    let data = load_all(
        &args.data,
        format,
        &LoadOptions {
            skip_invalid: args.skip_invalid,
            limit: args.limit,
        },
    )
    .with_context(|| format!("loading {names}"))?;
    for (i, why) in &data.skipped {
        eprintln!("skipped record {i}: {why}");
    }
    if data.requests.is_empty() {
        bail!("{names}: no usable record");
    }
    let batch_size = if mode == Mode::Single {
        1
    } else {
        args.batch_size
    };
    let loaded = match (&args.method, args.pre_only) {
        (Some(name), false) => {
            Some(Registry::builtin().load(name, args.hparams.as_deref(), &model)?)
        }
        _ => None,
    };
    for w in loaded.iter().flat_map(|l| &l.warnings) {
        eprintln!("warning: {w}");
    }
    let config = RunConfig {
        kedit_version: env!("CARGO_PKG_VERSION").to_string(),
        method: match (&loaded, &args.method) {
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
        data_sha256: args
            .data
            .iter()
            .map(|p| kedit::hash::sha256_file(p))
            .collect::<kedit::error::Result<Vec<_>>>()?
            .join(" + "),
        format: format!("{:?}", data.format).to_ascii_lowercase(),
        limit: args.limit,
        skip_invalid: args.skip_invalid,
        mode,
        batch_size,
        seed: args.seed,
        fluency: !args.no_fluency,
        free_generation: !args.no_free_generation,
    };
    let opts = RunOptions {
        mode,
        batch_size,
        metrics: MetricOptions {
            seed: args.seed,
            fluency: !args.no_fluency,
            free_generation: !args.no_free_generation,
        },
    };
    opts.check(loaded.as_ref().map(|l| l.method.as_ref()))?;
    let mut store = RunStore::open(&args.out, &serde_json::to_value(&config)?)?;
    if !store.cases.is_empty() {
        eprintln!(
            "resuming: {} of {} cases already in {}",
            store.cases.len(),
            data.requests.len(),
            args.out.join("cases.jsonl").display()
        );
    }
    let mut editor = Editor::new(model);
    let ctx = EditContext {
        corpus: args.corpus.clone(),
        seed: args.seed,
        ..Default::default()
    };
    let mut bar = Bars::default();
    match &loaded {
        Some(l) => run(
            &mut editor,
            l.method.as_ref(),
            &ctx,
            &data.requests,
            &opts,
            &mut store,
            &mut bar,
        )?,
        None => pre_edit(&editor, &data.requests, &opts, &mut store, &mut bar)?,
    }
    bar.finish();
    let after = format!("{:016x}", editor.model().fingerprint()?);
    let identical = after == config.model_fingerprint;
    let summary = build_summary(&store, &config, identical);
    let path = args.out.join("summary.json");
    kedit::fsio::write_atomic(&path, serde_json::to_string_pretty(&summary)?.as_bytes())?;
    print_summary(&summary);
    if !identical {
        bail!("the weights after the run differ from the original ones (fingerprint {after})");
    }
    println!("weights after the run: bit-identical to the original (fingerprint {after})");
    if mode == Mode::Sequential && loaded.is_some() {
        let points = stream_points(&store, data.requests.len(), batch_size);
        let title = format!("{} stream", config.method);
        if let Some(w) = write_stream(&args.out, &title, &points)? {
            println!("the stream, call by call: {}", w.png.display());
        }
    }
    let records = if loaded.is_some() {
        "cases.jsonl"
    } else {
        "pre.jsonl"
    };
    println!(
        "\nwrote {} and {}",
        args.out.join(records).display(),
        path.display()
    );
    Ok(())
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{:.2}", 100.0 * v))
}

fn scores_row(name: &str, s: &Scores) -> Vec<String> {
    let cf = s.counterfact.as_ref();
    vec![
        name.to_string(),
        s.n.to_string(),
        pct(s.reliability),
        pct(s.generalization),
        pct(s.locality),
        pct(s.portability),
        pct(s.fluency),
        pct(s.free_generation.reliability),
        pct(s.free_generation.generalization),
        pct(s.free_generation.portability),
        pct(cf.and_then(|c| c.efficacy)),
        pct(cf.and_then(|c| c.paraphrase)),
        pct(cf.and_then(|c| c.neighborhood)),
        pct(cf.and_then(|c| c.score)),
    ]
}

/// What ran on what, and how many cases were edited and refused.
fn headline(s: &RunSummary) -> String {
    format!(
        "{} on {} — {:?} mode, {} cases: {} edited, {} refused",
        s.method,
        s.data,
        s.mode,
        s.n,
        s.n.saturating_sub(s.refused),
        s.refused
    )
}

/// The summary as papers print it: ×100 (fluency: entropy ×100).
pub fn print_summary(s: &RunSummary) {
    println!("\n{}", headline(s));
    let mut rows = vec![scores_row("pre-edit", &s.pre)];
    if s.n > 0 {
        rows.push(scores_row("post-edit", &s.post));
    }
    if let Some(after) = &s.after_all_edits {
        rows.push(scores_row("after all edits", after));
    }
    println!(
        "{}",
        table(
            &[
                "", "n", "Rel", "Gen", "Loc", "Port", "Flu", "EM-Rel", "EM-Gen", "EM-Port",
                "CF-Eff", "CF-Para", "CF-Nbhd", "CF-Score",
            ],
            &rows
        )
    );
    let mut groups = Vec::new();
    for (g, v) in &s.post.locality_groups {
        groups.push(vec![format!("locality/{g}"), pct(Some(*v))]);
    }
    for (g, v) in &s.post.portability_groups {
        groups.push(vec![format!("portability/{g}"), pct(Some(*v))]);
    }
    if !groups.is_empty() {
        println!("\n{}", table(&["post-edit group", "score"], &groups));
    }
    if s.n == 0 {
        return;
    }
    println!(
        "\nseconds per edit: {}   evaluation seconds per case: {}   peak RSS of an edit: {}",
        s.seconds_per_edit.map_or("-".into(), |v| format!("{v:.3}")),
        s.eval_seconds_per_case
            .map_or("-".into(), |v| format!("{v:.3}")),
        s.peak_rss_bytes.map_or("-".into(), |b| format!(
            "{:.0} MiB",
            b as f64 / (1024.0 * 1024.0)
        ))
    );
    for (i, e) in s.errors.iter().take(5) {
        println!("case {i} refused: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedit::experiment::report::build_summary;
    use kedit::experiment::store::{CaseRecord, EditOutcome};

    #[test]
    fn cases_that_were_all_refused_are_not_called_edited() {
        let mut store = kedit::experiment::RunStore::in_memory();
        for i in 0..2 {
            store
                .put_case(CaseRecord {
                    index: i,
                    case_id: i.to_string(),
                    prompt: "p".into(),
                    target_new: "t".into(),
                    pre: Default::default(),
                    post: None,
                    edit: EditOutcome {
                        error: Some("subject not in prompt".into()),
                        ..Default::default()
                    },
                })
                .unwrap();
        }
        let config: RunConfig = serde_json::from_value(serde_json::json!({
            "kedit_version": "0", "method": "rome", "hparams_origin": "", "hparams": null,
            "model": "m", "model_fingerprint": "0", "data": "d", "format": "zsre",
            "limit": null, "skip_invalid": false, "mode": "single", "batch_size": 1, "seed": 0
        }))
        .unwrap();
        let line = headline(&build_summary(&store, &config, true));
        assert!(line.contains("2 cases: 0 edited, 2 refused"), "{line}");
    }
}
