//! Property: whatever the request, ROME either edits or refuses with a clear error, and a
//! refused edit never changes the model.

use crate::common;

use std::path::Path;

use common::smollm2;
use kedit::editor::Editor;
use kedit::methods::{self, EditContext, HparamsSource};
use kedit::request::EditRequest;
use kedit::rng::Rng;

fn request(prompt: &str, subject: &str, target: &str) -> EditRequest {
    EditRequest {
        case_id: "fuzz".into(),
        prompt: prompt.into(),
        subject: subject.into(),
        target_new: target.into(),
        ..Default::default()
    }
}

/// Random strings from pieces that stress tokenisation and the subject search.
fn fuzz_text(rng: &mut Rng) -> String {
    const PIECES: [&str; 14] = [
        "",
        " ",
        "{}",
        "{",
        "Paris",
        "the Eiffel Tower",
        "\n",
        "ÉCOLE",
        "東京",
        "🦀",
        "  ",
        "?",
        "'s",
        "{}{}",
    ];
    let n = (rng.next_u64() % 4) as usize;
    (0..n)
        .map(|_| PIECES[(rng.next_u64() % PIECES.len() as u64) as usize])
        .collect()
}

#[test]
fn malformed_requests_are_refused_and_leave_the_model_untouched() {
    let model = smollm2().clone();
    let rome = methods::load("rome", None, &model).unwrap();
    let editor = Editor::new(model);
    let ctx = EditContext::default();
    let fixed = [
        request("The Eiffel Tower is located in", "Louvre", "Rome"),
        request("The Eiffel Tower is located in", "Eiffel Tower", ""),
        request("The Eiffel Tower is located in", "Eiffel Tower", "   "),
        request("The Eiffel Tower is located in", "", "Rome"),
        request("{} and {} are in", "Eiffel Tower", "Rome"),
        request("", "Eiffel Tower", "Rome"),
    ];
    for r in &fixed {
        let err = rome
            .method
            .compute(&editor, std::slice::from_ref(r), &ctx)
            .unwrap_err();
        let msg = err.to_string();
        assert!(!msg.is_empty());
        assert!(editor.is_pristine().unwrap(), "{r:?}");
    }
    let mut rng = Rng::new(11);
    let mut refused = 0;
    for _ in 0..300 {
        let (p, s, t) = (
            fuzz_text(&mut rng),
            fuzz_text(&mut rng),
            fuzz_text(&mut rng),
        );
        let r = request(&format!("{p}{s}{p}"), &s, &t);
        // Only requests that pass validation reach the (slow) optimisation; skip those here:
        // they are edits, not refusals, and are covered elsewhere.
        let valid = !s.trim().is_empty()
            && !t.trim().is_empty()
            && kedit::prompts::subject_template(&r.prompt, &r.subject).is_ok();
        if valid {
            continue;
        }
        assert!(rome.method.compute(&editor, &[r], &ctx).is_err());
        refused += 1;
    }
    assert!(
        refused > 100,
        "the generator should produce many invalid requests ({refused})"
    );
    assert!(editor.is_pristine().unwrap());
}

#[test]
fn an_exploding_update_is_refused_by_the_editor() {
    let model = smollm2().clone();
    let mut hp = HparamsSource::read(Path::new(&format!(
        "{}/../../hparams/ROME/smollm2-135m.yaml",
        env!("CARGO_MANIFEST_DIR")
    )))
    .unwrap();
    // Absurd step size and no clamp: v* lands far away and the update explodes.
    hp.set("v_lr", serde_json::json!(1e6));
    hp.set("clamp_norm_factor", serde_json::json!(1e9));
    hp.set("v_num_grad_steps", serde_json::json!(2));
    // The update explodes whatever C is: no key statistics (minutes over the shipped corpus).
    hp.set("mom2_adjustment", serde_json::json!(false));
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-rome-hp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("explode.json");
    std::fs::write(&path, serde_json::to_string(&hp.value).unwrap()).unwrap();
    let rome = methods::load("rome", Some(&path), &model).unwrap();
    let mut editor = Editor::new(model);
    let r = request(
        "The Eiffel Tower is located in the city of",
        "The Eiffel Tower",
        "Rome",
    );
    let edit = rome
        .method
        .compute(&editor, &[r], &EditContext::default())
        .unwrap()
        .edit;
    let err = editor.apply(&edit).unwrap_err();
    assert!(matches!(err, kedit::Error::EditRefused(_)), "{err}");
    assert!(err.to_string().contains("norm"), "{err}");
    assert!(editor.is_pristine().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}
