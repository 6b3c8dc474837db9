//! Text corpora for statistics: JSONL with a `text` field, plain text, or chosen fields of
//! a range of records in a dataset file.
//!
//! - JSONL (`.jsonl`/`.json`, or any file whose first non-blank byte is `{`): one JSON
//!   object a line; its `text` field (a string) is one document. Blank lines are skipped.
//!   Records are numbered by line, from 1, in errors.
//! - Plain text: documents are paragraphs — maximal runs of non-blank lines, separated by
//!   blank (whitespace-only) lines, joined with `\n`. In WikiText-2 that makes every
//!   heading and every paragraph line its own document.
//!
//! - Records ([`RecordSelection`]): a JSON array (or JSONL) of objects, such as a ZsRE or
//!   CounterFact file; records `start..end` (from 0), each one document: its chosen string
//!   fields joined by a space (ZsRE's `loc` and `loc_ans` make "nq question: … answer").
//!   Documents are numbered by record, from 0, in errors.
//!
//! Documents whose text is empty or whitespace are skipped: they carry no tokens. Documents
//! are read in file order, so "the first N documents" is the same set every time (and a
//! run can resume at document N).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::hash::Fast64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CorpusFormat {
    Jsonl,
    Text,
    Records,
}

/// Which records of a dataset file make documents, and from which fields.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct RecordSelection {
    /// Top-level string fields, joined by a space in this order.
    pub fields: Vec<String>,
    /// Records `start..end`, counted from 0; `end` may not pass the file's last record.
    pub start: usize,
    pub end: usize,
}

#[derive(Clone, Debug)]
pub struct Corpus {
    pub path: PathBuf,
    pub format: CorpusFormat,
    /// Set exactly when `format` is [`CorpusFormat::Records`].
    pub selection: Option<RecordSelection>,
    /// The selected records' documents, read once when the corpus is opened.
    records: Option<Arc<[Document]>>,
}

/// One document: its text and where it starts (line number from 1).
#[derive(Clone, Debug)]
pub struct Document {
    pub line: usize,
    pub text: String,
}

#[derive(Deserialize)]
struct JsonlRecord {
    text: Option<serde_json::Value>,
}

impl Corpus {
    /// Opens a corpus file, telling JSONL from plain text (see the module docs).
    pub fn open(path: impl AsRef<Path>) -> Result<Corpus> {
        let path = path.as_ref().to_path_buf();
        if path.is_dir() {
            return Err(Error::config(format!(
                "{}: is a directory; a corpus is a JSONL file with a `text` field or a plain-text file",
                path.display()
            )));
        }
        let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut head = [0u8; 4096];
        let n = file.read(&mut head).map_err(|e| Error::io(&path, e))?;
        let first = head[..n].iter().find(|b| !b.is_ascii_whitespace()).copied();
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let format = if ext == "jsonl" || ext == "json" || first == Some(b'{') {
            CorpusFormat::Jsonl
        } else {
            CorpusFormat::Text
        };
        if first.is_none() {
            return Err(Error::config(format!(
                "{}: the corpus is empty",
                path.display()
            )));
        }
        Ok(Corpus {
            path,
            format,
            selection: None,
            records: None,
        })
    }

    /// Opens a dataset file whose selected records are the documents (see the module docs);
    /// the selection is checked against the file here, so a bad one fails before any work.
    pub fn open_records(path: impl AsRef<Path>, selection: RecordSelection) -> Result<Corpus> {
        let path = path.as_ref().to_path_buf();
        if selection.fields.is_empty() {
            return Err(Error::config(format!(
                "{}: no fields chosen to make documents of its records",
                path.display()
            )));
        }
        if selection.start >= selection.end {
            return Err(Error::config(format!(
                "{}: records {}..{} is an empty range",
                path.display(),
                selection.start,
                selection.end
            )));
        }
        let records = read_records(&path, &selection)?;
        Ok(Corpus {
            path,
            format: CorpusFormat::Records,
            selection: Some(selection),
            records: Some(records.into()),
        })
    }

    /// A hash of the file's bytes and how they are read: the corpus part of cache keys.
    pub fn fingerprint(&self) -> Result<u64> {
        let mut h = Fast64::new();
        h.str(&format!("{:?}", self.format));
        if let Some(sel) = &self.selection {
            h.str(&format!("{:?}", sel));
        }
        let mut file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            // Whole blocks, however the OS splits the reads: the hash must not depend on it.
            let mut n = 0;
            while n < buf.len() {
                match file
                    .read(&mut buf[n..])
                    .map_err(|e| Error::io(&self.path, e))?
                {
                    0 => break,
                    got => n += got,
                }
            }
            h.bytes(&buf[..n]);
            if n < buf.len() {
                break;
            }
        }
        Ok(h.finish())
    }

    /// The documents, in file order.
    pub fn documents(&self) -> Result<Documents> {
        if let Some(records) = &self.records {
            return Ok(Documents::Records {
                docs: records.clone(),
                next: 0,
            });
        }
        let file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(Documents::Lines(LineDocuments {
            path: self.path.clone(),
            format: self.format,
            lines: BufReader::with_capacity(1 << 20, file).lines(),
            line: 0,
        }))
    }

    /// The number of documents among the first `limit` (reads no further).
    pub fn count_documents(&self, limit: usize) -> Result<usize> {
        let mut n = 0;
        for doc in self.documents()?.take(limit) {
            doc?;
            n += 1;
        }
        Ok(n)
    }
}

