//! `kedit`: the command line. A thin layer over the kedit library: parse, call, print.

mod alloc;
mod bench;
mod bounds;
mod demo;
mod edit;
mod eval;
mod export;
mod fuzz;
mod generate;
mod inspect;
mod lifelong;
mod locate;
mod logits;
mod merge_runs;
mod methods;
mod output;
mod progress;
mod serve;
mod stats;
mod trace;
mod train;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kedit::Model;

#[derive(Parser)]
#[command(
    name = "kedit",
    version,
    about = "Knowledge editing for large language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main demo on the default model.
    Demo(demo::Args),
    /// Generate a continuation of a prompt.
    Generate(generate::Args),
    /// Describe a model: architecture, sizes, layers, intervention sites.
    Inspect(inspect::Args),
    /// Measure throughput: matmul GFLOP/s, prefill, forward+backward.
    Bench(bench::runtime::Args),
    /// Measure seconds per edit of a method, phase by phase, and peak memory.
    BenchEdit(bench::edit::Args),
    /// Edit and evaluate a dataset (single, sequential or batch mode); resumable, shardable.
    Eval(eval::Args),
    /// Join the run directories of `kedit eval --shard K/N` into one run.
    MergeRuns(merge_runs::Args),
    /// The editing methods: names, EasyEdit alg_name, family, what each needs.
    Methods(methods::Args),
    /// Train what a method learns before it edits (writes a checkpoint and hparams.yaml).
    Train(train::Args),
    /// Make one edit and show generations and metrics before and after.
    Edit(edit::Args),
    /// Export a saved edit as a PEFT LoRA adapter, or the (edited) model as GGUF or a
    /// Hugging Face directory.
    Export(export::Args),
    /// Logits at every position of prompts, and greedy continuations, as JSON.
    Logits(logits::Args),
    /// Time the teacher-forced metrics: batched forwards vs one forward per prompt.
    BenchEval(bench::eval::Args),
    /// Memory-based methods: adding edits one by one, then scoring through all of them
    BenchMemory(bench::memory::Args),
    /// Second-moment statistics E[k kᵀ] of MLP keys, several layers in one cached pass.
    Stats(stats::Args),
    /// Causal tracing of one prompt: where is the fact recalled?
    Trace(trace::Args),
    /// Causal tracing averaged over known facts: which layer to edit.
    Locate(locate::Args),
    /// Measure key statistics: one layer vs several in one pass.
    BenchStats(bench::locate::StatsArgs),
    /// Measure causal tracing: seconds per fact.
    BenchTrace(bench::locate::TraceBenchArgs),
    /// The lifelong table: sequential runs of T edits each (WISE's shape) and its picture.
    Lifelong(lifelong::Args),
    /// Fuzz every input format (model files, hyper-parameters, datasets): each case must
    /// end in a result or a typed error, within a memory bound.
    Fuzz(fuzz::Args),
    /// A web page: edit a fact, compare answers before and after, trace, revert, save.
    Serve(serve::Args),
}

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// The help text of `--method`, from the method registry.
pub fn method_help() -> String {
    format!(
        "Editing method: {} (`kedit methods` describes each)",
        kedit::methods::Registry::builtin().names()
    )
}

/// `--model`: a .gguf file or a Hugging Face directory; the fetched SmolLM2 by default.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArg {
    /// A .gguf file or a Hugging Face model directory [default: models/SmolLM2-135M-Instruct.Q4_1.gguf]
    #[arg(long)]
    model: Option<PathBuf>,
}

impl ModelArg {
    pub fn path(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(kedit::model::default_model_path)
    }

    pub fn load(&self) -> Result<Model> {
        let path = self.path();
        Model::load(&path).with_context(|| format!("loading model {}", path.display()))
    }
}

fn main() {
    // Before any tensor work starts threads.
    kedit::runtime::process::configure_process();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Bench(a) => bench::runtime::run(a),
        Command::BenchEdit(a) => bench::edit::run(a),
        Command::Eval(a) => eval::run_cmd(a),
        Command::MergeRuns(a) => merge_runs::run(a),
        Command::Edit(a) => edit::run(a),
        Command::Export(a) => export::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Methods(a) => methods::run(a),
        Command::Train(a) => train::run(a),
        Command::BenchEval(a) => bench::eval::run(a),
        Command::BenchMemory(a) => bench::memory::run(a),
        Command::Stats(a) => stats::run(a),
        Command::Trace(a) => trace::run(a),
        Command::Locate(a) => locate::run(a),
        Command::BenchStats(a) => bench::locate::run_stats(a),
        Command::BenchTrace(a) => bench::locate::run_trace(a),
        Command::Fuzz(a) => fuzz::run(a),
        Command::Lifelong(a) => lifelong::run(a),
        Command::Serve(a) => serve::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
