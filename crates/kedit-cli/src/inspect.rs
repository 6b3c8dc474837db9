//! `kedit inspect`

use anyhow::Result;
use kedit::runtime::summary::ModelSummary;

use crate::output::print_json;
use crate::ModelArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let model = args.model.load()?;
    let s = ModelSummary::of(&model);
    if args.json {
        return print_json(&s);
    }
    println!("model         {} ({})", s.source, s.format);
    println!("architecture  {}", s.architecture);
    println!(
        "parameters    {} ({:.1} M, {})",
        s.parameters,
        s.parameters as f64 / 1e6,
        s.dtype
    );
    println!("layers        {}", s.n_layers);
    println!(
        "d_model       {}   d_ff {}   vocab {}",
        s.d_model, s.d_ff, s.vocab_size
    );
    println!(
        "attention     {} heads, {} key/value heads, head_dim {}",
        s.n_heads, s.n_kv_heads, s.head_dim
    );
    println!("norm          {}", s.norm);
    println!("mlp           {}", s.activation);
    println!("block         {}", s.block);
    if let Some(r) = &s.rope {
        println!("rope          {r}");
    }
    if let Some(w) = s.sliding_window {
        println!("window        {w}");
    }
    println!("tied embed    {}", s.tied_embeddings);
    println!(
        "tokenizer     {}{}",
        s.tokenizer.as_deref().unwrap_or("none"),
        if s.chat_template {
            ", chat template"
        } else {
            ""
        }
    );
    println!("sites         {}", s.sites.join(", "));
    println!(
        "              ({{l}} = 0..{})",
        s.n_layers.saturating_sub(1)
    );
    println!("parameters    {}", s.parameter_names.join(", "));
    Ok(())
}
