//! The scratch directory: the one place a guest may write.
//!
//! Each run gets a fresh private directory (mode 0700) under the sandbox's scratch root. Input
//! files are written into it (mode 0600) before the run; after the run its files can be copied
//! out or returned ([`collect`]); it is removed when the [`Scratch`] is dropped, whatever
//! happened in between. Every host-side access to what the guest may have made goes through
//! [`guarded`]: no link is followed, no special file opened for real, nothing read unbounded.

pub mod collect;
pub mod guarded;
pub mod slot;

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use collect::{escape_path, mime_type, Report, SkippedFile};
pub use slot::{ScratchSlot, SlotError};

use crate::request::{guest_path, InputFile};
use crate::result::OutputFile;

/// A fresh scratch directory, removed on drop.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
    /// Whether the directory is still this value's to remove.
    owned: bool,
    /// Whether the directory is a size-limited tmpfs of its own (see [`Quota`]).
    mounted: bool,
    /// The quota it holds to.
    quota: Quota,
    /// Of a tmpfs this process mounted: the inode number it gave last (its root's, or that of
    /// the probe [`untouched`] made). Each tmpfs numbers its inodes from a counter of its own,
    /// so the next one it gives is this plus one only if nothing was made in between.
    last_ino: Option<u64>,
}

/// The source name of every scratch tmpfs, as `/proc/self/mountinfo` shows it: how a shell
/// sandbox tells other runs' directories from the rest of its mounts.
pub const MOUNT_SOURCE: &std::ffi::CStr = c"wsbx-scratch";

/// How much a scratch directory may hold.
///
/// When wsbx may mount file systems (it runs as root), each scratch directory is a tmpfs of
/// its own with `size` = `bytes` and `nr_inodes` = `files` + 1 (its root): the kernel refuses
/// the write or create past the quota with `ENOSPC`, whatever the guest, and the guest's files
/// never reach the host's disk. Elsewhere the quota cannot be enforced; wsbx says so once in
/// its log and the run goes on without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Bytes of file content (rounded up to whole pages).
    pub bytes: u64,
    /// Files and directories, the scratch directory itself not counted.
    pub files: u64,
}

impl Quota {
    /// The quota of a run with `limits`.
    pub fn of(limits: &crate::Limits) -> Quota {
        Quota { bytes: limits.disk_bytes(), files: limits.max_files }
    }

    fn options(&self) -> String {
        format!("size={},nr_inodes={},mode=0700", self.bytes.max(4096), self.files.saturating_add(1))
    }
}

impl Scratch {
    /// Creates a fresh private directory (0700) under `root` (created if missing), named
    /// `wsbx-<pid>-<random>` so that what a dead wsbx process left can be told apart and swept
    /// ([`sweep`]).
    ///
    /// The directory holds at most `quota` (see [`Quota`] for where that is enforced).
    pub fn create(root: &Path, quota: Quota) -> io::Result<Scratch> {
        ensure_exit_cleanup();
        if let Some(scratch) = Self::reuse_mount_point(root, &quota) {
            return Ok(scratch);
        }
        fs::create_dir_all(root)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(root)?;
        let path = dir.keep();
        live().insert(path.clone());
        let mut scratch = Scratch { path, owned: true, mounted: false, quota, last_ino: None };
        scratch.mounted = mount_quota(&scratch.path, &quota, false)?;
        scratch.last_ino = scratch.mounted.then(|| root_ino(&scratch.path)).flatten();
        Ok(scratch)
    }

    /// A directory an earlier run under `root` left for reuse ([`Scratch::recycle`]), if there
    /// is one and it can hold `quota`: its tmpfs, untouched and kept mounted, with its times set
    /// to now as a new mount's are; or a new tmpfs on its empty mount point.
    fn reuse_mount_point(root: &Path, quota: &Quota) -> Option<Scratch> {
        loop {
            let Idle { path, kept } = {
                let mut idle = idle();
                let at = idle.iter().position(|i| i.path.parent() == Some(root))?;
                idle.swap_remove(at)
            };
            // Ours, made 0700 in a root only we write to (or a sticky /tmp): still a plain
            // directory unless something removed it meanwhile (`remove_all_live`).
            let plain_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            if plain_dir {
                if let Some((was, last_ino)) = kept {
                    let fits = was == *quota || matches!(mount_quota(&path, quota, true), Ok(true));
                    if fits && times_now(&path) {
                        return Some(Scratch { path, owned: true, mounted: true, quota: *quota, last_ino: Some(last_ino) });
                    }
                    unmount(&path);
                }
                if matches!(mount_quota(&path, quota, false), Ok(true)) {
                    let last_ino = root_ino(&path);
                    return Some(Scratch { path, owned: true, mounted: true, quota: *quota, last_ino });
                }
            }
            unmount(&path);
            live().remove(&path);
            let _ = fs::remove_dir(&path);
        }
    }

