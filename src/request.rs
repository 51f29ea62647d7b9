//! What a caller asks for: the language, the code, its inputs and its [`Limits`].
//!
//! Every surface (library, CLI, HTTP) builds an [`ExecRequest`] and hands it to
//! [`Sandbox::run`](crate::Sandbox::run), which calls [`ExecRequest::validate`] first. A request
//! that fails validation never reaches a backend: it ends with status `rejected`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The languages wsbx runs. The wire name (`"python"`, `"javascript"`, `"shell"`) is the same in
/// the CLI (`--lang`), JSON (`"language"`) and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// CPython 3.15 compiled to wasm32-wasip1, run in wasmtime.
    Python,
    /// QuickJS-NG compiled to WASI, run in wasmtime.
    Javascript,
    /// bash inside Firejail.
    Shell,
}

impl Language {
    /// Every language, in a stable order.
    pub const ALL: [Language; 3] = [Language::Python, Language::Javascript, Language::Shell];

    /// The wire name of the language.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Javascript => "javascript",
            Language::Shell => "shell",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Language {
    type Err = RequestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Language::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| RequestError::UnknownLanguage(s.to_owned()))
    }
}

/// The hard limits of one run. Every field must be greater than zero and at most the
/// [`Limits::CEILING`] of the sandbox that runs it.
///
/// The field names are the JSON names (`"limits": {"timeout_ms": 5000, ...}`); the CLI flags are
/// `--timeout SECONDS`, `--fuel N`, `--memory MIB` and `--max-output BYTES`.
///
/// ```
/// use wsbx::Limits;
/// let quick = Limits { timeout_ms: 500, ..Limits::default() };
/// assert!(quick.validate(&Limits::CEILING).is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock deadline in milliseconds, from the moment the guest starts. Enforced for wasm
    /// guests by epoch interruption (a 10 ms tick) and by a `poll_oneoff` that never sleeps past
    /// it, and for shell jobs by killing the job's process group. Status `timeout`.
    ///
    /// Default 10 s: long enough for real work (importing pandas takes about a second), short
    /// enough that a forgotten `while True` does not hold a worker for long.
    pub timeout_ms: u64,
    /// CPU budget in wasmtime fuel units (roughly one per wasm instruction); wasm guests only.
    /// Status `out_of_fuel`. Unlike the deadline it is deterministic: the same code with the same
    /// input stops at the same point on any machine.
    ///
    /// Default 100 billion: on the reference machine wasm guests burn about 8 billion per
    /// second, so with default limits the wall clock is what binds; set it lower for
    /// reproducible budgets. Only the request's code is charged, not the interpreter's set-up:
    /// a Python `print("hello")` costs about 0.45 million, the same on every run.
    ///
    /// When a run ends by `timeout` while the guest sits in one wasm function without calls
    /// (a tight interpreter loop), the fuel burnt since that function's last call is not
    /// counted: wasmtime's epoch check does not flush its fuel counter. `fuel_consumed` is then
    /// a lower bound.
    pub fuel: u64,
    /// Memory cap in MiB: the guest's linear memory (wasm) or the job's address space (shell).
    /// A wasm guest sees allocation failure (`MemoryError` in Python) and may go on; a guest that
    /// traps on it ends with status `memory_limit`.
    ///
    /// Default 256 MiB. CPython's snapshot starts with about 40 MiB of linear memory.
    pub memory_mb: u64,
    /// Per-stream output cap in bytes. The first `max_output_bytes` of stdout and of stderr are
    /// kept, the rest is dropped and `stdout_truncated`/`stderr_truncated` is set. Reaching it is
    /// not an error and does not stop the guest.
    ///
    /// Default 1 MiB.
    pub max_output_bytes: u64,
    /// Bytes the scratch directory may hold, in MiB, input files included. A write or create
    /// past it fails inside the guest with `ENOSPC` (Python `OSError` with `errno.ENOSPC`,
    /// shell "No space left on device"); the guest may go on. The scratch directory is a
    /// size-limited tmpfs of its own, so the host's disk never holds a guest's files; for
    /// shell jobs its pages also count against the job's memory group, which is therefore
    /// sized `memory_mb + disk_mb`.
    ///
    /// Default 256 MiB.
    pub disk_mb: u64,
    /// Files and directories the scratch directory may hold, input files included. Creating
    /// one more fails with `ENOSPC`.
    ///
    /// Default 10,000.
    pub max_files: u64,
}

