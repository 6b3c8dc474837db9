//! `kedit trace`: causal tracing of one prompt — JSON, heatmaps and a summary.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kedit::trace::pictures::write_trace_pictures;
use kedit::trace::{cached_subject_embedding_std, trace_prompt, Kind, TraceOptions};
use kedit::Model;

use crate::bounds;
use crate::output::{print_json, table, visible};
use crate::stats::cache_of;
use crate::ModelArg;

/// The settings shared by `trace` and `locate` (ROME's defaults).
#[derive(clap::Args, Clone, Debug)]
pub struct TraceArgs {
    /// Corrupted runs (noise samples).
    #[arg(long, default_value_t = 10, value_parser = bounds::count(1, 10_000))]
    samples: usize,
    /// Noise standard deviation, in units of σ.
    #[arg(long, default_value_t = 3.0, value_parser = bounds::real(0.0, 1000.0))]
    noise: f64,
    /// σ itself [default: the std of subject-token embeddings over --facts, cached].
    #[arg(long, value_parser = bounds::real(1e-12, 1e6))]
    sigma: Option<f64>,
    /// Layers restored together for MLP and attention.
    #[arg(long, default_value_t = 10, value_parser = bounds::count(1, bounds::MAX_LAYERS))]
    window: usize,
    /// Seed of the noise.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tokens whose restorations share one forward pass (more rows, fewer passes).
    #[arg(long, default_value_t = 3, value_parser = bounds::count(1, 256))]
    tokens_per_pass: usize,
    /// Threads running forward passes [default: one per core, each with single-threaded
    /// tensor ops].
    #[arg(long, value_parser = bounds::count(1, 256))]
    workers: Option<usize>,
    /// The cache directory [default: $KEDIT_CACHE, else .kedit-cache at the workspace root].
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

pub const DEFAULT_FACTS: &str = "../shared/data/known_1000/known_1000.json";

impl TraceArgs {
    /// Worker threads; with more than one, tensor ops run single-threaded unless
    /// RAYON_NUM_THREADS says otherwise. Call before any tensor work: candle reads it then.
    ///
    /// Why: tracing runs thousands of small forward passes, where candle's per-op thread
    /// barriers cost more than they save (1.7x slower than one thread on a busy 2-core
    /// machine); independent passes on independent threads scale instead.
    pub fn start_workers(&self) -> usize {
        let workers = self
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        if workers > 1 && !kedit::runtime::process::rayon_threads_from_user() {
            std::env::set_var("RAYON_NUM_THREADS", "1");
        }
        workers
    }

    /// The options, with σ from the known facts at `facts` unless given.
    pub fn options(&self, model: &Model, facts: &Path) -> Result<TraceOptions> {
        let sigma = match self.sigma {
            Some(s) => s,
            None => {
                if !facts.exists() {
                    bail!(
                        "{}: not found; σ is computed from the subjects of ROME's known facts — \
                         pass --facts FILE or --sigma VALUE",
                        facts.display()
                    );
                }
                cached_subject_embedding_std(model, facts, &cache_of(&self.cache))
                    .with_context(|| format!("σ from {}", facts.display()))?
                    .sigma
            }
        };
        Ok(TraceOptions {
            samples: self.samples,
            noise: self.noise,
            sigma,
            window: self.window,
            seed: self.seed,
            tokens_per_pass: self.tokens_per_pass,
            workers: self.workers.unwrap_or(1),
        })
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// The prompt; the answer is its next token.
    #[arg(long)]
    prompt: String,
    /// The subject, as it appears in the prompt; its tokens are corrupted.
    #[arg(long)]
    subject: String,
    /// The answer whose probability is traced: its first token, so include the leading space
    /// (" Paris") [default: the model's most likely next token].
    #[arg(long)]
    answer: Option<String>,
    #[command(flatten)]
    trace: TraceArgs,
    /// Known facts whose subjects give σ.
    #[arg(long, default_value = DEFAULT_FACTS)]
    facts: PathBuf,
    /// Write trace.json and heatmaps (hidden, mlp, attn, trace) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the whole result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(dir) = &args.out {
        kedit::fsio::check_writable_dir(dir)?;
    }
    let workers = args.trace.start_workers();
    let model = args.model.load()?;
    let options = TraceOptions {
        workers,
        ..args.trace.options(&model, &args.facts)?
    };
    let result = trace_prompt(
        &model,
        &args.prompt,
        &args.subject,
        args.answer.as_deref(),
        &options,
    )?;
    let mut files = Vec::new();
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join("trace.json");
        let text = serde_json::to_string_pretty(&result)?;
        kedit::fsio::write_atomic(&json, text.as_bytes())?;
        files.push(json);
        for w in write_trace_pictures(&result, dir)? {
            if !w.with_text {
                eprintln!(
                    "warning: no font could be loaded; {} has no text",
                    w.png.display()
                );
            }
            files.extend([w.png, w.svg]);
        }
    }
    if args.json {
        return print_json(&result);
    }
    let labels = result.labels();
    println!(
        "prompt: {}\ntokens: {}\nanswer: {} (token {})\np(answer): clean {:.4}, corrupted {:.4} \
         (noise {} × σ = {:.4}, {} samples)\n",
        visible(&result.prompt),
        labels.join(" | "),
        visible(&result.answer),
        result.answer_id,
        result.clean_prob,
        result.corrupted_prob,
        options.noise,
        options.noise * options.sigma,
        options.samples,
    );
    let rows: Vec<Vec<String>> = Kind::ALL
        .iter()
        .map(|&k| {
            let p = result.peak(k);
            vec![
                k.name().to_string(),
                visible(&labels[p.token]),
                p.layer.to_string(),
                format!("{:.4}", p.prob),
                format!("{:+.4}", p.prob - result.corrupted_prob),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &["restored", "token", "layer", "p(answer)", "effect"],
            &rows
        )
    );
    println!("\ntraced in {:.1} s", result.seconds);
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(())
}
