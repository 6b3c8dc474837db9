//! Chat-template-aware editing: every prompt rendered as the user's turn of an instruct
//! model, through editing and evaluation alike.

use crate::common;

use std::path::{Path, PathBuf};

use common::{data, smollm2, zsre_dev, Scratch};
use kedit::experiment::{run_dataset, DatasetRun};
use kedit::prompts::{chat_prompt, chat_requests, subject_template};
use kedit::tokenizer::Tokenizer;

const ASSISTANT: &str = "<|im_start|>assistant\n";

#[test]
fn every_prompt_of_a_request_is_rendered_and_subjects_and_answers_are_kept() {
    let plain = zsre_dev(3);
    let tok = smollm2().tokenizer().unwrap();
    let chat = chat_requests(tok, &plain).unwrap();
    for (p, c) in plain.iter().zip(&chat) {
        let user = |s: &str| format!("<|im_start|>user\n{s}<|im_end|>\n{ASSISTANT}");
        assert!(c.prompt.starts_with("<|im_start|>system\n"), "{}", c.prompt);
        assert!(c.prompt.ends_with(&user(&p.prompt)), "{}", c.prompt);
        for (a, b) in p.rephrase.iter().zip(&c.rephrase) {
            assert!(b.ends_with(&user(a)));
        }
        for (group, probes) in &p.locality {
            for (a, b) in probes.iter().zip(&c.locality[group]) {
                assert!(b.prompt.ends_with(&user(&a.prompt)));
                assert_eq!(a.answer, b.answer);
            }
        }
        for (group, probes) in &p.portability {
            for (a, b) in probes.iter().zip(&c.portability[group]) {
                assert!(b.prompt.ends_with(&user(&a.prompt)));
            }
        }
        assert_eq!((&p.subject, &p.target_new), (&c.subject, &c.target_new));
        // The subject is still found in the rendered prompt (ROME looks it up there).
        assert!(subject_template(&c.prompt, &c.subject)
            .unwrap()
            .ends_with(&user(&subject_template(&p.prompt, &p.subject).unwrap())));
    }
    // The template's special tokens are single tokens, not spelled-out text.
    let ids = tok.encode_input(&chat[0].prompt).unwrap();
    let im_start = tok.encode_input("<|im_start|>").unwrap();
    assert_eq!(im_start.len(), 1);
    assert_eq!(ids[0], im_start[0]);
}

#[test]
fn a_model_without_a_chat_template_is_refused_clearly() {
    let scratch = Scratch::new("no-template");
    let tok = smollm2().tokenizer().unwrap();
    tok.save_hf(scratch.path()).unwrap();
    let cfg = scratch.join("tokenizer_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&cfg, v.to_string()).unwrap();
    let bare = Tokenizer::from_hf_dir(scratch.path()).unwrap();
    let e = chat_prompt(&bare, "Where is the Eiffel Tower?")
        .unwrap_err()
        .to_string();
    assert!(e.contains("this model has no chat template"), "{e}");
}

fn quick_ft(dir: &Path, extra: &str) -> PathBuf {
    let shipped = common::workspace().join("hparams/FT/smollm2-135m.yaml");
    let text = std::fs::read_to_string(shipped)
        .unwrap()
        .replace("num_steps: 25", "num_steps: 8");
    let path = dir.join("ft.yaml");
    std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
    path
}

#[test]
fn a_chat_run_edits_the_chat_answer_is_recorded_and_not_resumed_as_plain() {
    let scratch = Scratch::new("chat-run");
    let zsre = data("zsre/zsre_mend_eval_portability_gpt4.dev.json");
    let spec = |hp: PathBuf, out: PathBuf, chat: bool| DatasetRun {
        hparams: Some(hp),
        limit: Some(2),
        fluency: false,
        // Free generation reads the same rendered prompts; it would only add time here.
        free_generation: false,
        chat,
        ..DatasetRun::new(Some("ft-m"), std::slice::from_ref(&zsre), &out)
    };
    let out = scratch.join("chat");
    let hp = quick_ft(scratch.path(), "");
    let run = run_dataset(
        smollm2().clone(),
        &spec(hp.clone(), out.clone(), true),
        &mut (),
    )
    .unwrap();
    let s = &run.summary;
    assert!(s.config.chat);
    assert!(
        s.reliability.unwrap() >= s.pre.reliability.unwrap() + 0.5,
        "{:?} -> {:?}",
        s.pre.reliability,
        s.reliability
    );
    let header = std::fs::read_to_string(out.join("run.json")).unwrap();
    assert!(header.contains("\"chat\": true"), "{header}");
    // The same directory is not resumed as a plain run.
    let e = run_dataset(smollm2().clone(), &spec(hp, out, false), &mut ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("chat"), "{e}");
    // `chat_template: true` in the hyper-parameters switches it on as --chat does.
    let hp = quick_ft(scratch.path(), "chat_template: true");
    let spec = DatasetRun {
        limit: Some(1),
        ..spec(hp, scratch.join("by-hparams"), false)
    };
    let run = run_dataset(smollm2().clone(), &spec, &mut ()).unwrap();
    assert!(run.summary.config.chat);
    assert!(run.warnings.is_empty(), "{:?}", run.warnings);
}
