//! ROME on the real SmolLM2.

use crate::common;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use common::{smollm2, top1};
use kedit::cache::Cache;
use kedit::edit::{Edit, WeightEdit};
use kedit::editor::Editor;
use kedit::evaluate::MetricOptions;
use kedit::experiment::{run, Mode, RunOptions, RunStore};
use kedit::methods::rome::key::Lookup;
use kedit::methods::rome::moment::KeyCovariance;
use kedit::methods::rome::templates::{context_templates, TemplateSpec};
use kedit::methods::rome::value::{
    gradient_at, loss_at, loss_at_sites, value_star, value_stars, KlAt, ValueHparams, ValuePrompts,
};
use kedit::methods::{self, EditContext, HparamsSource};
use kedit::progress::Silent;
use kedit::prompts::{lookup, target_ids, FactToken};
use kedit::request::EditRequest;
use kedit::stats::{key_stats, StatsRequest};
use kedit::{Intervention, LogitsAt, Model, Site, TokenBatch};

fn eiffel() -> EditRequest {
    EditRequest {
        case_id: "eiffel".into(),
        prompt: "The Eiffel Tower is located in the city of".into(),
        subject: "The Eiffel Tower".into(),
        target_new: "Rome".into(),
        ..Default::default()
    }
}

/// The shipped settings, with C from 200 documents of the small test corpus instead of the
/// shipped 2,582 Wikipedia documents (301,144 tokens: 229 s of the test binary's time, 390
/// CPU-seconds, for statistics `kedit demo` and every user's first ROME edit compute once).
#[test]
fn rome_rewrites_the_eiffel_tower_and_reverts() {
    let _threads = common::own_threads();
    let model = smollm2().clone();
    let shipped = methods::load("rome", None, &model).unwrap();
    assert!(
        shipped.warnings.is_empty(),
        "the shipped settings warn: {:?}",
        shipped.warnings
    );
    let corpus = common::data("corpus/wikitext2_test.txt");
    let hp = hparams_with_statistics("corpus", &corpus.display().to_string(), 200);
    let rome = methods::load("rome", Some(&hp), &model).unwrap();
    let ctx = EditContext {
        cache: Cache::new(temp_dir("corpus-cache")),
        ..Default::default()
    };
    let mut editor = Editor::new(model);
    assert_eq!(
        top1(&editor, "The Eiffel Tower is located in the city of"),
        " Paris"
    );
    let t = Instant::now();
    let computed = rome.method.compute(&editor, &[eiffel()], &ctx).unwrap();
    for line in &computed.report.log {
        println!("{line}");
    }
    println!(
        "ROME edit: {:.2} s, phases {:?}, notes {:?}",
        t.elapsed().as_secs_f64(),
        computed.report.timings,
        computed.report.notes
    );
    let notes: std::collections::HashMap<_, _> = computed.report.notes.iter().cloned().collect();
    assert!(
        notes.contains_key("mom2_tokens"),
        "{:?}",
        computed.report.notes
    );
    let rec = editor.apply(&computed.edit).unwrap();
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
    // A second edit at the same layer reuses the factorised C (no statistics note).
    let second = rome.method.compute(&editor, &[eiffel()], &ctx).unwrap();
    assert!(!second.report.notes.iter().any(|(k, _)| k == "mom2_tokens"));
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
}

/// ROME's hyper-parameters with key statistics switched on, written to a temp file.
fn hparams_with_statistics(name: &str, mom2_dataset: &str, n_docs: usize) -> PathBuf {
    let mut hp =
        HparamsSource::read(&common::workspace().join("hparams/ROME/smollm2-135m.yaml")).unwrap();
    hp.set("mom2_adjustment", serde_json::json!(true));
    hp.set("mom2_dataset", serde_json::json!(mom2_dataset));
    hp.set("mom2_n_samples", serde_json::json!(n_docs));
    let dir = temp_dir(name);
    let path = dir.join("rome.json");
    std::fs::write(&path, serde_json::to_string(&hp.value).unwrap()).unwrap();
    path
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-rome-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn rome_with_key_statistics_but_no_corpus_says_how_to_get_them() {
    let _threads = common::own_threads();
    let model = smollm2();
    let hp = hparams_with_statistics("nocorpus", "wikipedia", 100);
    let rome = methods::load("rome", Some(&hp), model).unwrap();
    let ctx = EditContext {
        cache: Cache::new(temp_dir("nocorpus-cache")),
        ..Default::default()
    };
    let err = rome
        .method
        .compute(&Editor::new(model.clone()), &[eiffel()], &ctx)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("--corpus") && text.contains("kedit stats --layers 5"),
        "{text}"
    );
}