    /// Ends a one-shot run's directory the quick way. A tmpfs the run left as it was made
    /// ([`untouched`]: nothing created in it, by the guest or as an input) stays mounted for the
    /// next directory made under the same root, which only sets its times; most runs write
    /// nothing, and mounting and detaching a tmpfs was most of a short run's host time. Any
    /// other tmpfs, with everything the run wrote, is detached now as on drop, and the empty
    /// mount point it covered is kept for the next directory, which mounts a tmpfs of its own
    /// there. (Making and removing that directory on the host's file system — on ext4 a block
    /// allocated, then freed and discarded — was a third of a short run's host time.) At most
    /// [`MAX_IDLE`] are kept; they go with [`release_idle`] (a [`crate::Sandbox`] calls it when
    /// dropped), at exit, or by the next process's [`sweep`] after a crash. A directory that is
    /// not a tmpfs of its own is removed, as on drop.
    pub fn recycle(mut self) {
        if !(self.mounted && self.owned && live().contains(&self.path)) {
            return;
        }
        let kept = self.last_ino.and_then(|ino| untouched(&self.path, ino)).map(|ino| (self.quota, ino));
        let mut idle = idle();
        if idle.len() < MAX_IDLE && (kept.is_some() || unmount(&self.path)) {
            idle.push(Idle { path: self.path.clone(), kept });
            self.owned = false;
        }
    }

    /// Sets the directory's access and modification times to now: a directory made ahead of
    /// its run shows the run's start, not when it was made (after an earlier run ended).
    pub fn touch(&self) {
        times_now(&self.path);
    }

    /// Changes the quota of an empty scratch directory made ahead of its run.
    pub fn set_quota(&mut self, quota: Quota) -> io::Result<()> {
        // The same quota needs no remount: the kernel held what is there to it.
        if self.mounted && self.quota != quota {
            mount_quota(&self.path, &quota, true)?;
            self.quota = quota;
        }
        Ok(())
    }

    /// Bytes the directory's files hold now.
    pub fn disk_bytes(&self) -> u64 {
        if self.mounted {
            if let Ok(stat) = rustix::fs::statvfs(&self.path) {
                return stat.f_blocks.saturating_sub(stat.f_bfree).saturating_mul(stat.f_frsize);
            }
        }
        collect::apparent_size(&self.path)
    }

    /// The directory on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes input files, private to the run (files 0600, directories 0700). Paths were
    /// validated with the request; they are checked again here so this function is safe on its
    /// own.
    ///
    /// The directory may hold what a guest made (a session's, between turns), so every step
    /// goes through [`guarded`]: no link is followed anywhere along a path, directories are
    /// made one component at a time beneath the root. A regular file already at a path is
    /// replaced (unlinked, then created anew: never written through); a directory, link or
    /// special file there is an error (`AlreadyExists`).
    pub fn write_inputs(&self, files: &[InputFile]) -> io::Result<()> {
        use rustix::fs::{AtFlags, FileType, Mode, OFlags};
        if files.is_empty() {
            return Ok(());
        }
        let root = guarded::open_root(&self.path)?;
        for file in files {
            let rel = guest_path(&file.path)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad input path {:?}", file.path)));
            };
            let mut dir = guarded::open_dir(root.as_fd(), Path::new(""))?;
            for component in parent.components() {
                let part = Path::new(component.as_os_str());
                match rustix::fs::mkdirat(&dir, part, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                dir = guarded::open_dir(dir.as_fd(), part)
                    .map_err(|e| io::Error::new(e.kind(), format!("input {:?}: {} is not a plain directory: {e}", file.path, parent.display())))?;
            }
            if let Ok(stat) = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                    return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("input {:?}: something other than a regular file is there", file.path)));
                }
                rustix::fs::unlinkat(&dir, name, AtFlags::empty())?;
            }
            let fd = guarded::open_beneath(dir.as_fd(), Path::new(name), OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, Mode::from_raw_mode(0o600))?;
            io::Write::write_all(&mut fs::File::from(fd), &file.content)?;
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
        if !std::mem::take(&mut self.owned) {
            return Ok(());
        }
        if !live().remove(&self.path) {
            // `remove_all_live` removed it already (the process is stopping).
            return Ok(());
        }
        let path = self.path.clone();
        if self.mounted {
            // The tmpfs and everything in it go at once.
            unmount(&path);
        }
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

