//! Shell jobs: bash inside Firejail, as an unprivileged user, with the deadline enforced from
//! the host.
//!
//! Never unisolated: the backend only ever starts `firejail`. When Firejail is missing or cannot
//! start a sandbox here (checked once, with a probe job, when the backend is made), every shell
//! run is `rejected` with a line naming what to install or fix.

use std::ffi::{CStr, CString};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

mod mounts;
mod prepared;

use crate::backend::cgroup::{Cgroups, JobCgroup};
use crate::backend::pool::WarmPool;
use crate::backend::{Backend, Outcome};
use crate::request::{ExecRequest, OutputListener, RunHandle, Stream};
use crate::result::Status;
use crate::scratch::{guarded, ScratchSlot};
use std::os::fd::AsFd;

/// The system user shell jobs run as when wsbx runs as root. Firejail refuses `nobody`.
pub const JOB_USER: &str = "wsbx-job";
/// That user's home: Firejail mounts each run's scratch directory over it, so shell jobs see
/// their scratch directory at the same path as wasm guests do.
pub const JOB_HOME: &str = "/scratch";
/// The PATH a job gets.
const JOB_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Processes the job user may have at once (across concurrent jobs): ends fork bombs early.
const MAX_PROCESSES: u64 = 256;
/// Open files per process.
const MAX_OPEN_FILES: u64 = 1024;
/// Largest file a job may write.
const MAX_FILE_SIZE: u64 = 1 << 30;

/// How a job is started: the user it runs as and the paths it must not see.
#[derive(Debug, Clone)]
pub struct FirejailBackend {
    firejail: PathBuf,
    /// uid and gid to start Firejail as; `None` runs it as the current (non-root) user.
    user: Option<(u32, u32)>,
    /// The job's home inside the sandbox (where its scratch directory appears).
    home: PathBuf,
    /// Host paths hidden from the job.
    hidden: Vec<PathBuf>,
    /// Where per-job control groups are made; `None` when the host offers none (then rlimits
    /// are the only bound: see [`Cgroups`]).
    cgroups: Option<Cgroups>,
    /// `timeout` from coreutils, the in-sandbox backstop to the host's deadline.
    backstop: Option<PathBuf>,
    /// Where job scratch directories are made: see [`JOB_ROOT`].
    job_root: PathBuf,
    /// Sandboxes started ahead of their jobs (see [`prepared`]); `None` in one-shot processes
    /// and where jobs get no control group (their memory limit is fixed at start then).
    prepared: Option<std::sync::Arc<WarmPool<prepared::Prepared>>>,
}

/// Where shell jobs' scratch directories live when wsbx runs as root. Firejail opens a job's
/// directory as the job user, so every directory above it must be traversable by that user;
/// the sandbox's own scratch root (`$TMPDIR`) may not be (a 0700 parent, a path on another
/// file system). This one wsbx makes itself: root-owned, mode 0711 (enter, not list), hidden
/// from every job, each job's directory inside it 0700 and the job user's.
pub const JOB_ROOT: &str = "/run/wsbx-jobs";

/// Why the shell backend cannot isolate jobs here.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

