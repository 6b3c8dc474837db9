//! Writing files so that they appear whole or not at all: a reader (or a resumed run) never
//! finds a half-written cache file, picture or model file; and checking outputs before the
//! work, so that nothing a user owns is overwritten and no long run fails at its end.
//!
//! Everything is written beside its destination first and renamed into place: a rename
//! within one directory is atomic, a copy across file systems is not. Temporary files of
//! killed writers are swept on the next write into their directory.

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
/// file of their own, so that a large file is never held in memory whole). A failed write
/// removes its temporary file; temporary files that killed processes left in the same
/// directory are removed first.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(dir) = parent_dir(path) {
        sweep_stale_temps(&dir);
    }
    let tmp = temp_sibling(path);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// The directory a file is written in (`.` for a bare file name).
fn parent_dir(path: &Path) -> Option<PathBuf> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(PathBuf::from(".")),
        Some(p) => Some(p.to_path_buf()),
        None => None,
    }
}

/// The process id in a temporary name written by [`temp_sibling`] (`.NAME.tmp-PID`).
fn temp_owner(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, pid) = name.rsplit_once(".tmp-")?;
    pid.parse().ok()
}

/// Whether a process is running (Linux: `/proc/PID`). Elsewhere every process is assumed
/// alive, so nothing is ever removed that a live writer might still be using.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// Removes the temporary files and directories (`.NAME.tmp-PID`) that processes no longer
/// running left in `dir` when they were killed mid-write. Best effort: a failure to remove
/// one is not an error of the write that triggered the sweep.
pub fn sweep_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        if process_alive(pid) {
            continue;
        }
        let path = entry.path();
        let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed += usize::from(gone.is_ok());
    }
    removed
}

/// Checks, before any work, that a file can be written at `path`: it is not a directory,
/// and the directory it goes in exists (or can be created under a writable ancestor).
pub fn check_writable_file(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::invalid(format!(
            "{}: is a directory; a file is needed here",
            path.display()
        )));
    }
    // An existing file is replaced by a rename in its directory: that directory must be
    // writable, not the file.
    match parent_dir(path) {
        Some(dir) => check_writable_dir(&dir),
        None => Err(Error::invalid(format!(
            "{}: not a file path",
            path.display()
        ))),
    }
}

/// Checks, before any work, that `dir` can hold new files: it is a directory (or does not
/// exist yet and its nearest existing ancestor is a writable directory). Nothing is
/// created: a refused configuration leaves no directory behind.
pub fn check_writable_dir(dir: &Path) -> Result<()> {
    let mut existing = dir.to_path_buf();
    while !existing.exists() {
        if !existing.pop() || existing.as_os_str().is_empty() {
            existing = PathBuf::from(".");
            break;
        }
    }
    if !existing.is_dir() {
        return Err(Error::invalid(format!(
            "{}: is a file; a directory is needed here{}",
            existing.display(),
            if existing == dir {
                String::new()
            } else {
                format!(" (to hold {})", dir.display())
            }
        )));
    }
    probe_writable(&existing)
}

/// Whether files can be created in the existing directory `dir`, found by creating one
/// (permission bits do not tell: root, ACLs, read-only mounts).
fn probe_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(format!(".kedit-probe.tmp-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::invalid(format!(
            "{}: cannot write here: {e}",
            dir.display()
        ))),
    }
}

/// Whether `dir` may be written as an output directory owned by kedit, recognised by the
/// file `marker` that kedit writes into every such directory. A missing or empty directory
/// may; a directory of ours may with `overwrite`; any other directory may not (it holds
/// someone else's files), nor may a file.
pub fn check_owned_dir(dir: &Path, marker: &str, overwrite: bool) -> Result<()> {
    if !dir.exists() {
        return check_writable_dir(dir);
    }
    if !dir.is_dir() {
        return Err(Error::invalid(format!(
            "{}: exists and is not a directory; refusing to replace it",
            dir.display()
        )));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut foreign = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if temp_owner(&name).is_none() {
            foreign.push(name);
        }
    }
    if foreign.is_empty() {
        return probe_writable(dir);
    }
    if !dir.join(marker).is_file() {
        foreign.sort();
        let shown: Vec<&str> = foreign.iter().take(5).map(String::as_str).collect();
        return Err(Error::invalid(format!(
            "{}: is not empty and was not written by kedit (no `{marker}`; it holds {}{}); \
             refusing to write into it: choose a new or empty directory",
            dir.display(),
            shown.join(", "),
            if foreign.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        )));
    }
    if !overwrite {
        return Err(Error::invalid(format!(
            "{}: already holds a model saved by kedit; pass --overwrite to replace it",
            dir.display()
        )));
    }
    probe_writable(dir)
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
    fn a_killed_writers_temporary_files_are_swept_and_live_ones_kept() {
        let dir = scratch("sweep");
        // No process has this id (Linux caps pids far below it).
        std::fs::write(dir.join(".a.json.tmp-4000000000"), b"partial").unwrap();
        std::fs::create_dir(dir.join(".model.tmp-4000000001")).unwrap();
        let mine = temp_sibling(&dir.join("b.json"));
        std::fs::write(&mine, b"in progress").unwrap();
        write_atomic(&dir.join("a.json"), b"whole").unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let own = mine.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(names, vec![own, "a.json".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = scratch("failed");
        let path = dir.join("a.bin");
        let err = write_atomic_with(&path, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(Error::invalid("serialiser failed"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_output_directory_of_someone_else_is_refused() {
        let dir = scratch("owned");
        let theirs = dir.join("theirs");
        std::fs::create_dir_all(theirs.join("sub")).unwrap();
        std::fs::write(theirs.join("notes.txt"), b"x").unwrap();
        let e = check_owned_dir(&theirs, "kedit.json", true).unwrap_err();
        assert!(e.to_string().contains("not written by kedit"), "{e}");
        assert!(e.to_string().contains("notes.txt"), "{e}");
        let file = dir.join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = check_owned_dir(&file, "kedit.json", true).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let e = check_owned_dir(&file.join("below"), "kedit.json", false).unwrap_err();
        assert!(e.to_string().contains("is a file"), "{e}");
        // Missing or empty: fine; ours: only with overwrite.
        check_owned_dir(&dir.join("new/deeper"), "kedit.json", false).unwrap();
        assert!(!dir.join("new").exists(), "a check creates nothing");
        let ours = dir.join("ours");
        std::fs::create_dir(&ours).unwrap();
        check_owned_dir(&ours, "kedit.json", false).unwrap();
        std::fs::write(ours.join("kedit.json"), b"{}").unwrap();
        let e = check_owned_dir(&ours, "kedit.json", false).unwrap_err();
        assert!(e.to_string().contains("--overwrite"), "{e}");
        check_owned_dir(&ours, "kedit.json", true).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_path_that_is_a_directory_is_refused() {
        let dir = scratch("filepath");
        let e = check_writable_file(&dir).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        check_writable_file(&dir.join("x/y.json")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
