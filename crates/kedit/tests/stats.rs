//! Key statistics on the real model and the real corpora: exactness against an explicit
//! KᵀK, one pass = per-layer passes, the cache, fingerprints, resuming, corpus readers and
//! bad input.

use crate::common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use kedit::cache::Cache;
use kedit::model::ParamId;
use kedit::progress::Silent;
use kedit::stats::{
    cached_key_stats, key_stats, missing_stats_error, require_key_stats, Corpus, CorpusFormat,
    KeyStats, MixedSource, Precision, RecordSelection, StatsRequest,
};
use kedit::{Error, Site, TokenBatch};

fn wikipedia() -> PathBuf {
    common::data("corpus/wikipedia_en_2015_sample.jsonl")
}

fn wikitext() -> PathBuf {
    common::data("corpus/wikitext2_test.txt")
}

/// A fresh cache directory for one test.
fn temp_cache(name: &str) -> Cache {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Cache::new(dir)
}

fn small_request(layers: Vec<usize>, docs: usize) -> StatsRequest {
    StatsRequest {
        n_docs: docs,
        max_len: 24,
        precision: Precision::F64,
        batch_size: 3,
        ..StatsRequest::new(layers, wikipedia())
    }
}

fn as_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// max |a − b| / max |b|
fn rel_max(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (as_f64(a), as_f64(b));
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn moment_equals_explicit_kt_k_of_captured_keys() {
    let model = common::smollm2();
    let layer = 2;
    let req = small_request(vec![layer], 5);
    let stats = key_stats(model, &req, &temp_cache("explicit"), &mut Silent).unwrap();
    let got = &stats[0];
    assert_eq!(got.n_docs, 5);

    // Each document alone: whole text tokenized, truncated, keys captured, KᵀK summed.
    let tok = model.tokenizer().unwrap();
    let d = model.config.d_ff;
    let mut sum = vec![0f64; d * d];
    let mut n = 0u64;
    for doc in Corpus::open(wikipedia())
        .unwrap()
        .documents()
        .unwrap()
        .take(5)
    {
        let mut ids = tok.encode(&doc.unwrap().text).unwrap();
        ids.truncate(req.max_len);
        let out = model
            .forward(&TokenBatch::single(&ids))
            .capture([Site::MlpKey(layer)])
            .stop_after(layer)
            .run()
            .unwrap();
        let k = as_f64(out.capture(Site::MlpKey(layer)).unwrap());
        for row in k.chunks(d) {
            for i in 0..d {
                for j in 0..d {
                    sum[i * d + j] += row[i] * row[j];
                }
            }
        }
        n += ids.len() as u64;
    }
    assert_eq!(got.n_tokens, n);
    let want = Tensor::from_vec(sum, (d, d), &candle_core::Device::Cpu).unwrap() / n as f64;
    let err = rel_max(&got.moment, &want.unwrap());
    assert!(err < 1e-5, "relative error {err}");
    assert!(
        (got.trace().unwrap() - as_f64(&got.moment).iter().step_by(d + 1).sum::<f64>()).abs()
            < 1e-9
    );
}

#[test]
fn one_pass_over_several_layers_equals_one_pass_per_layer() {
    let model = common::smollm2();
    let together = key_stats(
        model,
        &small_request(vec![1, 3], 4),
        &temp_cache("together"),
        &mut Silent,
    )
    .unwrap();
    for (i, layer) in [1, 3].into_iter().enumerate() {
        let alone = key_stats(
            model,
            &small_request(vec![layer], 4),
            &temp_cache(&format!("alone{layer}")),
            &mut Silent,
        )
        .unwrap();
        assert_eq!(together[i].layer, layer);
        assert_eq!(together[i].n_tokens, alone[0].n_tokens);
        let err = rel_max(&together[i].moment, &alone[0].moment);
        assert!(err < 1e-6, "layer {layer}: {err}");
    }
}

#[test]
fn cache_hits_return_identical_numbers_and_edits_change_the_fingerprint() {
    let model = common::smollm2();
    let cache = temp_cache("hit");
    let req = small_request(vec![2], 3);
    let first = key_stats(model, &req, &cache, &mut Silent)
        .unwrap()
        .remove(0);
    assert!(first.computed.is_some());
    let again = key_stats(model, &req, &cache, &mut Silent)
        .unwrap()
        .remove(0);
    assert!(
        again.computed.is_none(),
        "the second call must read the cache"
    );
    assert_eq!(as_f64(&first.moment), as_f64(&again.moment));
    let twice = key_stats(model, &small_request(vec![2, 2], 3), &cache, &mut Silent).unwrap();
    assert_eq!(twice.len(), 2);
    assert_eq!(as_f64(&twice[1].moment), as_f64(&first.moment));
    let looked_up = cached_key_stats(model, 2, Some(&req), &cache)
        .unwrap()
        .unwrap();
    assert_eq!(as_f64(&looked_up.moment), as_f64(&first.moment));
    let any = cached_key_stats(model, 2, None, &cache).unwrap().unwrap();
    assert_eq!(any.path, first.path);
    assert!(cached_key_stats(model, 4, None, &cache).unwrap().is_none());

    // The fingerprint of layer l covers the weights below its keys, not its output projection.
    let started = std::time::Instant::now();
    let before = model.key_fingerprints(&[1, 2, 3, 29]).unwrap();
    println!(
        "fingerprints of 4 layers: {:.3} s",
        started.elapsed().as_secs_f64()
    );
    let bump = |m: &mut kedit::Model, id: ParamId| {
        let w = m.params.get(id).unwrap().clone();
        let changed = (w.clone() + w.ones_like().unwrap() * 1e-3).unwrap();
        m.params.replace(id, changed).unwrap();
    };
    let mut edited = model.clone();
    bump(&mut edited, ParamId::mlp_out(2));
    let after = edited.key_fingerprints(&[1, 2, 3, 29]).unwrap();
    assert_eq!(before[0], after[0], "layer 1 does not read block 2");
    assert_eq!(
        before[1], after[1],
        "layer 2's keys come before its output projection"
    );
    assert_ne!(before[2], after[2], "layer 3 reads block 2's output");
    assert_ne!(before[3], after[3]);
    let mut edited = model.clone();
    bump(&mut edited, ParamId::TokenEmbed);
    assert_ne!(edited.key_fingerprint(1).unwrap(), before[0]);
    // An edited model does not reuse the stale statistics.
    let mut edited = model.clone();
    bump(&mut edited, ParamId::mlp_out(1));
    assert!(cached_key_stats(&edited, 2, Some(&req), &cache)
        .unwrap()
        .is_none());
}

#[test]
fn a_run_resumes_from_the_partial_sums_of_an_interrupted_one() {
    let model = common::smollm2();
    let layers = vec![2, 4];
    let straight = key_stats(
        model,
        &small_request(layers.clone(), 7),
        &temp_cache("straight"),
        &mut Silent,
    )
    .unwrap();
    // The "interrupted" run got through the first 4 documents and left its partial sums
    // (checkpointed after every batch).
    let cache = temp_cache("resumed");
    let interrupted = StatsRequest {
        checkpoint_seconds: 0.0,
        ..small_request(layers.clone(), 4)
    };
    key_stats(model, &interrupted, &cache, &mut Silent).unwrap();
    let partials = std::fs::read_dir(cache.dir().join("stats"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .to_string_lossy()
                .ends_with(".partial.safetensors")
        })
        .count();
    assert_eq!(partials, 2, "one partial file per layer");
    let resumed = key_stats(model, &small_request(layers, 7), &cache, &mut Silent).unwrap();
    for (s, r) in straight.iter().zip(&resumed) {
        let pass = r.computed.unwrap();
        assert!(
            pass.tokens < r.n_tokens,
            "the resumed pass ran only the remaining documents"
        );
        assert_eq!(s.n_tokens, r.n_tokens);
        assert_eq!(s.n_docs, r.n_docs);
        let err = rel_max(&r.moment, &s.moment);
        assert!(err < 1e-9, "layer {}: {err}", s.layer);
    }
}

#[test]
fn f32_and_f64_accumulation_agree() {
    let model = common::smollm2();
    let f64s = key_stats(
        model,
        &small_request(vec![3], 3),
        &temp_cache("f64"),
        &mut Silent,
    )
    .unwrap();
    let req32 = StatsRequest {
        precision: Precision::F32,
        ..small_request(vec![3], 3)
    };
    let f32s = key_stats(model, &req32, &temp_cache("f32"), &mut Silent).unwrap();
    assert_eq!(f32s[0].moment.dtype(), DType::F32);
    assert_eq!(f64s[0].moment.dtype(), DType::F64);
    assert!(rel_max(&f32s[0].moment, &f64s[0].moment) < 1e-5);
}

#[test]
fn corpus_readers_read_both_corpus_files() {
    let wiki = Corpus::open(wikipedia()).unwrap();
    assert_eq!(wiki.format, CorpusFormat::Jsonl);
    let docs: Vec<_> = wiki
        .documents()
        .unwrap()
        .take(3)
        .map(Result::unwrap)
        .collect();
    assert!(docs[0].text.starts_with("Anarchism"));
    assert_eq!(docs[0].line, 1);
    // 2583 articles; one ("Cogency", line 2347) has empty text and is skipped.
    assert_eq!(wiki.count_documents(usize::MAX).unwrap(), 2582);

    let text = Corpus::open(wikitext()).unwrap();
    assert_eq!(text.format, CorpusFormat::Text);
    let docs: Vec<_> = text
        .documents()
        .unwrap()
        .take(3)
        .map(Result::unwrap)
        .collect();
    assert_eq!(docs[0].text.trim(), "= Robert <unk> =");
    assert!(docs[1]
        .text
        .trim_start()
        .starts_with("Robert <unk> is an English film"));
    // A paragraph keeps its consecutive lines together.
    assert!(docs[1].text.contains('\n'));
    assert!(docs.iter().all(|d| !d.text.trim().is_empty()));
    let n = text.count_documents(usize::MAX).unwrap();
    assert!(n > 1000, "{n} paragraphs");

    // Statistics from plain text work too.
    let model = common::smollm2();
    let req = StatsRequest {
        corpus: wikitext(),
        ..small_request(vec![0], 3)
    };
    let s: Vec<KeyStats> = key_stats(model, &req, &temp_cache("wikitext"), &mut Silent).unwrap();
    assert!(s[0].n_tokens > 0 && s[0].trace().unwrap() > 0.0);
}

fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-test-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn stats_error(corpus: &Path) -> String {
    let req = StatsRequest {
        corpus: corpus.to_path_buf(),
        ..small_request(vec![0], 5)
    };
    match key_stats(common::smollm2(), &req, &temp_cache("bad"), &mut Silent) {
        Ok(_) => panic!("{} was accepted", corpus.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_corpus_input_gives_clear_errors() {
    let bad_json = write_temp("bad.jsonl", b"{\"text\": \"fine\"}\n{\"text\": oops}\n");
    let e = stats_error(&bad_json);
    assert!(
        e.contains("bad.jsonl") && e.contains("record 2") && e.contains("text"),
        "{e}"
    );

    let missing = write_temp("missing.jsonl", b"{\"title\": \"no text\"}\n");
    let e = stats_error(&missing);
    assert!(
        e.contains("record 1") && e.contains("`text`") && e.contains("missing"),
        "{e}"
    );

    let number = write_temp("number.jsonl", b"{\"text\": 42}\n");
    assert!(stats_error(&number).contains("expected a string, found a number"));

    let empty = write_temp("empty.txt", b"  \n\n");
    assert!(stats_error(&empty).contains("empty"));

    let blank_texts = write_temp("blank.jsonl", b"{\"text\": \"  \"}\n");
    assert!(stats_error(&blank_texts).contains("no documents"));

    let binary = write_temp("binary.txt", &[b'a', b'\n', 0xff, 0xfe, b'\n']);
    assert!(stats_error(&binary).contains("UTF-8"));

    let nowhere =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kedit-no-such-corpus.jsonl");
    assert!(stats_error(&nowhere).contains("kedit-no-such-corpus.jsonl"));
    assert!(
        stats_error(&std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).contains("directory")
    );

    let model = common::smollm2();
    let req = StatsRequest::new(vec![99], wikipedia());
    let e = key_stats(model, &req, &temp_cache("badlayer"), &mut Silent).unwrap_err();
    assert!(e.to_string().contains("layer 99"), "{e}");
}

#[test]
fn a_method_without_corpus_or_cache_is_told_how_to_get_statistics() {
    let cache = temp_cache("none");
    let e = require_key_stats(common::smollm2(), 5, None, &cache, &mut Silent).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Config(_)));
    assert!(
        text.contains("--corpus") && text.contains("kedit stats --layers 5"),
        "{text}"
    );
    assert_eq!(missing_stats_error(&[5], cache.dir()).to_string(), text);
}

fn zsre_train() -> PathBuf {
    common::data("zsre/zsre_mend_train-1k.json")
}

fn locality_questions(start: usize, end: usize) -> RecordSelection {
    RecordSelection {
        fields: vec!["loc".into(), "loc_ans".into()],
        start,
        end,
    }
}

#[test]
fn a_weighted_source_counts_as_if_its_documents_were_repeated() {
    let model = common::smollm2();
    let layers = vec![3, 6];
    // The main corpus: three Wikipedia documents in a file of their own.
    let wiki: Vec<String> = Corpus::open(wikipedia())
        .unwrap()
        .documents()
        .unwrap()
        .take(3)
        .map(|d| d.unwrap().text)
        .collect();
    let line = |t: &str| serde_json::json!({ "text": t }).to_string() + "\n";
    let main: String = wiki.iter().map(|t| line(t)).collect();
    let main_path = write_temp("mix-main.jsonl", main.as_bytes());

    // The source: ZsRE train records 600..604, "loc loc_ans" each.
    let questions = Corpus::open_records(zsre_train(), locality_questions(600, 604)).unwrap();
    let docs: Vec<String> = questions
        .documents()
        .unwrap()
        .map(|d| d.unwrap().text)
        .collect();
    let train = common::json(zsre_train());
    assert_eq!(docs.len(), 4);
    assert_eq!(
        docs[0],
        format!(
            "{} {}",
            train[600]["loc"].as_str().unwrap(),
            train[600]["loc_ans"].as_str().unwrap()
        )
    );

    // The same documents written out, the questions three times over.
    let mut repeated = main.clone();
    for _ in 0..3 {
        repeated.extend(docs.iter().map(|t| line(t)));
    }
    let repeated_path = write_temp("mix-repeated.jsonl", repeated.as_bytes());
    let explicit = StatsRequest {
        corpus: repeated_path,
        ..small_request(layers.clone(), 100)
    };
    let mixed = StatsRequest {
        corpus: main_path,
        mix: vec![MixedSource {
            corpus: zsre_train(),
            selection: Some(locality_questions(600, 604)),
            weight: 3.0,
        }],
        ..small_request(layers.clone(), 100)
    };
    let cache = temp_cache("mix");
    let want = key_stats(model, &explicit, &cache, &mut Silent).unwrap();
    let got = key_stats(model, &mixed, &cache, &mut Silent).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.layer, w.layer);
        assert_eq!(g.n_tokens, w.n_tokens);
        assert_eq!(g.n_docs, 15);
        let err = rel_max(&g.moment, &w.moment);
        assert!(err < 1e-12, "layer {}: {err}", g.layer);
    }
    // Cached: the same mix read back without computing; a different weight is another C.
    let again = cached_key_stats(model, 6, Some(&mixed), &cache)
        .unwrap()
        .unwrap();
    assert!(again.computed.is_none());
    assert!(rel_max(&again.moment, &got[1].moment) < 1e-15);
    let mut heavier = mixed.clone();
    heavier.mix[0].weight = 30.0;
    let other = cached_key_stats(model, 6, Some(&heavier), &cache)
        .unwrap()
        .unwrap();
    assert!(rel_max(&other.moment, &got[1].moment) > 1e-3);
}

