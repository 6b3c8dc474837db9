//! `kedit demo`: what the model believes, one fact rewritten with ROME, and the rewrite undone.

use anyhow::Result;
use kedit::editor::Editor;
use kedit::generate::{generate, top_next_tokens, GenerateOptions};
use kedit::lm::LanguageModel;
use kedit::methods::{EditContext, Registry};
use kedit::request::EditRequest;

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

fn show_beliefs(lm: &dyn LanguageModel, prompts: &[&str]) -> Result<()> {
    let tok = lm.tokenizer()?;
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tok.encode_input(p))
        .collect::<Result<_, _>>()?;
    let opts = GenerateOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    let continuations = generate(lm, &ids, &opts)?;
    for ((prompt, ids), cont) in prompts.iter().zip(&ids).zip(&continuations) {
        let top = top_next_tokens(lm, ids, 3)?;
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
    let ctx = EditContext::default();
    let (rome, without) = Registry::builtin().load_or_without_statistics("rome", &model, &ctx)?;
    if let Some(why) = without {
        println!("  ({why}: editing without C⁻¹)");
    }
    rome.method
        .prepare(&model, &ctx, &mut crate::progress::Bars::default())?;
    let mut editor = Editor::new(model);
    let computed = rome.method.compute(&editor, &[request], &ctx)?;
    let applied = editor.apply(&computed.edit)?.clone();
    let phases: Vec<String> = computed
        .report
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
    let tok = editor.tokenizer()?;
    let mut rows = Vec::new();
    for (kind, prompt) in PROBES {
        let ids = tok.encode_input(prompt)?;
        let top = &top_next_tokens(&editor, &ids, 1)?[0];
        rows.push(vec![
            kind.to_string(),
            prompt.to_string(),
            visible(&top.text),
            format!("{:.2}", top.prob),
        ]);
    }
    println!("{}", table(&["probe", "prompt", "top-1", "p"], &rows));
    show_beliefs(&editor, &PROMPTS[..1])?;

    editor.revert_all();
    println!(
        "\nReverted: weights bit-identical to the original: {}",
        editor.is_pristine()?
    );
    Ok(())
}
