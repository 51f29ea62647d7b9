//! The scratch directory: the one place a guest may write.
//!
//! Each run gets a fresh private directory (mode 0700) under the sandbox's scratch root. Input
//! files are written into it before the run; after the run its files can be copied out or
//! returned; it is removed when the [`Scratch`] is dropped, whatever happened in between.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::request::{guest_path, InputFile};
use crate::result::OutputFile;

/// A fresh scratch directory, removed on drop.
#[derive(Debug)]
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Scratch {
    /// Creates a fresh directory under `root` (created if missing).
    pub fn create(root: &Path) -> io::Result<Scratch> {
        fs::create_dir_all(root)?;
        let dir = tempfile::Builder::new().prefix("wsbx-").tempdir_in(root)?;
        let path = dir.path().to_owned();
        Ok(Scratch { dir: Some(dir), path })
    }

    /// The directory on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the request's input files. Paths were validated with the request; they are checked
    /// again here so this function is safe on its own. Files are created, never overwritten.
    pub fn write_inputs(&self, files: &[InputFile]) -> io::Result<()> {
        for file in files {
            let rel = guest_path(&file.path)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            let dest = self.path.join(&rel);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)?;
            }
            let mut out = fs::OpenOptions::new().write(true).create_new(true).open(&dest)?;
            io::Write::write_all(&mut out, &file.content)?;
        }
        Ok(())
    }

    /// Copies the directory's regular files and directories into `dest` (created if missing).
    /// Symbolic links and special files the guest made are skipped: a link is the guest's
    /// claim about the host's file system, not content.
    pub fn copy_out(&self, dest: &Path) -> io::Result<()> {
        fs::create_dir_all(dest)?;
        for entry in self.walk()? {
            let target = dest.join(&entry.rel);
            if entry.is_dir {
                fs::create_dir_all(&target)?;
            } else {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)?;
                }
                fs::copy(self.path.join(&entry.rel), &target)?;
            }
        }
        Ok(())
    }

    /// The directory's regular files, base64-encoded, for results that return files.
    pub fn collect_files(&self) -> io::Result<Vec<OutputFile>> {
        let mut files = Vec::new();
        for entry in self.walk()? {
            if entry.is_dir {
                continue;
            }
            let bytes = fs::read(self.path.join(&entry.rel))?;
            files.push(OutputFile {
                path: entry.rel.to_string_lossy().replace('\\', "/"),
                encoding: "base64".to_owned(),
                content: base64::engine::general_purpose::STANDARD.encode(bytes),
            });
        }
        Ok(files)
    }

    /// Every regular file and directory below the root, sorted by path (so parents come first),
    /// never following links.
    fn walk(&self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let mut names: Vec<_> = fs::read_dir(self.path.join(&rel))?.collect::<Result<_, _>>()?;
            names.sort_by_key(|e| e.file_name());
            for entry in names {
                let kind = entry.file_type()?;
                let child = rel.join(entry.file_name());
                if kind.is_dir() {
                    out.push(Entry { rel: child.clone(), is_dir: true });
                    stack.push(child);
                } else if kind.is_file() {
                    out.push(Entry { rel: child, is_dir: false });
                }
            }
        }
        out.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(out)
    }

    /// Removes the directory now, reporting failure (drop does the same silently).
    pub fn remove(mut self) -> io::Result<()> {
        self.remove_inner()
    }

    fn remove_inner(&mut self) -> io::Result<()> {
        let Some(dir) = self.dir.take() else { return Ok(()) };
        let path = dir.keep();
        if fs::remove_dir_all(&path).is_ok() {
            return Ok(());
        }
        // A guest can make a directory unreadable or unwritable (shell's chmod); give the owner
        // its rights back everywhere and try again.
        restore_permissions(&path);
        fs::remove_dir_all(&path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = self.remove_inner() {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove scratch directory");
        }
    }
}

struct Entry {
    rel: PathBuf,
    is_dir: bool,
}

fn restore_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(path) else { return };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            restore_permissions(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_written_and_the_directory_is_removed_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let scratch = Scratch::create(root.path()).unwrap();
        scratch
            .write_inputs(&[InputFile { path: "sub/a.txt".into(), content: b"hi".to_vec() }])
            .unwrap();
        assert_eq!(fs::read(scratch.path().join("sub/a.txt")).unwrap(), b"hi");
        let path = scratch.path().to_owned();
        drop(scratch);
        assert!(!path.exists());
    }

    #[test]
    fn an_escaping_input_path_is_refused_and_nothing_written() {
        let root = tempfile::tempdir().unwrap();
        let scratch = Scratch::create(root.path()).unwrap();
        let err = scratch
            .write_inputs(&[InputFile { path: "../x".into(), content: vec![] }])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(!root.path().join("x").exists());
    }

    #[test]
    fn copy_out_skips_links() {
        let root = tempfile::tempdir().unwrap();
        let scratch = Scratch::create(root.path()).unwrap();
        fs::write(scratch.path().join("f"), "data").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", scratch.path().join("link")).unwrap();
        let out = tempfile::tempdir().unwrap();
        scratch.copy_out(out.path()).unwrap();
        assert_eq!(fs::read_to_string(out.path().join("f")).unwrap(), "data");
        assert!(fs::symlink_metadata(out.path().join("link")).is_err());
    }
}
