//! A context: text put in front of every input (IKE's demonstrations and new fact).
//! Several contexts stack: their prefixes in the order applied, then the lead of the last
//! one that has a lead (IKE's `Prompt: `), then the input — so a stream of IKE edits reads
//! `demos₁ New Fact₁ demos₂ New Fact₂ Prompt: {input}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContextEdit {
    /// Prepended to every input, in the order the contexts were applied.
    pub prefix: String,
    /// Put between all the prefixes and the input (empty: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lead: String,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

impl ContextEdit {
    pub fn check(&self) -> Result<()> {
        if self.prefix.is_empty() {
            return Err(Error::EditRefused("the context edit is empty".into()));
        }
        Ok(())
    }
}
