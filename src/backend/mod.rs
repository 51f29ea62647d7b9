//! Backends run one validated job in a prepared scratch directory and say how it ended.
//!
//! The wasm backend runs Python and JavaScript inside wasmtime; the Firejail backend runs shell
//! jobs. Everything around a run (validation, scratch, files, ids, timing of the whole) belongs
//! to [`Sandbox`](crate::Sandbox); a backend only isolates and measures.

pub mod cgroup;
pub mod firejail;
pub(crate) mod pool;
pub mod wasm;

use crate::request::ExecRequest;
use crate::result::Status;
use crate::scratch::{ScratchSlot, SlotError};

/// What a backend reports about one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// How the run ended.
    pub status: Status,
    /// The guest's exit code, when it exited by itself.
    pub exit_code: Option<i32>,
    /// Captured standard output (at most `max_output_bytes`).
    pub stdout: Vec<u8>,
    /// Captured standard error (at most `max_output_bytes`).
    pub stderr: Vec<u8>,
    /// Whether stdout was cut at `max_output_bytes`.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at `max_output_bytes`.
    pub stderr_truncated: bool,
    /// Fuel burnt, for backends that meter it.
    pub fuel_consumed: Option<u64>,
    /// CPU time the guest's processes used, for backends that run processes (shell).
    pub cpu_ms: Option<f64>,
    /// Wall time of the guest in milliseconds.
    pub wall_ms: f64,
    /// Highest memory the guest held, in bytes.
    pub peak_memory_bytes: u64,
    /// Why it ended, when the status alone does not say.
    pub detail: Option<String>,
}

impl Outcome {
    /// An outcome for a run that ended before the guest did anything.
    pub fn failed(status: Status, detail: impl Into<String>) -> Outcome {
        Outcome {
            status,
            exit_code: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            fuel_consumed: None,
            cpu_ms: None,
            wall_ms: 0.0,
            peak_memory_bytes: 0,
            detail: Some(detail.into()),
        }
    }

    /// The status for a guest that exited by itself with `code`.
    pub fn status_for_exit(code: i32) -> Status {
        if code == 0 {
            Status::Ok
        } else {
            Status::Error
        }
    }
}

impl From<SlotError> for Outcome {
    /// A run whose scratch directory could not be made ready never started.
    fn from(e: SlotError) -> Outcome {
        Outcome::failed(e.status, e.detail)
    }
}

/// Runs jobs of one or more languages in isolation.
///
/// Implementations must never run a job unisolated: when isolation is impossible, they answer
/// [`Status::Rejected`] with a detail saying what to install. They must not panic on anything
/// the guest does, and must leave nothing running when `run` returns.
pub trait Backend: Send + Sync {
    /// Runs `request` (already validated) with the directory in `scratch` as the guest's only
    /// writable directory: one made for the run ([`ScratchSlot::fresh`]) or one the backend
    /// prepared ahead ([`ScratchSlot::adopt`]). The caller collects files from, and removes,
    /// whatever the slot holds after.
    fn run(&self, request: &ExecRequest, scratch: &mut ScratchSlot<'_>) -> Outcome;

    /// Where this backend's scratch directories must be made, when it needs a place of its
    /// own; `None` takes the sandbox's scratch root.
    fn scratch_root(&self) -> Option<&std::path::Path> {
        None
    }

    /// Files the backend itself puts in a scratch directory during a run (and removes after),
    /// to be added to the request's `max_files`.
    fn scratch_overhead_files(&self) -> u64 {
        0
    }

    /// Starts a guest that keeps its state between runs (a session's), with `request`'s
    /// environment and memory cap, in the directory `scratch` makes or adopts. `None` when the
    /// backend keeps no state in a guest: then each of a session's turns is an ordinary
    /// [`Backend::run`] in the session's kept directory (shell: a fresh sandbox per turn).
    fn start_live(&self, request: &ExecRequest, scratch: &mut ScratchSlot<'_>) -> Option<Result<Box<dyn LiveGuest>, Outcome>> {
        let _ = (request, scratch);
        None
    }

    /// Stops preparing ahead and ends what was prepared (its guests, sandboxes and scratch
    /// directories), waiting for what is being prepared: for a process about to exit. Runs
    /// afterwards prepare their own.
    fn stop_preparing(&self) {}
}

/// A guest that stays alive between runs, each run continuing from the state the last one
/// left (a session's interpreter). Dropping it ends the guest.
pub trait LiveGuest: Send {
    /// Runs `request`'s code (already validated) under its limits, in the state the previous
    /// runs left; its `env` and `memory_mb` are the ones the guest was started with.
    fn run(&mut self, request: &ExecRequest) -> Outcome;

    /// Why the guest cannot run again, once a run ended it (a trap, a limit, an exit).
    fn ended(&self) -> Option<&str>;

    /// Memory the guest holds now, in bytes.
    fn memory_bytes(&self) -> u64;
}
