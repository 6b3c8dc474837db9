//! `kedit edit`: one edit, its before/after generations and metrics.

use std::path::PathBuf;

use anyhow::Result;
use kedit::editor::Editor;
use kedit::evaluate::{evaluate, MetricOptions};
use kedit::experiment::summary::summarize;
use kedit::fsio;
use kedit::generate::{generate, GenerateOptions};
use kedit::lm::LanguageModel;
use kedit::methods::{EditContext, Registry};
use kedit::request::EditRequest;

use crate::export;
use crate::output::table;
use crate::ModelArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    #[arg(long, help = crate::method_help())]
    method: String,
    #[arg(long)]
    hparams: Option<PathBuf>,
    /// The prompt to edit ("The Eiffel Tower is located in").
    #[arg(long)]
    prompt: String,
    /// The subject, a substring of the prompt ("The Eiffel Tower").
    #[arg(long)]
    subject: String,
    /// The new answer ("Rome").
    #[arg(long)]
    target: String,
    /// The answer being replaced (enables the CounterFact comparisons).
    #[arg(long)]
    ground_truth: Option<String>,
    /// A paraphrase of the prompt (repeatable).
    #[arg(long)]
    rephrase: Vec<String>,
    #[arg(long)]
    corpus: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Edit and ask through the model's chat template (the prompt as the user's message).
    #[arg(long)]
    chat: bool,
    /// Save the edit (safetensors; any kind of edit).
    #[arg(long)]
    save_edit: Option<PathBuf>,
    /// Save the edited model as a Hugging Face directory (a new or empty one, or one kedit
    /// saved before, with --overwrite).
    #[arg(long)]
    save_model: Option<PathBuf>,
    /// Save the edit as a PEFT LoRA adapter directory (weight edits).
    #[arg(long)]
    save_peft: Option<PathBuf>,
    /// Save the edited model as a GGUF file (llama, gemma3).
    #[arg(long)]
    save_gguf: Option<PathBuf>,
    #[command(flatten)]
    export: export::Settings,
}

fn greedy(lm: &dyn LanguageModel, prompts: &[String]) -> Result<Vec<String>> {
    let tok = lm.tokenizer()?;
    let ids = prompts
        .iter()
        .map(|p| tok.encode_input(p))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = GenerateOptions {
        max_new_tokens: 20,
        ..Default::default()
    };
    generate(lm, &ids, &opts)?
        .iter()
        .map(|g| Ok(tok.decode(g, true)?))
        .collect()
}

pub fn run(args: Args) -> Result<()> {
    // Outputs are checked before minutes of work, not after.
    if let Some(path) = &args.save_edit {
        fsio::check_writable_file(path)?;
    }
    let targets = args.export.targets(
        args.save_peft.clone(),
        args.save_gguf.clone(),
        args.save_model.clone(),
    )?;
    targets.check()?;
    let model = args.model.load()?;
    let loaded = Registry::builtin().load(&args.method, args.hparams.as_deref(), &model)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let plain = EditRequest {
        case_id: "cli".into(),
        prompt: args.prompt.clone(),
        subject: args.subject.clone(),
        target_new: args.target.clone(),
        ground_truth: args.ground_truth.iter().cloned().collect(),
        rephrase: args.rephrase.clone(),
        ..Default::default()
    };
    let chat = args.chat
        || match &args.hparams {
            Some(p) => kedit::methods::HparamsSource::read(p)?.chat_template()?,
            None => false,
        };
    let request = if chat {
        kedit::prompts::chat_request(model.tokenizer()?, &plain)?
    } else {
        plain
    };
    // Refused before any work (a target too long, a subject not in the prompt, …).
    loaded.method.check_request(&model, &request)?;
    let prompts: Vec<String> = std::iter::once(request.prompt.clone())
        .chain(request.rephrase.iter().cloned())
        .collect();
    let opts = MetricOptions {
        seed: args.seed,
        ..Default::default()
    };
    let before = greedy(&model, &prompts)?;
    let pre = evaluate(&model, &[&request], None, &opts)?.remove(0);
    let mut editor = Editor::new(model);
    let ctx = EditContext {
        corpus: args.corpus.clone(),
        seed: args.seed,
        ..Default::default()
    };
    loaded
        .method
        .prepare(editor.model(), &ctx, &mut crate::progress::Bars::default())?;
    let start = std::time::Instant::now();
    let computed = loaded
        .method
        .compute(&editor, std::slice::from_ref(&request), &ctx)?;
    let applied = editor.apply(&computed.edit)?.clone();
    let seconds = start.elapsed().as_secs_f64();
    let after = greedy(&editor, &prompts)?;
    let post = evaluate(&editor, &[&request], Some(&[&pre]), &opts)?.remove(0);

    println!(
        "{} edit ({}) in {seconds:.2} s: {}",
        loaded.method.name(),
        applied.kind,
        describe_applied(&applied)
    );
    for (name, secs) in &computed.report.timings {
        println!("  {name}: {secs:.2} s");
    }
    // Shown as typed (a chat-rendered prompt repeats the whole template).
    let typed = std::iter::once(&args.prompt).chain(&args.rephrase);
    for (prompt, (b, a)) in typed.zip(before.iter().zip(&after)) {
        println!("\n{prompt}\n  before: {b:?}\n  after:  {a:?}");
    }
    let (s0, s1) = (summarize(&[&pre]), summarize(&[&post]));
    let pct = |x: Option<f64>| x.map_or("-".into(), |v| format!("{:.1}", 100.0 * v));
    let row = |name: &str, s: &kedit::experiment::summary::Scores| {
        let cf = s.counterfact.as_ref();
        vec![
            name.to_string(),
            pct(s.reliability),
            pct(s.generalization),
            pct(s.locality),
            pct(s.fluency),
            pct(s.free_generation.reliability),
            pct(s.free_generation.generalization),
            pct(cf.and_then(|c| c.efficacy)),
        ]
    };
    println!(
        "\n{}",
        table(
            &["", "Rel", "Gen", "Loc", "Flu", "EM-Rel", "EM-Gen", "CF-Eff"],
            &[row("before", &s0), row("after", &s1)]
        )
    );
    if let Some(path) = &args.save_edit {
        computed.edit.save(path)?;
        println!("saved the edit to {}", path.display());
    }
    targets.write(&editor, Some(&computed.edit))?;
    Ok(())
}

fn describe_applied(a: &kedit::editor::AppliedEdit) -> String {
    match (a.params.is_empty(), &a.site) {
        (false, _) => a.params.join(", "),
        (true, Some(site)) => format!("{} codebook entries at {site}", a.entries),
        (true, None) if a.entries > 0 => format!("{} memory records", a.entries),
        _ => "a context".into(),
    }
}
