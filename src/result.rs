//! The answer to one run: the same object for the library, `wsbx exec --json` and HTTP.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::request::Language;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The guest exited with code 0.
    Ok,
    /// The guest exited non-zero, raised an uncaught exception, or crashed (a wasm trap that is
    /// not a limit, such as a stack overflow).
    Error,
    /// The wall-clock deadline passed.
    Timeout,
    /// The fuel budget ran out.
    OutOfFuel,
    /// The guest could not go on within its memory cap.
    MemoryLimit,
    /// The guest was ended by a signal it did not ask for (shell jobs).
    Killed,
    /// The request was refused before anything ran: bad input, or no way to isolate it.
    Rejected,
    /// wsbx itself failed; the guest is not to blame.
    InternalError,
}

impl Status {
    /// The wire name (`"out_of_fuel"`), also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Timeout => "timeout",
            Status::OutOfFuel => "out_of_fuel",
            Status::MemoryLimit => "memory_limit",
            Status::Killed => "killed",
            Status::Rejected => "rejected",
            Status::InternalError => "internal_error",
        }
    }

    /// Whether the run was ended by one of its limits.
    pub fn is_limit(self) -> bool {
        matches!(self, Status::Timeout | Status::OutOfFuel | Status::MemoryLimit)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file of the scratch directory returned with the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Path relative to the scratch directory, `/`-separated. Names that are not UTF-8 are
    /// escaped (`\xNN` per byte, `\\` for a backslash): see [`crate::scratch::escape_path`].
    pub path: String,
    /// Always `"base64"`.
    pub encoding: String,
    /// The file's size in bytes.
    pub size: u64,
    /// The media type its name suggests (`image/png`, `text/csv`, `application/octet-stream`).
    pub mime_type: String,
    /// The file's bytes, base64-encoded.
    pub content: String,
}

/// The result object. Field names are the JSON names of INTERFACE.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    /// A fresh id per run, also in the logs.
    pub id: Uuid,
    /// The language that ran.
    pub language: Language,
    /// How it ended.
    pub status: Status,
    /// The guest's exit code; `None` when it did not exit by itself (a limit, a crash, refused).
    pub exit_code: Option<i32>,
    /// The guest's standard output, decoded as UTF-8 (invalid bytes replaced).
    pub stdout: String,
    /// The guest's standard error, decoded as UTF-8 (invalid bytes replaced).
    pub stderr: String,
    /// Whether stdout went over `max_output_bytes` and was cut.
    pub stdout_truncated: bool,
    /// Whether stderr went over `max_output_bytes` and was cut.
    pub stderr_truncated: bool,
    /// Fuel the request's code burnt (the interpreter's set-up excluded); `None` for shell jobs
    /// and runs that never started.
    pub fuel_consumed: Option<u64>,
    /// CPU time (user and system) of a shell job's processes, in milliseconds: what an
    /// agent's `fuel_per_hour` charges it, at the reference rate. `None` for wasm runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<f64>,
    /// Wall time of the request's code in milliseconds (the interpreter's set-up excluded).
    pub wall_ms: f64,
    /// Highest memory the guest held: linear memory (wasm) or maximum resident set (shell).
    pub peak_memory_bytes: u64,
    /// Bytes the scratch directory held at the end of the run (input files included).
    #[serde(default)]
    pub disk_bytes: u64,
    /// One line on why the run ended as it did, when the status alone does not say it
    /// (`"deadline of 1000 ms passed"`, the reason a request was rejected, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The scratch directory's files after the run, when the request asked for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<OutputFile>>,
    /// Whether files were left out of `files` because the result reached its byte cap
    /// (`SandboxConfig::max_return_bytes`, `--max-return-bytes`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub files_truncated: bool,
    /// Entries of the scratch directory that were not returned, and why: links and special
    /// files (never followed or copied) and paths too long to reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files_skipped: Vec<crate::scratch::SkippedFile>,
    /// Whether more entries were skipped than the 100 `files_skipped` lists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub files_skipped_truncated: bool,
    /// The session the run was a turn of ([`crate::Session`]); absent for one-shot runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Uuid>,
    /// The turn's number in its session, from 1; absent for one-shot runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<u64>,
    /// What the policy found in the code, when the run was checked against one
    /// ([`crate::ExecRequest::policy`]). A run it denied has status `rejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::Verdict>,
}

impl ExecResult {
    /// A result for a run that never started (refused, or wsbx could not start it).
    pub fn not_run(language: Language, status: Status, detail: String) -> Self {
        ExecResult {
            id: Uuid::new_v4(),
            language,
            status,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            fuel_consumed: None,
            cpu_ms: None,
            wall_ms: 0.0,
            peak_memory_bytes: 0,
            detail: Some(detail),
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

    /// This result as `request`'s: with the id of its [`RunHandle`](crate::request::RunHandle),
    /// when it has one.
    pub(crate) fn of(mut self, request: &crate::ExecRequest) -> Self {
        if let Some(handle) = &request.handle {
            self.id = handle.id();
        }
        self
    }
}