impl FirejailBackend {
    /// Finds Firejail, prepares the job user (creating it when running as root), and proves
    /// that a sandbox starts by running a probe job in one.
    ///
    /// `scratch_root` and `home` (wsbx's runtime directory) are hidden from jobs along with
    /// the usual places (`/root`, `/home`, `/work`, `/etc/shadow`, wsbx's own binary).
    /// With `prepared` > 0, a background thread keeps that many sandboxes started ahead of
    /// their jobs (see [`prepared`]).
    pub fn new(scratch_root: &Path, wsbx_home: &Path, prepared: usize) -> Result<FirejailBackend, Unavailable> {
        let firejail = find_in_path("firejail").ok_or_else(|| {
            Unavailable("shell jobs run under Firejail, which is not installed: apt-get install firejail".into())
        })?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let (user, home, job_root) = if root {
            let (uid, gid) = ensure_job_user(wsbx_home)?;
            (Some((uid, gid)), PathBuf::from(JOB_HOME), job_root()?)
        } else {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
            (None, home, scratch_root.to_owned())
        };
        crate::scratch::sweep(&job_root);
        let mut hidden: Vec<PathBuf> =
            ["/root", "/work", "/srv", "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers", "/etc/sudoers.d", "/etc/ssh"]
                .iter()
                .map(PathBuf::from)
                .collect();
        if root {
            // As root the job's home is /scratch; otherwise Firejail hides other users' homes
            // itself and the job's own home is replaced by its scratch directory.
            hidden.push("/home".into());
        }
        if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_owned)) {
            hidden.push(dir);
        }
        hidden.push(wsbx_home.to_owned());
        if root {
            // Other jobs' directories (each job sees its own at /scratch).
            hidden.push(job_root.clone());
        }
        // Other runs' scratch directories: under /tmp, --private-tmp already hides them (and
        // blacklisting /tmp would take the job's own /tmp away).
        if !scratch_root.starts_with("/tmp") {
            hidden.push(scratch_root.to_owned());
        }
        if let Ok(cwd) = std::env::current_dir() {
            if cwd.components().count() > 2 {
                hidden.push(cwd);
            }
        }
        hidden.retain(|p| p.exists() && !home.starts_with(p) && p != Path::new("/"));
        hidden.sort();
        hidden.dedup();
        let cgroups = match Cgroups::detect() {
            Ok(cgroups) => Some(cgroups),
            Err(why) => {
                tracing::warn!("shell jobs run without a control group of their own ({why}): memory is bounded per process by rlimits only");
                None
            }
        };
        let backstop = ["/usr/bin/timeout", "/bin/timeout"].iter().map(PathBuf::from).find(|p| p.is_file());
        let mut backend = FirejailBackend { firejail, user, home, hidden, cgroups, backstop, job_root, prepared: None };
        // The probe costs a sandbox start (~40 ms): remember that it passed for this Firejail,
        // its configuration and this job user, so a `wsbx exec` process does not pay it twice.
        let stamp = wsbx_home.join("firejail-probe.ok");
        let key = backend.probe_key();
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(key.as_str()) {
            backend.probe()?;
            let _ = std::fs::create_dir_all(wsbx_home).and_then(|()| std::fs::write(&stamp, &key));
        }
        if prepared > 0 && backend.cgroups.is_some() {
            let maker = backend.clone();
            let pool = WarmPool::start(prepared, "wsbx-shell-warm", None, || {}, move || maker.prepare());
            backend.prepared = Some(std::sync::Arc::new(pool));
        }
        Ok(backend)
    }

    /// What a passed probe depends on: the firejail binary, its configuration, the job user.
    fn probe_key(&self) -> String {
        let stat = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    format!("{}:{}:{}", p.display(), m.len(), m.mtime())
                })
                .unwrap_or_else(|_| format!("{}:-", p.display()))
        };
        format!(
            "{} {} {:?} {}\n",
            stat(&self.firejail),
            stat(Path::new("/etc/firejail/firejail.config")),
            self.user,
            self.home.display()
        )
    }

    /// Runs `exit 0` in a sandbox: if Firejail cannot start one here, say so now rather than
    /// confuse its error with a job's.
    fn probe(&self) -> Result<(), Unavailable> {
        let quota = crate::scratch::Quota { bytes: 1 << 20, files: 16 };
        let mut request = ExecRequest::new(crate::Language::Shell, "exit 0");
        request.limits.timeout_ms = 10_000;
        let mut scratch = ScratchSlot::new(&self.job_root, quota, &[]);
        let outcome = self.run(&request, &mut scratch);
        if outcome.status == Status::Ok {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&outcome.stderr);
        let why = stderr.lines().find(|l| !l.trim().is_empty()).map(str::trim).or(outcome.detail.as_deref()).unwrap_or("no message").to_owned();
        Err(Unavailable(format!(
            "Firejail cannot start a sandbox here ({why}); shell jobs are refused rather than run unisolated"
        )))
    }

    /// The Firejail profile of one job, each option with why it is there.
    ///
    /// The options go to Firejail as a profile in a memory file (`--profile=/proc/self/fd/3`),
    /// not on its command line: the sandbox's PID 1 is a Firejail process whose command line
    /// every job can read, and it must not show the host's paths.
    fn profile(&self, limits: &crate::Limits, scratch: &Path, cgroup: bool) -> String {
        let mut p = String::new();
        let mut line = |l: String| {
            p.push_str(&l);
            p.push('\n');
        };
        line("quiet".into());
        // The scratch directory becomes the job's home and working directory.
        line(format!("private {}", scratch.display()));
        // Empty /tmp and a minimal /dev (no disks, no GPUs, no sound, no TTYs of the host), and
        // SysV IPC of its own: nothing shared with the host or another job.
        line("private-tmp".into());
        line("private-dev".into());
        line("ipc-namespace".into());
        // No network at all: only a loopback-less namespace.
        line("net none".into());
        // No capabilities, no setuid gains (`sudo`, `su`, `ping`), no new namespaces (`unshare
        // -U` would hand the job a full capability set over its own namespace), and a syscall
        // filter: Firejail's default list plus calls that widen the kernel's attack surface for
        // no use a job has (io_uring, userfaultfd, perf, bpf, the key store); native ABI only.
        line("caps.drop all".into());
        line("nonewprivs".into());
        line("restrict-namespaces".into());
        line(format!("seccomp {}", BLOCKED_SYSCALLS.join(",")));
        line("seccomp.block-secondary".into());
        // No supplementary groups of the user, no D-Bus, no X11, no /mnt and /media.
        line("nogroups".into());
        line("dbus-user none".into());
        line("dbus-system none".into());
        line("x11 none".into());
        line("disable-mnt".into());
        // The host's world-writable directories outside /tmp would be shared by all jobs (and
        // outlive them): read-only.
        for dir in ["/var/tmp", "/run/lock", "/dev/mqueue"] {
            if Path::new(dir).is_dir() {
                line(format!("read-only {dir}"));
            }
        }
        // The first process (the job's wrapper, see `command`) gives the run's exit status.
        // (`deterministic-shutdown` would also end leftovers, but costs 100 ms per job.)
        line("deterministic-exit-code".into());
        // Resource limits. With a control group of its own, memory and processes are bounded
        // per job by the group; otherwise by rlimits (address space per process, processes per
        // user). Open files, file size and CPU seconds (a backstop to the host's deadline)
        // always.
        if !cgroup {
            line(format!("rlimit-as {}", limits.memory_bytes()));
            line(format!("rlimit-nproc {MAX_PROCESSES}"));
        }
        line(format!("rlimit-nofile {MAX_OPEN_FILES}"));
        line(format!("rlimit-fsize {MAX_FILE_SIZE}"));
        line(format!("rlimit-cpu {}", limits.timeout_ms.div_ceil(1000) + 1));
        for path in &self.hidden {
            // What the job must not see: other users, the host's secrets, wsbx's own files.
            line(format!("blacklist {}", path.display()));
        }
        p
    }

    /// The Firejail command line: the profile (passed as descriptor 3) and a wrapper that reads
    /// its job from stdin (see [`prepared`]).
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.firejail);
        cmd.arg(format!("--profile=/proc/self/fd/{PROFILE_FD}"));
        // Firejail adds variables of its own; `env -i` leaves exactly the job's environment.
        cmd.arg("--").arg("/usr/bin/env").arg("-i");
        cmd.arg(format!("PATH={JOB_PATH}")).arg(format!("HOME={}", self.home.display()));
        // The job runs under a wrapper that, once the job's bash exits, kills everything the
        // job left behind (`setsid sleep 20 &`: every process of the job's PID namespace but
        // the namespace's init, Firejail's `sh -c` launcher and the wrapper itself) and exits
        // with the job's status, so the sandbox ends with the job. Should wsbx itself die
        // (SIGKILL, OOM), `timeout` inside the sandbox still ends the job shortly after its
        // deadline.
        const REAP: &str = r#"s=$?; for _ in 1 2 3; do for p in /proc/[0-9]*; do p=${p#/proc/}; [ "$p" = 1 ] || [ "$p" = $$ ] || [ "$p" = $PPID ] || kill -KILL "$p" 2>/dev/null; done; done; exit $s"#;
        let backstop = match &self.backstop {
            Some(timeout) => format!(r#"{} -s KILL "$t" "#, timeout.display()),
            None => String::new(),
        };
        // The job's stderr is the wrapper's, kept on descriptor 9 while the wrapper's own goes
        // to /dev/null: bash reports a child ended by a signal ("line 1: 10 Killed /usr/bin/
        // timeout ...") on its stderr, which would show the wrapper in the job's output. The
        // job's exit code (128 + N) says what happened.
        let wrapper = format!(r#"{}exec 9>&2 2>/dev/null; {backstop}"$@" /bin/bash -c "$c" 2>&9 9>&-; {REAP}"#, prepared::READ_JOB);
        cmd.arg("/bin/bash").arg("-c").arg(wrapper);

        cmd.env_clear()
            .env("PATH", JOB_PATH)
            // Firejail keeps the working directory when it exists inside: the job's home.
            .current_dir(&self.home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so the deadline can end every process of the job.
            .process_group(0);
        // The child becomes the job user in `prepare_child`, once it has done what needs root.
        cmd
    }
}

/// Seconds after which `timeout` inside the sandbox kills a job with `limits`: the host's
/// deadline plus a margin, so it only acts when the host could not.
fn backstop_seconds(limits: &crate::Limits) -> u64 {
    limits.timeout_ms.div_ceil(1000) + 2
}

/// Where the child finds its Firejail profile.
const PROFILE_FD: i32 = 3;

/// System calls a job may not make, besides Firejail's default list.
const BLOCKED_SYSCALLS: &[&str] = &[
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "userfaultfd",
    "perf_event_open",
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
];

/// A memory file holding `text`, for the child to read as its profile.
fn memory_file(text: &str) -> std::io::Result<std::os::fd::OwnedFd> {
    let fd = rustix::fs::memfd_create("wsbx-profile", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(text.as_bytes())?;
    Ok(file.into())
}

/// Makes the child ready to exec Firejail, in this order:
/// - as root, a mount namespace of its own holding no scratch directory but the job's
///   (`own_scratch`, escaped), so that the sandbox pins no other run's memory (see [`mounts`]);
/// - the child moved into the job's control groups (by writing `0`, "this process", to
///   descriptors wsbx opened);
/// - the profile at descriptor 3;
/// - the job user's identity, with no supplementary groups, when wsbx runs as root.
///
/// Runs between fork and exec, so it only makes async-signal-safe calls.
fn prepare_child(cmd: &mut Command, profile: i32, cgroup_procs: Vec<i32>, user: Option<(u32, u32)>, own_scratch: Vec<u8>) {
    // SAFETY: the closure only makes system calls (unshare, mount, open, read, umount2, write,
    // dup2, fcntl, setgroups, setgid, setuid), on descriptors that stay open in the parent
    // until the child has been spawned and on buffers it owns; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if user.is_some() {
                mounts::leave_other_scratch_behind(&own_scratch);
            }
            for fd in &cgroup_procs {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // dup2 onto itself would keep close-on-exec: clear the flag instead.
            let placed = if profile == PROFILE_FD {
                libc::fcntl(PROFILE_FD, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(profile, PROFILE_FD) == PROFILE_FD
            };
            if !placed {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((uid, gid)) = user {
                if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Makes [`JOB_ROOT`] (root-owned, 0711) and checks that it is what wsbx made: a directory,
/// not a link, owned by root.
fn job_root() -> Result<PathBuf, Unavailable> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root = PathBuf::from(JOB_ROOT);
    let fail = |e: std::io::Error| Unavailable(format!("preparing {JOB_ROOT} for shell jobs' scratch directories: {e}"));
    match std::fs::create_dir(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(e)),
    }
    let meta = std::fs::symlink_metadata(&root).map_err(fail)?;
    if !meta.is_dir() || meta.uid() != 0 {
        return Err(Unavailable(format!("{JOB_ROOT} must be a directory owned by root; remove it and wsbx makes it again")));
    }
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711)).map_err(fail)?;
    Ok(root)
}

impl Backend for FirejailBackend {
    fn scratch_root(&self) -> Option<&Path> {
        Some(&self.job_root)
    }

    /// Firejail's `.bashrc` and `.inputrc` in the job's home, removed after the run.
    fn stop_preparing(&self) {
        if let Some(prepared) = &self.prepared {
            prepared.stop();
        }
    }

    fn scratch_overhead_files(&self) -> u64 {
        2
    }

    fn run(&self, request: &ExecRequest, scratch: &mut ScratchSlot<'_>) -> Outcome {
        if let Some(outcome) = self.run_prepared(request, scratch) {
            return outcome;
        }
        let Some(header) = prepared::job_header(request) else {
            let detail = format!("a shell job's code and environment may hold at most {} KiB together", prepared::MAX_HEADER >> 10);
            return Outcome::failed(Status::Rejected, detail);
        };
        let scratch = match scratch.fresh() {
            Ok(scratch) => scratch,
            Err(e) => return e.into(),
        };
        let mut jail = match self.start(&request.limits, scratch.path()) {
            Ok(jail) => jail,
            Err(outcome) => return outcome,
        };
        if let Err(e) = jail.wait_ready().and_then(|()| jail.hand_over(&header)) {
            return Outcome::failed(Status::InternalError, format!("starting the job's sandbox: {e}"));
        }
        self.supervise(jail, request, request.stdin.clone(), scratch.path())
    }
}

/// A started Firejail sandbox: its process (leader of its own process group), its control
/// group, and the host's ends of its streams. Dropping it kills whatever of it still runs.
pub(crate) struct Jail {
    child: std::process::Child,
    pid: libc::pid_t,
    cgroup: Option<JobCgroup>,
    stdin: Option<std::process::ChildStdin>,
    stdout: Option<std::process::ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
    /// Whether the process was reaped (its pid, and so its group id, may be reused since).
    reaped: bool,
}

impl Drop for Jail {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: our own child, not yet reaped: its process group is still ours.
            unsafe { libc::kill(-self.pid, libc::SIGKILL) };
            let _ = self.child.wait();
        }
        if let Some(group) = &self.cgroup {
            group.kill_all();
        }
    }
}