#[test]
fn the_key_covariance_solves_c_u_equals_k() {
    let _threads = common::own_threads();
    let model = smollm2();
    let cache = Cache::new(temp_dir("solve-cache"));
    let mut request = StatsRequest::new(vec![5], common::data("corpus/wikitext2_test.txt"));
    request.n_docs = 40;
    let stats = key_stats(model, &request, &cache, &mut kedit::progress::Silent)
        .unwrap()
        .remove(0);
    let c = KeyCovariance::from_stats(&stats).unwrap();
    let d = stats.moment.dim(0).unwrap();
    let mut rng = kedit::rng::Rng::new(7);
    let k: Vec<f64> = (0..d).map(|_| rng.uniform() - 0.5).collect();
    let k = Tensor::from_vec(k, d, &Device::Cpu).unwrap();
    let x = c.solve(&k).unwrap();
    let moment = stats.moment.to_dtype(DType::F64).unwrap();
    let ridge = (Tensor::eye(d, DType::F64, &Device::Cpu).unwrap() * c.ridge).unwrap();
    let back = (moment + ridge)
        .unwrap()
        .matmul(&x.unsqueeze(1).unwrap())
        .unwrap()
        .squeeze(1)
        .unwrap();
    let norm = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let rel = norm(&(&back - &k).unwrap()) / norm(&k);
    println!(
        "{} tokens, ridge {:.3e}, rel residual {rel:.3e}",
        c.n_tokens, c.ridge
    );
    // C is accumulated in f32 and ill-conditioned for this few tokens; f64 solve of the
    // (regularised) system it describes must still be accurate.
    assert!(rel < 1e-6, "relative residual {rel}");
}

#[test]
fn v_star_on_two_threads_equals_v_star_on_one() {
    let _threads = common::own_threads();
    let model = smollm2();
    let tok = model.tokenizer().unwrap();
    let prompts = [
        "{}",
        "I think that. {}",
        "The news today: {}",
        "Once upon a time, {}",
        "Yes. {}",
    ];
    let lookups = |texts: &[&str]| -> Vec<Lookup> {
        texts
            .iter()
            .map(|t| {
                let text = t.replace("{}", "{} is located in the city of");
                let (ids, index) =
                    lookup(tok, &text, "The Eiffel Tower", FactToken::SubjectLast).unwrap();
                Lookup { ids, index }
            })
            .collect()
    };
    let rewriting = lookups(&prompts);
    let kl = lookups(&["{} is a"]);
    let target = target_ids(tok, "Rome").unwrap();
    let run = |groups| {
        let hp = ValueHparams {
            steps: 4,
            lr: 0.5,
            weight_decay: 1e-3,
            clamp_norm_factor: 4.0,
            kl_factor: 0.0625,
            kl_at: KlAt::Subject,
            early_stop_loss: 0.0,
            early_stop_nll: 0.0,
            groups,
            wave: 1,
            answer_end: None,
            attention: false,
        };
        let prompts = ValuePrompts {
            layer: 5,
            rewriting: &rewriting,
            target: &target,
            kl: &kl,
        };
        value_star(model, &prompts, &hp, &mut Vec::new()).unwrap()
    };
    let (one, two) = (run(1), run(2));
    let diff = (&one.delta - &two.delta)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let size = one.delta.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
    let rel = diff / size.to_scalar::<f32>().unwrap();
    println!(
        "losses {} vs {}, relative δ difference {rel:.2e}",
        one.loss, two.loss
    );
    assert!((one.loss - two.loss).abs() < 1e-4 * one.loss.abs().max(1.0));
    assert!(rel < 1e-4, "relative difference {rel}");
}

