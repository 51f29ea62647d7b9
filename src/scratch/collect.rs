//! Files out of a scratch directory: returned in a result (`return_files`) or copied to a host
//! directory (`--out-dir`).
//!
//! Only what the guest wrote as regular files and directories leaves the sandbox, as content:
//! links, FIFOs, sockets and devices are skipped and reported, modes are reduced to `0644` or
//! `0755` (never setuid, setgid or sticky), and what one result carries is capped by bytes
//! (a 1 GiB sparse file is left out, not expanded). Every access goes through [`guarded`].

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::guarded;
use crate::result::OutputFile;

/// Entries a walk visits at most; the rest is reported as skipped.
const MAX_ENTRIES: usize = 200_000;
/// Bytes of paths a walk holds at most: 200,000 paths near the 4096-byte limit would otherwise
/// hold 800 MB of the host's memory. The rest is reported as skipped.
const MAX_PATH_BYTES: usize = 32 << 20;
/// What one returned file costs a result besides its content and path (its JSON object's
/// fields), counted against the result's cap so that many empty files cannot make a result
/// of any size.
const ENTRY_BYTES: u64 = 100;
/// Skipped entries reported by name at most (beyond, the report says the list is cut).
const MAX_REPORTED: usize = 100;

/// A file of the scratch directory that was not returned or copied, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    /// Its path, escaped like [`OutputFile::path`].
    pub path: String,
    /// Why it was left out (`"a symbolic link"`, `"path longer than 4096 bytes"`, ...).
    pub reason: String,
}

/// What leaving the scratch directory left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Files left out because the byte cap was reached.
    pub truncated: bool,
    /// Entries that could not or must not leave (links, special files, unreachable paths):
    /// the first 100 found.
    pub skipped: Vec<SkippedFile>,
    /// Whether more entries were skipped than `skipped` lists.
    pub skipped_truncated: bool,
}

impl Report {
    fn skip(&mut self, rel: &Path, reason: impl Into<String>) {
        if self.skipped.len() < MAX_REPORTED {
            self.skipped.push(SkippedFile { path: escape_path(rel), reason: reason.into() });
        } else {
            self.skipped_truncated = true;
        }
    }
}

enum Kind {
    Dir,
    File,
}

struct Entry {
    rel: PathBuf,
    kind: Kind,
}

/// Every directory and regular file beneath `root`, sorted by path (parents first), and what
/// was skipped. Never follows a link.
fn walk(root: BorrowedFd<'_>, report: &mut Report) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    let (mut visited, mut path_bytes) = (0usize, 0usize);
    while let Some(rel) = stack.pop() {
        let opened = guarded::open_dir(root, &rel).and_then(|fd| Ok((rustix::fs::Dir::read_from(&fd)?, fd)));
        let (dir, dir_fd) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                report.skip(&rel, reason_for(&e));
                continue;
            }
        };
        for entry in dir {
            let Ok(entry) = entry else { break };
            let name = std::ffi::OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            visited += 1;
            let child = rel.join(name);
            path_bytes += child.as_os_str().len();
            if visited > MAX_ENTRIES || path_bytes > MAX_PATH_BYTES {
                let reason = match visited > MAX_ENTRIES {
                    true => format!("more than {MAX_ENTRIES} entries in the scratch directory"),
                    false => format!("more than {} MiB of paths in the scratch directory", MAX_PATH_BYTES >> 20),
                };
                report.skip(&child, reason);
                report.truncated = true;
                return sorted(out);
            }
            let mut kind = entry.file_type();
            if kind == FileType::Unknown {
                kind = rustix::fs::statat(&dir_fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                    .map(|s| FileType::from_raw_mode(s.st_mode))
                    .unwrap_or(FileType::Unknown);
            }
            match kind {
                FileType::Directory => {
                    out.push(Entry { rel: child.clone(), kind: Kind::Dir });
                    stack.push(child);
                }
                FileType::RegularFile => out.push(Entry { rel: child, kind: Kind::File }),
                FileType::Symlink => report.skip(&child, "a symbolic link (links are never followed)"),
                _ => report.skip(&child, "not a regular file or directory"),
            }
        }
    }
    sorted(out)
}

fn sorted(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.sort_by(|a, b| a.rel.cmp(&b.rel));
    entries
}

