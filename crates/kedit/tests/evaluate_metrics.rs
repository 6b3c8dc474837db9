//! Metrics on the real SmolLM2: EasyEdit's own numbers, and hand-checked token alignment.

use crate::common;

use candle_core::DType;
use common::{fixture, json, smollm2};
use kedit::data::{load, Format, LoadOptions};
use kedit::evaluate::metrics::free_generation::{exact_match, Probe};
use kedit::evaluate::metrics::teacher_forced::{score, Pair};
use kedit::evaluate::{evaluate, MetricOptions};
use kedit::request::EditRequest;
use kedit::{LogitsAt, TokenBatch};

fn teacher_forced_only() -> MetricOptions {
    MetricOptions {
        fluency: false,
        free_generation: false,
        seed: 0,
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The fixture's records, loaded through the KnowEdit loader like any data file.
fn fixture_requests() -> (Vec<EditRequest>, Vec<serde_json::Value>) {
    let fx = json(fixture("easyedit_pre_metrics.json"));
    let cases = fx["cases"].as_array().unwrap().clone();
    let records: Vec<serde_json::Value> = cases.iter().map(|c| c["record"].clone()).collect();
    // One file per call: tests of this binary call it side by side.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "kedit-easyedit-fixture-{}-{call}.json",
        std::process::id()
    ));
    std::fs::write(&path, serde_json::to_string(&records).unwrap()).unwrap();
    let loaded = load(&path, Format::KnowEdit, &LoadOptions::default()).unwrap();
    std::fs::remove_file(&path).unwrap();
    let expected = cases.iter().map(|c| c["easyedit_pre"].clone()).collect();
    (loaded.requests, expected)
}

#[test]
fn pre_edit_metrics_equal_easyedit_on_knowedit_cases() {
    let model = smollm2();
    let (requests, expected) = fixture_requests();
    assert_eq!(requests.len(), 10);
    let refs: Vec<&EditRequest> = requests.iter().collect();
    let got = evaluate(model, &refs, None, &teacher_forced_only()).unwrap();
    for (i, (m, want)) in got.iter().zip(&expected).enumerate() {
        let close = |name: &str, ours: f64, theirs: &serde_json::Value| {
            let theirs = theirs.as_f64().unwrap();
            assert!(
                (ours - theirs).abs() < 1e-9,
                "case {i} {name}: ours {ours}, EasyEdit {theirs}"
            );
        };
        close("rewrite_acc", mean(&m.rewrite_acc), &want["rewrite_acc"]);
        close("rephrase_acc", mean(&m.rephrase_acc), &want["rephrase_acc"]);
        let ports = want["portability"].as_object().unwrap();
        assert_eq!(
            ports.len(),
            m.portability_acc.len(),
            "case {i} portability groups"
        );
        for (key, value) in ports {
            let group = key.strip_suffix("_acc").unwrap();
            close(key, mean(&m.portability_acc[group]), value);
        }
    }
}

/// The argmax at every scored position equals the argmax of a separate forward over the
/// prompt and the target tokens before it: the alignment is one position off the labels.
#[test]
fn token_alignment_with_leading_space_and_multi_token_target() {
    let model = smollm2();
    let tok = model.tokenizer().unwrap();
    let prompt = "Which family does Epaspidoceras belong to?";
    let target = "Aspidoceratidae";
    let s = &score(model, &[Pair::new(prompt, target)], true).unwrap()[0];
    let prompt_ids = tok.encode(prompt).unwrap();
    let target_ids = tok.encode(" Aspidoceratidae").unwrap();
    // The space joins the target's first token (" Asp…"), it is not a token of its own.
    assert_eq!(s.labels, target_ids);
    assert_eq!(target_ids.len(), 6, "the fixture's multi-token target");
    for j in 0..target_ids.len() {
        let mut ids = prompt_ids.clone();
        ids.extend_from_slice(&target_ids[..j]);
        let out = model
            .forward(&TokenBatch::single(&ids))
            .logits(LogitsAt::Last)
            .run()
            .unwrap();
        let logits = out.logits().unwrap().to_dtype(DType::F64).unwrap();
        let argmax = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0];
        assert_eq!(s.predicted[j], argmax, "position {j}");
        let lp = kedit::runtime::ops::log_softmax_last(&logits)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let want = lp.to_vec1::<f64>().unwrap()[target_ids[j] as usize];
        assert!(
            (s.log_probs[j] - want).abs() < 1e-3,
            "log-prob {j}: {} vs {want}",
            s.log_probs[j]
        );
    }
    // A target that already starts with a space gets a second one, as EasyEdit's
    // `prompt + ' ' + target` does (the fixture's last case, " myna", relies on it).
    let doubled = &score(model, &[Pair::new(prompt, " myna")], false).unwrap()[0];
    assert_eq!(doubled.labels, tok.encode("  myna").unwrap()[..].to_vec());
}

#[test]
fn one_batched_forward_equals_one_forward_per_prompt() {
    let model = smollm2();
    let (requests, _) = fixture_requests();
    let mut pairs = Vec::new();
    for r in &requests {
        pairs.push(Pair::new(&r.prompt, &r.target_new));
        pairs.extend(r.rephrase.iter().map(|p| Pair::new(p, &r.target_new)));
        for p in r.locality.values().flatten() {
            pairs.push(Pair::new(&p.prompt, &p.answer));
        }
    }
    let together = score(model, &pairs, true).unwrap();
    for (p, t) in pairs.iter().zip(&together) {
        let alone = &score(model, std::slice::from_ref(p), true).unwrap()[0];
        assert_eq!(alone.predicted, t.predicted, "{p:?}");
        for (a, b) in alone.log_probs.iter().zip(&t.log_probs) {
            assert!((a - b).abs() < 1e-3, "{p:?}: {a} vs {b}");
        }
    }
}

#[test]
fn free_generation_accepts_any_alias_and_rejects_wrong_answers() {
    let model = smollm2();
    let tok = model.tokenizer().unwrap();
    let prompt = "The capital of France is";
    let greedy = kedit::generate::generate(
        model,
        &[tok.encode(prompt).unwrap()],
        &kedit::generate::GenerateOptions {
            max_new_tokens: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let said = tok.decode(&greedy[0], true).unwrap();
    let first_word = said
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_string();
    let probes = [
        Probe {
            prompt: prompt.into(),
            answers: vec!["Lyon".into(), first_word.clone()],
        },
        Probe {
            prompt: prompt.into(),
            answers: vec!["Lyon".into()],
        },
    ];
    assert_eq!(
        exact_match(model, &probes).unwrap(),
        vec![1.0, 0.0],
        "greedy said {said:?}"
    );
}

#[test]
fn fluency_is_deterministic_per_case_whatever_the_batch() {
    let model = smollm2();
    let data = load(
        &common::data("zsre/zsre_mend_eval_portability_gpt4.dev.json"),
        Format::Zsre,
        &LoadOptions {
            limit: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let opts = MetricOptions {
        fluency: true,
        free_generation: false,
        seed: 7,
    };
    let all: Vec<&EditRequest> = data.requests.iter().collect();
    let together = evaluate(model, &all, None, &opts).unwrap();
    let alone = evaluate(model, &all[1..], None, &opts).unwrap();
    let f = together[1].fluency.unwrap();
    assert_eq!(Some(f), alone[0].fluency);
    assert!(f > 1.0 && f < 10.0, "fluency {f}");
}
