//! Dataset loaders: the published knowledge-editing benchmarks, each file exactly as it is
//! distributed, into [`EditRequest`]s.
//!
//! | [`Format`] | files | mapping |
//! |---|---|---|
//! | `zsre` | MEND/EasyEdit ZsRE (`src`, `alt`, `loc`, …) | [`zsre`] |
//! | `knowedit` | KnowEdit ZsRE, WikiData_recent, WikiData_counterfact, WikiBio | [`knowedit`] |
//! | `counterfact` | EasyEdit's CounterFact (`locality_prompt`, …) | [`counterfact`] |
//! | `counterfact-rome` | ROME's CounterFact (`requested_rewrite`, …) | [`counterfact_rome`] |
//!
//! Each format's module documents which EasyEdit (or ROME) code its mapping follows. Probe
//! groups are named as EasyEdit names them: ZsRE `neighborhood` / `one_hop`, CounterFact
//! `neighborhood` (ROME's format adds `attribute`), KnowEdit the file's own names
//! (`Relation_Specificity`, `Forgetfulness`, `Reasoning`, `Subject_Aliasing`,
//! `Logical_Generalization`, …).
//!
//! A file is a JSON array of records, or JSON Lines (one record a line). A malformed record
//! is an [`Error::Record`] naming the file, the record index and the field's path inside the
//! record (`portability.Reasoning[0].ground_truth`); with [`LoadOptions::skip_invalid`] such
//! records are set aside in [`Loaded::skipped`] instead. A file that cannot be read as
//! records at all (not JSON, truncated, not an array) is an [`Error::Data`]. No input makes
//! a loader panic.
//!
//! Every format checks that prompts and targets are non-blank strings and that the subject
//! occurs in the prompt (EasyEdit's `_prepare_requests` asserts it; locate-then-edit methods
//! need the subject's tokens).

pub mod counterfact;
pub mod counterfact_rome;
mod fields;
pub mod knowedit;
pub mod zsre;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;

use self::fields::{bad, Bad, Res, WHOLE_RECORD};
use crate::request::EditRequest;
use crate::{Error, Result};

/// A dataset format. [`Format::Auto`] tells it from the field names of the first record
/// (or, when that one is too broken to tell, of the first record that can).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Format {
    #[default]
    Auto,
    /// ZsRE in the MEND / EasyEdit format.
    Zsre,
    /// KnowEdit (ZsRE, WikiData_recent, WikiData_counterfact, WikiBio).
    KnowEdit,
    /// CounterFact in EasyEdit's format.
    CounterFact,
    /// CounterFact in ROME's format.
    CounterFactRome,
}

impl Format {
    /// Every format, by its CLI name.
    pub const ALL: [Format; 5] = [
        Format::Auto,
        Format::Zsre,
        Format::KnowEdit,
        Format::CounterFact,
        Format::CounterFactRome,
    ];

    /// The CLI name: `auto`, `zsre`, `knowedit`, `counterfact`, `counterfact-rome`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Zsre => "zsre",
            Format::KnowEdit => "knowedit",
            Format::CounterFact => "counterfact",
            Format::CounterFactRome => "counterfact-rome",
        }
    }

    /// The format a record's field names belong to, if any.
    fn detect(record: &Value) -> Option<Format> {
        let map = record.as_object()?;
        let has = |keys: &[&str]| keys.iter().any(|k| map.contains_key(*k));
        if has(&["requested_rewrite"]) {
            Some(Format::CounterFactRome)
        } else if has(&["src", "alt", "loc_ans"]) {
            Some(Format::Zsre)
        } else if has(&["locality_prompt", "locality_ground_truth"]) {
            Some(Format::CounterFact)
        } else if has(&["locality", "portability", "concept", "labels"])
            || (map.contains_key("prompt") && map.contains_key("target_new"))
        {
            Some(Format::KnowEdit)
        } else {
            None
        }
    }

    fn mapper(self) -> fn(&Value, usize) -> Res<EditRequest> {
        match self {
            Format::Zsre => zsre::request,
            // `Auto` is resolved before records are mapped; KnowEdit is the generic format.
            Format::KnowEdit | Format::Auto => knowedit::request,
            Format::CounterFact => counterfact::request,
            Format::CounterFactRome => counterfact_rome::request,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Format> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
                Error::config(format!(
                    "unknown dataset format `{s}`: expected one of {}",
                    names.join("|")
                ))
            })
    }
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Set malformed records aside in [`Loaded::skipped`] instead of failing on the first.
    pub skip_invalid: bool,
    /// Stop after this many requests (EasyEdit's `ds_size`: the first ones in the file).
    pub limit: Option<usize>,
}

