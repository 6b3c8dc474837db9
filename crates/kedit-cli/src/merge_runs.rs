//! `kedit merge-runs`: join the run directories of `kedit eval --shard K/N` into one.

use std::path::PathBuf;

use anyhow::Result;

use crate::eval::print_summary;

#[derive(clap::Args)]
pub struct Args {
    /// The shards' run directories (all N of them, any order).
    #[arg(required = true)]
    shards: Vec<PathBuf>,
    /// The merged run directory (new): run.json, pre.jsonl, cases.jsonl, summary.json.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let summary = kedit::experiment::merge_runs(&args.shards, &args.out)?;
    print_summary(&summary);
    println!(
        "\nmerged {} shards into {}",
        args.shards.len(),
        args.out.join("summary.json").display()
    );
    Ok(())
}