impl FirejailBackend {
    /// Starts a sandbox for a job with `limits` in `scratch`: hands the directory to the job
    /// user, makes the job's control group, writes the profile, spawns Firejail.
    fn start(&self, limits: &crate::Limits, scratch: &Path) -> Result<Jail, Outcome> {
        drop_bashrc_link(scratch);
        if let Some((uid, gid)) = self.user {
            if let Err(e) = chown_tree(scratch, uid, gid) {
                return Err(Outcome::failed(Status::InternalError, format!("handing the scratch directory to {JOB_USER}: {e}")));
            }
        }
        let cgroup = match &self.cgroups {
            // The scratch directory is a tmpfs whose pages the job's writes charge to its group:
            // the group holds the job's memory and its disk quota.
            Some(cgroups) => match cgroups.job(limits.memory_bytes().saturating_add(limits.disk_bytes()), MAX_PROCESSES) {
                Ok(group) => Some(group),
                Err(e) => return Err(Outcome::failed(Status::InternalError, format!("making the job's control group: {e}"))),
            },
            None => None,
        };
        let profile = match memory_file(&self.profile(limits, scratch, cgroup.is_some())) {
            Ok(fd) => fd,
            Err(e) => return Err(Outcome::failed(Status::InternalError, format!("writing the job's Firejail profile: {e}"))),
        };
        let mut cmd = self.command();
        let cgroup_procs = cgroup.as_ref().map(JobCgroup::procs_fds).unwrap_or_default();
        prepare_child(&mut cmd, profile.as_raw_fd(), cgroup_procs, self.user, mounts::escaped(scratch));
        let spawned = cmd.spawn();
        drop(profile);
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => return Err(Outcome::failed(Status::Rejected, format!("could not start firejail: {e}"))),
        };
        let pid = child.id() as libc::pid_t;
        let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        Ok(Jail { child, pid, cgroup, stdin, stdout, stderr, reaped: false })
    }

    /// Runs a started sandbox's job to its end under `request`'s deadline: feeds it `input`,
    /// collects its output, kills what it leaves, and says how it ended.
    fn supervise(&self, mut jail: Jail, request: &ExecRequest, input: Vec<u8>, scratch: &Path) -> Outcome {
        let started = Instant::now();
        let deadline = started + request.limits.timeout();
        let cap = usize::try_from(request.limits.max_output_bytes).unwrap_or(usize::MAX);
        let listen = |stream| request.on_output.clone().map(|l| (l, stream));
        let stdout = jail.stdout.take().map(|s| read_capped(s, cap, listen(Stream::Stdout)));
        let stderr = jail.stderr.take().map(|s| read_capped(s, cap, listen(Stream::Stderr)));
        if let Some(mut stdin) = jail.stdin.take() {
            // A job that never reads its stdin must not block the host: write from a thread.
            thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }

        let (wait_status, usage, cut) = wait_until(jail.pid, deadline, request.handle.as_ref());
        jail.reaped = true;
        // Nothing of the job outlives its run, whatever Firejail did.
        if let Some(group) = &jail.cgroup {
            group.kill_all();
        }
        let measured = jail.cgroup.as_ref().map(|group| (group.oom_killed(), group.peak_memory()));
        // Removing the emptied groups waits for the kernel (an RCU grace period each on v1):
        // off the run's path.
        if let Some(group) = jail.cgroup.take() {
            crate::backend::pool::drop_later(group);
        }
        let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (stdout, stdout_truncated) = stdout.and_then(|h| h.join().ok()).unwrap_or_default();
        let (stderr, stderr_truncated) = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
        drop_untouched_skel(scratch);

        let oom = measured.is_some_and(|(oom, _)| oom);
        let (status, exit_code, detail) = if let Some(Cut::Killed(why)) = cut {
            (Status::Killed, None, Some(why))
        } else if cut == Some(Cut::Deadline) {
            (Status::Timeout, None, Some(format!("the deadline of {} ms passed", request.limits.timeout_ms)))
        } else if oom {
            // The group holds the scratch tmpfs's pages too (see `start`): the cap is both.
            let detail = format!(
                "a process of the job was killed on reaching the job's memory cap: {} MiB of memory plus {} MiB of scratch disk, which its files also take",
                request.limits.memory_mb, request.limits.disk_mb
            );
            (Status::MemoryLimit, None, Some(detail))
        } else if stopped() {
            (Status::Killed, None, Some("wsbx was asked to stop".into()))
        } else if libc::WIFEXITED(wait_status) {
            let code = libc::WEXITSTATUS(wait_status);
            (Outcome::status_for_exit(code), Some(code), None)
        } else if libc::WIFSIGNALED(wait_status) {
            let signal = libc::WTERMSIG(wait_status);
            (Status::Killed, None, Some(format!("the job was killed by signal {signal}")))
        } else {
            (Status::InternalError, None, Some(format!("unexpected wait status {wait_status}")))
        };
        Outcome {
            status,
            exit_code,
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            fuel_consumed: None,
            // Firejail's own and its reaped descendants': every process of a job that ended by
            // itself. Processes a cut (deadline, kill) ended are partly missing: quotas charge
            // such a job at least its wall time (`agents::fuel_burnt`).
            cpu_ms: Some(cpu_ms(&usage)),
            wall_ms,
            // The group measures the job; without one, Firejail's maximum resident set (which
            // may include what its process inherited from wsbx at fork) is the best there is.
            peak_memory_bytes: measured
                .and_then(|(_, peak)| peak)
                .unwrap_or_else(|| u64::try_from(usage.ru_maxrss).unwrap_or(0).saturating_mul(1024)),
            detail,
        }
    }
}

