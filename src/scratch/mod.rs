//! The scratch directory: the one place a guest may write.
//!
//! Each run gets a fresh private directory (mode 0700) under the sandbox's scratch root. Input
//! files are written into it (mode 0600) before the run; after the run its files can be copied
//! out or returned ([`collect`]); it is removed when the [`Scratch`] is dropped, whatever
//! happened in between. Every host-side access to what the guest may have made goes through
//! [`guarded`]: no link is followed, no special file opened for real, nothing read unbounded.

pub mod collect;
pub mod guarded;

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use collect::{escape_path, mime_type, Report, SkippedFile};

use crate::request::{guest_path, InputFile};
use crate::result::OutputFile;

/// A fresh scratch directory, removed on drop.
#[derive(Debug)]
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Scratch {
    /// Creates a fresh private directory (0700) under `root` (created if missing), named
    /// `wsbx-<pid>-<random>` so that what a dead wsbx process left can be told apart and swept
    /// ([`sweep`]).
    pub fn create(root: &Path) -> io::Result<Scratch> {
        fs::create_dir_all(root)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(root)?;
        let path = dir.path().to_owned();
        live().insert(path.clone());
        Ok(Scratch { dir: Some(dir), path })
    }

    /// The directory on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the request's input files, private to the run (files 0600, directories 0700).
    /// Paths were validated with the request; they are checked again here so this function is
    /// safe on its own. Files are created, never overwritten.
    pub fn write_inputs(&self, files: &[InputFile]) -> io::Result<()> {
        for file in files {
            let rel = guest_path(&file.path)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            let dest = self.path.join(&rel);
            if let Some(parent) = dest.parent() {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
            }
            let mut out = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&dest)?;
            io::Write::write_all(&mut out, &file.content)?;
        }
        Ok(())
    }

    /// Copies the directory's regular files and directories into `dest` (created if missing),
    /// content only and at most `max_bytes` of it; see [`collect::copy_out`].
    pub fn copy_out(&self, dest: &Path, max_bytes: u64) -> io::Result<Report> {
        collect::copy_out(&self.path, dest, max_bytes)
    }

    /// The directory's regular files, base64-encoded, at most `max_bytes` of content; see
    /// [`collect::collect`].
    pub fn collect_files(&self, max_bytes: u64) -> io::Result<(Vec<OutputFile>, Report)> {
        collect::collect(&self.path, max_bytes)
    }

    /// Removes the directory now, reporting failure (drop does the same silently).
    pub fn remove(mut self) -> io::Result<()> {
        self.remove_inner()
    }

    fn remove_inner(&mut self) -> io::Result<()> {
        let Some(dir) = self.dir.take() else { return Ok(()) };
        live().remove(&self.path);
        let path = dir.keep();
        // `remove_dir_all` never follows links (it works with openat/unlinkat).
        if fs::remove_dir_all(&path).is_ok() {
            return Ok(());
        }
        // A guest can make a directory unreadable or unwritable (shell's chmod); give the owner
        // its rights back everywhere and try again.
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o700));
        if let Ok(root) = guarded::open_root(&path) {
            restore_permissions(std::os::fd::AsFd::as_fd(&root), 0);
        }
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

/// What every scratch directory's name starts with.
const PREFIX: &str = "wsbx-";

/// The scratch directories of this process that exist now.
fn live() -> std::sync::MutexGuard<'static, std::collections::HashSet<PathBuf>> {
    static LIVE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<PathBuf>>> = std::sync::OnceLock::new();
    LIVE.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes every scratch directory this process still has, for a process about to exit without
/// unwinding (a signal handler's last act). Guests still running lose their directory.
pub fn remove_all_live() {
    let paths: Vec<PathBuf> = live().drain().collect();
    for path in paths {
        if fs::remove_dir_all(&path).is_err() {
            let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o700));
            if let Ok(root) = guarded::open_root(&path) {
                restore_permissions(std::os::fd::AsFd::as_fd(&root), 0);
            }
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Removes the scratch directories under `root` that a wsbx process which no longer runs left
/// behind (killed by SIGKILL or the OOM killer): directories named `wsbx-<pid>-<random>`, owned
/// by this user (any owner when root: shell jobs' directories belong to their job user), whose
/// pid is not alive. Nothing else is touched.
pub fn sweep(root: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(root) else { return 0 };
    let me = rustix::process::geteuid().as_raw();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)).and_then(|rest| rest.split_once('-')).and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(meta) = fs::symlink_metadata(entry.path()) else { continue };
        if !meta.is_dir() || (me != 0 && meta.uid() != me) || pid == std::process::id() as i32 || crate::backend::cgroup::process_alive(pid) {
            continue;
        }
        let path = entry.path();
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o700));
        if let Ok(dir) = guarded::open_root(&path) {
            restore_permissions(std::os::fd::AsFd::as_fd(&dir), 0);
        }
        if fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Makes every directory below `dir` 0700 again, through descriptors and names relative to
/// them (never a path a link could redirect). Depth is bounded; removal then reports what it
/// still cannot remove.
fn restore_permissions(dir: std::os::fd::BorrowedFd<'_>, depth: usize) {
    if depth > 256 {
        return;
    }
    let Ok(entries) = rustix::fs::Dir::read_from(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if entry.file_type() != rustix::fs::FileType::Directory || name == c"." || name == c".." {
            continue;
        }
        let _ = rustix::fs::chmodat(dir, name, rustix::fs::Mode::from_raw_mode(0o700), rustix::fs::AtFlags::empty());
        let rel = Path::new(std::ffi::OsStr::from_bytes(name.to_bytes()));
        if let Ok(child) = guarded::open_dir(dir, rel) {
            restore_permissions(std::os::fd::AsFd::as_fd(&child), depth + 1);
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
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(scratch.path()), 0o700);
        assert_eq!(mode(&scratch.path().join("sub")), 0o700);
        assert_eq!(mode(&scratch.path().join("sub/a.txt")), 0o600);
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
        scratch.copy_out(out.path(), u64::MAX).unwrap();
        assert_eq!(fs::read_to_string(out.path().join("f")).unwrap(), "data");
        assert!(fs::symlink_metadata(out.path().join("link")).is_err());
    }
}