fn reason_for(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENAMETOOLONG) => "path longer than 4096 bytes".into(),
        Some(libc::ELOOP) | Some(libc::EXDEV) => "reached through a link".into(),
        _ => e.to_string(),
    }
}

/// The bytes of the regular files beneath `scratch` (their apparent sizes).
pub fn apparent_size(scratch: &Path) -> u64 {
    let Ok(root) = guarded::open_root(scratch) else { return 0 };
    let mut report = Report::default();
    walk(root.as_fd(), &mut report)
        .iter()
        .filter(|e| matches!(e.kind, Kind::File))
        .filter_map(|e| guarded::open_regular(root.as_fd(), &e.rel).ok())
        .map(|(_, stat)| u64::try_from(stat.st_size).unwrap_or(0))
        .sum()
}

/// Tracks the bytes a result may still carry.
struct Budget(u64);

impl Budget {
    fn take(&mut self, size: u64) -> bool {
        if size > self.0 {
            return false;
        }
        self.0 -= size;
        true
    }
}

/// The scratch directory's regular files, base64-encoded, at most `max_bytes` in all: each
/// file's content, path (as JSON writes it) and [`ENTRY_BYTES`]. A file that does not fit is left out and the
/// report says `truncated`.
pub fn collect(scratch: &Path, max_bytes: u64) -> io::Result<(Vec<OutputFile>, Report)> {
    let root = guarded::open_root(scratch)?;
    let mut report = Report::default();
    let mut budget = Budget(max_bytes);
    let mut files = Vec::new();
    for entry in walk(root.as_fd(), &mut report) {
        if !matches!(entry.kind, Kind::File) {
            continue;
        }
        let (file, stat) = match guarded::open_regular(root.as_fd(), &entry.rel) {
            Ok(opened) => opened,
            Err(e) => {
                report.skip(&entry.rel, reason_for(&e));
                continue;
            }
        };
        let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
        let path = escape_path(&entry.rel);
        if !budget.take(size.saturating_add(json_len(&path)).saturating_add(ENTRY_BYTES)) {
            report.truncated = true;
            continue;
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.take(size).read_to_end(&mut bytes)?;
        files.push(OutputFile {
            path,
            encoding: "base64".to_owned(),
            size: bytes.len() as u64,
            mime_type: mime_type(&entry.rel).to_owned(),
            content: base64::engine::general_purpose::STANDARD.encode(&bytes),
        });
    }
    report.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((files, report))
}

/// The bytes `text` takes as a JSON string's contents: a control character is `\u0001` (six
/// bytes), so a name of them costs a response six times its length.
fn json_len(text: &str) -> u64 {
    text.chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if c < ' ' => 6,
            c => c.len_utf8() as u64,
        })
        .sum()
}

/// Copies the scratch directory's directories and regular files into `dest` (created if
/// missing), content only, at most `max_bytes` of content in all.
///
/// Files are written `0644` (`0755` when the guest's file was executable by anyone), directories
/// `0755`; when wsbx runs as root, what it creates belongs to the owner of `dest`, the caller's
/// directory. Nothing in `dest` is followed through a link either, and a file already there
/// is replaced by a new one, never written into (it may be a hard link to a file elsewhere).
pub fn copy_out(scratch: &Path, dest: &Path, max_bytes: u64) -> io::Result<Report> {
    std::fs::create_dir_all(dest)?;
    let root = guarded::open_root(scratch)?;
    let dest_root = guarded::open_root(dest)?;
    let owner = owner_for(&dest_root)?;
    let mut report = Report::default();
    let mut budget = Budget(max_bytes);
    for entry in walk(root.as_fd(), &mut report) {
        let copied = match entry.kind {
            Kind::Dir => make_dir(dest_root.as_fd(), &entry.rel, owner),
            Kind::File => copy_file(root.as_fd(), dest_root.as_fd(), &entry.rel, owner, &mut budget, &mut report),
        };
        if let Err(e) = copied {
            report.skip(&entry.rel, reason_for(&e));
        }
    }
    report.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(report)
}

/// Who owns what wsbx creates in `dest`: the directory's owner when running as root.
fn owner_for(dest: &OwnedFd) -> io::Result<Option<(rustix::fs::Uid, rustix::fs::Gid)>> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let stat = rustix::fs::fstat(dest)?;
    let ids = (rustix::fs::Uid::from_raw(stat.st_uid), rustix::fs::Gid::from_raw(stat.st_gid));
    Ok(Some(ids))
}

