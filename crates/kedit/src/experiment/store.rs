//! A run's records, in memory and (for the command line) in a run directory:
//!
//! - `run.json`: the run's configuration, with fingerprints of the model's weights, the data
//!   file's contents and the hyper-parameters; a rerun must match it (resume) or is refused,
//!   naming what changed;
//! - `pre.jsonl`: one line per case, the pre-edit metrics (computed once, cached);
//! - `cases.jsonl`: one line per case once it is edited and evaluated ([`CaseRecord`]);
//! - `after_all.jsonl`: sequential mode, each case evaluated after all edits;
//! - `edits/<index>.safetensors`: sequential mode, each applied edit, so a resumed run can
//!   rebuild the accumulated model without recomputing them; of edits that hold the whole
//!   state at their place (a codebook, side memories) only the newest is kept, so a run
//!   directory small enough to carry to another machine resumes there.
//!
//! Lines are appended and flushed one at a time; a torn last line (an interrupted write)
//! is ignored on reading. The directory is created with the first record, so that a
//! configuration refused before any work leaves nothing behind.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::edit::Edit;
use crate::error::{Error, Result};
use crate::evaluate::metrics::Metrics;

/// What one method call cost, and whether its edit was refused.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EditOutcome {
    /// Wall time of `compute` + `apply` for the whole call.
    pub seconds: f64,
    /// Requests edited by this call (1 except in batch mode).
    pub batch_size: usize,
    /// Peak resident memory during the call (Linux only).
    pub peak_rss_bytes: Option<u64>,
    /// Wall time of the post-edit evaluation of this call's cases.
    pub eval_seconds: f64,
    /// The method's own phase timings.
    #[serde(default)]
    pub phases: Vec<(String, f64)>,
    #[serde(default)]
    pub notes: Vec<(String, String)>,
    /// Why the edit was refused (the model was left unedited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One line of `cases.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseRecord {
    pub index: usize,
    pub case_id: String,
    pub prompt: String,
    pub target_new: String,
    pub pre: Metrics,
    /// After this case's edit (single: alone; sequential: with the earlier ones; batch:
    /// with its batch). `None` when the edit was refused.
    pub post: Option<Metrics>,
    pub edit: EditOutcome,
    /// Case ids of the other requests of this case's call about its subject with a
    /// different target (they compete for one key; see `request::same_subject_other_target`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub same_subject: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct IndexedMetrics {
    index: usize,
    case_id: String,
    metrics: Metrics,
}

pub struct RunStore {
    dir: Option<PathBuf>,
    /// `run.json`, until the directory is created by the first record.
    pending_header: Option<Value>,
    pub pre: BTreeMap<usize, Metrics>,
    pub cases: BTreeMap<usize, CaseRecord>,
    pub after_all: BTreeMap<usize, Metrics>,
    /// Each recorded case's id (from whichever record named it).
    pub case_ids: BTreeMap<usize, String>,
}

/// The configuration keys pre-edit metrics depend on: two runs that agree on them computed
/// the same pre-edit metrics for the same case index.
const PRE_EDIT_KEYS: &[&str] = &[
    "kedit_version",
    "model_fingerprint",
    "data_sha256",
    "format",
    "skip_invalid",
    "seed",
    "fluency",
    "free_generation",
    "chat",
];
const HEADER: &str = "run.json";
const PRE: &str = "pre.jsonl";
const CASES: &str = "cases.jsonl";
const AFTER_ALL: &str = "after_all.jsonl";

impl RunStore {
    /// A store that keeps everything in memory (library use, tests).
    pub fn in_memory() -> Self {
        RunStore {
            dir: None,
            pending_header: None,
            pre: BTreeMap::new(),
            cases: BTreeMap::new(),
            after_all: BTreeMap::new(),
            case_ids: BTreeMap::new(),
        }
    }