#[derive(Debug)]
pub struct Loaded {
    pub requests: Vec<EditRequest>,
    /// Malformed records that were skipped: their index in the file and what is wrong.
    pub skipped: Vec<(usize, Error)>,
    /// The format the file was read as (never [`Format::Auto`]).
    pub format: Format,
}

/// Load the edit requests of a dataset file.
pub fn load(path: &Path, format: Format, opts: &LoadOptions) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    load_from_slice(&bytes, path, format, opts)
}

/// The requests of several files, one after the other (a stream that runs on from one
/// dataset into another, e.g. ZsRE dev then ZsRE train for lifelong editing). `limit`
/// counts over all files; every file must read as the same format. Skipped records are
/// numbered by their place in the whole stream; their errors name their own file.
pub fn load_all(paths: &[PathBuf], format: Format, opts: &LoadOptions) -> Result<Loaded> {
    let mut all: Option<Loaded> = None;
    for path in paths {
        let taken = all.as_ref().map_or(0, |a| a.requests.len());
        if opts.limit.is_some_and(|n| taken >= n) {
            break;
        }
        let offset = all
            .as_ref()
            .map_or(0, |a| a.requests.len() + a.skipped.len());
        let part = load(
            path,
            format,
            &LoadOptions {
                skip_invalid: opts.skip_invalid,
                limit: opts.limit.map(|n| n - taken),
            },
        )?;
        all = Some(match all {
            None => part,
            Some(mut a) => {
                if a.format != part.format {
                    return Err(Error::data(
                        path,
                        format!(
                            "reads as {} but the files before it as {}; a stream must be of one \
                             format",
                            part.format, a.format
                        ),
                    ));
                }
                a.requests.extend(part.requests);
                a.skipped
                    .extend(part.skipped.into_iter().map(|(i, e)| (offset + i, e)));
                a
            }
        });
    }
    all.ok_or_else(|| Error::config("no dataset file was given"))
}

/// Like [`load`], from the file's contents; `path` only names the source in errors.
pub fn load_from_slice(
    bytes: &[u8],
    path: &Path,
    format: Format,
    opts: &LoadOptions,
) -> Result<Loaded> {
    let records = parse_records(bytes).map_err(|message| Error::data(path, message))?;
    let format = match format {
        Format::Auto => detect(&records).map_err(|message| Error::data(path, message))?,
        f => f,
    };
    let to_request = format.mapper();
    let mut requests = Vec::with_capacity(opts.limit.unwrap_or(records.len()).min(records.len()));
    let mut skipped = Vec::new();
    for (index, record) in records.iter().enumerate() {
        if opts.limit.is_some_and(|n| requests.len() >= n) {
            break;
        }
        let result = match record {
            Ok(value) => to_request(value, index),
            Err(e) => Err(e.clone()),
        };
        match result {
            Ok(request) => requests.push(request),
            Err(Bad { field, message }) => {
                let error = Error::record(path, index, field, message);
                if !opts.skip_invalid {
                    return Err(error);
                }
                skipped.push((index, error));
            }
        }
    }
    Ok(Loaded {
        requests,
        skipped,
        format,
    })
}

