//! The methods the page offers: every row of the registry, each either loaded and ready
//! for a single edit, or listed with the reason it is not.

use std::collections::BTreeMap;

use kedit::methods::{EditContext, LoadedMethod, Need, Registry};
use kedit::Model;
use serde::Serialize;

/// One method as the page lists it.
#[derive(Clone, Debug, Serialize)]
pub struct MethodInfo {
    pub name: String,
    pub family: String,
    pub summary: String,
    pub available: bool,
    /// Why it cannot edit here (unavailable), or how it runs (e.g. ROME without C⁻¹).
    pub note: Option<String>,
}

/// The registry's methods for `model`: the loaded ones by name, and the list for the page.
pub fn load_methods(
    model: &Model,
    ctx: &EditContext,
) -> (BTreeMap<String, LoadedMethod>, Vec<MethodInfo>) {
    let registry = Registry::builtin();
    let mut loaded = BTreeMap::new();
    let mut infos = Vec::new();
    for spec in registry.methods() {
        let mut info = MethodInfo {
            name: spec.name.to_string(),
            family: spec.family.to_string(),
            summary: spec.summary.to_string(),
            available: false,
            note: None,
        };
        // A trained artifact is chosen by the user with `--hparams` on the command line;
        // the page takes no file paths, so these methods are listed, not offered.
        let unavailable_because = if spec.needs.contains(&Need::TrainedCheckpoint) {
            Some(format!(
                "needs a checkpoint trained by `kedit train --method {}` (use `kedit edit --hparams`)",
                spec.name
            ))
        } else if spec.needs.contains(&Need::RetrievalPool) {
            Some(format!(
                "needs a retrieval pool of training records (use `kedit eval --method {}`)",
                spec.name
            ))
        } else {
            None
        };
        if let Some(why) = unavailable_because {
            info.note = Some(why);
            infos.push(info);
            continue;
        }
        match ready(&registry, spec.name, model, ctx) {
            Ok((method, note)) => {
                info.available = true;
                info.note = note;
                loaded.insert(spec.name.to_string(), method);
            }
            Err(why) => info.note = Some(why),
        }
        infos.push(info);
    }
    (loaded, infos)
}

/// The method with its shipped hyper-parameters, ROME without C⁻¹ when no statistics are
/// cached; an error when it reads statistics it cannot get (computing them takes minutes:
/// `kedit stats`).
fn ready(
    registry: &Registry,
    name: &str,
    model: &Model,
    ctx: &EditContext,
) -> Result<(LoadedMethod, Option<String>), String> {
    let (method, without) = registry
        .load_or_without_statistics(name, model, ctx)
        .map_err(|e| e.to_string())?;
    if let Some(why) = method
        .method
        .missing_statistics(model, ctx)
        .map_err(|e| e.to_string())?
    {
        return Err(format!("{why} (compute them with `kedit stats`)"));
    }
    Ok((method, without.map(|why| format!("without C⁻¹: {why}"))))
}
