//! Keeping other runs' scratch directories out of a shell sandbox.
//!
//! Firejail gives each sandbox a mount namespace copied from the one it starts in. Every
//! scratch directory in flight at that moment is a tmpfs of its own (see
//! [`Quota`](crate::scratch::Quota)), so the copy is a second mount of each. Where the host's
//! mounts are private (most containers), the host's later detach does not reach that copy:
//! the run's files stay in memory until the sandbox ends. A prepared sandbox may wait minutes
//! for its job, so that can be a `disk_mb` per run in flight when it started.
//!
//! So the child that becomes Firejail first takes a mount namespace of its own, makes every
//! mount in it private (nothing it detaches leaves it, nothing the host mounts later reaches
//! it, as in a container), and detaches every scratch tmpfs in it but its own job's. Firejail
//! copies that namespace.
//!
//! This runs between fork and exec: system calls on fixed buffers only, nothing allocated.

use std::path::Path;

use crate::scratch::MOUNT_SOURCE;

/// How many times the child rereads its mounts, detaching what it finds: the kernel may skip
/// an entry of a list that changes while it is read. A pass that detaches nothing ends it.
const MAX_PASSES: usize = 4;

/// `path` as `/proc/self/mountinfo` spells a mount point: space, tab, newline and backslash as
/// `\ooo`. Made before fork, for the child to compare with.
pub(super) fn escaped(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::with_capacity(path.as_os_str().len());
    for &b in path.as_os_str().as_bytes() {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\\') {
            out.extend_from_slice(&[b'\\', b'0' + (b >> 6), b'0' + ((b >> 3) & 7), b'0' + (b & 7)]);
        } else {
            out.push(b);
        }
    }
    out
}

/// In the child, as root: a mount namespace of its own holding no scratch tmpfs but the one
/// at `own` (escaped). Best effort: where no namespace can be made, the sandbox starts as it
/// would have, and only memory is at stake.
///
/// # Safety
/// Only between fork and exec: it changes the calling process's mount namespace.
pub(super) unsafe fn leave_other_scratch_behind(own: &[u8]) {
    // SAFETY: plain system calls on static NUL-terminated strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return;
        }
        // Where the host's mounts are shared, the copies are peers of them: a detach here would
        // detach the host's, and every mount the host makes later (another run's directory)
        // would appear here too, as it would in a slave. Private: nothing comes or goes.
        if libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
            return;
        }
    }
    for _ in 0..MAX_PASSES {
        if detach_pass(own) == 0 {
            break;
        }
    }
}

/// Reads `/proc/self/mountinfo` once, detaching every other scratch tmpfs it lists; how many.
fn detach_pass(own: &[u8]) -> usize {
    // SAFETY: a static NUL-terminated path.
    let fd = unsafe { libc::open(c"/proc/self/mountinfo".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return 0;
    }
    let mut buf = [0u8; 16 << 10];
    let (mut len, mut detached) = (0, 0);
    // Whether the buffer's first line is the tail of one too long to hold (not one of ours:
    // the kernel's paths are shorter).
    let mut tail = false;
    loop {
        // SAFETY: reads into the unused end of a live buffer.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        let end = n <= 0;
        if !end {
            len += n as usize;
        }
        let mut start = 0;
        while let Some(at) = buf[start..len].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + at];
            if !std::mem::take(&mut tail) {
                detached += usize::from(other_scratch(line, own).is_some_and(detach));
            }
            start += at + 1;
        }
        if end {
            break;
        }
        if start == 0 && len == buf.len() {
            (tail, len) = (true, 0);
            continue;
        }
        buf.copy_within(start..len, 0);
        len -= start;
    }
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(fd) };
    detached
}

/// The mount point (escaped) of a line of `/proc/self/mountinfo` when it is a scratch tmpfs
/// mounted anywhere but `own`.
///
/// A line: id, parent id, device, root, mount point, options, optional fields, `-`, file
/// system type, source, super block options.
fn other_scratch<'a>(line: &'a [u8], own: &[u8]) -> Option<&'a [u8]> {
    let mut fields = line.split(|&b| b == b' ');
    let point = fields.nth(4)?;
    let mut after = fields.skip_while(|f| *f != b"-").skip(1);
    let (kind, source) = (after.next()?, after.next()?);
    (kind == b"tmpfs" && source == MOUNT_SOURCE.to_bytes() && point != own).then_some(point)
}

