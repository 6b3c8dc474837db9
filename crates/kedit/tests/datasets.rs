//! Every benchmark file under `../shared/data` loads, with the right counts and contents;
//! and no mutation of a real record makes a loader panic.

use crate::common;

use std::path::Path;
use std::time::Instant;

use common::*;
use kedit::data::{load, load_from_slice, Format, LoadOptions, Loaded};
use kedit::request::{EditRequest, Probe};
use kedit::rng::Rng;
use kedit::Error;
use serde_json::{json, Value};

/// (file under `../shared/data`, format, records in the file, records that are invalid).
const FILES: [(&str, Format, usize, &[usize]); 12] = [
    (
        "zsre/zsre_mend_eval_portability_gpt4.dev.json",
        Format::Zsre,
        433,
        &[],
    ),
    // Two records have an empty `alt`: no edit at all. EasyEdit's ZsreDataset drops them.
    (
        "zsre/zsre_mend_train-1k.json",
        Format::Zsre,
        1000,
        &[534, 723],
    ),
    (
        "knowedit/ZsRE/ZsRE-test-all.dev.json",
        Format::KnowEdit,
        679,
        &[],
    ),
    (
        "knowedit/wiki_recent/recent_train.json",
        Format::KnowEdit,
        570,
        &[],
    ),
    (
        "knowedit/wiki_counterfact/train_cf.json",
        Format::KnowEdit,
        1427,
        &[],
    ),
    (
        "knowedit/wiki_counterfact/test_cf.reconstructed.json",
        Format::KnowEdit,
        885,
        &[],
    ),
    (
        "knowedit/WikiBio/wikibio-train-all.json",
        Format::KnowEdit,
        464,
        &[],
    ),
    (
        "knowedit/WikiBio/wikibio-test-all.json",
        Format::KnowEdit,
        306,
        &[],
    ),
    (
        "counterfact/counterfact-edit.json",
        Format::CounterFact,
        9703,
        &[],
    ),
    (
        "counterfact/counterfact-train.json",
        Format::CounterFact,
        9953,
        &[],
    ),
    (
        "counterfact/counterfact-val.json",
        Format::CounterFact,
        1909,
        &[],
    ),
    (
        "counterfact/counterfact_rome_format.dev.json",
        Format::CounterFactRome,
        845,
        &[],
    ),
];

fn opts(skip_invalid: bool) -> LoadOptions {
    LoadOptions {
        skip_invalid,
        limit: None,
    }
}

#[test]
fn every_file_loads_auto_and_explicit_with_its_record_count() {
    for (rel, format, count, invalid) in FILES {
        let path = data(rel);
        for asked in [Format::Auto, format] {
            let loaded = load(&path, asked, &opts(true)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(loaded.format, format, "{rel} as {asked}");
            assert_eq!(loaded.requests.len() + loaded.skipped.len(), count, "{rel}");
            let skipped: Vec<usize> = loaded.skipped.iter().map(|(i, _)| *i).collect();
            assert_eq!(skipped, invalid, "{rel}: {:?}", loaded.skipped);
            let strict = load(&path, asked, &opts(false));
            match (invalid.first(), strict) {
                (None, Ok(l)) => assert_eq!(l.requests, loaded.requests),
                (Some(&first), Err(Error::Record { index, .. })) => assert_eq!(index, first),
                (_, other) => panic!("{rel}: {other:?}"),
            }
        }
    }
}

#[test]
fn zsre_train_names_the_records_without_a_target() {
    let path = data("zsre/zsre_mend_train-1k.json");
    let e = load(&path, Format::Zsre, &opts(false))
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("zsre_mend_train-1k.json: record 534: field `alt`: empty"),
        "{e}"
    );
}

#[test]
fn a_file_in_no_edit_format_is_refused_by_auto_with_its_fields() {
    // ROME's known facts (for causal tracing) are not edit requests.
    let e = load(
        &data("known_1000/known_1000.json"),
        Format::Auto,
        &opts(true),
    )
    .unwrap_err();
    let message = e.to_string();
    assert!(matches!(e, Error::Data { .. }), "{e:?}");
    assert!(
        message.contains("cannot tell the dataset format"),
        "{message}"
    );
    assert!(message.contains("\"template\""), "{message}");
}

