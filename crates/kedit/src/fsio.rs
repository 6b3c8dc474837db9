//! Writing files and directories so that they appear whole or not at all: a reader (or a
//! resumed run) never finds a half-written cache file, picture or model directory.
//!
//! Everything is written beside its destination first and renamed into place: a rename
//! within one directory is atomic, a copy across file systems is not.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `dir/.name.tmp-<pid>`: same directory, so the final rename is atomic; the process id
/// keeps two processes writing the same file apart.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes bytes to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::io(tmp, e))
    })
}

/// Writes `path` atomically with a writer that takes a path (serialisers that stream to a
/// file of their own, so that a large file is never held in memory whole).
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_sibling(path);
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Replaces the directory `dir` by one that `fill` writes into an empty temporary sibling.
/// An existing `dir` is moved aside before the new one takes its place and removed after,
/// so that `dir` is never a mix of old and new files.
pub fn replace_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_sibling(dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    fill(&tmp)?;
    if dir.exists() {
        let old = dir.with_file_name(format!(
            ".{}.old-{}",
            dir.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
        std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    } else {
        std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kedit-fsio-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_atomic_write_leaves_only_the_file() {
        let dir = scratch("write");
        let path = dir.join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_replaced_directory_holds_only_the_new_files_and_a_failed_fill_none() {
        let dir = scratch("replace");
        let target = dir.join("model");
        replace_dir(&target, |tmp| write_atomic(&tmp.join("old.txt"), b"old")).unwrap();
        replace_dir(&target, |tmp| write_atomic(&tmp.join("new.txt"), b"new")).unwrap();
        assert!(!target.join("old.txt").exists());
        assert_eq!(std::fs::read(target.join("new.txt")).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(
            names.len(),
            1,
            "neither the temporary nor the old directory is left"
        );
        assert!(replace_dir(&target, |_| Err(Error::invalid("fill failed"))).is_err());
        assert_eq!(std::fs::read(target.join("new.txt")).unwrap(), b"new");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
