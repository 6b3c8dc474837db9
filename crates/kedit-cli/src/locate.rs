//! `kedit locate`: causal tracing over known facts, averaged by token class; the layer to edit.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kedit::trace::locate::{locate, LocateOptions, TokenClass};
use kedit::trace::pictures::write_locate_pictures;
use kedit::trace::{load_known_facts, Kind, TraceOptions};

use crate::bounds;
use crate::output::{print_json, table};
use crate::progress::bars_unless;
use crate::trace::{TraceArgs, DEFAULT_FACTS};
use crate::ModelArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// Known facts (ROME's known_1000.json format: subject, attribute, prompt).
    #[arg(long, default_value = DEFAULT_FACTS)]
    data: PathBuf,
    /// Facts to trace.
    #[arg(long, default_value_t = 100, value_parser = bounds::count(1, 100_000))]
    limit: usize,
    /// Trace every fact, not only those the model knows.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    trace: TraceArgs,
    /// Write locate.json and the curves (locate, locate_mlp) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(dir) = &args.out {
        kedit::fsio::check_writable_dir(dir)?;
    }
    let workers = args.trace.start_workers();
    let model = args.model.load()?;
    let facts = load_known_facts(&args.data)?;
    let options = LocateOptions {
        limit: args.limit,
        trace: TraceOptions {
            workers,
            ..args.trace.options(&model, &args.data)?
        },
        only_known: !args.all,
    };
    let cache = crate::stats::cache_of(&args.trace.cache);
    let result = locate(
        &model,
        &facts,
        &options,
        Some(&cache),
        &mut *bars_unless(args.json),
    )?;
    if result.traced == 0 {
        bail!(
            "{}: none of the {} facts examined was traced ({} known to the model, {}); \
             nothing was written — raise --limit or pass --all",
            args.data.display(),
            result.scanned,
            result.known,
            result.selection
        );
    }
    let mut files = Vec::new();
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join("locate.json");
        let text = serde_json::to_string_pretty(&result)?;
        kedit::fsio::write_atomic(&json, text.as_bytes())?;
        files.push(json);
        for w in write_locate_pictures(&result, dir)? {
            files.extend([w.png, w.svg]);
        }
    }
    if args.json {
        return print_json(&result);
    }
    println!(
        "facts: {} examined, {} known, {} traced ({})\nmean p(answer): clean {:.4}, corrupted {:.4}\n",
        result.scanned,
        result.known,
        result.traced,
        result.selection,
        result.mean_clean_prob,
        result.mean_corrupted_prob
    );
    let mut rows = Vec::new();
    for kind in Kind::ALL {
        let Some(effects) = result.kind(kind) else {
            continue;
        };
        for class in TokenClass::ALL {
            let Some(c) = effects.class(class) else {
                continue;
            };
            let (layer, aie) =
                c.aie
                    .iter()
                    .copied()
                    .enumerate()
                    .fold(
                        (0, f64::NEG_INFINITY),
                        |b, (i, x)| if x > b.1 { (i, x) } else { b },
                    );
            rows.push(vec![
                kind.name().to_string(),
                c.label.clone(),
                c.facts.to_string(),
                layer.to_string(),
                format!("{aie:+.4}"),
            ]);
        }
    }
    println!(
        "{}",
        table(
            &["restored", "token class", "facts", "peak layer", "peak AIE"],
            &rows
        )
    );
    println!(
        "\nrecommended layer to edit: {} (MLP AIE at the last subject token {:+.4})",
        result.recommended_layer, result.recommended_aie
    );
    println!("{:.1} s per fact", result.seconds_per_fact);
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(())
}