/// Detaches the mount at `point` (escaped); whether it did.
fn detach(point: &[u8]) -> bool {
    let mut path = [0u8; libc::PATH_MAX as usize];
    // SAFETY: `path` is NUL-terminated (zeroed past what was written) and outlives the call.
    unescape(point, &mut path) && unsafe { libc::umount2(path.as_ptr().cast(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) == 0 }
}

/// Writes `point` unescaped into the zeroed `path`, leaving at least one NUL after it; false
/// when it does not fit or holds a NUL of its own.
fn unescape(point: &[u8], path: &mut [u8]) -> bool {
    let (mut i, mut n) = (0, 0);
    while let Some(&first) = point.get(i) {
        let b = match point[i..] {
            [b'\\', a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', ..] => {
                i += 4;
                ((a - b'0') << 6) | ((b - b'0') << 3) | (c - b'0')
            }
            _ => {
                i += 1;
                first
            }
        };
        if b == 0 || n + 1 >= path.len() {
            return false;
        }
        path[n] = b;
        n += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const OTHER: &[u8] = b"74 51 0:40 / /tmp/x/wsbx-1-a rw,nosuid,nodev,relatime - tmpfs wsbx-scratch rw,size=1024k,nr_inodes=9,mode=700";

    #[test]
    fn only_other_scratch_tmpfs_are_picked() {
        assert_eq!(other_scratch(OTHER, b"/run/wsbx-jobs/wsbx-1-b"), Some(&b"/tmp/x/wsbx-1-a"[..]));
        assert_eq!(other_scratch(OTHER, b"/tmp/x/wsbx-1-a"), None, "its own");
        // Optional fields before the separator; other file systems; a tmpfs of another name.
        let shared = b"80 27 0:41 / /tmp/y rw shared:5 master:2 - tmpfs wsbx-scratch rw";
        assert_eq!(other_scratch(shared, b"/own"), Some(&b"/tmp/y"[..]));
        assert_eq!(other_scratch(b"25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw", b"/own"), None);
        assert_eq!(other_scratch(b"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw", b"/own"), None);
        // A mount point that merely names the source is not one.
        assert_eq!(other_scratch(b"30 27 0:9 / /wsbx-scratch rw - ext4 wsbx-scratch rw", b"/own"), None);
        assert_eq!(other_scratch(b"garbage", b"/own"), None);
        assert_eq!(other_scratch(b"", b"/own"), None);
    }

    #[test]
    fn mount_points_are_escaped_as_the_kernel_does() {
        assert_eq!(escaped(Path::new("/tmp/a b\\c\td\ne")), b"/tmp/a\\040b\\134c\\011d\\012e");
        assert_eq!(escaped(Path::new("/run/wsbx-jobs/wsbx-1-x")), b"/run/wsbx-jobs/wsbx-1-x");
    }

    #[test]
    fn escaped_mount_points_come_back_as_they_were() {
        let original = "/tmp/a b\\c\td\ne/wsbx-\\1";
        let mut path = [0u8; 64];
        assert!(unescape(&escaped(Path::new(original)), &mut path));
        assert_eq!(&path[..original.len() + 1], format!("{original}\0").as_bytes());
        // A lone or malformed escape is taken as it is; a NUL or a path too long is refused.
        let mut path = [0u8; 64];
        assert!(unescape(b"/a\\9b\\04", &mut path));
        assert_eq!(&path[..9], b"/a\\9b\\04\0");
        assert!(!unescape(b"/a\\000", &mut [0u8; 64]));
        assert!(!unescape(&[b'x'; 64], &mut [0u8; 64]));
        assert!(unescape(&[b'x'; 63], &mut [0u8; 64]));
    }
}