/// Mounts a tmpfs holding at most `quota` on `path` (or changes the quota of the one there).
/// Returns whether a file system was mounted: `false` where wsbx may not mount (not root),
/// which it logs once.
fn mount_quota(path: &Path, quota: &Quota, remount: bool) -> io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    static UNPRIVILEGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if UNPRIVILEGED.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(false);
    }
    let target = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let options = CString::new(quota.options()).map_err(io::Error::other)?;
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if remount {
        flags |= libc::MS_REMOUNT;
    }
    // SAFETY: all pointers are to NUL-terminated strings that outlive the call.
    let r = unsafe { libc::mount(MOUNT_SOURCE.as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), flags, options.as_ptr().cast()) };
    if r == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EPERM) && !remount {
        if !UNPRIVILEGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!("wsbx cannot mount file systems here (it is not root): disk_mb and max_files are not enforced");
        }
        return Ok(false);
    }
    Err(io::Error::new(error.kind(), format!("mounting the scratch quota on {}: {error}", path.display())))
}

/// Detaches the file system mounted on `path`, if any; whether one was.
fn unmount(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(target) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: a NUL-terminated path that outlives the call.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) == 0 }
}

/// Directories kept for reuse ([`Scratch::recycle`]), at most this many per process.
const MAX_IDLE: usize = 8;

/// A directory kept for reuse, still in [`live`] (so that exit removes it): an empty mount
/// point, or one with its tmpfs still mounted, untouched, with the quota it holds to and the
/// inode number it gave last.
struct Idle {
    path: PathBuf,
    kept: Option<(Quota, u64)>,
}

fn idle() -> std::sync::MutexGuard<'static, Vec<Idle>> {
    static IDLE: std::sync::Mutex<Vec<Idle>> = std::sync::Mutex::new(Vec::new());
    IDLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes the directories kept for reuse ([`Scratch::recycle`]).
pub fn release_idle() {
    let paths: Vec<PathBuf> = idle().drain(..).map(|i| i.path).collect();
    for path in paths {
        if live().remove(&path) {
            unmount(&path);
            let _ = fs::remove_dir(&path);
        }
    }
}

/// The inode number of `path` itself (a tmpfs's root: the first it gave).
fn root_ino(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).ok().map(|m| m.ino())
}

/// Whether the tmpfs on `path`, whose last inode number given was `last_ino`, is as it was
/// made: it holds nothing (its root alone, no byte), its root is this process's, 0700, with no
/// directory in it, and no inode was made in it since, even one removed again — a probe file
/// (`O_TMPFILE`, never linked) gets the very next number. Returns the probe's number. Anything
/// it cannot tell reads as touched: the tmpfs is then detached as usual.
///
/// Not checked, because a wasm guest cannot change them (a shell job's directory belongs to
/// its job user and fails the owner check): extended attributes and links held open by a
/// process that outlived its run. The times a guest can set, or reading the directory
/// changes, are set to now when the directory is reused ([`times_now`]).
fn untouched(path: &Path, last_ino: u64) -> Option<u64> {
    use rustix::fs::{Mode, OFlags};
    let usage = rustix::fs::statvfs(path).ok()?;
    if usage.f_files.saturating_sub(usage.f_ffree) != 1 || usage.f_blocks != usage.f_bfree {
        return None;
    }
    let root = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let stat = rustix::fs::fstat(&root).ok()?;
    let ours = stat.st_uid == rustix::process::geteuid().as_raw() && stat.st_gid == rustix::process::getegid().as_raw();
    if !ours || stat.st_mode != (libc::S_IFDIR | 0o700) || stat.st_nlink != 2 {
        return None;
    }
    let probe = rustix::fs::openat(&root, c".", OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC, Mode::from_raw_mode(0o600)).ok()?;
    let ino = rustix::fs::fstat(&probe).ok()?.st_ino;
    (ino == last_ino.checked_add(1)?).then_some(ino)
}

