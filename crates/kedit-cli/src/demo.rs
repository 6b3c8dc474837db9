//! `kedit demo`: what the model believes, one fact rewritten with ROME, and the rewrite undone.

use std::path::Path;

use anyhow::Result;
use kedit::cache::Cache;
use kedit::editor::Editor;
use kedit::generate::{generate, top_next_tokens, GenerateOptions};
use kedit::methods::rome::{Rome, RomeHparams};
use kedit::methods::{self, EditContext, HparamsSource};
use kedit::request::EditRequest;
use kedit::stats::cached_key_stats;
use kedit::Model;

use crate::output::{table, visible};
use crate::ModelArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
}

const PROMPTS: [&str; 4] = [
    "The Eiffel Tower is located in the city of",
    "The capital of France is",
    "The mother tongue of Danielle Darrieux is",
    "Michael Jordan plays the sport of",
];

/// After the edit: the edited prompt, a paraphrase (should follow the edit) and
/// neighbours (should not).
const PROBES: [(&str, &str); 4] = [
    ("edited", "The Eiffel Tower is located in the city of"),
    (
        "paraphrase",
        "Where is the Eiffel Tower? It is in the city of",
    ),
    ("neighbour", "The Louvre is located in the city of"),
    ("neighbour", "The capital of France is"),
];

fn show_beliefs(model: &Model, prompts: &[&str]) -> Result<()> {
    let tok = model.tokenizer()?;
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tok.encode(p))
        .collect::<Result<_, _>>()?;
    let opts = GenerateOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    let continuations = generate(model, &ids, &opts)?;
    for ((prompt, ids), cont) in prompts.iter().zip(&ids).zip(&continuations) {
        let top = top_next_tokens(model, ids, 3)?;
        let next: Vec<String> = top
            .iter()
            .map(|t| format!("{} {:.2}", visible(&t.text), t.prob))
            .collect();
        println!("  {prompt}{}", tok.decode(cont, true)?.replace('\n', " "));
        println!("      next: {}", next.join(", "));
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let model = args.model.load()?;
    println!("{}\n", model.config.describe());
    println!("What the model believes (greedy continuation, top next tokens):");
    show_beliefs(&model, &PROMPTS)?;

    let request = EditRequest {
        case_id: "demo".into(),
        prompt: PROMPTS[0].into(),
        subject: "The Eiffel Tower".into(),
        target_new: "Rome".into(),
        ground_truth: vec!["Paris".into()],
        ..Default::default()
    };
    println!(
        "\nEditing with ROME: \"{}\" -> \"{}\" ...",
        request.prompt, request.target_new
    );
    let rome = methods::load_source("rome", Some(demo_hparams(&model)?), &model)?;
    let mut editor = Editor::new(model);
    let mut ctx = EditContext::default();
    let edit = rome.method.compute(editor.model(), &[request], &mut ctx)?;
    let applied = editor.apply(&edit)?.clone();
    let phases: Vec<String> = ctx
        .timings
        .iter()
        .map(|(p, s)| format!("{p} {s:.2}s"))
        .collect();
    println!(
        "  rank-one update of {} (‖ΔW‖/‖W‖ = {:.3}); {}",
        applied.params.join(", "),
        applied.relative_norms[0],
        phases.join(", ")
    );

    println!("\nAfter the edit:");
    let tok = editor.model().tokenizer()?;
    let mut rows = Vec::new();
    for (kind, prompt) in PROBES {
        let ids = tok.encode(prompt)?;
        let top = &top_next_tokens(editor.model(), &ids, 1)?[0];
        rows.push(vec![
            kind.to_string(),
            prompt.to_string(),
            visible(&top.text),
            format!("{:.2}", top.prob),
        ]);
    }
    println!("{}", table(&["probe", "prompt", "top-1", "p"], &rows));
    show_beliefs(editor.model(), &PROMPTS[..1])?;

    editor.revert_all();
    println!(
        "\nReverted: weights bit-identical to the original: {}",
        editor.is_pristine()?
    );
    Ok(())
}

/// The shipped ROME hyper-parameters; without the statistics corpus (`../shared` is not
/// beside the checkout) and without cached statistics, the edit goes without C (as EasyEdit
/// ships ROME) rather than failing, and says so.
fn demo_hparams(model: &Model) -> Result<HparamsSource> {
    let mut hp = Rome::default_hparams();
    let (hparams, _): (RomeHparams, _) = hp.deserialize()?;
    let corpus = Cache::resolve_relative(Path::new(&hparams.mom2_dataset));
    let cached = hparams
        .layers
        .iter()
        .map(|&l| cached_key_stats(model, l, None, &Cache::default_location()))
        .collect::<kedit::Result<Vec<_>>>()?
        .iter()
        .all(Option::is_some);
    if hparams.mom2_adjustment && corpus.is_none() && !cached {
        println!(
            "  (no statistics corpus at {} and none cached: editing without C⁻¹)",
            hparams.mom2_dataset
        );
        hp.set("mom2_adjustment", serde_json::json!(false));
    } else if hparams.mom2_adjustment && !cached {
        println!(
            "  (first run: computing the key statistics C of layer(s) {:?} once; they are cached)",
            hparams.layers
        );
    }
    Ok(hp)
}