#[test]
fn limit_takes_the_first_requests() {
    let path = data("counterfact/counterfact-val.json");
    let all = load(&path, Format::Auto, &opts(false)).unwrap();
    let some = load(
        &path,
        Format::Auto,
        &LoadOptions {
            skip_invalid: false,
            limit: Some(10),
        },
    )
    .unwrap();
    assert_eq!(some.requests, all.requests[..10]);
}

/// The first record of `rel`, as JSON and as loaded.
fn first(rel: &str) -> (Value, EditRequest) {
    let raw = json(data(rel));
    let req = load(&data(rel), Format::Auto, &opts(true))
        .unwrap()
        .requests
        .swap_remove(0);
    (raw[0].clone(), req)
}

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

#[test]
fn zsre_first_records() {
    for rel in [
        "zsre/zsre_mend_eval_portability_gpt4.dev.json",
        "zsre/zsre_mend_train-1k.json",
    ] {
        let (raw, req) = first(rel);
        assert_eq!(req.case_id, "0");
        assert_eq!(req.prompt, s(&raw["src"]));
        assert_eq!(req.subject, s(&raw["subject"]));
        assert_eq!(req.target_new, s(&raw["alt"]));
        assert_eq!(req.ground_truth, vec![s(&raw["answers"][0])]);
        assert_eq!(req.rephrase, vec![s(&raw["rephrase"])]);
        let loc = &req.locality["neighborhood"];
        assert_eq!(loc, &vec![Probe::new(s(&raw["loc"]), s(&raw["loc_ans"]))]);
        assert!(loc[0].prompt.starts_with("nq question: "));
        match raw.get("portability") {
            Some(p) => assert_eq!(
                req.portability["one_hop"],
                vec![Probe::new(s(&p["New Question"]), s(&p["New Answer"]))]
            ),
            None => assert!(req.portability.is_empty()),
        }
    }
}

/// KnowEdit probes: per group, the prompts whose first answer string is not blank, answered
/// by that string (EasyEdit's `while isinstance(an, list): an = an[0]`).
fn knowedit_groups(section: &Value) -> Vec<(String, Vec<(String, String)>)> {
    fn first_string(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => items.iter().find_map(first_string),
            _ => None,
        }
    }
    let mut groups = Vec::new();
    for (name, items) in section.as_object().into_iter().flatten() {
        let probes: Vec<(String, String)> = items
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|it| {
                let answer = first_string(&it["ground_truth"])?;
                (!answer.trim().is_empty()).then(|| (s(&it["prompt"]), answer))
            })
            .collect();
        if !probes.is_empty() {
            groups.push((name.clone(), probes));
        }
    }
    groups.sort();
    groups
}

fn loaded_groups(
    groups: &std::collections::BTreeMap<String, Vec<Probe>>,
) -> Vec<(String, Vec<(String, String)>)> {
    groups
        .iter()
        .map(|(g, ps)| {
            let pairs = ps
                .iter()
                .map(|p| (p.prompt.clone(), p.answer.clone()))
                .collect();
            (g.clone(), pairs)
        })
        .collect()
}

#[test]
fn knowedit_first_records() {
    for rel in [
        "knowedit/ZsRE/ZsRE-test-all.dev.json",
        "knowedit/wiki_recent/recent_train.json",
        "knowedit/wiki_counterfact/train_cf.json",
        "knowedit/wiki_counterfact/test_cf.reconstructed.json",
    ] {
        let (raw, req) = first(rel);
        assert_eq!(req.case_id, "0");
        assert_eq!(req.prompt, s(&raw["prompt"]), "{rel}");
        assert_eq!(req.subject, s(&raw["subject"]));
        assert_eq!(req.target_new, s(&raw["target_new"]));
        match &raw["ground_truth"] {
            Value::Null => assert!(req.ground_truth.is_empty()),
            Value::String(g) => assert_eq!(req.ground_truth, vec![g.clone()]),
            Value::Array(gs) => assert_eq!(req.ground_truth[0], s(&gs[0])),
            other => panic!("{other}"),
        }
        match raw.get("rephrase_prompt") {
            Some(r) => assert_eq!(req.rephrase, vec![s(r)]),
            None => assert!(req.rephrase.is_empty()),
        }
        assert_eq!(
            loaded_groups(&req.locality),
            knowedit_groups(&raw["locality"]),
            "{rel}"
        );
        assert_eq!(
            loaded_groups(&req.portability),
            knowedit_groups(&raw["portability"]),
            "{rel}"
        );
        assert!(!req.locality.is_empty(), "{rel}");
    }
    // recent_train's first record: alias lists; the first alias is scored, the rest kept.
    let (raw, req) = first("knowedit/wiki_recent/recent_train.json");
    let country = &raw["locality"]["Relation_Specificity"][1]["ground_truth"][0];
    let probe = &req.locality["Relation_Specificity"][1];
    assert_eq!(probe.answer, s(&country[0]));
    assert_eq!(probe.aliases[0], s(&country[1]));
}