/// Log-probabilities `[len, vocab]` (f64) of one prompt with `delta` added to
/// `blocks.5.mlp.out` at `index`.
fn log_probs_with(model: &Model, ids: &[u32], index: usize, delta: &Tensor) -> Tensor {
    let logits = model
        .forward(&TokenBatch::single(ids))
        .intervene(Intervention::add(
            Site::MlpOut(5),
            vec![(0, index)],
            delta.clone(),
        ))
        .logits(LogitsAt::All)
        .run()
        .unwrap()
        .logits
        .unwrap();
    kedit::runtime::ops::log_softmax_last(&logits.squeeze(0).unwrap().to_dtype(DType::F64).unwrap())
        .unwrap()
}

#[test]
fn the_v_star_loss_from_cached_prefixes_equals_a_full_forward() {
    let _threads = common::own_threads();
    let model = smollm2();
    let tok = model.tokenizer().unwrap();
    let lookups = |texts: &[&str]| -> Vec<Lookup> {
        texts
            .iter()
            .map(|t| {
                let (ids, index) =
                    lookup(tok, t, "The Eiffel Tower", FactToken::SubjectLast).unwrap();
                Lookup { ids, index }
            })
            .collect()
    };
    let rewriting = lookups(&[
        "{} is located in the city of",
        "Once upon a time, {} is located in the city of",
        "Yes. {} is located in the city of",
    ]);
    let kl = lookups(&["{} is a"]);
    let target = target_ids(tok, "Rome of Italy").unwrap();
    let d = model.config.d_model;
    // A fixed δ, large enough to move the KL prompt's distributions (asserted below).
    let delta = Tensor::new(
        (0..d)
            .map(|i| ((i * 7919 % 101) as f32 / 50.0 - 1.0) * 3.0)
            .collect::<Vec<_>>()
            .as_slice(),
        &Device::Cpu,
    )
    .unwrap();
    let zero = delta.zeros_like().unwrap();

    // The reference: every prompt in full, one at a time.
    let mut nll = 0.0;
    for p in &rewriting {
        let mut ids = p.ids.clone();
        ids.extend_from_slice(&target[..target.len() - 1]);
        let lp = log_probs_with(model, &ids, p.index, &delta);
        let mut row = 0.0;
        for (j, &t) in target.iter().enumerate() {
            row -= lp
                .get(p.ids.len() - 1 + j)
                .unwrap()
                .get(t as usize)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
        }
        nll += row / target.len() as f64 / rewriting.len() as f64;
    }
    let kl_factor = 0.5;
    let prompts = ValuePrompts {
        layer: 5,
        rewriting: &rewriting,
        target: &target,
        kl: &kl,
    };
    let p = &kl[0];
    let last = p.ids.len() - 1;
    let edited = log_probs_with(model, &p.ids, p.index, &delta);
    let original = log_probs_with(model, &p.ids, p.index, &zero);
    for kl_at in [KlAt::Subject, KlAt::Last, KlAt::Both] {
        let positions = match kl_at {
            KlAt::Subject => vec![p.index],
            KlAt::Last => vec![last],
            KlAt::Both => vec![p.index, last],
        };
        let mut kl_term = 0.0;
        for &i in &positions {
            let (e, o) = (edited.get(i).unwrap(), original.get(i).unwrap());
            kl_term += (e.exp().unwrap() * (&e - &o).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
        }
        let expected = nll + kl_factor * kl_term / positions.len() as f64;
        assert!(
            kl_term > 1e-3,
            "δ must move the KL prompt's distribution: {kl_term}"
        );

        for groups in [1, 2] {
            let hp = ValueHparams {
                steps: 1,
                lr: 0.5,
                weight_decay: 0.0,
                clamp_norm_factor: 4.0,
                kl_factor,
                kl_at,
                early_stop_loss: 0.0,
                early_stop_nll: 0.0,
                groups,
                wave: 1,
                answer_end: None,
                attention: false,
            };
            let (loss, split_nll) = loss_at(model, &prompts, &hp, &delta).unwrap();
            println!("{kl_at:?}, {groups} groups: loss {loss:.6} (nll {split_nll:.6}), full forward {expected:.6} (nll {nll:.6})");
            assert!((split_nll - nll).abs() < 1e-4, "nll {split_nll} vs {nll}");
            assert!(
                (loss - expected).abs() < 1e-4,
                "{kl_at:?}: {loss} vs {expected}"
            );
        }
    }
}

/// A resumed sequential run must edit with the context templates of the unedited model, as
/// an uninterrupted one does. (The run store replays the earlier edits before the next one,
/// so the model the method is handed on resume is already edited, and its templates, sampled
/// from an edited model, differ.)
#[test]
fn a_resumed_sequential_rome_run_edits_as_an_uninterrupted_one() {
    let _threads = common::own_threads();
    let model = smollm2();
    let mut hp =
        HparamsSource::read(&common::workspace().join("hparams/ROME/smollm2-135m.yaml")).unwrap();
    // Key statistics would only add minutes; the templates are what is tested.
    hp.set("mom2_adjustment", serde_json::json!(false));
    let requests = [
        eiffel(),
        EditRequest {
            case_id: "louvre".into(),
            prompt: "The Louvre is located in the city of".into(),
            subject: "The Louvre".into(),
            target_new: "London".into(),
            ..Default::default()
        },
    ];
    // One cache for every run, as `.kedit-cache` is shared by the runs of a machine.
    let scratch = common::Scratch::new("rome-resume");
    let cache = Cache::new(scratch.join("cache"));
    let opts = RunOptions {
        mode: Mode::Sequential,
        batch_size: 1,
        metrics: MetricOptions {
            fluency: false,
            free_generation: false,
            seed: 0,
        },
        shard: None,
    };
    let header = serde_json::json!({"method": "rome", "mode": "sequential"});
    // A fresh method each time, as a new process has.
    let run_into = |dir: &std::path::Path, requests: &[EditRequest]| {
        let rome = methods::load_source("rome", Some(hp.clone()), model).unwrap();
        let mut store = RunStore::open(dir, &header).unwrap();
        let ctx = EditContext {
            cache: cache.clone(),
            ..Default::default()
        };
        let mut editor = Editor::new(model.clone());
        let method = rome.method.as_ref();
        run(
            &mut editor,
            method,
            &ctx,
            requests,
            &opts,
            &mut store,
            &mut Silent,
        )
        .unwrap();
        store
    };
    let whole = scratch.join("whole");
    run_into(&whole, &requests);
    let resumed = scratch.join("resumed");
    run_into(&resumed, &requests[..1]);
    let store = run_into(&resumed, &requests);
    assert_eq!(store.cases.len(), 2);

    let load = |path: std::path::PathBuf| -> WeightEdit {
        Edit::load(&path).unwrap().weights().unwrap().clone()
    };
    let second = |dir: &std::path::Path| load(dir.join("edits/1.safetensors"));
    let (a, b) = (second(&whole), second(&resumed));
    assert_eq!(a.deltas.len(), b.deltas.len());
    for ((ia, da), (ib, db)) in a.deltas.iter().zip(&b.deltas) {
        assert_eq!(ia, ib);
        let diff = common::max_abs_diff(
            &da.dense(DType::F32).unwrap(),
            &db.dense(DType::F32).unwrap(),
        );
        assert_eq!(
            diff, 0.0,
            "the resumed run's second edit of `{ia}` differs by {diff:e}"
        );
    }

    // What makes the test bite: the edited model's own templates are not the original's.
    let first = Edit::load(&whole.join("edits/0.safetensors")).unwrap();
    let mut editor = Editor::new(model.clone());
    editor.apply(&first).unwrap();
    let spec = TemplateSpec {
        length_params: vec![(10, 5)],
        seed: 0,
    };
    let original = context_templates(model, &spec, &cache).unwrap();
    let edited = context_templates(editor.model(), &spec, &cache).unwrap();
    assert_ne!(
        original, edited,
        "the first edit leaves the templates as they were"
    );
}

/// MEMIT's z*: requests optimised together in shared passes, each with its own δ, Adam
/// state, clamp and stopping, must find what each finds alone — in waves smaller than the
/// batch too, and when requests stop at different steps (which rebuilds the shared rows).
#[test]
fn the_v_stars_of_requests_optimised_together_equal_each_alone() {
    let _threads = common::own_threads();
    let model = smollm2();
    let tok = model.tokenizer().unwrap();
    let facts = [
        ("The Eiffel Tower", "{} is located in the city of", "Rome"),
        ("The Louvre", "{} is a museum in", "Berlin, Germany"),
        ("Barack Obama", "{} was born in", "Kyoto"),
    ];
    let contexts = ["{}", "Yes. {}", "The news today: {}"];
    type Built = (Vec<Lookup>, Vec<Lookup>, Vec<u32>);
    let built: Vec<Built> = facts
        .iter()
        .map(|&(subject, prompt, target)| {
            let make = |text: &str| {
                let (ids, index) = lookup(tok, text, subject, FactToken::SubjectLast).unwrap();
                Lookup { ids, index }
            };
            let rewriting = contexts
                .iter()
                .map(|c| make(&c.replace("{}", prompt)))
                .collect();
            (
                rewriting,
                vec![make("{} is a")],
                target_ids(tok, target).unwrap(),
            )
        })
        .collect();
    let prompts: Vec<ValuePrompts> = built
        .iter()
        .map(|(rewriting, kl, target)| ValuePrompts {
            layer: 5,
            rewriting,
            target,
            kl,
        })
        .collect();
    // Without early stopping, then stopping at an NLL the requests reach at different steps.
    for early_stop_nll in [0.0, 3.0] {
        let hp = |wave| ValueHparams {
            steps: 8,
            lr: 0.5,
            weight_decay: 0.5,
            clamp_norm_factor: 4.0,
            kl_factor: 0.0625,
            kl_at: KlAt::Last,
            early_stop_loss: 0.0,
            early_stop_nll,
            groups: 2,
            wave,
            answer_end: None,
            attention: false,
        };
        let alone: Vec<_> = prompts
            .iter()
            .map(|p| value_star(model, p, &hp(1), &mut Vec::new()).unwrap())
            .collect();
        for wave in [2, 3] {
            let mut log = Vec::new();
            let together = value_stars(model, &prompts, &hp(wave), &mut log).unwrap();
            for line in &log {
                println!("{line}");
            }
            for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
                let diff = (&a.delta - &t.delta)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let size = a.delta.sqr().unwrap().sum_all().unwrap();
                let rel =
                    (diff.to_scalar::<f32>().unwrap() / size.to_scalar::<f32>().unwrap()).sqrt();
                println!(
                    "stop at nll {early_stop_nll}, wave {wave}, request {i}: {} vs {} steps, \
                     loss {:.4} vs {:.4}, relative δ difference {rel:.2e}",
                    a.iterations, t.iterations, a.loss, t.loss
                );
                assert_eq!(a.iterations, t.iterations, "request {i}");
                assert!(rel < 1e-3, "request {i}: relative difference {rel}");
                assert!((a.loss - t.loss).abs() < 1e-3 * a.loss.abs().max(1.0));
            }
        }
        if early_stop_nll > 0.0 {
            let steps: Vec<usize> = alone.iter().map(|a| a.iterations).collect();
            assert!(
                steps.iter().any(|&s| s != steps[0]),
                "the requests must stop at different steps to test that: {steps:?}"
            );
        }
    }
}