/// Why the host cut a job short.
#[derive(Debug, PartialEq, Eq)]
enum Cut {
    /// Its deadline passed.
    Deadline,
    /// Its run was killed ([`RunHandle::kill`]), for this reason.
    Killed(String),
    /// wsbx is stopping.
    Stopping,
}

/// Waits for the job's Firejail process until `deadline`, a kill of `handle` or wsbx stopping;
/// then kills its whole process group (Firejail, the sandbox's init, and through the PID
/// namespace everything the job started) and reaps it. Returns the wait status, the resource
/// usage and why the job was cut short, if it was.
fn wait_until(pid: libc::pid_t, deadline: Instant, handle: Option<&RunHandle>) -> (libc::c_int, libc::rusage, Option<Cut>) {
    // SAFETY: rusage is plain data; zeroed is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status: libc::c_int = 0;
    let mut nap = Duration::from_micros(100);
    // A pidfd becomes readable the moment the process exits: waiting on it wakes at once
    // instead of on the next poll of a sleep loop (which cost 2.5 ms per job on average).
    // SAFETY: pidfd_open takes a pid and flags; a negative result is an error, else a new fd.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let pidfd = (pidfd >= 0).then(|| {
        // SAFETY: a descriptor the kernel just returned to us, owned from here on.
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd as i32) }
    });
    loop {
        // SAFETY: pid is our child; status and usage point to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid || (r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)) {
            return (status, usage, None);
        }
        let now = Instant::now();
        let cut = if let Some(why) = handle.and_then(RunHandle::killed) {
            Some(Cut::Killed(why))
        } else if now >= deadline {
            Some(Cut::Deadline)
        } else {
            stopped().then_some(Cut::Stopping)
        };
        if cut.is_some() {
            // SAFETY: killing our own child's process group; the group was made at spawn.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            // SAFETY: as above; blocking wait to reap it.
            unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            return (status, usage, cut);
        }
        // Wake at exit, at the deadline, or every 10 ms to see whether the run was killed or
        // wsbx is stopping.
        let wait = (deadline - now).min(Duration::from_millis(10));
        match &pidfd {
            Some(fd) => {
                let mut poll = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(fd), events: libc::POLLIN, revents: 0 };
                let ms = i32::try_from(wait.as_millis().max(1)).unwrap_or(10);
                // SAFETY: one pollfd on a live local, for at most `ms` milliseconds.
                unsafe { libc::poll(&mut poll, 1, ms) };
            }
            None => {
                thread::sleep(nap.min(wait));
                nap = (nap * 2).min(Duration::from_millis(5));
            }
        }
    }
}