impl Limits {
    /// The defaults, used for any limit a request leaves out.
    pub const DEFAULT: Limits = Limits {
        timeout_ms: 10_000,
        fuel: 100_000_000_000,
        memory_mb: 256,
        max_output_bytes: 1 << 20,
        disk_mb: 256,
        max_files: 10_000,
    };

    /// The highest value any request may ask for. A server may lower these, never raise them:
    /// the wasm engine's memory pool is sized from `memory_mb` here.
    pub const CEILING: Limits = Limits {
        timeout_ms: 300_000,
        fuel: 10_000_000_000_000,
        memory_mb: 4096,
        max_output_bytes: 64 << 20,
        disk_mb: 16_384,
        max_files: 1_000_000,
    };

    /// The deadline as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The memory cap in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mb.saturating_mul(1 << 20)
    }

    /// The scratch quota in bytes.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_mb.saturating_mul(1 << 20)
    }

    /// Each limit as its JSON name and value, in one order everywhere.
    fn fields(&self) -> [(&'static str, u64); 6] {
        [
            ("timeout_ms", self.timeout_ms),
            ("fuel", self.fuel),
            ("memory_mb", self.memory_mb),
            ("max_output_bytes", self.max_output_bytes),
            ("disk_mb", self.disk_mb),
            ("max_files", self.max_files),
        ]
    }

    /// Each limit at most `ceiling`'s.
    ///
    /// ```
    /// use wsbx::Limits;
    /// let lowered = Limits::DEFAULT.lowered_to(&Limits { timeout_ms: 1000, ..Limits::CEILING });
    /// assert_eq!((lowered.timeout_ms, lowered.fuel), (1000, Limits::DEFAULT.fuel));
    /// ```
    pub fn lowered_to(&self, ceiling: &Limits) -> Limits {
        Limits {
            timeout_ms: self.timeout_ms.min(ceiling.timeout_ms),
            fuel: self.fuel.min(ceiling.fuel),
            memory_mb: self.memory_mb.min(ceiling.memory_mb),
            max_output_bytes: self.max_output_bytes.min(ceiling.max_output_bytes),
            disk_mb: self.disk_mb.min(ceiling.disk_mb),
            max_files: self.max_files.min(ceiling.max_files),
        }
    }

    /// Checks that every limit is above zero and at most `ceiling`.
    pub fn validate(&self, ceiling: &Limits) -> Result<(), RequestError> {
        for ((name, value), (_, max)) in self.fields().into_iter().zip(ceiling.fields()) {
            if value == 0 {
                return Err(RequestError::ZeroLimit(name));
            }
            if value > max {
                return Err(RequestError::AboveCeiling { name, value, ceiling: max });
            }
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// A file written into the scratch directory before the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// Relative path inside the scratch directory (`data/in.csv`); see [`guest_path`].
    pub path: String,
    /// The file's bytes.
    pub content: Vec<u8>,
}

/// One run: what to execute, with what inputs, under which limits.
///
/// ```
/// use wsbx::{ExecRequest, Language};
/// let req = ExecRequest::new(Language::Python, "print(6 * 7)");
/// assert_eq!(req.limits, wsbx::Limits::default());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The language of `code`.
    pub language: Language,
    /// The program text.
    pub code: String,
    /// Bytes the guest reads on its standard input (then end of file).
    pub stdin: Vec<u8>,
    /// Files placed in the scratch directory before the run.
    pub files: Vec<InputFile>,
    /// Environment variables the guest sees. Nothing of the host's environment is passed on.
    pub env: BTreeMap<String, String>,
    /// The limits of this run.
    pub limits: Limits,
    /// Whether the result carries the scratch directory's files after the run.
    pub return_files: bool,
    /// Where the guest's output goes as it is written, besides the result (streaming).
    pub on_output: Option<OutputListener>,
    /// The run's id and kill switch, for a caller that must find or stop the run while it
    /// goes (a server's table of running runs). `None`: a fresh id, and no one can kill it.
    pub handle: Option<RunHandle>,
    /// The policy the code is checked against before it runs (see [`crate::policy`]): denied,
    /// the run ends `rejected` without starting; otherwise the result carries the verdict.
    /// `None`: no check, and no `policy` in the result.
    pub policy: Option<crate::policy::Policy>,
}

/// One of the guest's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Receives a run's output as the guest writes it: each piece once, in order per stream, only
/// what fits under `max_output_bytes` (exactly what the result's streams hold at the end).
///
/// It is called on the thread that runs the guest, while the guest waits: it must not block.
/// A listener that cannot keep up drops what it cannot take (as the server's event streams do)
/// rather than slowing the guest down.
///
/// ```
/// use wsbx::request::{OutputListener, Stream};
/// let listener = OutputListener::new(|stream, bytes| {
///     if stream == Stream::Stdout {
///         print!("{}", String::from_utf8_lossy(bytes));
///     }
/// });
/// # let _ = listener;
/// ```
#[derive(Clone)]
pub struct OutputListener(std::sync::Arc<OutputFn>);

/// What an [`OutputListener`] calls.
type OutputFn = dyn Fn(Stream, &[u8]) + Send + Sync;

impl OutputListener {
    /// A listener calling `f` with each piece of output.
    pub fn new(f: impl Fn(Stream, &[u8]) + Send + Sync + 'static) -> OutputListener {
        OutputListener(std::sync::Arc::new(f))
    }

    /// Hands it a piece of `stream`.
    pub fn send(&self, stream: Stream, bytes: &[u8]) {
        if !bytes.is_empty() {
            (self.0)(stream, bytes);
        }
    }
}

impl std::fmt::Debug for OutputListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutputListener")
    }
}