/// The documents of records `sel.start..sel.end` of a dataset file, checked whole (dataset
/// files are small).
fn read_records(path: &Path, sel: &RecordSelection) -> Result<Vec<Document>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let records: Vec<serde_json::Value> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).map_err(|e| {
            Error::config(format!(
                "{}: not a JSON array of records: {e}",
                path.display()
            ))
        })?
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| Error::record(path, i + 1, "record", format!("not JSON: {e}")))
            })
            .collect::<Result<_>>()?
    };
    if sel.end > records.len() {
        return Err(Error::config(format!(
            "{}: records {}..{} asked for, but the file has {} records",
            path.display(),
            sel.start,
            sel.end,
            records.len()
        )));
    }
    let mut docs = Vec::with_capacity(sel.end - sel.start);
    for (index, record) in records[sel.start..sel.end].iter().enumerate() {
        let at = sel.start + index;
        let mut parts = Vec::with_capacity(sel.fields.len());
        for field in &sel.fields {
            match record.get(field) {
                Some(serde_json::Value::String(s)) => parts.push(s.trim()),
                Some(other) => {
                    return Err(Error::record(
                        path,
                        at,
                        field,
                        format!("expected a string, found {}", json_kind(other)),
                    ))
                }
                None => return Err(Error::record(path, at, field, "missing")),
            }
        }
        let text = parts.join(" ");
        if !text.trim().is_empty() {
            docs.push(Document { line: at, text });
        }
    }
    Ok(docs)
}

/// An iterator over a corpus's documents; bad records are errors naming file, line, field.
pub enum Documents {
    Lines(LineDocuments),
    Records { docs: Arc<[Document]>, next: usize },
}

impl Iterator for Documents {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Documents::Lines(lines) => lines.next(),
            Documents::Records { docs, next } => {
                let doc = docs.get(*next).cloned()?;
                *next += 1;
                Some(Ok(doc))
            }
        }
    }
}

/// The documents of a JSONL or plain-text corpus, read line by line.
pub struct LineDocuments {
    path: PathBuf,
    format: CorpusFormat,
    lines: std::io::Lines<BufReader<File>>,
    line: usize,
}

impl LineDocuments {
    fn next_line(&mut self) -> Option<Result<String>> {
        let next = self.lines.next()?;
        self.line += 1;
        Some(next.map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                Error::record(&self.path, self.line, "text", "the line is not valid UTF-8")
            } else {
                Error::io(&self.path, e)
            }
        }))
    }

    fn next_jsonl(&mut self) -> Option<Result<Document>> {
        loop {
            let line = match self.next_line()? {
                Ok(l) => l,
                Err(e) => return Some(Err(e)),
            };
            if line.trim().is_empty() {
                continue;
            }
            let at = self.line;
            let record: JsonlRecord = match serde_json::from_str(&line) {
                Ok(r) => r,
                Err(e) => {
                    return Some(Err(Error::record(
                        &self.path,
                        at,
                        "text",
                        format!("line {at} is not a JSON object: {e}"),
                    )))
                }
            };
            let text = match record.text {
                Some(serde_json::Value::String(s)) => s,
                Some(other) => {
                    return Some(Err(Error::record(
                        &self.path,
                        at,
                        "text",
                        format!("expected a string, found {}", json_kind(&other)),
                    )))
                }
                None => {
                    return Some(Err(Error::record(
                        &self.path,
                        at,
                        "text",
                        "missing (each line must be an object with a `text` string)",
                    )))
                }
            };
            if !text.trim().is_empty() {
                return Some(Ok(Document { line: at, text }));
            }
        }
    }

    fn next_paragraph(&mut self) -> Option<Result<Document>> {
        let mut text = String::new();
        let mut start = 0;
        loop {
            match self.next_line() {
                None => break,
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(line)) => {
                    if line.trim().is_empty() {
                        if text.is_empty() {
                            continue;
                        }
                        break;
                    }
                    if text.is_empty() {
                        start = self.line;
                    } else {
                        text.push('\n');
                    }
                    text.push_str(&line);
                }
            }
        }
        (!text.is_empty()).then_some(Ok(Document { line: start, text }))
    }
}

impl Iterator for LineDocuments {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.format {
            CorpusFormat::Jsonl => self.next_jsonl(),
            CorpusFormat::Text => self.next_paragraph(),
            CorpusFormat::Records => None,
        }
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The longest prefix of `text` of at most `max_bytes` bytes that ends on a char boundary.
pub fn prefix(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
