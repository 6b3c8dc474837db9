//! GRACE on the real SmolLM2: an edit says the target on its prompt and leaves prompts
//! outside every radius bit-identical; codebooks grow call by call; saved edits reload;
//! every mode of the harness runs it; bad requests and settings are refused with reasons.
//! (The add / expand / split rules are unit tests in `methods/grace/codebook.rs`; the value
//! is trained by ROME's optimiser, whose gradient `tests/rome.rs` checks.)

use crate::common;

use std::path::Path;

use candle_core::Tensor;
use common::{
    bare_request, run_mode, smollm2, system_top1, teacher_forced, zsre_dev, EIFFEL, UNRELATED,
};
use kedit::edit::{AdaptorEdit, Edit};
use kedit::editor::Editor;
use kedit::evaluate::{evaluate, Metrics};
use kedit::experiment::summary::summarize;
use kedit::experiment::Mode;
use kedit::lm::LanguageModel;
use kedit::methods::{self, EditContext, EditMethod, HparamsSource};
use kedit::request::EditRequest;
use kedit::Site;

fn grace() -> Box<dyn EditMethod> {
    let loaded = methods::load("grace", None, smollm2()).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    loaded.method
}

/// The shipped site: the one codebook an edit by the shipped settings sets.
fn site_of(edit: &Edit) -> Site {
    match edit {
        Edit::Adaptor(a) => a.site,
        other => panic!("GRACE returned a {} edit", other.kind()),
    }
}

fn adaptor(edit: &Edit) -> &AdaptorEdit {
    match edit {
        Edit::Adaptor(a) => a,
        other => panic!("GRACE returned a {} edit", other.kind()),
    }
}

fn next_logits(lm: &dyn LanguageModel, prompt: &str) -> Tensor {
    let ids = lm.tokenizer().unwrap().encode(prompt).unwrap();
    lm.next_logits(&[ids]).unwrap()
}

/// MLP output at the prompt's last token (the codebook's query) of the plain model.
fn query(site: Site, prompt: &str) -> Vec<f32> {
    let model = smollm2();
    let ids = model.tokenizer().unwrap().encode(prompt).unwrap();
    let out = model
        .forward(&kedit::TokenBatch::single(&ids))
        .capture([site])
        .run()
        .unwrap();
    out.capture(site)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()[ids.len() - 1]
        .clone()
}

fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn an_edit_says_the_target_and_leaves_prompts_outside_every_radius_bit_identical() {
    let method = grace();
    let mut editor = Editor::new(smollm2().clone());
    assert_eq!(system_top1(&editor, EIFFEL), " Paris");
    let before: Vec<Vec<f32>> = UNRELATED
        .iter()
        .map(|p| {
            next_logits(&editor, p)
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect();
    let t = std::time::Instant::now();
    let computed = method
        .compute(
            &editor,
            &[bare_request(EIFFEL, "Rome")],
            &EditContext::default(),
        )
        .unwrap();
    println!(
        "GRACE edit: {:.2} s, notes {:?}",
        t.elapsed().as_secs_f64(),
        computed.report.notes
    );
    assert!(editor.is_pristine().unwrap(), "compute changed the system");
    editor.apply(&computed.edit).unwrap();
    assert_eq!(system_top1(&editor, EIFFEL), " Rome");

    let a = adaptor(&computed.edit);
    assert_eq!(a.len(), 1);
    let key: Vec<f32> = a.keys.squeeze(0).unwrap().to_vec1().unwrap();
    for (prompt, logits) in UNRELATED.iter().zip(&before) {
        // The claim holds only outside the ball: check that these prompts are.
        let d = distance(&query(a.site, prompt), &key);
        assert!(
            d > a.radii[0],
            "{prompt}: {d} within the radius {}",
            a.radii[0]
        );
        let after: Vec<f32> = next_logits(&editor, prompt)
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            after
                .iter()
                .zip(logits)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{prompt}: logits changed"
        );
    }
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
    assert_eq!(system_top1(&editor, EIFFEL), " Paris");
}

#[test]
fn calls_grow_the_codebook_an_entry_per_fact_and_a_re_edit_takes_its_entry_over() {
    let method = grace();
    let ctx = EditContext::default();
    let requests = zsre_dev(3);
    let mut editor = Editor::new(smollm2().clone());
    // Batch: two requests in one call, an entry each.
    let first = method.compute(&editor, &requests[..2], &ctx).unwrap();
    let site = site_of(&first.edit);
    assert_eq!(adaptor(&first.edit).len(), 2);
    editor.apply(&first.edit).unwrap();
    // Sequential: the next call starts from the codebook held.
    let second = method.compute(&editor, &requests[2..], &ctx).unwrap();
    editor.apply(&second.edit).unwrap();
    assert_eq!(editor.adaptor(site).unwrap().len(), 3);
    let refs: Vec<&EditRequest> = requests.iter().collect();
    for (r, m) in requests
        .iter()
        .zip(evaluate(&editor, &refs, None, &teacher_forced()).unwrap())
    {
        assert_eq!(
            m.rewrite_acc.iter().sum::<f64>() / m.rewrite_acc.len() as f64,
            1.0,
            "{}: not edited after three edits",
            r.case_id
        );
    }
    // The same prompt edited again: its entry now says the newer target.
    let again = bare_request(EIFFEL, "Rome");
    let c = method.compute(&editor, &[again], &ctx).unwrap();
    editor.apply(&c.edit).unwrap();
    assert_eq!(editor.adaptor(site).unwrap().len(), 4);
    assert_eq!(system_top1(&editor, EIFFEL), " Rome");
    let c = method
        .compute(&editor, &[bare_request(EIFFEL, "Berlin")], &ctx)
        .unwrap();
    assert!(
        c.report.notes.contains(&("replaced".into(), "1".into())),
        "{:?}",
        c.report.notes
    );
    editor.apply(&c.edit).unwrap();
    assert_eq!(editor.adaptor(site).unwrap().len(), 4);
    assert_eq!(system_top1(&editor, EIFFEL), " Berlin");
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
    assert!(editor.adaptor(site).is_none());
}

#[test]
fn a_saved_edit_reloads_with_identical_metrics_and_revert_leaves_the_system_pristine() {
    let method = grace();
    let requests = zsre_dev(2);
    let refs: Vec<&EditRequest> = requests.iter().collect();
    let mut editor = Editor::new(smollm2().clone());
    let pre = evaluate(&editor, &refs, None, &teacher_forced()).unwrap();
    let pre_refs: Vec<&Metrics> = pre.iter().collect();
    let computed = method
        .compute(&editor, &requests, &EditContext::default())
        .unwrap();
    editor.apply(&computed.edit).unwrap();
    let first = evaluate(&editor, &refs, Some(&pre_refs), &teacher_forced()).unwrap();
    assert_ne!(first, pre, "the edit changed nothing");

    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-grace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("grace.safetensors");
    computed.edit.save(&path).unwrap();
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
    assert_eq!(
        evaluate(&editor, &refs, None, &teacher_forced()).unwrap(),
        pre
    );

    let back = Edit::load(&path).unwrap();
    assert_eq!(
        back.fingerprint().unwrap(),
        computed.edit.fingerprint().unwrap()
    );
    assert_eq!(back.meta(), computed.edit.meta());
    assert_eq!(back.meta()["method"], "GRACE");
    editor.apply(&back).unwrap();
    let again = evaluate(&editor, &refs, Some(&pre_refs), &teacher_forced()).unwrap();
    assert_eq!(first, again, "metrics after reloading");
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two ZsRE records in `mode` (two, so that sequential mode's second edit can disturb the
/// first): every edit says its target, locality untouched.
fn edits_reliably_and_keeps_locality(mode: Mode) {
    let method = grace();
    let requests = zsre_dev(2);
    let store = run_mode(method.as_ref(), &requests, mode, teacher_forced());
    let s = common::post_scores(&store);
    println!("GRACE {mode:?}: {s:?}");
    assert_eq!(s.reliability, Some(1.0), "{mode:?}");
    assert_eq!(s.locality, Some(1.0), "{mode:?}");
    if mode == Mode::Sequential {
        let after: Vec<&Metrics> = store.after_all.values().collect();
        assert_eq!(summarize(&after).reliability, Some(1.0), "after all");
    }
}

in_every_mode!(edits_reliably_and_keeps_locality);

#[test]
fn requests_it_cannot_edit_are_refused_with_their_reason_and_change_nothing() {
    let method = grace();
    let model = smollm2();
    for (r, why) in [
        (bare_request(EIFFEL, "  "), "target is empty"),
        (bare_request("", "Rome"), "prompt is empty"),
    ] {
        let err = method.check_request(model, &r).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    let editor = Editor::new(model.clone());
    let batch = [bare_request(EIFFEL, "Rome"), bare_request(EIFFEL, "")];
    let err = method
        .compute(&editor, &batch, &EditContext::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("target is empty"), "{err}");
    assert!(editor.is_pristine().unwrap());
}

/// The shipped file with `line` in place of its key's line(s).
fn shipped_with(line: &str) -> String {
    let key = line.split(':').next().unwrap();
    let mut text: String = include_str!("../../../hparams/GRACE/smollm2-135m.yaml")
        .lines()
        .filter(|l| {
            let replaced =
                l.starts_with(&format!("{key}:")) || (key == "inner_params" && l.starts_with("- "));
            !replaced
        })
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(line);
    text.push('\n');
    text
}

#[test]
fn bad_settings_are_errors_naming_the_file_and_key_and_unknown_keys_warn() {
    let model = smollm2();
    let load = |line: &str| {
        HparamsSource::parse(Path::new("g.yaml"), &shipped_with(line))
            .and_then(|src| methods::load_source("grace", Some(src), model))
    };
    for (line, key) in [
        ("dist_fn: cos", "`dist_fn`"),
        ("replacement: replace_all", "`replacement`"),
        ("val_train: adv", "`val_train`"),
        ("eps: -1", "`eps`"),
        ("n_iter: 0", "`n_iter`"),
        ("edit_lr: .nan", "`edit_lr`"),
        ("dropout: 0.1", "`dropout`"),
        ("val_init: lukewarm", "`val_init`"),
        (
            r#"inner_params: ["model.layers[3].self_attn.o_proj.weight"]"#,
            "`inner_params`",
        ),
        (
            r#"inner_params: ["model.layers[99].mlp.down_proj.weight"]"#,
            "`inner_params`",
        ),
    ] {
        let err = match load(line) {
            Ok(_) => panic!("{line}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("g.yaml") && err.contains(key), "{line}: {err}");
    }
    let loaded = load("colour: blue").unwrap();
    assert_eq!(
        loaded.warnings,
        vec!["g.yaml: unknown key `colour` ignored"]
    );
}
