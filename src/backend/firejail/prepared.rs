//! Prepared shell sandboxes: Firejail started ahead of its job, so a run pays only for bash;
//! and how every sandbox, prepared or not, is handed its job.
//!
//! In a long-lived process (a [`Sandbox`](crate::Sandbox) with `warm_instances` > 0, `wsbx
//! serve`), a background thread keeps sandboxes started: each fully isolated exactly as a
//! sandbox started for a job (same profile, same user, its own control group and scratch
//! directory), its wrapper blocked reading its job from stdin. A run takes one, gives it the
//! request's limits and input files, writes the job down the pipe, and supervises it like any
//! other: the same deadline, the same reaping, the same result. Each sandbox serves exactly one
//! job. One that died or was tampered with while waiting is dropped, never handed a job.
//!
//! The job goes down stdin as NUL-terminated fields (validation refuses NUL in code and
//! environment): the backstop's seconds, the number of environment entries, each `NAME=value`,
//! the code; the request's stdin follows, and is what the job reads from its stdin. bash's
//! `read` takes a pipe byte by byte, so it never consumes past the code. A sandbox started for
//! its job is handed it the same way (not on Firejail's command line, whose arguments are cut
//! at 4 KiB), so a job's size limit ([`MAX_HEADER`] for code and environment) is the same
//! whichever sandbox it gets.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use super::{backstop_seconds, chown_tree, FirejailBackend, Jail};
use crate::backend::Outcome;
use crate::request::ExecRequest;
use crate::scratch::{Quota, Scratch, ScratchSlot};
use crate::Limits;

/// The prepared wrapper's first part: say "ready" (`R` on stdout, which the host reads before
/// offering the sandbox), read the job, say "got it" (`G`, which the host reads before it
/// counts the job as started). Leaves the backstop's seconds in `t`, the environment in `e`,
/// the code in `c`; a malformed job ends the sandbox with 125.
pub(super) const READ_JOB: &str = r#"printf R; IFS= read -r -d '' t && [[ $t =~ ^[0-9]+$ ]] || exit 125; IFS= read -r -d '' n && [[ $n =~ ^[0-9]+$ ]] || exit 125; e=(); for ((i = 0; i < n; i++)); do IFS= read -r -d '' v || exit 125; e+=("$v"); done; IFS= read -r -d '' c || exit 125; printf G; ((n)) && set -- /usr/bin/env -- "${e[@]}"; "#;

/// The largest job (code and environment) sent down a prepared sandbox's stdin: reading it
/// byte by byte costs about a microsecond a byte, and below the pipe's 64 KiB the host's write
/// never waits for the sandbox.
pub(super) const MAX_HEADER: usize = 60 << 10;

/// How long a prepared sandbox may take to take its job before it counts as dead.
const TAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a sandbox may take to start before the pool gives up on it.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits a sandbox is started under; the job's own replace them when it is handed over. CPU
/// seconds per process (a profile rlimit, fixed at start) follow the ceiling, the most any job
/// may be given; the job's own deadline is enforced by the host and by `timeout` inside.
const PREPARED_LIMITS: Limits = Limits { timeout_ms: Limits::CEILING.timeout_ms, ..Limits::DEFAULT };

/// A sandbox waiting for its job, and its scratch directory.
pub(crate) struct Prepared {
    jail: Jail,
    scratch: Scratch,
}

impl FirejailBackend {
    /// Starts a sandbox that waits for its job, and waits until it is ready.
    pub(super) fn prepare(&self) -> Result<Prepared, String> {
        let quota = Quota::of(&PREPARED_LIMITS);
        let quota = Quota { files: quota.files + 2, ..quota };
        let scratch = Scratch::create(&self.job_root, quota).map_err(|e| format!("creating a scratch directory: {e}"))?;
        let mut jail = self.start(&PREPARED_LIMITS, scratch.path()).map_err(|failed| failed.detail.unwrap_or_default())?;
        jail.wait_ready()?;
        Ok(Prepared { jail, scratch })
    }

