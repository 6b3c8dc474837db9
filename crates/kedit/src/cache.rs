//! The on-disk cache of expensive results (key statistics, noise levels), one directory.
//!
//! Where it is: `$KEDIT_CACHE` if set, else `.kedit-cache/` at the workspace root (the
//! nearest directory upwards from the current one holding `Cargo.lock` or `.kedit-cache`),
//! else `.kedit-cache/` in the current directory. Every file in it is written atomically
//! and named by what determines its content, so a stale entry is never read.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Cache { dir: dir.into() }
    }

    /// The default location (see the module docs).
    pub fn default_location() -> Self {
        if let Some(dir) = std::env::var_os("KEDIT_CACHE").filter(|d| !d.is_empty()) {
            return Cache::new(dir);
        }
        let cwd = std::env::current_dir().unwrap_or_default();
        let root = cwd
            .ancestors()
            .find(|d| d.join(".kedit-cache").is_dir() || d.join("Cargo.lock").is_file())
            .unwrap_or(&cwd);
        Cache::new(root.join(".kedit-cache"))
    }

    /// A relative path from a configuration file (e.g. `mom2_dataset:
    /// ../shared/data/corpus/…`): as given if it exists from the current directory, else
    /// from the workspace root, so the shipped hyper-parameters work from any directory of
    /// the checkout (tests run in their crate's directory).
    pub fn resolve_relative(path: &Path) -> Option<PathBuf> {
        if path.exists() {
            return Some(path.to_path_buf());
        }
        if path.is_absolute() {
            return None;
        }
        let cwd = std::env::current_dir().ok()?;
        let root = cwd.ancestors().find(|d| d.join("Cargo.lock").is_file())?;
        Some(root.join(path)).filter(|p| p.exists())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<cache>/<section>/<name>`, creating the section directory.
    pub fn file(&self, section: &str, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join(section);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(dir.join(name))
    }
}
