//! `kedit eval`: edit and evaluate a dataset, write `cases.jsonl` and `summary.json`.

use std::path::PathBuf;

use anyhow::Result;
use kedit::experiment::report::RunSummary;
use kedit::experiment::summary::Scores;
use kedit::experiment::{run_dataset, DatasetRun};

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
    /// Render every prompt through the model's chat template, as an instruct model is
    /// queried (also `chat_template: true` in the hyper-parameters).
    #[arg(long)]
    chat: bool,
    /// Run only shard K of N (0-based): every N-th case (batch mode: every N-th call)
    /// from the K-th; `kedit merge-runs` joins the shards' directories.
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
    /// Take the pre-edit metrics from another run directory of the same model, data and
    /// metric settings (any method or mode, or `--pre-only`) instead of computing them.
    #[arg(long, value_name = "DIR")]
    pre_from: Option<PathBuf>,
    /// Print each edit's log lines (a method's own account: steps, losses, routing).
    #[arg(long)]
    verbose: bool,
    /// Run directory; rerunning the same command there resumes the run.
    #[arg(long)]
    out: PathBuf,
}

pub fn run_cmd(args: Args) -> Result<()> {
    let model = args.model.load()?;
    let spec = DatasetRun {
        method: if args.pre_only {
            None
        } else {
            args.method.clone()
        },
        hparams: args.hparams.clone(),
        data: args.data.clone(),
        format: args.format.parse()?,
        limit: args.limit,
        skip_invalid: args.skip_invalid,
        mode: args.mode.parse()?,
        batch_size: args.batch_size,
        corpus: args.corpus.clone(),
        seed: args.seed,
        fluency: !args.no_fluency,
        free_generation: !args.no_free_generation,
        chat: args.chat,
        shard: args.shard.as_deref().map(str::parse).transpose()?,
        pre_from: args.pre_from.clone(),
        out: args.out.clone(),
    };
    let mut bar = Bars::verbose(args.verbose);
    let outcome = run_dataset(model, &spec, &mut bar);
    bar.finish();
    let outcome = outcome?;
    print_summary(&outcome.summary);
    println!(
        "weights after the run: bit-identical to the original (fingerprint {})",
        outcome.summary.config.model_fingerprint
    );
    if let Some(png) = &outcome.stream_png {
        println!("the stream, call by call: {}", png.display());
    }
    println!(
        "\nwrote {} and {}",
        outcome.records_path.display(),
        outcome.summary_path.display()
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
    if let Some(apart) = &s.post_without_same_subject {
        rows.push(scores_row("post-edit, no shared subject", apart));
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
    if s.same_subject_cases > 0 {
        println!(
            "{} cases were edited in a call with another request about their subject and a \
             different target (`same_subject` in cases.jsonl): they compete for one key, and \
             where they ask the same question they contradict each other",
            s.same_subject_cases
        );
    }
    for (i, e) in s.errors.iter().take(5) {
        println!("case {i} refused: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedit::experiment::report::{build_summary, RunConfig};
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
                    same_subject: Vec::new(),
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
