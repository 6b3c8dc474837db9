//! The server's state: one Editor behind a lock that makes model work one-at-a-time, and
//! a small snapshot of what the page shows, readable while the model is busy.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kedit::edit::Edit;
use kedit::editor::Editor;
use kedit::methods::{EditContext, LoadedMethod};
use kedit::request::EditRequest;
use serde::Serialize;
use tokio::sync::OwnedMutexGuard;

use crate::error::{ApiError, ApiResult};
use crate::methods::MethodInfo;
use crate::probe::{Probed, Role};

/// What `kedit serve` was started with.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// A .gguf file or a Hugging Face directory.
    pub model: PathBuf,
    /// Where "save" writes edit files; `None`: saving only downloads them.
    pub save_dir: Option<PathBuf>,
    /// Known facts whose subject embeddings give the trace's noise scale σ.
    pub facts: PathBuf,
    /// Cache, corpus and seed for the methods.
    pub context: EditContext,
}

/// One applied edit, kept so that it can be re-applied, saved and listed.
pub struct Record {
    pub id: u64,
    pub method: String,
    pub request: EditRequest,
    /// The prompts probed before and after it (probed again when it is reverted).
    pub probes: Vec<(Role, String)>,
    pub edit: Edit,
    pub summary: EditSummary,
}

/// An applied edit as the page lists it.
#[derive(Clone, Debug, Serialize)]
pub struct EditSummary {
    pub id: u64,
    pub method: String,
    pub prompt: String,
    pub subject: String,
    pub target: String,
    /// `weights`, `adaptor`, `memory`, …
    pub kind: String,
    /// What changed: the weights, or the codebook / memory entries.
    pub changed: String,
    pub seconds: f64,
}

/// The outcome of an edit: the model's answers before and after.
#[derive(Clone, Debug, Serialize)]
pub struct EditOutcome {
    pub edit: EditSummary,
    pub notes: Vec<(String, String)>,
    pub before: Vec<Probed>,
    pub after: Vec<Probed>,
}

/// Everything that needs the model: touched by one request at a time.
pub struct Session {
    pub editor: Editor,
    pub methods: BTreeMap<String, LoadedMethod>,
    /// Methods whose `prepare` has run (ROME's context templates).
    pub prepared: Vec<String>,
    pub records: Vec<Record>,
    pub next_id: u64,
    /// σ for tracing, computed on the first trace.
    pub sigma: Option<f64>,
}

/// What the page shows; updated when model work finishes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    pub edits: Vec<EditSummary>,
    /// The last edit's before/after, so that a freshly loaded page shows it.
    pub last: Option<EditOutcome>,
    /// The last causal trace, for the same reason.
    pub trace: Option<Traced>,
}

/// A causal trace and the edits applied when it was made.
#[derive(Clone, Debug, Serialize)]
pub struct Traced {
    #[serde(flatten)]
    pub result: kedit::trace::TraceResult,
    /// The ids of the edits applied to the model traced (none: the model as loaded).
    pub edits_applied: Vec<u64>,
}

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServeConfig>,
    pub model_name: Arc<str>,
    pub methods: Arc<[MethodInfo]>,
    session: Arc<tokio::sync::Mutex<Session>>,
    /// Set while a `Work` is held: reading it takes no lock, so asking whether the model
    /// is busy never makes it busy.
    busy: Arc<AtomicBool>,
    snapshot: Arc<Mutex<Snapshot>>,
}

/// The model held for one piece of work; dropping it frees the model for the next.
pub struct Work {
    /// `Some` until dropped: the lock is let go before the flag is cleared, so that "not
    /// busy" is never read while the lock is still held.
    session: Option<OwnedMutexGuard<Session>>,
    busy: Arc<AtomicBool>,
}

impl Deref for Work {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session.as_ref().expect("held until dropped")
    }
}

impl DerefMut for Work {
    fn deref_mut(&mut self) -> &mut Session {
        self.session.as_mut().expect("held until dropped")
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        self.session.take();
        self.busy.store(false, Ordering::SeqCst);
    }
}

impl AppState {
    /// Loads the model and the methods (seconds: run it off the async executor).
    pub fn load(config: ServeConfig) -> kedit::Result<Self> {
        let model = kedit::Model::load(&config.model)?;
        let (methods, infos) = crate::methods::load_methods(&model, &config.context);
        let model_name = config.model.file_name().map_or_else(
            || config.model.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        Ok(AppState {
            model_name: model_name.into(),
            methods: infos.into(),
            session: Arc::new(tokio::sync::Mutex::new(Session {
                editor: Editor::new(model),
                methods,
                prepared: Vec::new(),
                records: Vec::new(),
                next_id: 1,
                sigma: None,
            })),
            busy: Arc::new(AtomicBool::new(false)),
            snapshot: Arc::new(Mutex::new(Snapshot::default())),
            config: Arc::new(config),
        })
    }

    /// The model for one piece of work, or 409 "busy" while another holds it. A queue
    /// would let a reloaded page or an impatient user stack up minutes of edits nobody
    /// watches; a clear "busy" keeps one edit at a time visible to everyone.
    pub fn begin_work(&self) -> ApiResult<Work> {
        let session = self
            .session
            .clone()
            .try_lock_owned()
            .map_err(|_| ApiError::busy())?;
        self.busy.store(true, Ordering::SeqCst);
        Ok(Work {
            session: Some(session),
            busy: self.busy.clone(),
        })
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn update_snapshot(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.snapshot.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

impl Session {
    pub fn summaries(&self) -> Vec<EditSummary> {
        self.records.iter().map(|r| r.summary.clone()).collect()
    }
}
