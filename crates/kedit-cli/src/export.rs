//! `kedit export`, and the export options `kedit edit` shares: an edit as a PEFT LoRA
//! adapter, the edited model as a GGUF file or a Hugging Face directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kedit::edit::peft::{self, Truncation};
use kedit::edit::Edit;
use kedit::editor::Editor;
use kedit::fsio;
use kedit::model::gguf_export::save_gguf;
use kedit::model::gguf_write::GgufDtype;
use kedit::model::hf;
use kedit::model::SAVED_MODEL_MARKER;
use kedit::Model;

use crate::ModelArg;

/// Where the exports go, checked before any work and written after it.
pub struct Targets {
    pub peft: Option<PathBuf>,
    pub truncation: Truncation,
    /// The adapter's `base_model_name_or_path` (the model's source path when `None`).
    pub peft_base: Option<String>,
    pub gguf: Option<PathBuf>,
    pub gguf_dtype: GgufDtype,
    pub hf: Option<PathBuf>,
    /// bf16, f16 or f32.
    pub hf_dtype: String,
    pub overwrite: bool,
}

/// How the exports are written: the options `kedit edit` and `kedit export` share (each
/// names its own output paths).
#[derive(clap::Args)]
pub struct Settings {
    /// The adapter's rank for dense deltas (and the most for low-rank ones).
    #[arg(long, conflicts_with = "peft_energy")]
    peft_rank: Option<usize>,
    /// For dense deltas, the smallest rank keeping this fraction of ‖ΔW‖² [default: 0.99].
    #[arg(long)]
    peft_energy: Option<f64>,
    /// The adapter's base_model_name_or_path (what AutoPeftModel loads) [default: --model].
    #[arg(long)]
    peft_base: Option<String>,
    /// The GGUF file's matrix type: f32 or f16 (vectors stay f32).
    #[arg(long, default_value = "f32")]
    gguf_dtype: String,
    /// The Hugging Face directory's weight type: bf16, f16 or f32.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Let an adapter or Hugging Face directory replace one kedit wrote before.
    #[arg(long)]
    overwrite: bool,
}

impl Settings {
    /// The targets at these paths, written with these settings.
    pub fn targets(
        &self,
        peft: Option<PathBuf>,
        gguf: Option<PathBuf>,
        hf: Option<PathBuf>,
    ) -> Result<Targets> {
        Ok(Targets {
            peft,
            truncation: truncation(self.peft_rank, self.peft_energy)?,
            peft_base: self.peft_base.clone(),
            gguf,
            gguf_dtype: self.gguf_dtype.parse()?,
            hf,
            hf_dtype: self.dtype.clone(),
            overwrite: self.overwrite,
        })
    }
}

fn truncation(rank: Option<usize>, energy: Option<f64>) -> Result<Truncation> {
    Ok(match (rank, energy) {
        (Some(0), _) => bail!("--peft-rank must be positive"),
        (Some(r), _) => Truncation::Rank(r),
        (None, Some(e)) if !(e > 0.0 && e <= 1.0) => {
            bail!("--peft-energy must be in (0, 1], the fraction of ‖ΔW‖² kept; got {e}")
        }
        (None, Some(e)) => Truncation::Energy(e),
        (None, None) => Truncation::default(),
    })
}

impl Targets {
    /// Refuses outputs that cannot be written, before minutes of work.
    pub fn check(&self) -> Result<()> {
        hf::dtype_named(&self.hf_dtype)?;
        if let Some(dir) = &self.peft {
            fsio::check_owned_dir(dir, peft::MARKER, self.overwrite)?;
        }
        if let Some(path) = &self.gguf {
            fsio::check_writable_file(path)?;
        }
        if let Some(dir) = &self.hf {
            fsio::check_owned_dir(dir, SAVED_MODEL_MARKER, self.overwrite)?;
        }
        Ok(())
    }

