//! `kedit fuzz`: the library's fuzzing harness over every input format, with this
//! binary's allocator bounding and measuring memory.

use std::path::PathBuf;

use anyhow::{bail, Result};
use kedit::fuzz::{self, Format, Options, Report};
use serde::Serialize;

use crate::alloc;
use crate::output::print_json;
use crate::progress::Bars;

#[derive(clap::Args)]
pub struct Args {
    /// gguf | safetensors | config | index | hparams | dataset | all
    #[arg(long, default_value = "all")]
    format: String,
    /// Cases per format.
    #[arg(long, default_value_t = 100_000)]
    cases: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The index of the first case: `--case I --cases 1` reproduces case I alone.
    #[arg(long = "case", default_value_t = 0)]
    first_case: u64,
    /// The shared directory: dataset seeds (data/) and tiny models (fixtures/tiny/).
    #[arg(long, default_value = "../shared")]
    shared: PathBuf,
    /// More model directories (config.json + model.safetensors) to seed config.json cases.
    #[arg(long = "model-dir")]
    model_dirs: Vec<PathBuf>,
    /// The most memory, in MiB, that may be live at once (and so the largest allocation).
    #[arg(long, default_value_t = 1024)]
    max_memory_mib: usize,
    /// Where cases write their files [default: a directory under the system's temp dir].
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Leave the last case's files in the scratch directory.
    #[arg(long)]
    keep: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Row {
    format: String,
    seed: u64,
    cases: u64,
    ok: u64,
    typed_errors: u64,
    panics: u64,
    /// `(case, message)` of each panic: `--case N --cases 1 --seed S` reproduces it.
    panic_cases: Vec<(u64, String)>,
    peak_live_bytes: usize,
    largest_allocation_bytes: usize,
    largest_allocation_case: u64,
    memory_bound_bytes: usize,
    seconds: f64,
    skipped: Option<String>,
}

fn row(r: &Report, bound: usize) -> Row {
    let (peak, largest) = alloc::figures();
    Row {
        format: r.format.to_string(),
        seed: r.seed,
        cases: r.cases,
        ok: r.ok,
        typed_errors: r.errors,
        panics: r.panics.len() as u64,
        panic_cases: r
            .panics
            .iter()
            .map(|f| (f.case, f.message.clone()))
            .collect(),
        peak_live_bytes: peak,
        largest_allocation_bytes: largest,
        largest_allocation_case: alloc::largest_case(),
        memory_bound_bytes: bound,
        seconds: r.seconds,
        skipped: r.skipped.clone(),
    }
}

pub fn run(args: Args) -> Result<()> {
    let formats: Vec<Format> = if args.format == "all" {
        Format::ALL.to_vec()
    } else {
        vec![args.format.parse()?]
    };
    let scratch = args
        .scratch
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("kedit-fuzz-{}", std::process::id())));
    let mut model_dirs = args.model_dirs.clone();
    // The tiny Gemma 3 of the test fixtures, when run from the workspace.
    let gemma = PathBuf::from("crates/kedit/tests/fixtures/gemma3/tiny");
    if gemma.is_dir() {
        model_dirs.push(gemma);
    }
    let opts = Options {
        seed: args.seed,
        cases: args.cases,
        first_case: args.first_case,
        scratch: scratch.clone(),
        shared: Some(args.shared.clone()).filter(|p| p.is_dir()),
        model_dirs,
        keep: args.keep,
    };
    let bound = args.max_memory_mib.saturating_mul(1 << 20);
    let mut rows = Vec::new();
    for format in formats {
        alloc::reset_peak();
        alloc::set_limit(bound);
        let mut bars = Bars::verbose(false);
        let report = fuzz::run(format, &opts, &mut bars, &mut |case| {
            alloc::CASE.store(case, std::sync::atomic::Ordering::Relaxed)
        });
        bars.finish();
        alloc::set_limit(usize::MAX);
        let r = row(&report?, bound);
        if !args.json {
            print_row(&r);
        }
        rows.push(r);
    }
    if !args.keep {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    if args.json {
        print_json(&rows)?;
    }
    let panics: u64 = rows.iter().map(|r| r.panics).sum();
    if panics > 0 {
        bail!("{panics} case(s) panicked (each listed with the case index that reproduces it)");
    }
    Ok(())
}

fn print_row(r: &Row) {
    if let Some(why) = &r.skipped {
        println!("{:<12} skipped: {why}", r.format);
        return;
    }
    println!(
        "{:<12} seed {} cases {:>7}  ok {:>7}  typed errors {:>7}  panics {}  peak {:.1} MiB  \
         largest allocation {:.1} MiB (case {})  (bound {} MiB)  {:.1} s",
        r.format,
        r.seed,
        r.cases,
        r.ok,
        r.typed_errors,
        r.panics,
        r.peak_live_bytes as f64 / (1u64 << 20) as f64,
        r.largest_allocation_bytes as f64 / (1u64 << 20) as f64,
        r.largest_allocation_case,
        r.memory_bound_bytes >> 20,
        r.seconds
    );
    for (case, message) in &r.panic_cases {
        println!("  panic in case {case}: {message}");
    }
}
