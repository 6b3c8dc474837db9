//! The model work behind each endpoint: plain synchronous calls into the library, run on a
//! blocking thread with the session held.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kedit::editor::AppliedEdit;
use kedit::methods::EditContext;
use kedit::progress::Silent;
use kedit::request::EditRequest;
use kedit::trace::{cached_subject_embedding_std, trace_prompt, TraceOptions, TraceResult};
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::probe::{probe, Probed, Role};
use crate::state::{EditOutcome, EditSummary, Record, ServeConfig, Session};

/// A fact to write, as the page sends it.
#[derive(Clone, Debug, Deserialize)]
pub struct EditBody {
    pub method: String,
    pub prompt: String,
    pub subject: String,
    pub target: String,
    #[serde(default)]
    pub paraphrase: Option<String>,
    #[serde(default)]
    pub neighbours: Vec<String>,
}

/// At most this many neighbour prompts per edit (each is probed twice).
pub const MAX_NEIGHBOURS: usize = 8;

impl EditBody {
    /// The prompts probed before and after: the prompt, the paraphrase, the neighbours.
    pub fn probes(&self) -> Vec<(Role, String)> {
        let mut out = vec![(Role::Prompt, self.prompt.clone())];
        out.extend(
            self.paraphrase
                .iter()
                .filter(|p| !p.trim().is_empty())
                .map(|p| (Role::Paraphrase, p.clone())),
        );
        out.extend(
            self.neighbours
                .iter()
                .filter(|p| !p.trim().is_empty())
                .map(|p| (Role::Neighbour, p.clone())),
        );
        out
    }

    fn request(&self, id: u64) -> EditRequest {
        EditRequest {
            case_id: format!("serve-{id}"),
            prompt: self.prompt.clone(),
            subject: self.subject.clone(),
            target_new: self.target.clone(),
            rephrase: self.paraphrase.iter().cloned().collect(),
            ..Default::default()
        }
    }
}

/// Computes and applies one edit, probing before and after.
pub fn edit(s: &mut Session, ctx: &EditContext, body: &EditBody) -> ApiResult<EditOutcome> {
    if body.neighbours.len() > MAX_NEIGHBOURS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_NEIGHBOURS} neighbour prompts"
        )));
    }
    let name = body.method.to_ascii_lowercase();
    let method = s.methods.get(&name).ok_or_else(|| {
        ApiError::bad_request(format!(
            "method `{}` is not available here (GET /api/methods lists them, with reasons)",
            body.method
        ))
    })?;
    let request = body.request(s.next_id);
    // Refused before any work: a subject not in the prompt, a target too long, …
    method.method.check_request(s.editor.model(), &request)?;
    let probes = body.probes();
    let before = probe(&s.editor, &probes)?;
    if !s.prepared.contains(&name) {
        let original = s.editor.original_model();
        method.method.prepare(&original, ctx, &mut Silent)?;
        s.prepared.push(name.clone());
    }
    let start = Instant::now();
    let computed = method
        .method
        .compute(&s.editor, std::slice::from_ref(&request), ctx)?;
    let applied = s.editor.apply(&computed.edit)?;
    let summary = EditSummary {
        id: s.next_id,
        method: method.method.name().to_string(),
        prompt: body.prompt.clone(),
        subject: body.subject.clone(),
        target: body.target.clone(),
        kind: applied.kind.to_string(),
        changed: describe(applied),
        seconds: start.elapsed().as_secs_f64(),
    };
    s.next_id += 1;
    let after = probe(&s.editor, &probes)?;
    s.records.push(Record {
        id: summary.id,
        method: name,
        request,
        probes,
        edit: computed.edit,
        summary: summary.clone(),
    });
    Ok(EditOutcome {
        edit: summary,
        notes: computed.report.notes,
        before,
        after,
    })
}

/// What an applied edit changed, in a few words.
fn describe(a: &AppliedEdit) -> String {
    match (a.params.is_empty(), &a.site) {
        (false, _) => a
            .params
            .iter()
            .zip(&a.relative_norms)
            .map(|(p, n)| format!("{p} (‖ΔW‖/‖W‖ {n:.3})"))
            .collect::<Vec<_>>()
            .join(", "),
        (true, Some(site)) => format!("{} codebook entries at {site}", a.entries),
        (true, None) if a.entries > 0 => format!("{} memory records", a.entries),
        _ => "a context".into(),
    }
}