/// The records of a JSON array, or of JSON Lines (where a line that does not parse is one
/// bad record, so that `skip_invalid` can pass over it).
fn parse_records(bytes: &[u8]) -> std::result::Result<Vec<Res<Value>>, String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let Some(first) = bytes.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Err("empty file: expected a JSON array of records".into());
    };
    match bytes[first] {
        b'[' => serde_json::from_slice::<Vec<Value>>(bytes)
            .map(|v| v.into_iter().map(Ok).collect())
            .map_err(|e| format!("not a valid JSON array of records: {e}")),
        b'{' => {
            let lines = bytes
                .split(|&b| b == b'\n')
                .enumerate()
                .filter(|(_, line)| line.iter().any(|b| !b.is_ascii_whitespace()));
            // A first line that is not a whole object is not JSON Lines (a pretty-printed
            // object, say): say so once instead of a bad record for every line.
            if let Some((_, line)) = lines.clone().next() {
                if !matches!(serde_json::from_slice::<Value>(line), Ok(Value::Object(_))) {
                    return Err(
                        "expected a JSON array of records, or JSON Lines (one record \
                                a line); found a JSON value that is neither"
                            .into(),
                    );
                }
            }
            Ok(lines
                .map(|(n, line)| {
                    serde_json::from_slice::<Value>(line).map_err(|e| {
                        bad(WHOLE_RECORD, format!("line {}: not valid JSON: {e}", n + 1))
                    })
                })
                .collect())
        }
        _ => Err(match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => format!(
                "expected a JSON array of records, found {}",
                fields::kind(&v)
            ),
            Err(e) => format!("not valid JSON: {e}"),
        }),
    }
}

