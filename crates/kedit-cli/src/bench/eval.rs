//! `kedit bench-eval`: teacher-forced pre-edit metrics, batched vs one forward per prompt.

use std::path::PathBuf;

use anyhow::Result;
use kedit::bench::eval::pre_edit_metrics;
use kedit::data::{load, Format, LoadOptions};

use crate::output::print_json;
use crate::ModelArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// Dataset file [default: ../shared/data/knowedit/ZsRE/ZsRE-test-all.dev.json].
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    format: String,
    #[arg(long, default_value_t = 100, value_parser = crate::bounds::count(1, 100_000))]
    limit: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let model = args.model.load()?;
    let path = args
        .data
        .unwrap_or_else(|| PathBuf::from("../shared/data/knowedit/ZsRE/ZsRE-test-all.dev.json"));
    let format: Format = args.format.parse()?;
    let data = load(
        &path,
        format,
        &LoadOptions {
            skip_invalid: true,
            limit: Some(args.limit),
        },
    )?;
    let b = pre_edit_metrics(&model, &data.requests)?;
    if args.json {
        return print_json(&b);
    }
    println!(
        "teacher-forced pre-edit metrics, {} cases, {} prompts ({})",
        b.cases,
        b.prompts,
        path.display()
    );
    println!("  batched forwards:        {:.2} s", b.batched_seconds);
    println!("  one forward per prompt:  {:.2} s", b.per_prompt_seconds);
    println!("  batched / per-prompt:    {:.1}%", 100.0 * b.ratio);
    println!("  prompts whose argmax ids differ: {}", b.differing_prompts);
    Ok(())
}
