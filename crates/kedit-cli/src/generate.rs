//! `kedit generate`

use anyhow::Result;
use kedit::generate::{generate, GenerateOptions, Sampling};
use kedit::tokenizer::ChatMessage;
use serde::Serialize;

use crate::bounds;
use crate::output::print_json;
use crate::ModelArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 32, value_parser = bounds::count(1, bounds::MAX_TOKENS))]
    max_new_tokens: usize,
    /// Sample among the k most likely tokens instead of greedy decoding.
    #[arg(long, value_parser = bounds::count(1, 1 << 24))]
    top_k: Option<usize>,
    #[arg(long, default_value_t = 1.0, value_parser = bounds::real(1e-3, 100.0))]
    temperature: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Print JSON (prompt and generated token ids and text).
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Output {
    prompt: String,
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
    generated_text: String,
    sampling: Sampling,
}

pub fn run(args: Args) -> Result<()> {
    let model = args.model.load()?;
    let tok = model.tokenizer()?;
    let prompt = if args.chat {
        tok.apply_chat_template(&[ChatMessage::user(&args.prompt)], true)?
    } else {
        args.prompt.clone()
    };
    let ids = tok.encode_input(&prompt)?;
    let sampling = match args.top_k {
        Some(k) => Sampling::TopK {
            k,
            temperature: args.temperature,
            seed: args.seed,
        },
        None => Sampling::Greedy,
    };
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling,
        stop_at_eos: true,
    };
    let new = generate(&model, std::slice::from_ref(&ids), &opts)?.remove(0);
    let text = tok.decode(&new, true)?;
    if args.json {
        print_json(&Output {
            prompt,
            prompt_ids: ids,
            generated_ids: new,
            generated_text: text,
            sampling,
        })
    } else {
        println!("{prompt}{text}");
        Ok(())
    }
}
