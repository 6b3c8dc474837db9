//! The HTTP API: thin handlers that parse, take the model (or answer "busy"), run the
//! work off the async executor and answer JSON.

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::methods::MethodInfo;
use crate::probe::{Probed, Role};
use crate::state::{AppState, EditOutcome, EditSummary, Session, Snapshot, Traced};
use crate::work;

/// Runs `f` on a blocking thread with the model held, then refreshes the page's list of
/// edits before the model is let go, so that no one sees "not busy" with a stale list.
async fn blocking<T: Send + 'static>(
    app: &AppState,
    f: impl FnOnce(&mut Session) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let mut held = app.begin_work()?;
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let out = f(&mut held);
        let edits = held.summaries();
        app.update_snapshot(|s| {
            // The last before/after stays only while its edit is applied.
            if let Some(last) = &s.last {
                if !edits.iter().any(|e| e.id == last.edit.id) {
                    s.last = None;
                }
            }
            s.edits = edits;
        });
        out
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the work failed: {e}"),
        )
    })?
}

#[derive(Serialize)]
pub struct StateView {
    pub model: String,
    pub busy: bool,
    /// Whether "save" can write into a directory chosen at startup.
    pub save_dir: bool,
    pub methods: Vec<MethodInfo>,
    #[serde(flatten)]
    pub snapshot: Snapshot,
}

pub async fn state(State(app): State<AppState>) -> Json<StateView> {
    Json(StateView {
        model: app.model_name.to_string(),
        busy: app.is_busy(),
        save_dir: app.config.save_dir.is_some(),
        methods: app.methods.to_vec(),
        snapshot: app.snapshot(),
    })
}

pub async fn methods(State(app): State<AppState>) -> Json<Vec<MethodInfo>> {
    Json(app.methods.to_vec())
}

pub async fn edit(
    State(app): State<AppState>,
    body: Result<Json<work::EditBody>, JsonRejection>,
) -> ApiResult<Json<EditOutcome>> {
    let Json(body) = body?;
    let ctx = app.config.context.clone();
    let shown = app.clone();
    let outcome = blocking(&app, move |s| {
        let outcome = work::edit(s, &ctx, &body)?;
        // Before the model is let go: a page loaded once it is free shows this edit.
        shown.update_snapshot(|snap| snap.last = Some(outcome.clone()));
        Ok(outcome)
    })
    .await?;
    Ok(Json(outcome))
}

#[derive(Serialize)]
pub struct Reverted {
    pub reverted: EditSummary,
    /// The reverted edit's prompts, probed on the system as it is now.
    pub now: Vec<Probed>,
    pub edits: Vec<EditSummary>,
}

pub async fn revert(
    State(app): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> ApiResult<Json<Reverted>> {
    let id = edit_id(id)?;
    let out = blocking(&app, move |s| {
        let record = work::revert(s, id)?;
        Ok(Reverted {
            now: work::probe_now(s, &record.probes)?,
            reverted: record.summary,
            edits: s.summaries(),
        })
    })
    .await?;
    Ok(Json(out))
}

pub async fn revert_all(State(app): State<AppState>) -> ApiResult<Json<Vec<EditSummary>>> {
    let edits = blocking(&app, |s| {
        work::revert_all(s);
        Ok(s.summaries())
    })
    .await?;
    Ok(Json(edits))
}

/// At most this many prompts per probe request.
pub const MAX_PROBES: usize = 16;

#[derive(Deserialize)]
pub struct ProbeBody {
    pub prompts: Vec<String>,
}

pub async fn probe(
    State(app): State<AppState>,
    body: Result<Json<ProbeBody>, JsonRejection>,
) -> ApiResult<Json<Vec<Probed>>> {
    let Json(body) = body?;
    if body.prompts.is_empty() || body.prompts.len() > MAX_PROBES {
        return Err(ApiError::bad_request(format!(
            "between 1 and {MAX_PROBES} prompts"
        )));
    }
    let prompts: Vec<(Role, String)> = body
        .prompts
        .into_iter()
        .map(|p| (Role::Prompt, p))
        .collect();
    Ok(Json(
        blocking(&app, move |s| work::probe_now(s, &prompts)).await?,
    ))
}

pub async fn trace(
    State(app): State<AppState>,
    body: Result<Json<work::TraceBody>, JsonRejection>,
) -> ApiResult<Json<Traced>> {
    let Json(body) = body?;
    let config = app.config.clone();
    let shown = app.clone();
    let traced = blocking(&app, move |s| {
        let traced = Traced {
            result: work::trace(s, &config, &body)?,
            edits_applied: s.records.iter().map(|r| r.id).collect(),
        };
        shown.update_snapshot(|snap| snap.trace = Some(traced.clone()));
        Ok(traced)
    })
    .await?;
    Ok(Json(traced))
}

/// The edit file, for the browser to download.
pub async fn download(
    State(app): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> ApiResult<Response> {
    let id = edit_id(id)?;
    let (name, bytes) = blocking(&app, move |s| work::edit_bytes(s, id)).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from(bytes),
    )
        .into_response())
}

#[derive(Serialize)]
pub struct Saved {
    /// The file written, in the directory chosen at startup.
    pub file: String,
}

pub async fn save(
    State(app): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> ApiResult<Json<Saved>> {
    let id = edit_id(id)?;
    let dir = app.config.save_dir.clone();
    let path = blocking(&app, move |s| work::save(s, dir.as_deref(), id)).await?;
    Ok(Json(Saved {
        file: path.display().to_string(),
    }))
}

fn edit_id(id: Result<Path<u64>, PathRejection>) -> ApiResult<u64> {
    id.map(|Path(id)| id)
        .map_err(|r| ApiError::new(r.status(), r.body_text()))
}