/// The answer-end term, −log Σ p(token that ends the answer) after the target: its value
/// from the cached prefixes equals a full forward's, and the gradient of the whole v* loss
/// with it (NLL, end, KL) matches central finite differences.
#[test]
fn the_answer_end_term_matches_a_full_forward_and_finite_differences() {
    let _threads = common::own_threads();
    let model = smollm2();
    let tok = model.tokenizer().unwrap();
    let make = |text: &str| {
        let (ids, index) = lookup(tok, text, "Butterfly Cluster", FactToken::SubjectLast).unwrap();
        Lookup { ids, index }
    };
    let rewriting = vec![
        make("What constellation is home to {}?"),
        make("Yes. What constellation is home to {}?"),
    ];
    let kl = vec![make("{} is a")];
    let target = target_ids(tok, "Orion").unwrap();
    let ends_mask = kedit::prompts::answer_boundaries(tok).unwrap();
    assert!(ends_mask[tok.encode(" is").unwrap()[0] as usize]);
    assert!(ends_mask[tok.encode(".").unwrap()[0] as usize]);
    assert!(!ends_mask[tok.encode("'s").unwrap()[0] as usize]);
    let ends: Vec<f32> = ends_mask.iter().map(|&e| f32::from(u8::from(e))).collect();
    let ends = Tensor::new(ends.as_slice(), &Device::Cpu).unwrap();
    let d = model.config.d_model;
    let delta = Tensor::new(
        (0..d)
            .map(|i| ((i * 7919 % 101) as f32 / 50.0 - 1.0) * 2.0)
            .collect::<Vec<_>>()
            .as_slice(),
        &Device::Cpu,
    )
    .unwrap();
    let hp = |kl_factor| ValueHparams {
        steps: 1,
        lr: 0.5,
        weight_decay: 0.0,
        clamp_norm_factor: 4.0,
        kl_factor,
        kl_at: KlAt::Last,
        early_stop_loss: 0.0,
        early_stop_nll: 0.0,
        groups: 2,
        wave: 1,
        answer_end: Some(ends.clone()),
        attention: false,
    };
    let prompts = ValuePrompts {
        layer: 5,
        rewriting: &rewriting,
        target: &target,
        kl: &kl,
    };

    // The reference: each rewriting prompt with the whole target, in full.
    let n_t = target.len();
    let mut expected = 0.0;
    for p in &rewriting {
        let mut ids = p.ids.clone();
        ids.extend_from_slice(&target);
        let lp = log_probs_with(model, &ids, p.index, &delta);
        let mut row = 0.0;
        for (j, &t) in target.iter().enumerate() {
            row -= lp
                .get(p.ids.len() - 1 + j)
                .unwrap()
                .get(t as usize)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
        }
        let after = lp.get(p.ids.len() - 1 + n_t).unwrap().exp().unwrap();
        let ended: f64 = after
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .zip(&ends_mask)
            .filter(|(_, &e)| e)
            .map(|(p, _)| p)
            .sum();
        row -= ended.ln();
        expected += row / (n_t + 1) as f64 / rewriting.len() as f64;
    }
    let (loss, nll) = loss_at(model, &prompts, &hp(0.0), &delta).unwrap();
    println!("loss {loss:.6} (nll {nll:.6}), full forward {expected:.6}");
    assert!((loss - expected).abs() < 1e-4, "{loss} vs {expected}");

    let hp = hp(0.5);
    let grad = gradient_at(model, &prompts, &hp, &delta).unwrap();
    let mut rng = kedit::rng::Rng::new(7);
    for k in 0..3 {
        let dir: Vec<f32> = (0..d).map(|_| rng.normal() as f32).collect();
        let dir = Tensor::new(dir.as_slice(), &Device::Cpu).unwrap();
        let analytic = (&grad * &dir)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let h = 1e-2;
        let at = |s: f64| {
            let moved = (&delta + (&dir * s).unwrap()).unwrap();
            loss_at(model, &prompts, &hp, &moved).unwrap().0
        };
        let numeric = (at(h) - at(-h)) / (2.0 * h);
        let rel = (analytic - numeric).abs() / numeric.abs().max(1e-3);
        println!("direction {k}: analytic {analytic:.6}, finite differences {numeric:.6}, relative error {rel:.2e}");
        assert!(rel < 2e-2, "direction {k}: {analytic} vs {numeric}");
    }
}

