//! ROME on the real SmolLM2.

mod common;

use std::time::Instant;

use common::smollm2;
use kedit::editor::Editor;
use kedit::evaluate::EditRequest;
use kedit::methods::{self, EditContext};
use kedit::TokenBatch;

fn eiffel() -> EditRequest {
    EditRequest {
        case_id: "eiffel".into(),
        prompt: "The Eiffel Tower is located in the city of".into(),
        subject: "The Eiffel Tower".into(),
        target_new: "Rome".into(),
        ..Default::default()
    }
}

fn top1(e: &Editor, prompt: &str) -> String {
    let tok = e.model().tokenizer().unwrap();
    let ids = tok.encode(prompt).unwrap();
    let logits = e
        .model()
        .forward(&TokenBatch::single(&ids))
        .run()
        .unwrap()
        .logits
        .unwrap();
    let id = logits
        .squeeze(0)
        .unwrap()
        .argmax(0)
        .unwrap()
        .to_scalar::<u32>()
        .unwrap();
    tok.decode(&[id], false).unwrap()
}

#[test]
fn rome_rewrites_the_eiffel_tower_and_reverts() {
    let model = smollm2().clone();
    let loaded = methods::load("rome", None, &model).unwrap();
    let mut ctx = EditContext {
        verbose: true,
        ..Default::default()
    };
    let mut editor = Editor::new(model);
    assert_eq!(
        top1(&editor, "The Eiffel Tower is located in the city of"),
        " Paris"
    );
    let t = Instant::now();
    let edit = loaded
        .method
        .compute(editor.model(), &[eiffel()], &mut ctx)
        .unwrap();
    println!(
        "ROME edit: {:.2} s, phases {:?}, notes {:?}",
        t.elapsed().as_secs_f64(),
        ctx.timings,
        ctx.notes
    );
    let rec = editor.apply(&edit).unwrap();
    println!("relative norm {:?}", rec.relative_norms);
    assert_eq!(
        top1(&editor, "The Eiffel Tower is located in the city of"),
        " Rome"
    );
    println!(
        "paraphrase: {}",
        top1(&editor, "Where is the Eiffel Tower? It is in the city of")
    );
    println!(
        "neighbour: {}",
        top1(&editor, "The Louvre is located in the city of")
    );
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
}
