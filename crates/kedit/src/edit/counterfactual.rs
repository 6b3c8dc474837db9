//! A fine-tuned counterfactual model (SERAC's): the weight deltas that turn the base model
//! into the model that answers inputs routed to a memory's edits, saved as a weight-edit
//! file by `kedit train --method serac` (`methods/serac/counterfactual.rs`) and read here,
//! checked against the model it will run on.

use std::path::Path;

use crate::edit::{Delta, Edit, WeightEdit};
use crate::error::{Error, Result};
use crate::model::Model;

/// What the file's provenance (`method`) says it is.
pub const KIND: &str = "SERAC counterfactual model";

/// A trained counterfactual model, read and checked against the model it will run on (the
/// unedited one) and, when given, the context template routed inputs will come with.
pub fn load(path: &Path, model: &Model, context_template: Option<&str>) -> Result<WeightEdit> {
    let edit = match Edit::load(path)? {
        Edit::Weights(w) => w,
        other => {
            return Err(Error::model(
                path,
                format!(
                    "a {} edit, not a {KIND} (written by `kedit train --method serac` with \
                     cf_layers > 0)",
                    other.kind()
                ),
            ))
        }
    };
    if edit.meta.get("method").map(String::as_str) != Some(KIND) {
        return Err(Error::model(
            path,
            format!(
                "not a {KIND}: its provenance says `{}`",
                edit.meta.get("method").map_or("(none)", String::as_str)
            ),
        ));
    }
    let theirs = edit
        .meta
        .get("model_fingerprint")
        .cloned()
        .unwrap_or_default();
    let ours = format!("{:016x}", model.fingerprint()?);
    if theirs != ours {
        return Err(Error::model(
            path,
            format!(
                "trained on another model (model_fingerprint {theirs}; this model's is \
                 {ours})"
            ),
        ));
    }
    let trained_with = edit
        .meta
        .get("context_template")
        .cloned()
        .unwrap_or_default();
    if let Some(given) = context_template.filter(|t| *t != trained_with) {
        return Err(Error::model(
            path,
            format!(
                "trained with context_template {trained_with:?}; the hyper-parameters give \
                 {given:?}, which it has never seen"
            ),
        ));
    }
    for (id, d) in &edit.deltas {
        let w = model.params.require(*id)?;
        let Delta::Dense(d) = d else {
            return Err(Error::model(path, format!("`{id}`: not a dense delta")));
        };
        if d.dims() != w.dims() {
            return Err(Error::model(
                path,
                format!("`{id}` is {:?}; the model's is {:?}", d.dims(), w.dims()),
            ));
        }
    }
    Ok(edit)
}