    /// Opens a run directory for the configuration `header`, to resume it, or prepares a
    /// new one (created with its first record). An existing run of a different
    /// configuration is refused, naming what differs; one that never recorded anything is
    /// simply taken over.
    pub fn open(dir: &Path, header: &Value) -> Result<Self> {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::invalid(format!(
                "{}: is a file; the run directory (--out) must be a directory",
                dir.display()
            )));
        }
        crate::fsio::check_writable_dir(dir)?;
        let path = dir.join(HEADER);
        let mut pending_header = Some(header.clone());
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let old: Value = serde_json::from_str(&text)
                .map_err(|e| Error::model(&path, format!("not valid JSON: {e}")))?;
            let differ = differing_keys(&old, header);
            if differ.is_empty() {
                pending_header = None;
            } else if has_records(dir) {
                return Err(Error::config(format!(
                    "{} holds a run with another configuration, so it cannot be resumed: {}; \
                     use another --out directory (or remove this one to start again)",
                    dir.display(),
                    describe_changes(&old, header, &differ)
                )));
            }
        }
        let mut store = RunStore {
            dir: Some(dir.to_path_buf()),
            pending_header,
            ..RunStore::in_memory()
        };
        for m in read_lines::<IndexedMetrics>(&dir.join(PRE))? {
            store.case_ids.insert(m.index, m.case_id);
            store.pre.insert(m.index, m.metrics);
        }
        for rec in read_lines::<CaseRecord>(&dir.join(CASES))? {
            store
                .pre
                .entry(rec.index)
                .or_insert_with(|| rec.pre.clone());
            store.case_ids.insert(rec.index, rec.case_id.clone());
            store.cases.insert(rec.index, rec);
        }
        for m in read_lines::<IndexedMetrics>(&dir.join(AFTER_ALL))? {
            store.case_ids.insert(m.index, m.case_id);
            store.after_all.insert(m.index, m.metrics);
        }
        Ok(store)
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Takes from the run directory `from` the pre-edit metrics this run lacks, for cases
    /// whose ids are `case_ids` (by index), once `from`'s configuration is found to agree
    /// with `header` on everything pre-edit metrics depend on (`PRE_EDIT_KEYS`: not the
    /// method, its settings or the mode). Returns how many were taken.
    pub fn import_pre(
        &mut self,
        from: &Path,
        header: &Value,
        case_ids: &[String],
    ) -> Result<usize> {
        let path = from.join(HEADER);
        if !path.is_file() {
            return Err(Error::config(format!(
                "{}: not a run directory (no {HEADER}), so no pre-edit metrics can be taken from it",
                from.display()
            )));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let theirs: Value = serde_json::from_str(&text)
            .map_err(|e| Error::model(&path, format!("not valid JSON: {e}")))?;
        let differ: Vec<String> = PRE_EDIT_KEYS
            .iter()
            .filter(|k| theirs.get(**k) != header.get(**k))
            .map(|k| k.to_string())
            .collect();
        if !differ.is_empty() {
            return Err(Error::config(format!(
                "{}'s pre-edit metrics are not this run's: {}",
                from.display(),
                describe_changes(&theirs, header, &differ)
            )));
        }
        let pre_path = from.join(PRE);
        // Every line checked before any is taken, so that a refusal writes nothing here.
        let mut todo = Vec::new();
        for (line, m) in read_lines::<IndexedMetrics>(&pre_path)?
            .into_iter()
            .enumerate()
        {
            let Some(id) = case_ids.get(m.index) else {
                continue;
            };
            if *id != m.case_id {
                return Err(Error::record(
                    &pre_path,
                    line,
                    "case_id",
                    format!("case {} is `{}` there and `{id}` here", m.index, m.case_id),
                ));
            }
            if !self.pre.contains_key(&m.index) {
                todo.push(m);
            }
        }
        let taken = todo.len();
        for m in todo {
            self.put_pre(m.index, &m.case_id, m.metrics)?;
        }
        Ok(taken)
    }

    pub fn put_pre(&mut self, index: usize, case_id: &str, metrics: Metrics) -> Result<()> {
        self.append(
            PRE,
            &IndexedMetrics {
                index,
                case_id: case_id.to_string(),
                metrics: metrics.clone(),
            },
        )?;
        self.pre.insert(index, metrics);
        self.case_ids.insert(index, case_id.to_string());
        Ok(())
    }

    pub fn put_case(&mut self, rec: CaseRecord) -> Result<()> {
        self.append(CASES, &rec)?;
        self.case_ids.insert(rec.index, rec.case_id.clone());
        self.cases.insert(rec.index, rec);
        Ok(())
    }

    pub fn put_after_all(&mut self, index: usize, case_id: &str, metrics: Metrics) -> Result<()> {
        self.append(
            AFTER_ALL,
            &IndexedMetrics {
                index,
                case_id: case_id.to_string(),
                metrics: metrics.clone(),
            },
        )?;
        self.after_all.insert(index, metrics);
        self.case_ids.insert(index, case_id.to_string());
        Ok(())
    }

    /// Keeps an applied edit for a later resume (run directories only).
    pub fn save_edit(&mut self, index: usize, edit: &Edit) -> Result<()> {
        self.ensure_dir()?;
        let Some(dir) = &self.dir else { return Ok(()) };
        let edits = dir.join("edits");
        std::fs::create_dir_all(&edits).map_err(|e| Error::io(&edits, e))?;
        edit.save(&edits.join(format!("{index}.safetensors")))
    }

    /// Drops a saved edit that a later one holds (nothing when there is none).
    pub fn remove_edit(&self, index: usize) -> Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let path = dir.join("edits").join(format!("{index}.safetensors"));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }

    pub fn load_edit(&self, index: usize) -> Result<Option<Edit>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = dir.join("edits").join(format!("{index}.safetensors"));
        if path.exists() {
            Edit::load(&path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Creates the run directory and its `run.json` (once, with the first record).
    fn ensure_dir(&mut self) -> Result<()> {
        let (Some(dir), Some(header)) = (&self.dir, &self.pending_header) else {
            return Ok(());
        };
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let text = serde_json::to_string_pretty(header).expect("JSON values serialise");
        crate::fsio::write_atomic(&dir.join(HEADER), text.as_bytes())?;
        self.pending_header = None;
        Ok(())
    }

    fn append(&mut self, file: &str, value: &impl Serialize) -> Result<()> {
        self.ensure_dir()?;
        let Some(dir) = &self.dir else { return Ok(()) };
        let path = dir.join(file);
        let mut line = serde_json::to_string(value).expect("records serialise");
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        f.write_all(line.as_bytes())
            .map_err(|e| Error::io(&path, e))?;
        f.flush().map_err(|e| Error::io(&path, e))
    }
}

/// Records of a JSONL file. A torn last line (no newline: an interrupted write) is cut
/// from the file, so that later appends start on a line of their own; a bad complete line
/// is an error.
fn read_lines<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if !text.is_empty() && !text.ends_with('\n') {
        text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
        crate::fsio::write_atomic(path, text.as_bytes())?;
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| Error::record(path, i, "(line)", e.to_string()))
        })
        .collect()
}