/// Reverts edit `id`: the Editor undoes everything, then the other edits are applied again
/// in their order (each as it was computed). On any failure the system is left as it was.
pub fn revert(s: &mut Session, id: u64) -> ApiResult<Record> {
    let at = s
        .records
        .iter()
        .position(|r| r.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no applied edit {id}")))?;
    let checkpoint = s.editor.checkpoint();
    s.editor.revert_all();
    for r in s.records.iter().filter(|r| r.id != id) {
        if let Err(e) = s.editor.apply(&r.edit) {
            s.editor.restore(&checkpoint);
            return Err(ApiError::from(e));
        }
    }
    Ok(s.records.remove(at))
}

/// Undoes every edit.
pub fn revert_all(s: &mut Session) {
    s.editor.revert_all();
    s.records.clear();
}

/// A trace of the prompt, as the page asks for it.
#[derive(Clone, Debug, Deserialize)]
pub struct TraceBody {
    pub prompt: String,
    pub subject: String,
    /// Corrupted runs (ROME: 10); fewer is quicker and noisier.
    #[serde(default = "default_samples")]
    pub samples: usize,
}

fn default_samples() -> usize {
    3
}

pub const MAX_SAMPLES: usize = 10;

/// Causal tracing of the model's weights as currently edited (edits that live outside the
/// weights — codebooks, memories, contexts — are not part of a trace).
pub fn trace(s: &mut Session, config: &ServeConfig, body: &TraceBody) -> ApiResult<TraceResult> {
    if !(1..=MAX_SAMPLES).contains(&body.samples) {
        return Err(ApiError::bad_request(format!(
            "samples must be between 1 and {MAX_SAMPLES}"
        )));
    }
    let sigma = match s.sigma {
        Some(v) => v,
        None => {
            let v = sigma(s, config)?;
            s.sigma = Some(v);
            v
        }
    };
    let options = TraceOptions {
        samples: body.samples,
        ..TraceOptions::with_sigma(sigma)
    };
    Ok(trace_prompt(
        s.editor.model(),
        &body.prompt,
        &body.subject,
        None,
        &options,
    )?)
}

/// σ from the known facts' subjects, on the original model (cached on disk by the library).
fn sigma(s: &Session, config: &ServeConfig) -> ApiResult<f64> {
    let facts = kedit::cache::Cache::resolve_relative(&config.facts).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{}: not found; tracing needs ROME's known facts for its noise scale \
                 (start kedit serve with --facts FILE)",
                config.facts.display()
            ),
        )
    })?;
    let original = s.editor.original_model();
    Ok(cached_subject_embedding_std(&original, &facts, &config.context.cache)?.sigma)
}

/// The file name an edit is saved under: no part of it comes from the page but the id,
/// a number.
pub fn file_name(r: &Record) -> String {
    format!("kedit-edit-{}-{}.safetensors", r.id, r.method)
}

/// The edit `id` as the bytes of its safetensors file (written through a temporary file:
/// the library saves to paths, atomically).
pub fn edit_bytes(s: &Session, id: u64) -> ApiResult<(String, Vec<u8>)> {
    let r = find(s, id)?;
    let tmp = std::env::temp_dir().join(format!(
        "kedit-serve-{}-{}",
        std::process::id(),
        file_name(r)
    ));
    r.edit.save(&tmp)?;
    let bytes = std::fs::read(&tmp).map_err(|e| ApiError::from(kedit::Error::io(&tmp, e)));
    let _ = std::fs::remove_file(&tmp);
    Ok((file_name(r), bytes?))
}

/// Writes edit `id` into the save directory chosen at startup.
pub fn save(s: &Session, dir: Option<&Path>, id: u64) -> ApiResult<PathBuf> {
    let dir = dir.ok_or_else(|| {
        ApiError::bad_request(
            "no save directory: start kedit serve with --save-dir DIR (or download the edit)",
        )
    })?;
    let r = find(s, id)?;
    let path = dir.join(file_name(r));
    r.edit.save(&path)?;
    Ok(path)
}

fn find(s: &Session, id: u64) -> ApiResult<&Record> {
    s.records
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no applied edit {id}")))
}

/// Probes prompts on the system as it is now.
pub fn probe_now(s: &Session, prompts: &[(Role, String)]) -> ApiResult<Vec<Probed>> {
    Ok(probe(&s.editor, prompts)?)
}