/// The user and system CPU time in `usage`, in milliseconds.
fn cpu_ms(usage: &libc::rusage) -> f64 {
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// Set when the process is asked to stop (the CLI's signal handling): running shell jobs are
/// killed at once instead of outliving wsbx.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Ends every running shell job of this process now (they report `killed`) and refuses none
/// later: used when wsbx itself is stopping.
pub fn stop_all() {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn stopped() -> bool {
    STOP.load(std::sync::atomic::Ordering::SeqCst)
}

/// Reads a stream to its end on a thread, keeping the first `cap` bytes and handing them to
/// `listener` as they come.
fn read_capped(
    mut stream: impl Read + Send + 'static,
    cap: usize,
    listener: Option<(OutputListener, Stream)>,
) -> thread::JoinHandle<(Vec<u8>, bool)> {
    thread::spawn(move || {
        let mut kept = Vec::new();
        let mut truncated = false;
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = cap.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                    truncated |= n > room;
                    if let Some((listener, which)) = &listener {
                        listener.send(*which, &buf[..n.min(room)]);
                    }
                }
            }
        }
        (kept, truncated)
    })
}

/// Firejail puts a `.bashrc` (from /etc/skel) and a one-line `.inputrc` into every private
/// home. Remove them after the run unless the job wrote them, so the scratch directory holds
/// only the job's files. The job may have replaced either with a link to `/dev/zero` or a FIFO:
/// they are read through [`guarded`], never followed, never more than the expected length.
fn drop_untouched_skel(scratch: &Path) {
    let bashrc = std::fs::read("/etc/skel/.bashrc").ok();
    let placed: [(&str, Option<&[u8]>); 2] =
        [(".bashrc", bashrc.as_deref()), (".inputrc", Some(b"set disable-completion on\n"))];
    let Ok(root) = guarded::open_root(scratch) else { return };
    for (name, content) in placed {
        let Some(content) = content else { continue };
        let limit = content.len() as u64 + 1;
        if guarded::read_bounded(root.as_fd(), Path::new(name), limit).ok().as_deref() == Some(content) {
            let _ = rustix::fs::unlinkat(&root, name, rustix::fs::AtFlags::empty());
        }
    }
}

