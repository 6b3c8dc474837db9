//! `kedit stats`: second-moment statistics of MLP keys for several layers in one pass.

use std::path::PathBuf;

use anyhow::Result;
use kedit::cache::Cache;
use kedit::stats::{key_stats, Precision, StatsRequest};
use serde::Serialize;

use crate::bounds;
use crate::output::{print_json, table};
use crate::progress::bars_unless;
use crate::ModelArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// Layers, comma-separated (3,4,5) or a range (3-7).
    #[arg(long)]
    layers: String,
    /// JSONL with a `text` field, or plain text (documents = blank-line-separated paragraphs).
    #[arg(long)]
    corpus: PathBuf,
    /// Documents to use (fewer if the corpus has fewer).
    #[arg(long, default_value_t = 100_000, value_parser = bounds::count(1, bounds::MAX_RECORDS))]
    docs: usize,
    /// Tokens kept from the start of each document.
    #[arg(long, default_value_t = 128, value_parser = bounds::count(1, bounds::MAX_TOKENS))]
    max_len: usize,
    /// Accumulation type: f32 (ROME's and EasyEdit's) or f64.
    #[arg(long, default_value_t = Precision::F32)]
    precision: Precision,
    /// Documents per forward pass.
    #[arg(long, default_value_t = 16, value_parser = bounds::count(1, 4096))]
    batch_size: usize,
    /// The cache directory [default: $KEDIT_CACHE, else .kedit-cache at the workspace root].
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Print JSON (one object per layer).
    #[arg(long)]
    json: bool,
}

/// `3,4,5`, `3-5` or a mix (`1,3-5`).
pub fn parse_layers(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("`{part}` is not a layer number or range (e.g. 3,4,5 or 3-7)");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                if a > b {
                    return Err(bad());
                }
                if b >= bounds::MAX_LAYERS {
                    return Err(format!(
                        "`{part}`: no model has {} layers (at most {})",
                        b + 1,
                        bounds::MAX_LAYERS
                    ));
                }
                out.extend(a..=b);
            }
            None => {
                let layer: usize = part.parse().map_err(|_| bad())?;
                if layer >= bounds::MAX_LAYERS {
                    return Err(format!(
                        "`{part}`: no model has {} layers (at most {})",
                        layer + 1,
                        bounds::MAX_LAYERS
                    ));
                }
                out.push(layer);
            }
        }
    }
    if out.is_empty() {
        return Err("no layers given".into());
    }
    Ok(out)
}

pub fn cache_of(dir: &Option<PathBuf>) -> Cache {
    dir.clone()
        .map(Cache::new)
        .unwrap_or_else(Cache::default_location)
}

#[derive(Serialize)]
struct Row {
    layer: usize,
    n_docs: usize,
    n_tokens: u64,
    trace: f64,
    cached: bool,
    seconds: Option<f64>,
    tokens_per_second: Option<f64>,
    path: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let layers = parse_layers(&args.layers).map_err(anyhow::Error::msg)?;
    let model = args.model.load()?;
    let request = StatsRequest {
        n_docs: args.docs,
        max_len: args.max_len,
        precision: args.precision,
        batch_size: args.batch_size,
        ..StatsRequest::new(layers, &args.corpus)
    };
    let cache = cache_of(&args.cache);
    let stats = key_stats(&model, &request, &cache, &mut *bars_unless(args.json))?;
    let rows = stats
        .iter()
        .map(|s| {
            Ok(Row {
                layer: s.layer,
                n_docs: s.n_docs,
                n_tokens: s.n_tokens,
                trace: s.trace()?,
                cached: s.computed.is_none(),
                seconds: s.computed.map(|c| c.seconds),
                tokens_per_second: s.computed.map(|c| c.tokens_per_second),
                path: s.path.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if args.json {
        return print_json(&rows);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.layer.to_string(),
                r.n_docs.to_string(),
                r.n_tokens.to_string(),
                format!("{:.4e}", r.trace),
                r.tokens_per_second
                    .map_or("cached".into(), |t| format!("{t:.0}")),
                r.path.display().to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "layer",
                "docs",
                "tokens",
                "trace(C)",
                "tokens/s",
                "cache file"
            ],
            &cells
        )
    );
    if let Some(t) = stats.iter().find_map(|s| s.computed) {
        println!(
            "\none pass over {} tokens in {:.1} s ({:.0} tokens/s)",
            t.tokens, t.seconds, t.tokens_per_second
        );
    }
    Ok(())
}
