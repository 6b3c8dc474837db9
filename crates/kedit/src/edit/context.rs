//! A context: text put in front of every input (IKE's demonstrations and new fact).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContextEdit {
    /// Prepended to every input, in the order the contexts were applied.
    pub prefix: String,
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