    /// Runs `request` in a prepared sandbox when one is ready and the request fits one;
    /// `None` when the run must start a sandbox of its own.
    pub(super) fn run_prepared(&self, request: &ExecRequest, slot: &mut ScratchSlot<'_>) -> Option<Outcome> {
        let pool = self.prepared.as_ref()?;
        // A session's directory, kept between its turns, is never swapped for a prepared one.
        if !slot.can_adopt() {
            return None;
        }
        // Firejail's own files are in a prepared home already: an input of the same name
        // needs a home of its own.
        let top = |path: &str| path.split('/').find(|part| !part.is_empty() && *part != ".").unwrap_or("").to_owned();
        if request.files.iter().any(|f| matches!(top(&f.path).as_str(), ".bashrc" | ".inputrc")) {
            return None;
        }
        let header = job_header(request)?;
        let Prepared { mut jail, scratch } = pool.take()?;
        if !jail.waiting(&scratch) {
            tracing::warn!("a prepared shell sandbox died or was changed while waiting; not used");
            return None;
        }
        if let Some(group) = &jail.cgroup {
            let memory = request.limits.memory_bytes().saturating_add(request.limits.disk_bytes());
            if let Err(e) = group.set_memory_limit(memory) {
                tracing::debug!(error = %e, "a prepared shell sandbox could not take the job's memory limit; not used");
                return None;
            }
        }
        let scratch = match slot.adopt(scratch) {
            Ok(scratch) => scratch,
            Err(e) => return Some(e.into()),
        };
        if let Some((uid, gid)) = self.user {
            if let Err(e) = chown_tree(scratch.path(), uid, gid) {
                return Some(Outcome::failed(crate::Status::InternalError, format!("handing the input files to {}: {e}", super::JOB_USER)));
            }
        }
        if let Err(e) = jail.hand_over(&header) {
            // Died between the check and now: the job never started; it gets a sandbox of its
            // own, in the directory already made ready for it.
            tracing::warn!(error = %e, "a prepared shell sandbox did not take its job; starting one for it");
            drop(jail);
            return None;
        }
        Some(self.supervise(jail, request, request.stdin.clone(), scratch.path()))
    }
}

impl Jail {
    /// Waits until the sandbox is set up and its wrapper waits for the job (it says `R`).
    pub(super) fn wait_ready(&mut self) -> Result<(), String> {
        self.expect(b'R', READY_TIMEOUT).map_err(|why| format!("the sandbox did not start: {why}"))
    }

    /// Writes the job down the sandbox's stdin and waits for the wrapper to say it has it.
    pub(super) fn hand_over(&mut self, header: &[u8]) -> Result<(), String> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().ok_or("no stdin")?;
        stdin.write_all(header).map_err(|e| format!("writing the job: {e}"))?;
        self.expect(b'G', TAKE_TIMEOUT)
    }

    /// Reads the wrapper's one-byte `marker` from stdout within `wait`. Otherwise the sandbox
    /// is ended (so its stderr reaches its end) and what it said there is the reason.
    fn expect(&mut self, marker: u8, wait: Duration) -> Result<(), String> {
        let stdout = self.stdout.as_mut().ok_or("no stdout")?;
        let mut got = [0u8; 1];
        if readable_within(stdout.as_raw_fd(), wait) && matches!(stdout.read(&mut got), Ok(1)) && got[0] == marker {
            return Ok(());
        }
        // SAFETY: our own child, not yet reaped: its process group is still ours.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        if let Some(group) = &self.cgroup {
            group.kill_all();
        }
        let mut why = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            let _ = stderr.by_ref().take(4096).read_to_string(&mut why);
        }
        let why = why.trim();
        Err(if why.is_empty() { format!("no `{}` within {wait:?}", marker as char) } else { why.to_owned() })
    }

    /// Whether this prepared sandbox is still exactly as it was made: its process alive, its
    /// stdout silent, its scratch directory holding only what Firejail put there.
    fn waiting(&self, scratch: &Scratch) -> bool {
        // SAFETY: waitid with WNOHANG|WNOWAIT on our own child only looks; it reaps nothing.
        let alive = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, self.pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) == 0
                && info.si_pid() == 0
        };
        let quiet = self.stdout.as_ref().is_some_and(|out| !readable_within(out.as_raw_fd(), Duration::ZERO));
        alive && quiet && holds_only_skeleton(scratch.path())
    }
}

/// The job as the prepared wrapper reads it (see the module's docs), or `None` when it is
/// too large to send that way.
pub(super) fn job_header(request: &ExecRequest) -> Option<Vec<u8>> {
    let size = request.code.len() + request.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>();
    if size > MAX_HEADER {
        return None;
    }
    let mut header = Vec::with_capacity(size + 32);
    let mut field = |bytes: &[u8]| {
        header.extend_from_slice(bytes);
        header.push(0);
    };
    field(backstop_seconds(&request.limits).to_string().as_bytes());
    field(request.env.len().to_string().as_bytes());
    for (name, value) in &request.env {
        field(format!("{name}={value}").as_bytes());
    }
    field(request.code.as_bytes());
    Some(header)
}

/// Whether `fd` has data (or its end) to read within `wait`.
fn readable_within(fd: i32, wait: Duration) -> bool {
    let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one pollfd on a live local.
    let n = unsafe { libc::poll(&mut poll, 1, ms) };
    n > 0 && poll.revents != 0
}

/// Whether `dir` holds nothing but the `.bashrc` and `.inputrc` Firejail puts in a home.
fn holds_only_skeleton(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.into_iter().all(|entry| {
        entry.is_ok_and(|e| matches!(e.file_name().to_str(), Some(".bashrc" | ".inputrc")))
    })
}