/// The format of the first record whose fields identify one.
fn detect(records: &[Res<Value>]) -> std::result::Result<Format, String> {
    if let Some(f) = records
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .find_map(Format::detect)
    {
        return Ok(f);
    }
    let first = match records.iter().find_map(|r| r.as_ref().ok()) {
        None => return Err("no records to tell the format from".into()),
        Some(Value::Object(map)) => {
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            format!("fields {keys:?}")
        }
        Some(v) => fields::kind(v).to_string(),
    };
    Err(format!(
        "cannot tell the dataset format from the records (the first has {first}); name it: \
         zsre|knowedit|counterfact|counterfact-rome"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, format: Format, skip_invalid: bool) -> Result<Loaded> {
        let opts = LoadOptions {
            skip_invalid,
            limit: None,
        };
        load_from_slice(text.as_bytes(), Path::new("t.json"), format, &opts)
    }

    const CF: &str = r#"{"case_id": 1, "prompt": "A is in", "subject": "A", "target_new": "X",
        "ground_truth": "Y", "rephrase_prompt": "A lies in", "locality_prompt": "B is in",
        "locality_ground_truth": "Y"}"#;

    #[test]
    fn format_names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
            assert_eq!(f.to_string(), f.name());
        }
        let e = "rome".parse::<Format>().unwrap_err().to_string();
        assert!(
            e.contains("auto|zsre|knowedit|counterfact|counterfact-rome"),
            "{e}"
        );
    }

    #[test]
    fn auto_detects_each_format_from_its_fields() {
        let cases = [
            (r#"{"requested_rewrite": {}}"#, Format::CounterFactRome),
            (r#"{"src": "q", "alt": "a"}"#, Format::Zsre),
            (CF, Format::CounterFact),
            (
                r#"{"prompt": "p", "target_new": "t", "locality": {}}"#,
                Format::KnowEdit,
            ),
            (
                r#"{"text": "t", "labels": "l", "concept": "c"}"#,
                Format::KnowEdit,
            ),
            (r#"{"prompt": "p", "target_new": "t"}"#, Format::KnowEdit),
        ];
        for (record, want) in cases {
            let v: Value = serde_json::from_str(record).unwrap();
            assert_eq!(Format::detect(&v), Some(want), "{record}");
        }
        assert_eq!(Format::detect(&serde_json::json!({"x": 1})), None);
    }

    #[test]
    fn loads_an_array_and_json_lines_alike() {
        let array = load_str(&format!("[{CF}, {CF}]"), Format::Auto, false).unwrap();
        assert_eq!(array.format, Format::CounterFact);
        assert_eq!(array.requests.len(), 2);
        let one_line = CF.replace('\n', " ");
        let lines = format!("\u{feff}{one_line}\n\n{one_line}\n");
        let jsonl = load_str(&lines, Format::Auto, false).unwrap();
        assert_eq!(jsonl.requests, array.requests);
    }

    #[test]
    fn bad_records_fail_or_are_skipped_with_their_index_and_field() {
        let bad = CF.replace(r#""target_new": "X""#, r#""target_new": 3"#);
        let text = format!("[{CF}, {bad}, 7, {CF}]");
        let e = load_str(&text, Format::Auto, false).unwrap_err();
        match &e {
            Error::Record {
                path, index, field, ..
            } => {
                assert_eq!(
                    (path.to_str(), *index, field.as_str()),
                    (Some("t.json"), 1, "target_new")
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            e.to_string(),
            "t.json: record 1: field `target_new`: expected a string, found a number"
        );
        let loaded = load_str(&text, Format::Auto, true).unwrap();
        assert_eq!(loaded.requests.len(), 2);
        let idx: Vec<usize> = loaded.skipped.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, vec![1, 2]);
        assert!(loaded.skipped[1]
            .1
            .to_string()
            .contains("field `(record)`: expected an object"));
    }

    #[test]
    fn a_bad_json_line_is_one_bad_record() {
        let one_line = CF.replace('\n', " ");
        let text = format!("{one_line}\n{{\"prompt\": \n{one_line}");
        let e = load_str(&text, Format::CounterFact, false).unwrap_err();
        assert!(
            e.to_string()
                .contains("record 1: field `(record)`: line 2: not valid JSON"),
            "{e}"
        );
        let loaded = load_str(&text, Format::CounterFact, true).unwrap();
        assert_eq!((loaded.requests.len(), loaded.skipped.len()), (2, 1));
    }

    #[test]
    fn malformed_files_are_data_errors_naming_the_file() {
        for (text, message) in [
            ("", "empty file"),
            ("   \n", "empty file"),
            (
                &format!("[{CF}, {{\"prompt\""),
                "not a valid JSON array of records: EOF",
            ),
            ("{\n \"a\": 1\n}", "or JSON Lines"),
            (
                "\"records\"",
                "expected a JSON array of records, found a string",
            ),
            ("nonsense", "not valid JSON"),
            ("[]", "no records to tell the format from"),
            ("[{\"x\": 1}]", "cannot tell the dataset format"),
        ] {
            match load_str(text, Format::Auto, true) {
                Err(e @ Error::Data { .. }) => {
                    let s = e.to_string();
                    assert!(
                        s.starts_with("t.json: ") && s.contains(message),
                        "{text:?}: {s}"
                    )
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let empty = load_str("[]", Format::Zsre, false).unwrap();
        assert!(empty.requests.is_empty() && empty.format == Format::Zsre);
    }

    #[test]
    fn limit_counts_loaded_requests() {
        let text = format!("[{CF}, 1, {CF}, {CF}]");
        let opts = LoadOptions {
            skip_invalid: true,
            limit: Some(2),
        };
        let loaded = load_from_slice(text.as_bytes(), Path::new("t"), Format::Auto, &opts).unwrap();
        assert_eq!((loaded.requests.len(), loaded.skipped.len()), (2, 1));
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let e = load(
            Path::new("/nonexistent/x.json"),
            Format::Auto,
            &LoadOptions::default(),
        );
        assert!(matches!(e, Err(Error::Io { .. })));
    }
}
