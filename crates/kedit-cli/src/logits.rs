//! `kedit logits`: a model's (optionally edited) logits at every position of a few
//! prompts, and its greedy continuations, as JSON — what the reference scripts compare
//! other clients (transformers + PEFT, llama.cpp) against.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kedit::editor::Editor;
use kedit::fsio;
use kedit::generate::{generate, GenerateOptions};
use kedit::lm::LanguageModel;
use kedit::{LogitsAt, TokenBatch};
use serde_json::json;

use crate::ModelArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// A weight edit (kedit edit file or PEFT adapter directory) applied first.
    #[arg(long)]
    edit: Option<PathBuf>,
    /// A prompt (repeatable).
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Greedy tokens generated after each prompt.
    #[arg(long, default_value_t = 8)]
    max_new_tokens: usize,
    /// The JSON file written: per prompt its ids, logits `[positions][vocab]` and greedy
    /// continuation.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    fsio::check_writable_file(&args.out)?;
    let model = args.model.load()?;
    let mut editor = Editor::new(model);
    if let Some(path) = &args.edit {
        let edit = crate::export::load_edit(path, editor.model())
            .with_context(|| format!("reading the edit {}", path.display()))?;
        editor.apply(&edit)?;
    }
    let model = editor.weights_only()?;
    let tok = model.tokenizer()?;
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        ..Default::default()
    };
    let mut prompts = Vec::new();
    for text in &args.prompt {
        let ids = tok.encode_input(text)?;
        let out = model
            .forward(&TokenBatch::single(&ids))
            .logits(LogitsAt::All)
            .run()?;
        let logits: Vec<Vec<f32>> = out.logits()?.squeeze(0)?.to_vec2()?;
        let greedy = generate(
            &editor as &dyn LanguageModel,
            std::slice::from_ref(&ids),
            &opts,
        )?
        .remove(0);
        let text_out = tok.decode(&greedy, true)?;
        println!("{text:?} → {text_out:?}");
        prompts.push(json!({
            "text": text,
            "ids": ids,
            "logits": logits,
            "greedy_ids": greedy,
            "greedy_text": text_out,
        }));
    }
    let doc = json!({
        "model": args.model.path().display().to_string(),
        "edit": args.edit.as_ref().map(|p| p.display().to_string()),
        "prompts": prompts,
    });
    fsio::write_atomic(&args.out, serde_json::to_string(&doc)?.as_bytes())?;
    println!("wrote {}", args.out.display());
    Ok(())
}
