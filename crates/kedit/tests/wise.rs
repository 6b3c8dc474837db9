//! WISE on the real SmolLM2: an edit says the target on its prompt while unrelated
//! prompts, routed to the main memory, keep their logits bit for bit; shards close and
//! merge by count; saved side memories reload with identical metrics; every mode of the
//! harness runs it; bad settings are refused with reasons. (Routing and the distance's
//! gradient are unit tests in `runtime/side_memory.rs`; the TIES merge and the subspace
//! mask in `methods/wise/shard.rs`.)

use crate::common;

use candle_core::Tensor;
use common::{
    bare_request, run_mode, smollm2, system_top1, teacher_forced, workspace, zsre_dev, Scratch,
    EIFFEL, UNRELATED,
};
use kedit::edit::{Edit, SideMemoryEdit};
use kedit::editor::Editor;
use kedit::evaluate::{evaluate, Metrics};
use kedit::experiment::Mode;
use kedit::lm::{GenerateOptions, LanguageModel};
use kedit::methods::{self, EditContext, EditMethod, HparamsSource};
use kedit::request::EditRequest;

fn shipped() -> HparamsSource {
    HparamsSource::read(&workspace().join("hparams/WISE/smollm2-135m.yaml")).unwrap()
}

/// The shipped settings with `changes`; `n_iter` cut where a test is about bookkeeping,
/// not about how well an edit takes.
fn wise_with(changes: &[(&str, serde_json::Value)]) -> Box<dyn EditMethod> {
    let mut src = shipped();
    for (k, v) in changes {
        src.set(k, v.clone());
    }
    let loaded = methods::load_source("wise", Some(src), smollm2()).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    loaded.method
}

/// [`wise_with`] with fewer rows a step than the shipped file (5 context templates, not
/// 10; one irrelevant input, not 4), for tests about bookkeeping rather than how well an
/// edit takes.
fn light_wise_with(changes: &[(&str, serde_json::Value)]) -> Box<dyn EditMethod> {
    let mut all = vec![
        (
            "context_template_length_params",
            serde_json::json!([[5, 5]]),
        ),
        ("irrelevant_per_edit", serde_json::json!(1)),
    ];
    all.extend(changes.iter().cloned());
    wise_with(&all)
}

fn side(edit: &Edit) -> &SideMemoryEdit {
    match edit {
        Edit::SideMemory(s) => s,
        other => panic!("WISE returned a {} edit", other.kind()),
    }
}

fn logit_bits(lm: &dyn LanguageModel, prompt: &str) -> Vec<u32> {
    let ids = lm.tokenizer().unwrap().encode(prompt).unwrap();
    lm.next_logits(&[ids])
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// Six greedy tokens after `prompt`, decoded.
fn say(lm: &dyn LanguageModel, prompt: &str) -> String {
    let tok = lm.tokenizer().unwrap();
    let ids = tok.encode(prompt).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 6,
        ..Default::default()
    };
    let out = lm.generate(&[ids], &[0], &opts).unwrap();
    tok.decode(&out[0], false).unwrap()
}

#[test]
fn an_edit_says_the_target_and_unrelated_prompts_keep_their_logits_bit_for_bit() {
    let loaded = methods::load("wise", None, smollm2()).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let method = loaded.method;
    let mut editor = Editor::new(smollm2().clone());
    assert_eq!(system_top1(&editor, EIFFEL), " Paris");
    let before: Vec<Vec<u32>> = UNRELATED.iter().map(|p| logit_bits(&editor, p)).collect();
    let said_before: Vec<String> = UNRELATED.iter().map(|p| say(&editor, p)).collect();
    let t = std::time::Instant::now();
    let computed = method
        .compute(
            &editor,
            &[bare_request(EIFFEL, "Rome")],
            &EditContext::default(),
        )
        .unwrap();
    println!(
        "WISE edit: {:.2} s, notes {:?}",
        t.elapsed().as_secs_f64(),
        computed.report.notes
    );
    assert!(editor.is_pristine().unwrap(), "compute changed the system");
    let s = side(&computed.edit);
    assert_eq!((s.len(), s.total_edits), (1, 1));
    assert!(s.memories[0].info.open);
    // Only the shard's subspace was written.
    let written = s.memories[0]
        .delta
        .ne(0f32)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        written > 0.05 && written <= 0.25,
        "{written} of the entries changed"
    );
    editor.apply(&computed.edit).unwrap();
    assert_eq!(system_top1(&editor, EIFFEL), " Rome");
    // Generation: the prompt routes the row, and the tokens after it stay with the memory.
    let said = say(&editor, EIFFEL);
    assert!(said.starts_with(" Rome"), "{said:?}");
    for ((prompt, bits), said) in UNRELATED.iter().zip(&before).zip(&said_before) {
        assert!(
            &logit_bits(&editor, prompt) == bits,
            "{prompt}: routed to the side memory"
        );
        assert_eq!(&say(&editor, prompt), said, "{prompt}");
    }
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
    assert_eq!(system_top1(&editor, EIFFEL), " Paris");
}

