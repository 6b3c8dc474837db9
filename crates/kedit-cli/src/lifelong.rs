//! `kedit lifelong`: the lifelong table of sequential runs named `<method>-T<T>`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use kedit::experiment::lifelong;

#[derive(clap::Args)]
pub struct Args {
    /// Directory holding the runs, one sub-directory `<method>-T<T>` per run
    /// (`kedit eval --mode sequential --limit T --out DIR/<method>-T<T>`).
    #[arg(long)]
    runs: PathBuf,
    /// Where to write `<out>.json`, `<out>.md` and `<out>.png`/`.svg`.
    #[arg(long)]
    out: PathBuf,
    /// An earlier table's JSON (as this command wrote it): its cells are kept where
    /// `--runs` has no run of the same method and T (runs made on another machine).
    #[arg(long)]
    keep: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let mut runs = lifelong::collect(&args.runs)?;
    if let Some(table) = &args.keep {
        let kept = lifelong::keep(&mut runs, table)?;
        println!("kept {kept} cells of {}", table.display());
    }
    if runs.is_empty() {
        bail!(
            "{}: no finished run named <method>-T<T> (with a summary.json) there",
            args.runs.display()
        );
    }
    print!("{}", lifelong::markdown(&runs));
    let written = lifelong::write(&args.out, &runs)?;
    println!(
        "\nwrote {}.json and {}.md",
        args.out.display(),
        args.out.display()
    );
    if let Some(w) = written {
        println!("the picture: {}", w.png.display());
    }
    Ok(())
}
