//! `kedit methods`: the method registry as a table.

use anyhow::Result;
use kedit::methods::Registry;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_: Args) -> Result<()> {
    println!(
        "{:<8} {:<6} {:<17} {:<24} summary",
        "method", "alg", "family", "needs"
    );
    print!("{}", Registry::builtin().describe());
    Ok(())
}