#[test]
fn bad_record_selections_and_weights_are_refused_naming_file_record_and_field() {
    let e = Corpus::open_records(zsre_train(), locality_questions(990, 1001)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("zsre_mend_train-1k.json") && msg.contains("1000 records"),
        "{msg}"
    );

    let missing = RecordSelection {
        fields: vec!["loc".into(), "answer".into()],
        start: 3,
        end: 5,
    };
    let msg = Corpus::open_records(zsre_train(), missing)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("record 3") && msg.contains("answer") && msg.contains("missing"),
        "{msg}"
    );

    let not_text = RecordSelection {
        fields: vec!["alt".into(), "answers".into()],
        start: 0,
        end: 2,
    };
    let msg = Corpus::open_records(zsre_train(), not_text)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("answers") && msg.contains("an array"), "{msg}");

    assert!(Corpus::open_records(zsre_train(), locality_questions(5, 5)).is_err());
    let none = RecordSelection {
        fields: vec![],
        start: 0,
        end: 2,
    };
    assert!(Corpus::open_records(zsre_train(), none).is_err());

    let weightless = StatsRequest {
        mix: vec![MixedSource {
            corpus: zsre_train(),
            selection: Some(locality_questions(0, 2)),
            weight: 0.0,
        }],
        ..small_request(vec![0], 2)
    };
    let cache = temp_cache("mix-bad");
    let msg = key_stats(common::smollm2(), &weightless, &cache, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("weight") && msg.contains("zsre_mend_train-1k.json"),
        "{msg}"
    );
    // Refused before any pass: nothing was computed.
    assert!(!cache.dir().join("stats").exists());
}