type Owner = Option<(rustix::fs::Uid, rustix::fs::Gid)>;

/// The parent directory of `rel` beneath `root` and `rel`'s last name.
fn parent_of<'a>(root: BorrowedFd<'_>, rel: &'a Path) -> io::Result<(OwnedFd, &'a std::ffi::OsStr)> {
    let name = rel.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let parent = guarded::open_dir(root, rel.parent().unwrap_or(Path::new("")))?;
    Ok((parent, name))
}

fn make_dir(dest: BorrowedFd<'_>, rel: &Path, owner: Owner) -> io::Result<()> {
    let (parent, name) = parent_of(dest, rel)?;
    match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
        Ok(()) => {
            if let Some((uid, gid)) = owner {
                rustix::fs::chownat(&parent, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
            }
            Ok(())
        }
        // An existing directory is fine (an existing link or file is not: the next open fails).
        Err(rustix::io::Errno::EXIST) => guarded::open_dir(parent.as_fd(), Path::new(name)).map(drop),
        Err(e) => Err(e.into()),
    }
}

fn copy_file(
    scratch: BorrowedFd<'_>,
    dest: BorrowedFd<'_>,
    rel: &Path,
    owner: Owner,
    budget: &mut Budget,
    report: &mut Report,
) -> io::Result<()> {
    let (source, stat) = guarded::open_regular(scratch, rel)?;
    let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
    if !budget.take(size) {
        report.truncated = true;
        return Ok(());
    }
    let mode = if stat.st_mode & 0o111 != 0 { 0o755 } else { 0o644 };
    let (parent, name) = parent_of(dest, rel)?;
    // What is already there is replaced, never written through: a hard link in `dest` to a
    // file elsewhere (`ln /etc/x dest/out.csv`) must not get the guest's bytes, our mode or
    // `dest`'s owner. So the content goes to a new file of ours, renamed over the name once
    // complete (which also means no half-written file under the name). Anything but a
    // regular file in the way is refused, as links and FIFOs always were.
    match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(existing) if FileType::from_raw_mode(existing.st_mode) != FileType::RegularFile => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the destination exists and is not a regular file"));
        }
        Ok(_) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let temporary = format!(".wsbx-{}.tmp", uuid::Uuid::new_v4().simple());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&parent, temporary.as_str(), flags, Mode::from_raw_mode(mode))?;
    let written = (|| {
        // The umask may have taken bits off the mode O_CREAT gave.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        if let Some((uid, gid)) = owner {
            rustix::fs::fchown(&fd, Some(uid), Some(gid))?;
        }
        let mut out = File::from(fd);
        io::copy(&mut source.take(size), &mut out)?;
        out.flush()?;
        Ok::<_, io::Error>(rustix::fs::renameat(&parent, temporary.as_str(), &parent, name)?)
    })();
    if written.is_err() {
        let _ = rustix::fs::unlinkat(&parent, temporary.as_str(), AtFlags::empty());
    }
    written
}

