//! Splits a WISE state whose two shards were TIES-merged back into the two shards, by the
//! subspace masks they were written in, so that the stream can be scored as if it had not
//! merged (docs/memory-based.md, "Lifelong editing"). Entries where the two masks overlap
//! (a fifth of each shard's) hold the merge's value in both halves, so the split is close
//! to the shards it came from, not equal to them; both keep the merged threshold.
//!
//!     cargo run --release -p kedit --example wise_unmerge -- MERGED.safetensors OUT.safetensors [SEED]
//!
//! SEED is the run's `seed` (run.json; 0 by default), from which each shard's mask was drawn.
use std::path::Path;

use kedit::edit::{Edit, SideMemory};
use kedit::methods::wise::shard::{shard_seed, subspace_mask};
use kedit::{Error, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err(Error::invalid(
            "usage: wise_unmerge MERGED.safetensors OUT.safetensors [SEED]",
        ));
    }
    let run_seed: u64 = match args.get(3) {
        Some(s) => s
            .parse()
            .map_err(|_| Error::invalid(format!("SEED `{s}` is not a number")))?,
        None => 0,
    };
    let Edit::SideMemory(mut state) = Edit::load(Path::new(&args[1]))? else {
        return Err(Error::invalid(format!("{}: not a WISE state", args[1])));
    };
    let Some(merged) = state.memories.pop().filter(|_| state.memories.is_empty()) else {
        return Err(Error::invalid(format!(
            "{}: not one merged memory",
            args[1]
        )));
    };
    if merged.info.mask_seed != shard_seed(run_seed, 0) || merged.info.edits % 2 != 0 {
        return Err(Error::invalid(format!(
            "{}: not two shards merged from a run with seed {run_seed}",
            args[1]
        )));
    }
    // The shards' masks were drawn at the state's own `mask_ratio`.
    let mask_ratio = state
        .meta
        .get("hparams")
        .and_then(|h| serde_json::from_str::<serde_json::Value>(h).ok())
        .and_then(|h| h["mask_ratio"].as_f64())
        .ok_or_else(|| Error::invalid(format!("{}: no mask_ratio in its hparams", args[1])))?;
    let half = merged.info.edits / 2;
    let shape = merged.delta.dims2()?;
    for i in 0..2 {
        let seed = shard_seed(run_seed, (i * half) as u64);
        let mask = subspace_mask(shape, mask_ratio, seed, merged.delta.device())?;
        let mut info = merged.info.clone();
        info.mask_seed = seed;
        info.edits = half;
        info.written = merged.info.written[i * half..(i + 1) * half].to_vec();
        state.memories.push(SideMemory {
            delta: (&merged.delta * &mask)?,
            info,
        });
    }
    Edit::SideMemory(state).save(Path::new(&args[2]))?;
    println!("wrote {} (two shards of {half} edits)", args[2]);
    Ok(())
}