#[test]
fn knowedit_multi_answer_alias_lists_keep_every_answer_as_an_alias() {
    // test_cf's first record: several answers, each an alias list.
    let (raw, req) = first("knowedit/wiki_counterfact/test_cf.reconstructed.json");
    for (name, items) in raw["portability"].as_object().unwrap() {
        for (item, probe) in items.as_array().unwrap().iter().zip(&req.portability[name]) {
            let strings: Vec<String> = item["ground_truth"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|a| a.as_array().unwrap().iter().map(s))
                .collect();
            assert_eq!(probe.answer, strings[0]);
            assert!(probe.accepted().all(|a| strings.iter().any(|s| s == a)));
        }
    }
}

#[test]
fn wikibio_first_records() {
    for rel in [
        "knowedit/WikiBio/wikibio-train-all.json",
        "knowedit/WikiBio/wikibio-test-all.json",
    ] {
        let (raw, req) = first(rel);
        assert_eq!(req.subject, s(&raw["concept"]));
        assert_eq!(req.prompt, s(&raw["text"]));
        assert_eq!(req.target_new, s(&raw["labels"]));
        assert!(req.ground_truth.is_empty() && req.portability.is_empty());
        assert_eq!(
            loaded_groups(&req.locality),
            knowedit_groups(&raw["locality"])
        );
    }
}

#[test]
fn counterfact_first_records() {
    for rel in [
        "counterfact/counterfact-edit.json",
        "counterfact/counterfact-train.json",
        "counterfact/counterfact-val.json",
    ] {
        let (raw, req) = first(rel);
        assert_eq!(req.case_id, raw["case_id"].to_string());
        assert_eq!(req.prompt, s(&raw["prompt"]));
        assert_eq!(req.subject, s(&raw["subject"]));
        assert_eq!(req.target_new, s(&raw["target_new"]));
        assert_eq!(req.ground_truth, vec![s(&raw["ground_truth"])]);
        assert_eq!(req.rephrase, vec![s(&raw["rephrase_prompt"])]);
        assert_eq!(
            req.locality["neighborhood"],
            vec![Probe::new(
                s(&raw["locality_prompt"]),
                s(&raw["locality_ground_truth"])
            )]
        );
    }
}

#[test]
fn counterfact_rome_first_record() {
    let (raw, req) = first("counterfact/counterfact_rome_format.dev.json");
    let rw = &raw["requested_rewrite"];
    let subject = s(&rw["subject"]);
    assert_eq!(req.case_id, raw["case_id"].to_string());
    assert_eq!(req.prompt, s(&rw["prompt"]).replace("{}", &subject));
    assert_eq!(req.subject, subject);
    assert_eq!(req.target_new, s(&rw["target_new"]["str"]));
    assert_eq!(req.ground_truth, vec![s(&rw["target_true"]["str"])]);
    let strings = |k: &str| -> Vec<String> { raw[k].as_array().unwrap().iter().map(s).collect() };
    assert_eq!(req.rephrase, strings("paraphrase_prompts"));
    assert_eq!(req.generation_prompts, strings("generation_prompts"));
    let probes = |prompts: Vec<String>, answer: &Value| -> Vec<Probe> {
        prompts
            .into_iter()
            .map(|p| Probe::new(p, s(answer)))
            .collect()
    };
    assert_eq!(
        req.locality["neighborhood"],
        probes(strings("neighborhood_prompts"), &rw["target_true"]["str"])
    );
    assert_eq!(
        req.locality["attribute"],
        probes(strings("attribute_prompts"), &rw["target_new"]["str"])
    );
}