/// PMET's z*: δs on the attention and the MLP output of layer 5 together. The steps then
/// start at layer 5 itself (its attention runs again, over the cached prefix); the loss they
/// compute equals a full forward's with both δs added, and the joint optimisation moves
/// both δs and reaches a lower loss than its first step's.
#[test]
fn pmet_deltas_on_attention_and_mlp_match_a_full_forward() {
    let _threads = common::own_threads();
    let model = smollm2();
    let tok = model.tokenizer().unwrap();
    let make = |text: &str| {
        let (ids, index) = lookup(tok, text, "The Eiffel Tower", FactToken::SubjectLast).unwrap();
        Lookup { ids, index }
    };
    let rewriting = vec![
        make("{} is located in the city of"),
        make("Yes. {} is located in the city of"),
    ];
    let kl = vec![make("{} is a")];
    let target = target_ids(tok, "Rome").unwrap();
    let d = model.config.d_model;
    let wave = |seed: usize, scale: f32| {
        let v: Vec<f32> = (0..d)
            .map(|i| (((i * 7919 + seed * 104729) % 101) as f32 / 50.0 - 1.0) * scale)
            .collect();
        Tensor::new(v.as_slice(), &Device::Cpu).unwrap()
    };
    let (attn, mlp) = (wave(1, 1.0), wave(2, 2.0));
    let mut nll = 0.0;
    for p in &rewriting {
        let mut ids = p.ids.clone();
        ids.extend_from_slice(&target[..target.len() - 1]);
        let logits = model
            .forward(&TokenBatch::single(&ids))
            .intervene(Intervention::add(
                Site::AttnOut(5),
                vec![(0, p.index)],
                attn.clone(),
            ))
            .intervene(Intervention::add(
                Site::MlpOut(5),
                vec![(0, p.index)],
                mlp.clone(),
            ))
            .logits(LogitsAt::All)
            .run()
            .unwrap()
            .logits
            .unwrap();
        let lp = kedit::runtime::ops::log_softmax_last(
            &logits.squeeze(0).unwrap().to_dtype(DType::F64).unwrap(),
        )
        .unwrap();
        let mut row = 0.0;
        for (j, &t) in target.iter().enumerate() {
            row -= lp
                .get(p.ids.len() - 1 + j)
                .unwrap()
                .get(t as usize)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
        }
        nll += row / target.len() as f64 / rewriting.len() as f64;
    }
    let hp = ValueHparams {
        steps: 6,
        lr: 0.5,
        weight_decay: 0.5,
        clamp_norm_factor: 4.0,
        kl_factor: 0.0,
        kl_at: KlAt::Last,
        early_stop_loss: 0.0,
        early_stop_nll: 0.0,
        groups: 2,
        wave: 1,
        answer_end: None,
        attention: true,
    };
    let prompts = ValuePrompts {
        layer: 5,
        rewriting: &rewriting,
        target: &target,
        kl: &kl,
    };
    let (loss, _) = loss_at_sites(model, &prompts, &hp, &[attn, mlp]).unwrap();
    println!("cached prefix {loss:.6}, full forward {nll:.6}");
    assert!((loss - nll).abs() < 1e-4, "{loss} vs {nll}");

    let mut log = Vec::new();
    let star = value_star(model, &prompts, &hp, &mut log).unwrap();
    for line in &log {
        println!("{line}");
    }
    let (_, attn_delta) = star.attention.as_ref().expect("an attention δ");
    let norm = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(norm(attn_delta) > 0.0 && norm(&star.delta) > 0.0);
    let (first, _) = loss_at_sites(
        model,
        &prompts,
        &hp,
        &[
            attn_delta.zeros_like().unwrap(),
            star.delta.zeros_like().unwrap(),
        ],
    )
    .unwrap();
    assert!(star.loss < 0.5 * first, "{} vs {first} before", star.loss);
}
