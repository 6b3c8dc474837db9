//! `kedit train`: train what a method learns before it edits (a hypernetwork, a scope
//! classifier); writes the checkpoint and `OUT/hparams.yaml` naming it (`archive:`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kedit::data::{load, Format, LoadOptions};
use kedit::methods::train::{train, TrainJob};
use kedit::methods::{HparamsSource, Registry};
use kedit::request::EditRequest;

use crate::progress::Bars;
use crate::ModelArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    #[arg(long, help = crate::method_help())]
    method: String,
    /// Training file (repeatable): ZsRE, KnowEdit or CounterFact records.
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// Validation file, disjoint from the training files.
    #[arg(long)]
    val: PathBuf,
    /// Output directory: the checkpoint and hparams.yaml (rerunning resumes).
    #[arg(long)]
    out: PathBuf,
    /// Hyper-parameters [default: the shipped ones for the model].
    #[arg(long)]
    hparams: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    format: Format,
    /// Use only the first N records of each training file.
    #[arg(long, value_parser = crate::bounds::count(1, crate::bounds::MAX_RECORDS))]
    limit: Option<usize>,
    /// Use only the first N validation records.
    #[arg(long, value_parser = crate::bounds::count(1, crate::bounds::MAX_RECORDS))]
    val_limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print each logged step.
    #[arg(long)]
    verbose: bool,
}

fn read(path: &Path, format: Format, limit: Option<usize>) -> Result<Vec<EditRequest>> {
    let opts = LoadOptions {
        skip_invalid: true,
        limit,
    };
    let data = load(path, format, &opts).with_context(|| format!("loading {}", path.display()))?;
    if !data.skipped.is_empty() {
        eprintln!(
            "{}: skipped {} malformed record(s); first: {}",
            path.display(),
            data.skipped.len(),
            data.skipped[0].1
        );
    }
    // Trainers name the record in their errors; its file goes with it.
    Ok(data
        .requests
        .into_iter()
        .map(|mut r| {
            r.case_id = format!("{} of {}", r.case_id, path.display());
            r
        })
        .collect())
}

pub fn run(args: Args) -> Result<()> {
    let model = args.model.load()?;
    let mut train_set = Vec::new();
    for path in &args.data {
        train_set.extend(read(path, args.format, args.limit)?);
    }
    let val = read(&args.val, args.format, args.val_limit)?;
    let hparams = args
        .hparams
        .as_deref()
        .map(HparamsSource::read)
        .transpose()?;
    eprintln!(
        "training {} on {} records, validating on {}",
        args.method,
        train_set.len(),
        val.len()
    );
    let mut bars = Bars::verbose(args.verbose);
    let trained = train(
        &Registry::builtin(),
        &model,
        TrainJob {
            method: &args.method,
            train: train_set,
            val,
            hparams,
            out_dir: &args.out,
            seed: args.seed,
        },
        &mut bars,
    )?;
    bars.finish();
    println!("{}", serde_json::to_string_pretty(&trained.summary)?);
    println!(
        "wrote {} and {}",
        trained.checkpoint.display(),
        args.out.join("hparams.yaml").display()
    );
    Ok(())
}
