//! `kedit demo`: what the model believes about a few facts.

use anyhow::Result;
use kedit::generate::{generate, top_next_tokens, GenerateOptions};

use crate::output::{table, visible};
use crate::ModelArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
}

const PROMPTS: [&str; 4] = [
    "The capital of France is",
    "The Eiffel Tower is located in the city of",
    "The mother tongue of Danielle Darrieux is",
    "Michael Jordan plays the sport of",
];

pub fn run(args: Args) -> Result<()> {
    let model = args.model.load()?;
    let tok = model.tokenizer()?;
    println!("{}\n", model.config.describe());
    let ids: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| tok.encode(p))
        .collect::<Result<_, _>>()?;
    let opts = GenerateOptions {
        max_new_tokens: 16,
        ..Default::default()
    };
    let continuations = generate(&model, &ids, &opts)?;
    for ((prompt, ids), cont) in PROMPTS.iter().zip(&ids).zip(&continuations) {
        println!("{prompt}");
        let top = top_next_tokens(&model, ids, 5)?;
        let rows: Vec<Vec<String>> = top
            .iter()
            .map(|t| vec![visible(&t.text), t.id.to_string(), format!("{:.3}", t.prob)])
            .collect();
        println!("{}", table(&["next token", "id", "p"], &rows));
        println!("greedy: {prompt}{}\n", tok.decode(cont, true)?);
    }
    Ok(())
}