// ---- property test: mutations of real records never panic a loader ----

/// Real records of every format: the first `n` of one file each.
fn seeds(n: usize) -> Vec<(Format, Vec<Value>)> {
    [
        (
            "zsre/zsre_mend_eval_portability_gpt4.dev.json",
            Format::Zsre,
        ),
        ("knowedit/ZsRE/ZsRE-test-all.dev.json", Format::KnowEdit),
        ("knowedit/wiki_recent/recent_train.json", Format::KnowEdit),
        (
            "knowedit/wiki_counterfact/test_cf.reconstructed.json",
            Format::KnowEdit,
        ),
        ("knowedit/WikiBio/wikibio-test-all.json", Format::KnowEdit),
        ("counterfact/counterfact-edit.json", Format::CounterFact),
        (
            "counterfact/counterfact_rome_format.dev.json",
            Format::CounterFactRome,
        ),
    ]
    .into_iter()
    .map(|(rel, f)| {
        let all = json(data(rel));
        (f, all.as_array().unwrap()[..n].to_vec())
    })
    .collect()
}

fn pick(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// JSON pointers of every node under `v` (the root excluded).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    let children: Vec<(String, &Value)> = match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, c)| (k.replace('~', "~0").replace('/', "~1"), c))
            .collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, c)| (i.to_string(), c))
            .collect(),
        _ => Vec::new(),
    };
    for (k, c) in children {
        let p = format!("{at}/{k}");
        out.push(p.clone());
        pointers(c, p, out);
    }
}

/// One structural mutation somewhere in `doc`: delete a field or element, change a type,
/// wrap or nest, or put a copy of another node in its place.
fn mutate_value(doc: &mut Value, rng: &mut Rng) {
    let mut ptrs = Vec::new();
    pointers(doc, String::new(), &mut ptrs);
    if ptrs.is_empty() {
        return;
    }
    let p = ptrs[pick(rng, ptrs.len())].clone();
    let other = doc
        .pointer(&ptrs[pick(rng, ptrs.len())])
        .cloned()
        .unwrap_or(Value::Null);
    let op = pick(rng, 14);
    if op == 0 {
        let (parent, key) = p.rsplit_once('/').unwrap();
        match doc.pointer_mut(parent) {
            Some(Value::Object(m)) => {
                m.remove(&key.replace("~1", "/").replace("~0", "~"));
            }
            Some(Value::Array(a)) => {
                let i: usize = key.parse().unwrap();
                a.remove(i);
            }
            _ => {}
        }
        return;
    }
    let Some(node) = doc.pointer_mut(&p) else {
        return;
    };
    let old = node.take();
    *node = match op {
        1 => Value::Null,
        2 => json!(42),
        3 => json!(true),
        4 => json!(""),
        5 => json!("garbage {} {} \u{0} ü"),
        6 => json!([]),
        7 => json!({}),
        8 => json!([old]),
        9 => json!([[old]]),
        10 => json!([[[]]]),
        11 => match old {
            Value::String(s) => {
                let cut = s
                    .char_indices()
                    .map(|(i, _)| i)
                    .nth(pick(rng, 4))
                    .unwrap_or(0);
                Value::String(s[..cut].to_string())
            }
            v => json!({"prompt": v, "ground_truth": [[7]]}),
        },
        12 => json!({"prompt": 1, "ground_truth": [["a"], 2], "str": {}}),
        _ => other,
    };
}

/// One textual mutation: truncate, insert garbage, delete a span, or flip a byte.
fn mutate_text(text: &mut Vec<u8>, rng: &mut Rng) {
    let at = pick(rng, text.len() + 1);
    match pick(rng, 4) {
        0 => text.truncate(at),
        1 => {
            const JUNK: [&[u8]; 6] = [b"}", b"]]", b"{\"a\":", b"\xff\xfe", b",,", b"\"\\u12"];
            let junk = JUNK[pick(rng, JUNK.len())];
            text.splice(at..at, junk.iter().copied());
        }
        2 => {
            let end = (at + pick(rng, 40)).min(text.len());
            text.drain(at..end);
        }
        _ => {
            if let Some(b) = text.get_mut(at) {
                *b = b"{}[]\":,0an \n"[pick(rng, 12)];
            }
        }
    }
}

