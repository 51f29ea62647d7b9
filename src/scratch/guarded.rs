//! Host-side access to paths a guest controls.
//!
//! Everything in a scratch directory may have been made by the guest: a name can be a symbolic
//! link to `/dev/zero`, a FIFO that never answers, a device, or a directory swapped for a link.
//! The host therefore never opens a guest path by name with the ordinary calls. Every open here
//! resolves the path with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from a descriptor of
//! the directory (no link is followed anywhere along the path, nothing outside is reachable),
//! opens with `O_NONBLOCK` (a FIFO or device never blocks the host), checks with `fstat` that it
//! got what it expected, and reads at most what it was asked for.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, Stat};

/// How guest paths are resolved: beneath the directory, through no link of any kind.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

/// Opens the directory at `path` (a path the host chose, not the guest) for use as the root of
/// guarded lookups.
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::open(path, flags, Mode::empty())?)
}

/// Opens `rel` beneath `root` with `flags` (plus `O_NOFOLLOW | O_NONBLOCK | O_NOCTTY |
/// O_CLOEXEC`), following no link. `rel` empty means `root` itself.
pub fn open_beneath(root: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let flags = flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    Ok(rustix::fs::openat2(root, rel, flags, mode, RESOLVE)?)
}

/// Opens the directory `rel` beneath `root`.
pub fn open_dir(root: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    open_beneath(root, rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
}

/// Opens `rel` beneath `root` for reading if, and only if, it is a regular file; returns the
/// file and its metadata. A link, FIFO, socket or device is refused with `InvalidInput`.
pub fn open_regular(root: BorrowedFd<'_>, rel: &Path) -> io::Result<(File, Stat)> {
    let fd = open_beneath(root, rel, OFlags::RDONLY, Mode::empty())?;
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok((File::from(fd), stat))
}

/// Reads at most `max` bytes of the regular file `rel` beneath `root`.
pub fn read_bounded(root: BorrowedFd<'_>, rel: &Path, max: u64) -> io::Result<Vec<u8>> {
    let (file, stat) = open_regular(root, rel)?;
    let size = u64::try_from(stat.st_size).unwrap_or(0).min(max);
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Whether `fd` is a directory.
pub fn is_dir(fd: impl AsFd) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_anywhere_along_a_path_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::fs::write(dir.path().join("real/f"), "x").unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
        let root = open_root(dir.path()).unwrap();
        assert!(open_regular(root.as_fd(), Path::new("real/f")).is_ok());
        assert!(open_regular(root.as_fd(), Path::new("link/f")).is_err());
        assert!(open_regular(root.as_fd(), Path::new("passwd")).is_err());
        assert!(open_regular(root.as_fd(), Path::new("../x")).is_err());
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        let root = open_root(dir.path()).unwrap();
        let err = read_bounded(root.as_fd(), Path::new("fifo"), 10).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![7u8; 10_000]).unwrap();
        let root = open_root(dir.path()).unwrap();
        assert_eq!(read_bounded(root.as_fd(), Path::new("big"), 100).unwrap().len(), 100);
    }
}
