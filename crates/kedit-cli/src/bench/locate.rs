//! `kedit bench-stats` and `kedit bench-trace`: what locate-then-edit costs on this machine.

use std::path::PathBuf;

use anyhow::Result;
use kedit::bench::locate as bench;
use kedit::trace::{load_known_facts, TraceOptions};

use crate::output::{print_json, table};
use crate::stats::parse_layers;
use crate::trace::{TraceArgs, DEFAULT_FACTS};
use crate::ModelArg;

#[derive(clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    model: ModelArg,
    #[arg(
        long,
        default_value = "../shared/data/corpus/wikipedia_en_2015_sample.jsonl"
    )]
    corpus: PathBuf,
    /// Documents per pass.
    #[arg(long, default_value_t = 64, value_parser = crate::bounds::count(1, 100_000))]
    docs: usize,
    /// The single layer.
    #[arg(long, default_value = "5")]
    one: String,
    /// The layers computed together in one pass.
    #[arg(long, default_value = "3-7")]
    many: String,
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = crate::bounds::count(1, 1000))]
    reps: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run_stats(args: StatsArgs) -> Result<()> {
    let model = args.model.load()?;
    let one = parse_layers(&args.one).map_err(anyhow::Error::msg)?;
    let many = parse_layers(&args.many).map_err(anyhow::Error::msg)?;
    let fig = bench::stats_layers(&model, &args.corpus, &one, &many, args.docs, args.reps)?;
    if args.json {
        return print_json(&fig);
    }
    let rows: Vec<Vec<String>> = [&fig.one, &fig.many]
        .iter()
        .map(|p| {
            vec![
                format!("{:?}", p.layers),
                p.docs.to_string(),
                p.tokens.to_string(),
                format!("{:.2}", p.seconds),
                format!("{:.0}", p.tokens_per_second),
            ]
        })
        .collect();
    println!(
        "{}",
        table(&["layers", "docs", "tokens", "seconds", "tokens/s"], &rows)
    );
    println!(
        "\n{} layers in one pass take {:.2}x the time of one layer (target < 1.5)\n\
         Σ k kᵀ of {} keys (f32, lower half): {:.3} s",
        fig.many.layers.len(),
        fig.ratio,
        fig.accumulate_rows,
        fig.accumulate_seconds
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct TraceBenchArgs {
    #[command(flatten)]
    model: ModelArg,
    #[arg(long, default_value = DEFAULT_FACTS)]
    data: PathBuf,
    /// Facts traced (the first ones of the file).
    #[arg(long, default_value_t = 3, value_parser = crate::bounds::count(1, 10_000))]
    facts: usize,
    #[command(flatten)]
    trace: TraceArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run_trace(args: TraceBenchArgs) -> Result<()> {
    let workers = args.trace.start_workers();
    let model = args.model.load()?;
    let facts = load_known_facts(&args.data)?;
    let options = TraceOptions {
        workers,
        ..args.trace.options(&model, &args.data)?
    };
    let n = args.facts.min(facts.len());
    let fig = bench::trace_facts(&model, &facts[..n], &options)?;
    if args.json {
        return print_json(&fig);
    }
    println!(
        "causal trace (hidden + MLP + attention grids), {} facts of {:.1} tokens on average, \
         {} samples, {} token(s) per pass, {} worker(s): {:.2} s per fact",
        fig.facts,
        fig.mean_tokens,
        fig.samples,
        fig.tokens_per_pass,
        fig.workers,
        fig.seconds_per_fact
    );
    Ok(())
}
