//! `kedit bench-memory`: adding edits to a memory-based method one by one, then scoring
//! through the system that holds them all against the plain model.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kedit::bench::memory::memory_bench;
use kedit::data::{load, Format, LoadOptions};
use kedit::methods::{EditContext, Registry};

use crate::output::print_json;
use crate::ModelArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    #[arg(long, default_value = "serac", help = crate::method_help())]
    method: String,
    /// EasyEdit-style hyper-parameter YAML (SERAC: the hparams.yaml `kedit train` wrote).
    #[arg(long)]
    hparams: Option<PathBuf>,
    /// Edit requests to store, in file order (ZsRE, KnowEdit, CounterFact).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "auto")]
    format: Format,
    /// Edits stored, one per call.
    #[arg(long, default_value_t = 1000, value_parser = crate::bounds::count(1, 100_000))]
    stored: usize,
    /// Requests whose teacher-forced prompts are scored: the first ones of this file
    /// [default: of --data, i.e. edits that are stored, so their prompts are routed].
    #[arg(long)]
    probe_data: Option<PathBuf>,
    #[arg(long, default_value_t = 100, value_parser = crate::bounds::count(1, 100_000))]
    probes: usize,
    /// Scoring rounds, plain and through the memory alternating; the ratio is the median
    /// of the rounds' ratios.
    #[arg(long, default_value_t = 5, value_parser = crate::bounds::count(1, 100))]
    rounds: usize,
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
        limit: Some(args.stored.max(args.probes)),
    };
    let data = load(&args.data, args.format, &opts)
        .with_context(|| format!("loading {}", args.data.display()))?;
    let stored = &data.requests[..args.stored.min(data.requests.len())];
    let probe_requests = match &args.probe_data {
        Some(path) => {
            load(path, args.format, &opts)
                .with_context(|| format!("loading {}", path.display()))?
                .requests
        }
        None => data.requests.clone(),
    };
    let probes = &probe_requests[..args.probes.min(probe_requests.len())];
    let b = memory_bench(
        loaded.method.as_ref(),
        &model,
        stored,
        probes,
        args.rounds,
        &EditContext::default(),
        &mut crate::progress::Bars::default(),
    )?;
    if args.json {
        return print_json(&b);
    }
    println!("{} with {} edits stored, one per call", b.method, b.stored);
    println!(
        "  one edit: compute {:.1} ms, apply {:.1} ms (median; last tenth {:.1} / {:.1} ms)",
        b.compute_ms, b.apply_ms, b.compute_ms_full, b.apply_ms_full
    );
    println!(
        "  scoring {} teacher-forced prompts, median of {} rounds: plain {:.2} s, through the \
         memory {:.2} s; median ratio {:.2}×",
        b.prompts, b.rounds, b.plain_seconds, b.edited_seconds, b.ratio
    );
    let list = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "    {} of them routed; routing them all alone {:.2} s",
        b.routed, b.routing_seconds
    );
    println!(
        "    plain, each round:       {}",
        list(&b.plain_round_seconds)
    );
    println!(
        "    through memory, each:    {}",
        list(&b.edited_round_seconds)
    );
    Ok(())
}