/// Whether a run directory holds any record (a run that never got that far may be taken
/// over by another configuration: there is nothing of it to keep).
fn has_records(dir: &Path) -> bool {
    [PRE, CASES, AFTER_ALL]
        .iter()
        .any(|f| std::fs::metadata(dir.join(f)).is_ok_and(|m| m.len() > 0))
        || dir.join("edits").is_dir()
}

/// What changed between two configurations, in words: fingerprints named for what they
/// fingerprint, short values shown before and after.
fn describe_changes(old: &Value, new: &Value, keys: &[String]) -> String {
    let show = |v: Option<&Value>| -> String {
        match v {
            None => "(not recorded)".into(),
            Some(v) => {
                let s = v.to_string();
                if s.chars().count() > 60 {
                    format!("{}…", s.chars().take(60).collect::<String>())
                } else {
                    s
                }
            }
        }
    };
    keys.iter()
        .map(|k| {
            let what = match k.as_str() {
                "model_fingerprint" => "the model's weights changed (model_fingerprint)".into(),
                "data_sha256" => "the data file's contents changed (data_sha256)".into(),
                "hparams" => "the hyper-parameters changed (hparams)".into(),
                other => format!("`{other}` changed"),
            };
            format!(
                "{what}: {} → {}",
                show(old.get(k.as_str())),
                show(new.get(k.as_str()))
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn differing_keys(old: &Value, new: &Value) -> Vec<String> {
    let (Some(a), Some(b)) = (old.as_object(), new.as_object()) else {
        return vec!["(whole header)".into()];
    };
    // The model's path may move with the run directory (another checkout or machine); its
    // weights' fingerprint says whether it is the same model.
    let fingerprint = "model_fingerprint";
    let same_weights = a.get(fingerprint).is_some() && a.get(fingerprint) == b.get(fingerprint);
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .filter(|k| !(same_weights && k.as_str() == "model"))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_reads_records_and_refuses_another_config() {
        let dir = std::env::temp_dir().join(format!("kedit-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let header = serde_json::json!({"method": "ft-m", "limit": 3});
        let mut store = RunStore::open(&dir, &header).unwrap();
        let pre = Metrics {
            rewrite_acc: vec![0.5],
            ..Default::default()
        };
        store.put_pre(0, "a", pre.clone()).unwrap();
        store
            .put_case(CaseRecord {
                index: 0,
                case_id: "a".into(),
                prompt: "p".into(),
                target_new: "t".into(),
                pre: pre.clone(),
                post: None,
                edit: EditOutcome::default(),
                same_subject: Vec::new(),
            })
            .unwrap();
        // A torn line at the end (an interrupted write) is ignored.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(CASES))
            .unwrap();
        f.write_all(b"{\"index\": 1, \"case_").unwrap();
        let again = RunStore::open(&dir, &header).unwrap();
        assert_eq!(again.pre[&0], pre);
        assert_eq!(again.cases.len(), 1);
        let err = RunStore::open(&dir, &serde_json::json!({"method": "ft-l", "limit": 3}))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("method"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_model_at_another_path_with_the_same_weights_resumes_and_other_weights_do_not() {
        let header = |path: &str, fingerprint: &str| serde_json::json!({"model": path, "model_fingerprint": fingerprint, "limit": 3});
        let here = header("/work/main/models/m.gguf", "9cb5");
        assert!(differing_keys(&here, &header("/ci/repo/models/m.gguf", "9cb5")).is_empty());
        assert_eq!(
            differing_keys(&here, &header("/ci/repo/models/m.gguf", "77aa")),
            ["model", "model_fingerprint"]
        );
    }

    #[test]
    fn a_run_is_created_with_its_first_record_and_a_changed_data_file_refused() {
        let dir = std::env::temp_dir().join(format!("kedit-store-lazy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bad = serde_json::json!({"batch_size": 0, "data_sha256": "aa"});
        drop(RunStore::open(&dir, &bad).unwrap());
        assert!(!dir.exists(), "opening alone creates nothing");
        // A run.json without records (left by an older build) is taken over.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(HEADER), bad.to_string()).unwrap();
        let good = serde_json::json!({"batch_size": 1, "data_sha256": "aa"});
        let mut store = RunStore::open(&dir, &good).unwrap();
        store.put_pre(0, "a", Metrics::default()).unwrap();
        let text = std::fs::read_to_string(dir.join(HEADER)).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), good);
        let changed = serde_json::json!({"batch_size": 1, "data_sha256": "bb"});
        let err = RunStore::open(&dir, &changed).err().unwrap().to_string();
        assert!(err.contains("the data file's contents changed"), "{err}");
        assert!(err.contains("\"aa\" → \"bb\""), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