/// Firejail will not start over a home whose `.bashrc` is a symbolic link ("invalid
/// .bashrc file"). A shell session's job can leave one for its next turn, which would then
/// fail, and every turn after it, as wsbx's own error: the link (which no turn could use) is
/// removed before the sandbox starts. Anything else named `.bashrc` is left as it is.
fn drop_bashrc_link(scratch: &Path) {
    let Ok(root) = guarded::open_root(scratch) else { return };
    let link = rustix::fs::statat(&root, ".bashrc", rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|stat| rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Symlink);
    if link {
        let _ = rustix::fs::unlinkat(&root, ".bashrc", rustix::fs::AtFlags::empty());
    }
}

/// Gives `dir` and everything in it to `uid:gid` (the input files were written by wsbx).
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            chown_tree(&entry.path(), uid, gid)?;
        } else {
            std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// Makes sure the job user exists, with [`JOB_HOME`] as an empty home it owns (Firejail mounts
/// each run's scratch directory over it). Needs root.
///
/// Idempotent and race-free across threads and processes: the check-and-create runs under an
/// exclusive `flock` on `$WSBX_HOME/job-user.lock`. It recovers from every partial state a
/// `useradd` cut short can leave: a group without the user (reused with `--gid`), a user with
/// another home (moved back with `usermod`). It refuses a user with uid or gid 0.
fn ensure_job_user(wsbx_home: &Path) -> Result<(u32, u32), Unavailable> {
    let found = match lookup_user(JOB_USER) {
        Some(found) if found.2 == Path::new(JOB_HOME) => found,
        _ => {
            let _lock = lock_file(&wsbx_home.join("job-user.lock"))
                .map_err(|e| Unavailable(format!("locking {} to set up {JOB_USER}: {e}", wsbx_home.display())))?;
            create_or_repair_job_user()?
        }
    };
    let (uid, gid, _) = found;
    if uid == 0 || gid == 0 {
        return Err(Unavailable(format!("the user {JOB_USER} has uid {uid} and gid {gid}; it must not be root: remove it (userdel {JOB_USER}) and wsbx makes it again")));
    }
    let prepared = std::fs::create_dir_all(JOB_HOME)
        .and_then(|()| std::os::unix::fs::chown(JOB_HOME, Some(uid), Some(gid)))
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(JOB_HOME, std::fs::Permissions::from_mode(0o700))
        });
    prepared.map_err(|e| Unavailable(format!("preparing {JOB_HOME} for {JOB_USER}: {e}")))?;
    Ok((uid, gid))
}

