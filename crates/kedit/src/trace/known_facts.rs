//! ROME's "known facts" (`known_1000.json`): prompts whose answer a model is expected to
//! know, each with its subject — the input of causal tracing.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnownFact {
    /// `known_id`, or the record index when absent.
    pub id: usize,
    pub subject: String,
    /// The true object ("Antarctica").
    pub attribute: String,
    /// The prompt, ending where the attribute should follow.
    pub prompt: String,
}

/// Loads a JSON array of records with string fields `subject`, `attribute`, `prompt`
/// (ROME's format; other fields are ignored). Errors name the record and field.
pub fn load_known_facts(path: &Path) -> Result<Vec<KnownFact>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Error::model(path, format!("not valid JSON: {e}")))?;
    let records = value.as_array().ok_or_else(|| {
        Error::model(
            path,
            "expected a JSON array of {subject, attribute, prompt} records",
        )
    })?;
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let field = |name: &str| -> Result<String> {
                match r.get(name) {
                    Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
                    Some(Value::String(_)) => Err(Error::record(path, i, name, "is empty")),
                    Some(_) => Err(Error::record(path, i, name, "is not a string")),
                    None => Err(Error::record(path, i, name, "is missing")),
                }
            };
            let id = r
                .get("known_id")
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .unwrap_or(i);
            Ok(KnownFact {
                id,
                subject: field("subject")?,
                attribute: field("attribute")?,
                prompt: field("prompt")?,
            })
        })
        .collect()
}
