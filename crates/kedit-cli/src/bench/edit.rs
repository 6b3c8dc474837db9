//! `kedit bench-edit`: seconds per edit, split by phase, and peak memory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kedit::bench::edit::edit_speed;
use kedit::data::{load, Format, LoadOptions};
use kedit::editor::Editor;
use kedit::methods::{EditContext, Registry};

use crate::output::{print_json, table};
use crate::ModelArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    #[arg(long, default_value = "rome", help = crate::method_help())]
    method: String,
    /// EasyEdit-style hyper-parameter YAML [default: the shipped one for the model].
    #[arg(long)]
    hparams: Option<PathBuf>,
    /// Edit requests (ZsRE, KnowEdit, CounterFact).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "auto")]
    format: Format,
    #[arg(long, default_value_t = 20, value_parser = crate::bounds::count(1, 100_000))]
    limit: usize,
    /// Requests per method call (MEMIT and the methods like it edit many in one call).
    #[arg(long, default_value_t = 1, value_parser = crate::bounds::count(1, 100_000))]
    batch_size: usize,
    /// Corpus for key statistics (methods that need them).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Print each optimisation step.
    #[arg(long)]
    verbose: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let model = args.model.load()?;
    let loaded = Registry::builtin().load(&args.method, args.hparams.as_deref(), &model)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let opts = LoadOptions {
        skip_invalid: true,
        limit: Some(args.limit),
    };
    let data = load(&args.data, args.format, &opts)
        .with_context(|| format!("loading {}", args.data.display()))?;
    let ctx = EditContext {
        corpus: args.corpus.clone(),
        ..Default::default()
    };
    // Statistics are computed (or found cached) before the clock starts.
    loaded
        .method
        .prepare(&model, &ctx, &mut crate::progress::Bars::default())?;
    let system = Editor::new(model);
    let bench = edit_speed(
        &system,
        loaded.method.as_ref(),
        &data.requests,
        args.batch_size,
        &ctx,
        |t| {
            if args.verbose {
                t.log.iter().for_each(|line| eprintln!("{line}"));
            }
            let phases: Vec<String> = t
                .phases
                .iter()
                .map(|(p, s)| format!("{p} {s:.2}"))
                .collect();
            eprintln!(
                "{}: {:.2} s ({}){}",
                t.case_id,
                t.seconds,
                phases.join(", "),
                t.error
                    .as_deref()
                    .map(|e| format!(" — {e}"))
                    .unwrap_or_default()
            );
        },
    )?;
    if args.json {
        return print_json(&bench);
    }
    let mut rows: Vec<Vec<String>> = bench
        .median_phases
        .iter()
        .map(|(p, s)| vec![p.clone(), format!("{s:.3}")])
        .collect();
    let call = if bench.batch_size == 1 {
        "edit"
    } else {
        "call"
    };
    rows.push(vec![
        format!("total per {call} (median)"),
        match bench.median_seconds {
            Some(s) => format!("{s:.3}"),
            None => {
                format!("n/a: the median leaves out the first {call}; give --limit more requests")
            }
        },
    ]);
    rows.push(vec![
        format!("first {call} (fills caches)"),
        format!("{:.3}", bench.first_seconds),
    ]);
    if bench.batch_size > 1 {
        let per_call = bench.median_seconds.unwrap_or(bench.first_seconds);
        rows.push(vec![
            "seconds per edit".into(),
            format!("{:.3}", per_call / bench.batch_size.min(bench.n) as f64),
        ]);
    }
    println!(
        "{} on {} requests of {}, {} to a call",
        bench.method,
        bench.n,
        args.data.display(),
        bench.batch_size
    );
    println!("{}", table(&["phase", "seconds"], &rows));
    if let Some(b) = bench.max_peak_rss_bytes {
        println!(
            "peak RSS during an edit: {:.2} GiB",
            b as f64 / (1u64 << 30) as f64
        );
    }
    Ok(())
}
