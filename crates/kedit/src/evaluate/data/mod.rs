//! STAND-IN for the dataset loaders being written on the `data` branch: the same API
//! (`load(path, Format, &LoadOptions) -> Loaded`), with only the two formats the
//! evaluation harness and its tests need (MEND/EasyEdit ZsRE and KnowEdit). When the
//! `data` branch is merged, its module replaces this file whole.
//!
//! Mappings follow EasyEdit (`ZsreDataset`, `KnowEditDataset` and
//! examples/run_knowedit_llama2.py): an answer given as (nested) lists is its first
//! string, the rest become aliases; probes with a blank answer are dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::evaluate::{EditRequest, Probe};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Auto,
    Zsre,
    KnowEdit,
    CounterFact,
    CounterFactRome,
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => Format::Auto,
            "zsre" => Format::Zsre,
            "knowedit" => Format::KnowEdit,
            "counterfact" => Format::CounterFact,
            "counterfact-rome" => Format::CounterFactRome,
            other => {
                return Err(Error::config(format!(
                    "unknown data format `{other}`; known: auto, zsre, knowedit, counterfact, counterfact-rome"
                )))
            }
        })
    }
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Skip malformed records (counted in `Loaded::skipped`) instead of failing.
    pub skip_invalid: bool,
    /// Keep only the first `limit` records.
    pub limit: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct Loaded {
    pub requests: Vec<EditRequest>,
    /// `(record index, why)` of each skipped record.
    pub skipped: Vec<(usize, String)>,
    pub format: Format,
}

pub fn load(path: &Path, format: Format, opts: &LoadOptions) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::model(path, format!("not valid JSON: {e}")))?;
    let records = json
        .as_array()
        .ok_or_else(|| Error::model(path, "expected a JSON array of records"))?;
    let format = match format {
        Format::Auto => detect(path, records.first())?,
        f => f,
    };
    let parse: fn(&Value) -> std::result::Result<EditRequest, (String, String)> = match format {
        Format::Zsre => zsre,
        Format::KnowEdit => knowedit,
        other => {
            return Err(Error::config(format!(
                "{}: format {other:?} is not in this build's stand-in loader",
                path.display()
            )))
        }
    };
    let mut requests = Vec::new();
    let mut skipped = Vec::new();
    for (i, rec) in records.iter().enumerate() {
        if opts.limit.is_some_and(|n| requests.len() >= n) {
            break;
        }
        match parse(rec) {
            Ok(mut r) => {
                r.case_id = i.to_string();
                requests.push(r);
            }
            Err((field, msg)) if opts.skip_invalid => skipped.push((i, format!("{field}: {msg}"))),
            Err((field, msg)) => return Err(Error::record(PathBuf::from(path), i, field, msg)),
        }
    }
    Ok(Loaded {
        requests,
        skipped,
        format,
    })
}

fn detect(path: &Path, first: Option<&Value>) -> Result<Format> {
    let rec = first.ok_or_else(|| Error::model(path, "the file has no records"))?;
    if rec.get("src").is_some() && rec.get("alt").is_some() {
        Ok(Format::Zsre)
    } else if rec.get("target_new").is_some() && rec.get("prompt").is_some() {
        Ok(Format::KnowEdit)
    } else {
        Err(Error::model(
            path,
            "cannot tell the format from the first record; pass --format",
        ))
    }
}

type Field = std::result::Result<String, (String, String)>;

fn string(rec: &Value, field: &str) -> Field {
    match rec.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err((field.into(), "is empty".into())),
        Some(_) => Err((field.into(), "is not a string".into())),
        None => Err((field.into(), "is missing".into())),
    }
}

/// Every string of a string / list / nested list, in order.
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

fn probe(prompt: &str, answers: &Value) -> Option<Probe> {
    let mut all = strings(answers)
        .into_iter()
        .filter(|a| !a.trim().is_empty());
    let answer = all.next()?;
    Some(Probe {
        prompt: prompt.to_string(),
        answer,
        aliases: all.collect(),
    })
}

fn zsre(rec: &Value) -> std::result::Result<EditRequest, (String, String)> {
    let mut r = EditRequest {
        prompt: string(rec, "src")?,
        subject: string(rec, "subject")?,
        target_new: string(rec, "alt")?,
        ground_truth: rec.get("answers").map(strings).unwrap_or_default(),
        ..Default::default()
    };
    if let Ok(p) = string(rec, "rephrase") {
        r.rephrase.push(p);
    }
    if let (Ok(p), Some(a)) = (string(rec, "loc"), rec.get("loc_ans")) {
        r.locality
            .insert("neighborhood".into(), probe(&p, a).into_iter().collect());
    }
    if let Some(port) = rec.get("portability") {
        if let (Ok(p), Some(a)) = (string(port, "New Question"), port.get("New Answer")) {
            r.portability
                .insert("one_hop".into(), probe(&p, a).into_iter().collect());
        }
    }
    Ok(r)
}

fn knowedit(rec: &Value) -> std::result::Result<EditRequest, (String, String)> {
    let mut r = EditRequest {
        prompt: string(rec, "prompt")?,
        subject: string(rec, "subject")?,
        target_new: string(rec, "target_new")?,
        ground_truth: rec.get("ground_truth").map(strings).unwrap_or_default(),
        ..Default::default()
    };
    if let Some(v) = rec.get("rephrase_prompt") {
        r.rephrase = strings(v)
            .into_iter()
            .filter(|s| !s.trim().is_empty())
            .collect();
    }
    r.locality = groups(rec, "locality")?;
    r.portability = groups(rec, "portability")?;
    Ok(r)
}

/// `{group: [{prompt, ground_truth}, …]}` (a single object is accepted for a list).
fn groups(
    rec: &Value,
    field: &str,
) -> std::result::Result<BTreeMap<String, Vec<Probe>>, (String, String)> {
    let mut out = BTreeMap::new();
    let Some(Value::Object(map)) = rec.get(field) else {
        return Ok(out);
    };
    for (group, items) in map {
        let items: Vec<&Value> = match items {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        let mut probes = Vec::new();
        for (k, item) in items.into_iter().enumerate() {
            let prompt = string(item, "prompt")
                .map_err(|(f, m)| (format!("{field}.{group}[{k}].{f}"), m))?;
            if let Some(p) = item.get("ground_truth").and_then(|a| probe(&prompt, a)) {
                probes.push(p);
            }
        }
        if !probes.is_empty() {
            out.insert(group.clone(), probes);
        }
    }
    Ok(out)
}
