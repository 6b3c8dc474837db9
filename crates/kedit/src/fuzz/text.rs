//! Text formats: hyper-parameter files (YAML / JSON, every built-in method's shipped
//! file as a seed, loaded through the method registry) and dataset files (the first
//! records of real ZsRE, CounterFact and KnowEdit files as seeds).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::mutate::{self, below, chance};
use crate::data::{self, Format, LoadOptions};
use crate::error::{Error, Result};
use crate::methods::Registry;
use crate::model::Model;
use crate::rng::Rng;

/// Every built-in method with the texts of its shipped hyper-parameter files (`{}` for a
/// method that ships none).
pub fn hparams_seeds(registry: &Registry) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for m in registry.methods() {
        if m.shipped.is_empty() {
            out.push((m.name, "{}".to_string()));
        }
        for s in m.shipped {
            out.push((m.name, s.text.to_string()));
        }
    }
    out
}

/// One case: a mutated hyper-parameter file for one method, written to `dir` and loaded
/// for `model`.
pub fn hparams_case(
    rng: &mut Rng,
    registry: &Registry,
    seeds: &[(&'static str, String)],
    model: &Model,
    dir: &Path,
) -> Result<()> {
    let (method, text) = &seeds[below(rng, seeds.len())];
    let json = chance(rng, 0.2);
    let mut bytes = match serde_yaml_ng::from_str::<Value>(text) {
        Ok(mut v) if chance(rng, 0.8) => {
            mutate::json_many(rng, &mut v, 3);
            if json {
                serde_json::to_vec(&v).expect("JSON values serialise")
            } else {
                serde_yaml_ng::to_string(&v)
                    .map(String::into_bytes)
                    .unwrap_or_default()
            }
        }
        _ => text.clone().into_bytes(),
    };
    if chance(rng, 0.3) {
        for _ in 0..1 + below(rng, 3) {
            mutate::bytes(rng, &mut bytes);
        }
    }
    let path = dir.join(if json { "hparams.json" } else { "hparams.yaml" });
    std::fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
    // A method other than the file's own now and then: alg_name mismatches.
    let name = if chance(rng, 0.05) {
        let all = registry.methods();
        all[below(rng, all.len())].name
    } else {
        method
    };
    registry.load(name, Some(&path), model).map(|_| ())
}

/// The dataset files whose first records seed the dataset cases (those of them under
/// `data` that exist).
pub fn dataset_files(data: &Path) -> Vec<PathBuf> {
    [
        "zsre/zsre_mend_eval_portability_gpt4.dev.json",
        "zsre/zsre_mend_train-1k.json",
        "counterfact/counterfact-edit.json",
        "counterfact/counterfact_rome_format.dev.json",
        "knowedit/ZsRE/ZsRE-test-all.dev.json",
        "knowedit/wiki_recent/recent_train.json",
        "knowedit/wiki_counterfact/test_cf.reconstructed.json",
        "knowedit/WikiBio/wikibio-test-all.json",
        "known_1000/known_1000.json",
    ]
    .iter()
    .map(|f| data.join(f))
    .filter(|p| p.is_file())
    .collect()
}

/// The first `n` records of each file, as a JSON array each.
pub fn dataset_seeds(files: &[PathBuf], n: usize) -> Result<Vec<Value>> {
    files
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| Error::data(path, format!("invalid JSON: {e}")))?;
            let records = v.as_array().cloned().unwrap_or_default();
            Ok(Value::Array(records.into_iter().take(n).collect()))
        })
        .collect()
}

/// One case: a mutated dataset read in a random format.
pub fn dataset_case(rng: &mut Rng, seeds: &[Value]) -> Result<()> {
    let mut v = seeds[below(rng, seeds.len())].clone();
    if chance(rng, 0.85) {
        mutate::json_many(rng, &mut v, 4);
    }
    let mut bytes = if chance(rng, 0.2) {
        // JSON Lines.
        let mut out = Vec::new();
        for r in v.as_array().into_iter().flatten() {
            out.extend(serde_json::to_vec(r).expect("JSON values serialise"));
            out.push(b'\n');
        }
        out
    } else {
        serde_json::to_vec(&v).expect("JSON values serialise")
    };
    if chance(rng, 0.3) {
        for _ in 0..1 + below(rng, 3) {
            mutate::bytes(rng, &mut bytes);
        }
    }
    let format = Format::ALL[below(rng, Format::ALL.len())];
    let opts = LoadOptions {
        skip_invalid: chance(rng, 0.5),
        limit: chance(rng, 0.2).then(|| below(rng, 4)),
    };
    data::load_from_slice(&bytes, Path::new("fuzz.json"), format, &opts).map(|_| ())
}