/// Load `bytes` every way; never a panic, and when the array parses, with `skip_invalid`
/// every record is either loaded or skipped.
fn check(bytes: &[u8], format: Format, label: &str) {
    let path = Path::new("fuzz.json");
    let records = serde_json::from_slice::<Vec<Value>>(bytes)
        .ok()
        .map(|v| v.len());
    for asked in [Format::Auto, format] {
        for skip in [false, true] {
            let got = std::panic::catch_unwind(|| load_from_slice(bytes, path, asked, &opts(skip)))
                .unwrap_or_else(|_| {
                    panic!("{label}: panicked on:\n{}", String::from_utf8_lossy(bytes))
                });
            let (
                Some(n),
                true,
                Ok(Loaded {
                    requests, skipped, ..
                }),
            ) = (records, skip, &got)
            else {
                continue;
            };
            assert_eq!(requests.len() + skipped.len(), n, "{label}");
        }
    }
    // An explicit format with skip_invalid fails only when the text is not records.
    if records.is_some() && format != Format::Auto {
        let got = load_from_slice(bytes, path, format, &opts(true));
        assert!(got.is_ok(), "{label}: {got:?}");
    }
}

#[test]
fn mutated_records_never_panic_and_every_record_is_accounted_for() {
    let start = Instant::now();
    let mut rng = Rng::new(20260721);
    let mut runs = 0;
    for (format, records) in seeds(4) {
        for round in 0..300 {
            let mut doc = Value::Array(records.clone());
            for _ in 0..1 + pick(&mut rng, 4) {
                mutate_value(&mut doc, &mut rng);
            }
            let mut text = serde_json::to_vec(&doc).unwrap();
            check(&text, format, &format!("{format} value round {round}"));
            // The same, as JSON Lines, when it still is a list of records.
            if let Value::Array(items) = &doc {
                let lines: Vec<String> = items.iter().map(|v| v.to_string()).collect();
                check(lines.join("\n").as_bytes(), format, "jsonl");
            }
            for _ in 0..1 + pick(&mut rng, 3) {
                mutate_text(&mut text, &mut rng);
            }
            check(&text, format, &format!("{format} text round {round}"));
            runs += 3;
        }
    }
    // Pathological shapes.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for text in [
        deep.as_str(),
        "[[[[]]]]",
        "[null]",
        "[{}]",
        "[\"{}\"]",
        "{}",
        "\u{feff}",
    ] {
        for format in Format::ALL {
            check(text.as_bytes(), format, text);
        }
    }
    eprintln!("{runs} mutated files in {:?}", start.elapsed());
}

#[test]
fn files_stream_one_after_another_under_one_limit_and_must_share_a_format() {
    let dev = data("zsre/zsre_mend_eval_portability_gpt4.dev.json");
    let train = data("zsre/zsre_mend_train-1k.json");
    let opts = LoadOptions {
        skip_invalid: true,
        limit: Some(1000),
    };
    let all = kedit::data::load_all(&[dev.clone(), train.clone()], Format::Auto, &opts).unwrap();
    assert_eq!(all.requests.len(), 1000);
    // The lifelong stream: the 433 dev records, then train records up to 568 (534 is bad).
    let d = load(&dev, Format::Auto, &LoadOptions::default()).unwrap();
    assert_eq!(all.requests[432], d.requests[432]);
    let t = load(&train, Format::Auto, &opts).unwrap();
    assert_eq!(all.requests[433], t.requests[0]);
    assert_eq!(all.requests[999], t.requests[566]);
    assert_eq!(all.skipped.len(), 1);
    assert_eq!(all.skipped[0].0, 433 + 534, "numbered in the stream");
    assert!(all.skipped[0]
        .1
        .to_string()
        .contains("zsre_mend_train-1k.json"));
    // Without skipping, the bad record stops the load and names its file.
    let err = kedit::data::load_all(
        &[dev.clone(), train],
        Format::Auto,
        &LoadOptions {
            limit: Some(1000),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("zsre_mend_train-1k.json") && err.contains("534"),
        "{err}"
    );
    // A stream of two formats is refused.
    let cf = data("counterfact/counterfact-val.json");
    let err = kedit::data::load_all(&[dev, cf], Format::Auto, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("counterfact-val.json") && err.contains("one format"),
        "{err}"
    );
}