/// A scratch path as text, unambiguously: valid UTF-8 names without a backslash are kept as
/// they are; otherwise each backslash becomes `\\` and each byte that is not part of valid
/// UTF-8 becomes `\xNN`.
///
/// ```
/// # use std::os::unix::ffi::OsStrExt;
/// use wsbx::scratch::escape_path;
/// let p = std::path::Path::new(std::ffi::OsStr::from_bytes(b"a\\b/\xff.txt"));
/// assert_eq!(escape_path(p), r"a\\b/\xff.txt");
/// assert_eq!(escape_path(std::path::Path::new("plots/figure-1.png")), "plots/figure-1.png");
/// ```
pub fn escape_path(rel: &Path) -> String {
    let bytes = rel.as_os_str().as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The media type a file's name suggests; `application/octet-stream` when it says nothing.
pub fn mime_type(rel: &Path) -> &'static str {
    let ext = rel.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("svg") => "image/svg+xml",
        Some("webp") => "image/webp",
        Some("pdf") => "application/pdf",
        Some("csv") => "text/csv",
        Some("tsv") => "text/tab-separated-values",
        Some("json") => "application/json",
        Some("html" | "htm") => "text/html",
        Some("md") => "text/markdown",
        Some("txt" | "log") => "text/plain",
        Some("py") => "text/x-python",
        Some("js" | "mjs") => "text/javascript",
        Some("sh") => "text/x-shellscript",
        Some("xml") => "application/xml",
        Some("zip") => "application/zip",
        Some("parquet") => "application/vnd.apache.parquet",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_path_costs_what_json_writes_of_it() {
        for text in ["plain.csv", "é/ü", "a\u{1}b", "q\"\\\n\t\u{7f}", "\u{1f}\u{0}"] {
            assert_eq!(json_len(text), serde_json::to_string(text).unwrap().len() as u64 - 2, "{text:?}");
        }
    }

    #[test]
    fn copy_out_strips_setuid_and_skips_links_and_fifos() {
        let scratch = tempfile::tempdir().unwrap();
        let s = scratch.path();
        std::fs::write(s.join("suid"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(s.join("suid"), std::fs::Permissions::from_mode(0o6755)).unwrap();
        std::fs::write(s.join("plain"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", s.join("link")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, s.join("fifo"), FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        let out = tempfile::tempdir().unwrap();
        let report = copy_out(s, out.path(), u64::MAX).unwrap();
        let mode = |n: &str| std::fs::symlink_metadata(out.path().join(n)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("suid"), 0o755);
        assert_eq!(mode("plain"), 0o644);
        assert!(std::fs::symlink_metadata(out.path().join("link")).is_err());
        assert!(std::fs::symlink_metadata(out.path().join("fifo")).is_err());
        let skipped: Vec<_> = report.skipped.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(skipped, ["fifo", "link"]);
    }

    /// An outside review: `ln victim DIR/real` and a guest writing `real` gave `victim` the
    /// guest's bytes, mode 0644 and DIR's owner.
    #[test]
    fn copy_out_replaces_a_hard_link_in_dest_and_never_writes_through_it() {
        let scratch = tempfile::tempdir().unwrap();
        std::fs::write(scratch.path().join("real"), "GUEST\n").unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let victim = elsewhere.path().join("victim");
        std::fs::write(&victim, "ORIGINAL\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = tempfile::tempdir().unwrap();
        std::fs::hard_link(&victim, out.path().join("real")).unwrap();
        let report = copy_out(scratch.path(), out.path(), u64::MAX).unwrap();
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "ORIGINAL\n");
        assert_eq!(std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read_to_string(out.path().join("real")).unwrap(), "GUEST\n");
        // Only the file: no temporary left beside it.
        let names: Vec<_> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["real"]);
    }

    #[test]
    fn skipped_entries_past_the_hundredth_are_flagged_not_dropped_silently() {
        let scratch = tempfile::tempdir().unwrap();
        for n in 0..150 {
            std::os::unix::fs::symlink("/etc/passwd", scratch.path().join(format!("link{n}"))).unwrap();
        }
        let (_, report) = collect(scratch.path(), u64::MAX).unwrap();
        assert_eq!(report.skipped.len(), MAX_REPORTED);
        assert!(report.skipped_truncated);
        let few = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", few.path().join("one")).unwrap();
        let (_, report) = collect(few.path(), u64::MAX).unwrap();
        assert_eq!((report.skipped.len(), report.skipped_truncated), (1, false));
    }

    #[test]
    fn a_file_over_the_budget_is_left_out_and_flagged() {
        let scratch = tempfile::tempdir().unwrap();
        std::fs::write(scratch.path().join("a"), vec![1u8; 100]).unwrap();
        let big = File::create(scratch.path().join("sparse")).unwrap();
        big.set_len(1 << 30).unwrap();
        let (files, report) = collect(scratch.path(), 1000).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!((files[0].path.as_str(), files[0].size), ("a", 100));
        assert!(report.truncated);
    }

    #[test]
    fn non_utf8_names_stay_distinct() {
        let a = escape_path(Path::new(std::ffi::OsStr::from_bytes(b"\xff")));
        let b = escape_path(Path::new(std::ffi::OsStr::from_bytes(b"\xfe")));
        assert_ne!(a, b);
        assert_ne!(escape_path(Path::new(r"\xff")), a);
    }
}