#[test]
fn shards_close_and_merge_by_count_and_saved_memories_reload_with_identical_metrics() {
    // Shards are counted here, not judged.
    let method = light_wise_with(&[
        ("n_iter", serde_json::json!(8)),
        ("save_freq", serde_json::json!(2)),
        ("merge_freq", serde_json::json!(4)),
        ("replay", serde_json::json!(true)),
        ("replay_size", serde_json::json!(1)),
    ]);
    let ctx = EditContext::default();
    let requests = zsre_dev(5);
    let refs: Vec<&EditRequest> = requests.iter().collect();
    let mut editor = Editor::new(smollm2().clone());
    let pre = evaluate(&editor, &refs, None, &teacher_forced()).unwrap();
    let pre_refs: Vec<&Metrics> = pre.iter().collect();
    // (memories, edits in the newest, open) after each of five sequential edits.
    let expected = [
        (1, 1, true),
        (1, 2, false),
        (2, 1, true),
        (1, 4, false),
        (2, 1, true),
    ];
    // Facts replayed by each edit: one when its shard already holds one.
    let replays = [0, 1, 0, 1, 0];
    let mut last = None;
    for ((r, want), replayed) in requests.iter().zip(expected).zip(replays) {
        let c = method
            .compute(&editor, std::slice::from_ref(r), &ctx)
            .unwrap();
        let s = side(&c.edit);
        let newest = &s.memories[s.len() - 1].info;
        assert_eq!(
            (s.len(), newest.edits, newest.open),
            want,
            "{:?}",
            c.report.notes
        );
        // Every fact of a memory is kept for replay, and an edit joining a shard that
        // holds one replays it.
        assert!(s
            .memories
            .iter()
            .all(|m| m.info.written.len() == m.info.edits));
        let note = c.report.notes.iter().find(|(k, _)| k == "replayed_mean");
        assert_eq!(
            note.map(|(_, v)| v.as_str()),
            Some(format!("{replayed}.0").as_str())
        );
        editor.apply(&c.edit).unwrap();
        last = Some(c.edit);
    }
    let last = last.unwrap();
    assert_eq!(side(&last).total_edits, 5);
    assert_eq!(side(&last).memories[0].info.edits, 4, "the merged memory");
    let first = evaluate(&editor, &refs, Some(&pre_refs), &teacher_forced()).unwrap();
    assert_ne!(first, pre, "the edits changed nothing");

    let dir = Scratch::new("wise-save");
    let path = dir.join("wise.safetensors");
    last.save(&path).unwrap();
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
    assert_eq!(
        evaluate(&editor, &refs, None, &teacher_forced()).unwrap(),
        pre
    );
    let back = Edit::load(&path).unwrap();
    assert_eq!(back.fingerprint().unwrap(), last.fingerprint().unwrap());
    assert_eq!(back.meta()["method"], "WISE");
    editor.apply(&back).unwrap();
    let again = evaluate(&editor, &refs, Some(&pre_refs), &teacher_forced()).unwrap();
    assert_eq!(first, again, "metrics after reloading");
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
}

/// Two ZsRE records in `mode`: reliable edits, untouched locality. Fewer rows a step and
/// half the shipped steps: the modes' bookkeeping, in a quarter of the time (the shipped
/// settings are judged by the first test here and by the lifelong table).
fn edits_reliably_and_keeps_locality(mode: Mode) {
    let method = light_wise_with(&[("n_iter", serde_json::json!(35))]);
    let requests = zsre_dev(2);
    let store = run_mode(method.as_ref(), &requests, mode, teacher_forced());
    let s = common::post_scores(&store);
    println!("WISE {mode:?}: {s:?}");
    // Two edits share a shard (and its subspace): the second's steps move the first's
    // answer a little (no replay). How much over many edits is the lifelong table's.
    assert!(s.reliability.unwrap() >= 0.75, "{mode:?}: {s:?}");
    assert_eq!(s.locality, Some(1.0), "{mode:?}");
}

in_every_mode!(edits_reliably_and_keeps_locality);

#[test]
fn bad_settings_are_errors_naming_the_key_and_a_malformed_memory_is_refused() {
    let model = smollm2();
    let load = |k: &str, v: serde_json::Value| {
        let mut src = shipped();
        src.set(k, v);
        methods::load_source("wise", Some(src), model).map(|_| ())
    };
    for (key, value) in [
        ("retrieve", serde_json::json!(false)),
        ("merge_freq", serde_json::json!(750)),
        ("merge_alg", serde_json::json!("slerp")),
        ("mask_ratio", serde_json::json!(1.5)),
        ("act_margin", serde_json::json!([20.0, 5.0, 10.0])),
        ("objective_optimization", serde_json::json!("target_new")),
        (
            "inner_params",
            serde_json::json!(["model.layers[3].self_attn.o_proj.weight"]),
        ),
        ("irrelevant_from", serde_json::json!(100_000)),
    ] {
        let err = load(key, value.clone()).unwrap_err().to_string();
        assert!(err.contains(key), "{key} = {value}: {err}");
    }
    let mut src = shipped();
    src.set("replay", serde_json::json!(true));
    src.set("replay_size", serde_json::json!(0));
    let err = methods::load_source("wise", Some(src), model)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("replay_size"), "{err}");
    // A side memory of the wrong shape is refused and leaves the system as it was.
    let method = wise_with(&[("n_iter", serde_json::json!(2))]);
    let mut editor = Editor::new(model.clone());
    let c = method
        .compute(
            &editor,
            &[bare_request(EIFFEL, "Rome")],
            &EditContext::default(),
        )
        .unwrap();
    let Edit::SideMemory(mut bad) = c.edit else {
        unreachable!()
    };
    bad.memories[0].delta = Tensor::zeros((3, 3), candle_core::DType::F32, model.device()).unwrap();
    let err = editor
        .apply(&Edit::SideMemory(bad))
        .unwrap_err()
        .to_string();
    assert!(err.contains("shape"), "{err}");
    assert!(editor.is_pristine().unwrap());
}
