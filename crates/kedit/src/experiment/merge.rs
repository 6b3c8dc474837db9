//! Joins the run directories of a run's shards (`--shard K/N`) into the one run directory
//! the unsharded run would have written: the same `run.json` (without the shard), every
//! case's records, and a `summary.json` whose scores equal the unsharded run's. Timings
//! are means over the merged records (wall time is never reproducible anyway).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::experiment::report::{build_summary, RunConfig, RunSummary};
use crate::experiment::shard::Shard;
use crate::experiment::store::RunStore;

/// One shard's finished run directory.
struct ShardRun {
    dir: PathBuf,
    config: RunConfig,
    shard: Shard,
    store: RunStore,
    identical: bool,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::model(path, format!("not valid JSON: {e}")))
}

fn open_shard(dir: &Path) -> Result<ShardRun> {
    let header_path = dir.join("run.json");
    if !header_path.exists() {
        return Err(Error::config(format!(
            "{}: no run.json: not a run directory",
            dir.display()
        )));
    }
    let header = read_json(&header_path)?;
    let config: RunConfig = serde_json::from_value(header.clone())
        .map_err(|e| Error::model(&header_path, format!("not a kedit run header: {e}")))?;
    let Some(shard) = config.shard else {
        return Err(Error::config(format!(
            "{}: this run is not a shard (its run.json has no `shard`); merge the directories \
             of `kedit eval --shard K/N` runs",
            dir.display()
        )));
    };
    let summary_path = dir.join("summary.json");
    if !summary_path.exists() {
        return Err(Error::config(format!(
            "{}: no summary.json: shard {shard} has not finished; rerun its command to resume it",
            dir.display()
        )));
    }
    let summary: RunSummary = serde_json::from_value(read_json(&summary_path)?)
        .map_err(|e| Error::model(&summary_path, format!("not a kedit summary: {e}")))?;
    let store = RunStore::open(dir, &header)?;
    Ok(ShardRun {
        dir: dir.to_path_buf(),
        config,
        shard,
        store,
        identical: summary.weights_identical_after_run,
    })
}

/// The configuration without its shard, as JSON (what every shard must agree on).
fn unsharded(config: &RunConfig) -> Result<Value> {
    serde_json::to_value(RunConfig {
        shard: None,
        ..config.clone()
    })
    .map_err(|e| Error::invalid(e.to_string()))
}

/// Checks that `runs` are the N shards of one run, each complete, and returns that run's
/// configuration.
fn check_shards(runs: &[ShardRun]) -> Result<RunConfig> {
    let first = &runs[0];
    let count = first.shard.count;
    let expected = unsharded(&first.config)?;
    let mut seen = vec![None::<&Path>; count];
    for run in runs {
        if run.shard.count != count {
            return Err(Error::config(format!(
                "{} is shard {} but {} is shard {}: shards of one run share N",
                run.dir.display(),
                run.shard,
                first.dir.display(),
                first.shard
            )));
        }
        if let Some(other) = seen[run.shard.index].replace(&run.dir) {
            return Err(Error::config(format!(
                "{} and {} are both shard {}",
                other.display(),
                run.dir.display(),
                run.shard
            )));
        }
        let config = unsharded(&run.config)?;
        if config != expected {
            let differ: Vec<&String> = expected
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| config.get(k.as_str()) != Some(v))
                .map(|(k, _)| k)
                .collect();
            return Err(Error::config(format!(
                "{} and {} are not shards of one run: their run.json differ in {}",
                first.dir.display(),
                run.dir.display(),
                differ
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let (mode, batch) = (run.config.mode, run.config.batch_size);
        for &i in run.store.pre.keys().chain(run.store.cases.keys()) {
            if !run.shard.owns(i, mode, batch) {
                return Err(Error::config(format!(
                    "{}: case {i} is not shard {}'s",
                    run.dir.display(),
                    run.shard
                )));
            }
        }
        if run.config.method.starts_with("none") {
            continue;
        }
        if let Some(i) = run
            .store
            .pre
            .keys()
            .find(|i| !run.store.cases.contains_key(i))
        {
            return Err(Error::config(format!(
                "{}: case {i} has pre-edit metrics but no edit record: the shard has not \
                 finished; rerun its command to resume it",
                run.dir.display()
            )));
        }
    }
    if let Some(k) = seen.iter().position(Option::is_none) {
        return Err(Error::config(format!(
            "shard {k}/{count} is missing: {count} shard directories are needed"
        )));
    }
    Ok(RunConfig {
        shard: None,
        ..first.config.clone()
    })
}

/// Merges the shard run directories `dirs` into `out` (new, or empty) and returns the
/// merged summary (also written to `out/summary.json`).
pub fn merge_runs(dirs: &[PathBuf], out: &Path) -> Result<RunSummary> {
    if dirs.is_empty() {
        return Err(Error::config("no shard directory to merge"));
    }
    let runs = dirs
        .iter()
        .map(|d| open_shard(d))
        .collect::<Result<Vec<_>>>()?;
    let config = check_shards(&runs)?;
    let total: usize = runs.iter().map(|r| r.store.pre.len()).sum();
    if let Some(gap) = (0..total).find(|i| !runs.iter().any(|r| r.store.pre.contains_key(i))) {
        return Err(Error::config(format!(
            "no shard holds case {gap} of the {total} merged: a shard has not finished"
        )));
    }
    if out.join("run.json").exists() {
        return Err(Error::config(format!(
            "{}: already holds a run; merge into a new directory",
            out.display()
        )));
    }
    let header = serde_json::to_value(&config).map_err(|e| Error::invalid(e.to_string()))?;
    let mut merged = RunStore::open(out, &header)?;
    for i in 0..total {
        let run = runs
            .iter()
            .find(|r| r.store.pre.contains_key(&i))
            .expect("every index was found above");
        let id = run.store.case_ids.get(&i).cloned().unwrap_or_default();
        merged.put_pre(i, &id, run.store.pre[&i].clone())?;
        if let Some(rec) = run.store.cases.get(&i) {
            merged.put_case(rec.clone())?;
        }
        if let Some(m) = run.store.after_all.get(&i) {
            merged.put_after_all(i, &id, m.clone())?;
        }
    }
    let identical = runs.iter().all(|r| r.identical);
    let summary = build_summary(&merged, &config, identical);
    let text = serde_json::to_string_pretty(&summary).map_err(|e| Error::invalid(e.to_string()))?;
    crate::fsio::write_atomic(&out.join("summary.json"), text.as_bytes())?;
    Ok(summary)
}