/// Sets the access and modification times of `path` (and so its change time) to now, as a new
/// mount's are; whether that worked.
fn times_now(path: &Path) -> bool {
    let Ok(target) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    let now = libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW };
    // SAFETY: a NUL-terminated path and two timespecs that outlive the call.
    unsafe { libc::utimensat(libc::AT_FDCWD, target.as_ptr(), [now, now].as_ptr(), libc::AT_SYMLINK_NOFOLLOW) == 0 }
}

/// Makes sure a process that exits without dropping its scratch directories (a test binary
/// with a sandbox in a static, `std::process::exit`) still removes them.
fn ensure_exit_cleanup() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    extern "C" fn at_exit() {
        remove_all_live();
    }
    REGISTERED.call_once(|| {
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe { libc::atexit(at_exit) };
    });
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
        unmount(&path);
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
        unmount(&path);
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
        let scratch = Scratch::create(root.path(), Quota::of(&crate::Limits::DEFAULT)).unwrap();
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
    fn a_recycled_mount_point_gets_a_new_empty_tmpfs_and_is_released() {
        let root = tempfile::tempdir().unwrap();
        let quota = Quota::of(&crate::Limits::DEFAULT);
        let first = Scratch::create(root.path(), quota).unwrap();
        if !first.mounted {
            // Only root mounts (CI runs as root); elsewhere there is nothing to recycle.
            return;
        }
        fs::write(first.path().join("secret"), "x").unwrap();
        let path = first.path().to_owned();
        first.recycle();
        assert!(fs::read_dir(&path).unwrap().next().is_none(), "the run's files went with its tmpfs");
        let second = Scratch::create(root.path(), quota).unwrap();
        assert_eq!(second.path(), path, "the mount point is reused");
        assert!(second.mounted);
        assert!(fs::read_dir(second.path()).unwrap().next().is_none(), "a new, empty tmpfs");
        fs::write(second.path().join("again"), "y").unwrap();
        second.recycle();
        release_idle();
        assert!(!path.exists());
        // Dropped rather than recycled: removed at once, as before.
        let third = Scratch::create(root.path(), quota).unwrap();
        let path = third.path().to_owned();
        drop(third);
        assert!(!path.exists());
    }

    /// What a run left as it was made is kept mounted for the next; anything a run made,
    /// even removed again, or changed in the root, gets the next directory a new tmpfs.
    #[test]
    fn only_an_untouched_tmpfs_stays_mounted_for_the_next_run() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let quota = Quota::of(&crate::Limits::DEFAULT);
        let probe = Scratch::create(root.path(), quota).unwrap();
        if !probe.mounted {
            return; // Only root mounts (CI runs as root).
        }
        drop(probe);
        let dev = |s: &Scratch| fs::symlink_metadata(s.path()).unwrap().dev();
        // Each way of touching it, done to a directory; `true` when it must be kept.
        let long_ago = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1);
        let touches: Vec<(&str, Box<dyn Fn(&Path) -> Option<fs::File>>, bool)> = vec![
            ("nothing", Box::new(|_| None), true),
            ("read and its times set", Box::new(move |p| {
                let _ = fs::read_dir(p).unwrap().count();
                fs::File::open(p).unwrap().set_times(fs::FileTimes::new().set_accessed(long_ago).set_modified(long_ago)).unwrap();
                None
            }), true),
            ("a file made and removed", Box::new(|p| {
                fs::write(p.join("gone"), "x").unwrap();
                fs::remove_file(p.join("gone")).unwrap();
                None
            }), false),
            ("a directory made and removed", Box::new(|p| {
                fs::create_dir(p.join("d")).unwrap();
                fs::remove_dir(p.join("d")).unwrap();
                None
            }), false),
            ("a file removed but held open", Box::new(|p| {
                let f = fs::File::create(p.join("held")).unwrap();
                fs::remove_file(p.join("held")).unwrap();
                Some(f)
            }), false),
            ("its mode changed", Box::new(|p| {
                fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
                None
            }), false),
        ];
        for (what, touch, kept) in touches {
            let first = Scratch::create(root.path(), quota).unwrap();
            let (path, was) = (first.path().to_owned(), dev(&first));
            // Held open, a detached tmpfs lives on: a new one cannot get its device number.
            let _pinned = fs::File::open(&path).unwrap();
            let held = touch(&path);
            first.recycle();
            drop(held);
            let next = Scratch::create(root.path(), quota).unwrap();
            assert_eq!(next.path(), path, "{what}: the directory is reused");
            assert_eq!(dev(&next) == was, kept, "{what}: kept mounted is {kept}");
            let meta = fs::symlink_metadata(next.path()).unwrap();
            assert_eq!(meta.mode(), libc::S_IFDIR | 0o700, "{what}");
            assert!(fs::read_dir(next.path()).unwrap().next().is_none(), "{what}: empty");
            let age = std::time::SystemTime::now().duration_since(meta.modified().unwrap()).unwrap_or_default();
            assert!(age < std::time::Duration::from_secs(60), "{what}: its times are new ({age:?})");
            drop(next);
            release_idle();
        }
        // A kept tmpfs given another quota holds to the new one.
        let first = Scratch::create(root.path(), quota).unwrap();
        let (was, _pinned) = (dev(&first), fs::File::open(first.path()).unwrap());
        first.recycle();
        let small = Quota { bytes: 64 << 10, files: 3 };
        let next = Scratch::create(root.path(), small).unwrap();
        assert_eq!(dev(&next), was, "kept mounted");
        let usage = rustix::fs::statvfs(next.path()).unwrap();
        assert_eq!((usage.f_blocks * usage.f_frsize, usage.f_files), (64 << 10, 4));
        assert!(fs::write(next.path().join("big"), vec![0u8; 128 << 10]).is_err(), "the new size holds");
        drop(next);
        release_idle();
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0, "nothing left");
    }

    #[test]
    fn an_escaping_input_path_is_refused_and_nothing_written() {
        let root = tempfile::tempdir().unwrap();
        let scratch = Scratch::create(root.path(), Quota::of(&crate::Limits::DEFAULT)).unwrap();
        let err = scratch
            .write_inputs(&[InputFile { path: "../x".into(), content: vec![] }])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(!root.path().join("x").exists());
    }

    #[test]
    fn inputs_never_go_through_a_link_and_replace_only_regular_files() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let scratch = Scratch::create(root.path(), Quota::of(&crate::Limits::DEFAULT)).unwrap();
        std::os::unix::fs::symlink(outside.path(), scratch.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), scratch.path().join("f")).unwrap();
        for path in ["link/x", "f"] {
            assert!(scratch.write_inputs(&[InputFile { path: path.into(), content: b"no".to_vec() }]).is_err(), "{path}");
        }
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        let input = |content: &[u8]| [InputFile { path: "d/a".into(), content: content.to_vec() }];
        scratch.write_inputs(&input(b"one")).unwrap();
        scratch.write_inputs(&input(b"two")).unwrap();
        assert_eq!(fs::read(scratch.path().join("d/a")).unwrap(), b"two");
    }

    #[test]
    fn copy_out_skips_links() {
        let root = tempfile::tempdir().unwrap();
        let scratch = Scratch::create(root.path(), Quota::of(&crate::Limits::DEFAULT)).unwrap();
        fs::write(scratch.path().join("f"), "data").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", scratch.path().join("link")).unwrap();
        let out = tempfile::tempdir().unwrap();
        scratch.copy_out(out.path(), u64::MAX).unwrap();
        assert_eq!(fs::read_to_string(out.path().join("f")).unwrap(), "data");
        assert!(fs::symlink_metadata(out.path().join("link")).is_err());
    }
}