    /// Writes every asked-for export of `editor` (its model as edited) and `edit` (the
    /// edit that made it, for the adapter).
    pub fn write(&self, editor: &Editor, edit: Option<&Edit>) -> Result<()> {
        if let Some(dir) = &self.peft {
            let weights = match edit {
                Some(Edit::Weights(w)) => w,
                Some(other) => bail!(
                    "--peft: the edit is a {} edit; only weight edits become LoRA adapters",
                    other.kind()
                ),
                None => bail!("--peft needs an edit"),
            };
            // The model gives the adapter its module names and shapes, the same before and
            // after the edit.
            let reports = peft::save(
                weights,
                editor.model(),
                dir,
                self.truncation,
                self.peft_base.as_deref(),
                self.overwrite,
            )
            .with_context(|| format!("writing the adapter {}", dir.display()))?;
            println!("wrote the PEFT LoRA adapter {}", dir.display());
            for r in &reports {
                if r.exact {
                    println!("  {}: rank {} (exact)", r.module, r.rank);
                } else {
                    println!(
                        "  {}: rank {} by truncated SVD, {:.4}% of ‖ΔW‖² kept",
                        r.module,
                        r.rank,
                        100.0 * r.energy
                    );
                }
            }
        }
        if self.gguf.is_none() && self.hf.is_none() {
            return Ok(());
        }
        let model = editor.weights_only()?;
        if let Some(path) = &self.gguf {
            let s = save_gguf(model, path, self.gguf_dtype)
                .with_context(|| format!("writing {}", path.display()))?;
            println!(
                "wrote the GGUF file {} ({}, {} tensors, {}; tokenizer {})",
                path.display(),
                s.architecture,
                s.tensors,
                self.gguf_dtype.name(),
                s.tokenizer_from
            );
        }
        if let Some(dir) = &self.hf {
            model.save_hf_as(dir, self.overwrite, hf::dtype_named(&self.hf_dtype)?)?;
            println!(
                "wrote the Hugging Face directory {} ({})",
                dir.display(),
                self.hf_dtype
            );
        }
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// An edit saved by `kedit edit --save-edit` (any weight edit), or a PEFT LoRA adapter
    /// directory; applied to the model first. Without it the model is exported as it is.
    #[arg(long)]
    edit: Option<PathBuf>,
    /// Write the edit as a PEFT LoRA adapter directory (adapter_config.json,
    /// adapter_model.safetensors).
    #[arg(long)]
    peft: Option<PathBuf>,
    /// Write the edited model as a GGUF file (llama, gemma3).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Write the edited model as a Hugging Face directory.
    #[arg(long)]
    hf: Option<PathBuf>,
    /// Write the edit as a kedit edit file (e.g. to keep an adapter read with --edit).
    #[arg(long)]
    save_edit: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

/// An edit file, or a PEFT adapter directory read as a low-rank weight edit.
pub fn load_edit(path: &Path, model: &Model) -> Result<Edit> {
    if path.is_dir() && peft::is_adapter_dir(path) {
        return Ok(Edit::Weights(peft::load(path, model)?));
    }
    Ok(Edit::load(path)?)
}

pub fn run(args: Args) -> Result<()> {
    let targets = args
        .settings
        .targets(args.peft.clone(), args.gguf.clone(), args.hf.clone())?;
    if targets.peft.is_none()
        && targets.gguf.is_none()
        && targets.hf.is_none()
        && args.save_edit.is_none()
    {
        bail!("nothing to write: give --peft DIR, --gguf FILE, --hf DIR or --save-edit FILE");
    }
    targets.check()?;
    if let Some(path) = &args.save_edit {
        fsio::check_writable_file(path)?;
    }
    let model = args.model.load()?;
    let edit = match &args.edit {
        Some(path) => Some(
            load_edit(path, &model)
                .with_context(|| format!("reading the edit {}", path.display()))?,
        ),
        None => None,
    };
    let mut editor = Editor::new(model);
    if let Some(e) = &edit {
        editor.apply(e)?;
    }
    targets.write(&editor, edit.as_ref())?;
    if let (Some(path), Some(e)) = (&args.save_edit, &edit) {
        e.save(path)?;
        println!("saved the edit to {}", path.display());
    }
    Ok(())
}