/// Two requests are equal when they stream to the same listener.
impl PartialEq for OutputListener {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for OutputListener {}

/// A handle on one run while it goes: its id (the result's `id`), a switch that kills it, and
/// the fuel it has burnt so far. Cloned handles are the same handle.
///
/// A kill goes through what each backend already does at its deadline: a wasm guest is
/// interrupted at its next epoch tick (10 ms) or wakes from its sleep, a shell job's process
/// group is killed. The run ends with status `killed` and the reason as its `detail`.
///
/// ```
/// use wsbx::request::RunHandle;
/// let handle = RunHandle::new();
/// assert!(handle.killed().is_none());
/// handle.kill("an operator asked");
/// assert_eq!(handle.killed().as_deref(), Some("an operator asked"));
/// ```
#[derive(Clone)]
pub struct RunHandle(std::sync::Arc<HandleState>);

struct HandleState {
    id: uuid::Uuid,
    killed: std::sync::atomic::AtomicBool,
    why: std::sync::Mutex<Option<String>>,
    fuel: std::sync::atomic::AtomicU64,
}

impl RunHandle {
    /// A handle with a fresh id.
    pub fn new() -> RunHandle {
        RunHandle::with_id(uuid::Uuid::new_v4())
    }

    /// A handle for the run that will have `id`.
    pub fn with_id(id: uuid::Uuid) -> RunHandle {
        RunHandle(std::sync::Arc::new(HandleState {
            id,
            killed: std::sync::atomic::AtomicBool::new(false),
            why: std::sync::Mutex::new(None),
            fuel: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// The run's id.
    pub fn id(&self) -> uuid::Uuid {
        self.0.id
    }

    /// Kills the run, saying `why` (the first reason given is kept). A run that has not
    /// started yet ends as soon as it starts; one that has ended is not affected.
    pub fn kill(&self, why: impl Into<String>) {
        let mut kept = self.0.why.lock().unwrap_or_else(|p| p.into_inner());
        if kept.is_none() {
            *kept = Some(why.into());
        }
        self.0.killed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the run was killed: cheap enough to ask on every epoch tick.
    pub fn is_killed(&self) -> bool {
        self.0.killed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the run was killed, if it was.
    pub fn killed(&self) -> Option<String> {
        if !self.is_killed() {
            return None;
        }
        self.0.why.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fuel the run's code has burnt so far, as of the guest's last epoch tick (0 for shell).
    pub fn fuel_so_far(&self) -> u64 {
        self.0.fuel.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn report_fuel(&self, fuel: u64) {
        self.0.fuel.store(fuel, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Default for RunHandle {
    fn default() -> Self {
        RunHandle::new()
    }
}

impl std::fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHandle").field("id", &self.0.id).field("killed", &self.is_killed()).finish()
    }
}

/// Two requests are equal when they carry the same handle.
impl PartialEq for RunHandle {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for RunHandle {}

impl ExecRequest {
    /// A request with no stdin, no files, no environment and default limits.
    pub fn new(language: Language, code: impl Into<String>) -> Self {
        ExecRequest {
            language,
            code: code.into(),
            stdin: Vec::new(),
            files: Vec::new(),
            env: BTreeMap::new(),
            limits: Limits::default(),
            return_files: false,
            on_output: None,
            handle: None,
            policy: None,
        }
    }

    /// Checks everything that can be checked before a run: limits within `ceiling`, file paths
    /// relative and inside the scratch directory, no path given twice, environment names sane.
    pub fn validate(&self, ceiling: &Limits) -> Result<(), RequestError> {
        self.limits.validate(ceiling)?;
        let input_bytes: u64 = self.files.iter().map(|f| f.content.len() as u64).sum();
        if input_bytes > self.limits.disk_bytes() {
            return Err(RequestError::InputsOverQuota(format!("{input_bytes} bytes of input files, over disk_mb = {}", self.limits.disk_mb)));
        }
        let mut seen = std::collections::HashSet::new();
        let mut paths = Vec::with_capacity(self.files.len());
        for file in &self.files {
            let path = guest_path(&file.path)?;
            if !seen.insert(path.clone()) {
                return Err(RequestError::DuplicatePath(file.path.clone()));
            }
            paths.push((path, &file.path));
        }
        let entries: std::collections::HashSet<&Path> = paths.iter().flat_map(|(p, _)| p.ancestors()).filter(|p| !p.as_os_str().is_empty()).collect();
        if entries.len() as u64 > self.limits.max_files {
            return Err(RequestError::InputsOverQuota(format!("{} input files and directories, over max_files = {}", entries.len(), self.limits.max_files)));
        }
        // `a` and `a/b` cannot both be files: one would have to be a directory.
        for (path, given) in &paths {
            if path.ancestors().skip(1).any(|parent| seen.contains(parent)) {
                return Err(RequestError::FileUnderFile(given.to_string()));
            }
        }
        for name in self.env.keys() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(RequestError::BadEnvName(name.clone()));
            }
        }
        if self.env.values().any(|v| v.contains('\0')) || self.code.contains('\0') {
            return Err(RequestError::NulByte);
        }
        Ok(())
    }
}

/// The longest name of one path component, as on Linux file systems.
const MAX_NAME_BYTES: usize = 255;
/// The longest path a request may name (Linux's `PATH_MAX`).
const MAX_PATH_BYTES: usize = 4096;

/// Checks a path a request names inside the scratch directory and returns it as a relative path.
///
/// It must be relative, non-empty, and made only of plain names: no `..`, no root, no NUL.
///
/// ```
/// use wsbx::request::guest_path;
/// assert!(guest_path("data/in.csv").is_ok());
/// assert!(guest_path("../etc/passwd").is_err());
/// assert!(guest_path("/etc/passwd").is_err());
/// ```
pub fn guest_path(path: &str) -> Result<PathBuf, RequestError> {
    let bad = |why: &'static str| RequestError::BadPath { path: path.to_owned(), why };
    if path.is_empty() {
        return Err(bad("it is empty"));
    }
    if path.contains('\0') {
        return Err(bad("it contains a NUL byte"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(bad("it is longer than 4096 bytes"));
    }
    let mut clean = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(name) if name.len() > MAX_NAME_BYTES => {
                return Err(bad("a component of it is longer than 255 bytes"))
            }
            Component::Normal(name) => clean.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err(bad("it climbs out with '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad("it is absolute; give a path relative to the scratch directory"))
            }
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(bad("it names the scratch directory itself"));
    }
    Ok(clean)
}

/// Why a request was refused before it ran. Each message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The language is not one wsbx knows.
    #[error("unknown language {0:?}: use python, javascript or shell")]
    UnknownLanguage(String),
    /// The language is known but this sandbox cannot run it.
    #[error("language {0} is not available: {1}")]
    Unavailable(Language, String),
    /// A limit was zero.
    #[error("limit {0} must be greater than zero")]
    ZeroLimit(&'static str),
    /// A limit was above the ceiling.
    #[error("limit {name} = {value} is above the ceiling of {ceiling}")]
    AboveCeiling {
        /// The limit's name.
        name: &'static str,
        /// What was asked.
        value: u64,
        /// The most allowed.
        ceiling: u64,
    },
    /// A file path could escape the scratch directory or is malformed.
    #[error("bad file path {path:?}: {why}")]
    BadPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Two input files have the same path.
    #[error("file path {0:?} is given twice")]
    DuplicatePath(String),
    /// The input files do not fit in the scratch quota.
    #[error("the input files do not fit the scratch directory: {0}")]
    InputsOverQuota(String),
    /// An input file lies under a path that is given as a file too (`a` and `a/b`).
    #[error("file path {0:?} lies under another input file's path; a file cannot also be a directory")]
    FileUnderFile(String),
    /// An environment variable name is empty or contains `=` or NUL.
    #[error("bad environment variable name {0:?}")]
    BadEnvName(String),
    /// The code or an environment value contains a NUL byte.
    #[error("the code or an environment value contains a NUL byte")]
    NulByte,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_above_ceiling_limits_are_refused() {
        let zero = Limits { fuel: 0, ..Limits::DEFAULT };
        assert_eq!(zero.validate(&Limits::CEILING), Err(RequestError::ZeroLimit("fuel")));
        let big = Limits { memory_mb: 1 << 20, ..Limits::DEFAULT };
        assert!(matches!(
            big.validate(&Limits::CEILING),
            Err(RequestError::AboveCeiling { name: "memory_mb", .. })
        ));
        assert!(Limits::DEFAULT.validate(&Limits::CEILING).is_ok());
    }

    #[test]
    fn guest_paths_stay_inside() {
        assert_eq!(guest_path("./a/b.txt").unwrap(), PathBuf::from("a/b.txt"));
        for bad in ["", "/abs", "a/../../b", "..", ".", "a\0b"] {
            assert!(guest_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_file_under_a_file_and_overlong_names_are_refused() {
        let mut req = ExecRequest::new(Language::Python, "pass");
        for p in ["a", "a/b"] {
            req.files.push(InputFile { path: p.into(), content: vec![] });
        }
        assert!(matches!(req.validate(&Limits::CEILING), Err(RequestError::FileUnderFile(_))));
        assert!(guest_path(&"x".repeat(256)).is_err());
        assert!(guest_path(&"x".repeat(255)).is_ok());
        assert!(guest_path(&"a/".repeat(2100)).is_err());
    }

    #[test]
    fn duplicate_paths_are_refused() {
        let mut req = ExecRequest::new(Language::Python, "pass");
        for p in ["a.txt", "./a.txt"] {
            req.files.push(InputFile { path: p.into(), content: vec![] });
        }
        assert!(matches!(req.validate(&Limits::CEILING), Err(RequestError::DuplicatePath(_))));
    }
}