/// Under the set-up lock: what another process made meanwhile is taken as it is; what is
/// missing or half-made is made or mended.
fn create_or_repair_job_user() -> Result<(u32, u32, PathBuf), Unavailable> {
    let run = |program: &str, args: &[&str]| -> Result<(), String> {
        let output = Command::new(program).args(args).stdin(Stdio::null()).output().map_err(|e| format!("{program}: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        let why = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        Err(format!("{program} {}: {why}", args.join(" ")))
    };
    match lookup_user(JOB_USER) {
        Some((_, _, home)) if home == Path::new(JOB_HOME) => {}
        Some(_) => run("usermod", &["--home", JOB_HOME, JOB_USER])
            .map_err(|e| Unavailable(format!("the home of {JOB_USER} must be {JOB_HOME} and could not be set: {e}")))?,
        None => {
            // A group left by a useradd that did not finish is reused, not an error.
            let mut args = vec!["--system", "--no-create-home", "--home-dir", JOB_HOME, "--shell", "/bin/sh"];
            args.extend(if lookup_group(JOB_USER) { &["--gid", JOB_USER][..] } else { &["--user-group"][..] });
            args.push(JOB_USER);
            run("useradd", &args).map_err(|e| {
                Unavailable(format!("shell jobs run as the system user {JOB_USER}, which could not be created ({e}): run `useradd {}`", args.join(" ")))
            })?;
        }
    }
    lookup_user(JOB_USER).ok_or_else(|| Unavailable(format!("the system user {JOB_USER} does not exist after creating it")))
}

/// An exclusive `flock` on `path` (created if missing), held until the file is dropped.
fn lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
    Ok(file)
}

/// Whether the group `name` exists.
fn lookup_group(name: &str) -> bool {
    let Ok(name) = CString::new(name) else { return false };
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: all pointers are to live locals, buf's length is passed, getgrnam_r is reentrant.
    let r = unsafe { libc::getgrnam_r(name.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut result) };
    r == 0 && !result.is_null()
}

/// uid, gid and home of `name`, from the user database.
fn lookup_user(name: &str) -> Option<(u32, u32, PathBuf)> {
    let name = CString::new(name).ok()?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are to live locals, buf's length is passed, getpwnam_r is reentrant.
    let r = unsafe { libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if r != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_dir points into buf, NUL-terminated.
    let home = unsafe { CStr::from_ptr(pwd.pw_dir) }.to_string_lossy().into_owned();
    Some((pwd.pw_uid, pwd.pw_gid, PathBuf::from(home)))
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}
