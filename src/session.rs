//! Sessions: state kept between an agent's calls.
//!
//! A [`Session`] is a guest that lives across runs, each run (a *turn*) continuing from what the
//! last one left. Python keeps one interpreter and runs each turn in its `__main__`; JavaScript
//! keeps one runtime and context; shell keeps only the scratch directory, with a fresh Firejail
//! sandbox per turn. A session is a new caller of the one run path: the same backends, limits,
//! scratch directories and results as one-shot runs ([`Sandbox::run`](crate::Sandbox::run)).
//!
//! ```no_run
//! use wsbx::{Language, Sandbox, SessionOptions, TurnRequest};
//! let sandbox = Sandbox::new(Default::default());
//! let mut session = sandbox.session(Language::Python, &SessionOptions::default()).unwrap();
//! session.run(&TurnRequest::new("x = 6 * 7"));
//! let result = session.run(&TurnRequest::new("print(x)"));
//! assert_eq!((result.stdout.as_str(), result.turn), ("42\n", Some(2)));
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use uuid::Uuid;

use crate::backend::{Backend, LiveGuest};
use crate::request::{ExecRequest, InputFile, Language, Limits};
use crate::result::{ExecResult, Status};
use crate::sandbox::{assemble, finish, quota_for};
use crate::scratch::{Scratch, ScratchSlot};

/// How a session is set up: what its guest starts with and how long it may live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// Files placed in the scratch directory before the first turn.
    pub files: Vec<InputFile>,
    /// Environment variables the guest sees, for the whole session.
    pub env: BTreeMap<String, String>,
    /// Every turn's limits unless the turn gives its own. `memory_mb` is the session's: the
    /// guest's memory cap for its whole life.
    pub limits: Limits,
    /// How long the session may sit without a turn before it ends. Default 10 minutes.
    pub idle_timeout: Duration,
    /// How long the session may live at all. Default 1 hour.
    pub max_lifetime: Duration,
}

impl SessionOptions {
    /// The default idle timeout: 10 minutes.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
    /// The default maximum lifetime: 1 hour.
    pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
    /// The longest idle timeout or lifetime a session may have: a year.
    pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            files: Vec::new(),
            env: BTreeMap::new(),
            limits: Limits::DEFAULT,
            idle_timeout: SessionOptions::IDLE_TIMEOUT,
            max_lifetime: SessionOptions::MAX_LIFETIME,
        }
    }
}

/// One turn of a session: code to run in the state the earlier turns left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnRequest {
    /// The program text.
    pub code: String,
    /// Bytes the guest reads on its standard input during this turn (then end of file).
    pub stdin: Vec<u8>,
    /// Files written into the scratch directory before this turn, replacing files of the same
    /// name.
    pub files: Vec<InputFile>,
    /// This turn's limits; `None` takes the session's. `memory_mb` must be the session's.
    pub limits: Option<Limits>,
    /// Whether the result carries the scratch directory's files after the turn.
    pub return_files: bool,
    /// Where the turn's output goes as it is written (see [`crate::request::OutputListener`]).
    pub on_output: Option<crate::request::OutputListener>,
    /// The turn's id and kill switch (see [`crate::request::RunHandle`]). Killing a turn
    /// ends its session.
    pub handle: Option<crate::request::RunHandle>,
    /// The policy the turn's code is checked against first (see [`ExecRequest::policy`]). A
    /// denied turn is `rejected` and the session goes on.
    pub policy: Option<crate::policy::Policy>,
}

impl TurnRequest {
    /// A turn running `code` with no stdin, no files and the session's limits.
    pub fn new(code: impl Into<String>) -> Self {
        TurnRequest { code: code.into(), stdin: Vec::new(), files: Vec::new(), limits: None, return_files: false, on_output: None, handle: None, policy: None }
    }
}

/// Why a session could not start, with the status a run refused the same way would get.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct SessionError {
    /// `rejected` for a bad request, `internal_error` for a host fault, or the limit the
    /// interpreter hit while starting (`memory_limit`, say).
    pub status: Status,
    /// What went wrong.
    pub detail: String,
}

/// A guest that keeps its state between turns. `Send`: it may move between threads, one turn
/// at a time (`run` takes `&mut self`). Dropping it ends the guest and removes its scratch
/// directory.
pub struct Session {
    id: Uuid,
    language: Language,
    backend: Arc<dyn Backend>,
    /// The interpreter (Python, JavaScript); `None` for shell, whose turns are ordinary runs.
    live: Option<Box<dyn LiveGuest>>,
    /// The scratch directory; `None` once the session ended.
    scratch: Option<Scratch>,
    scratch_root: PathBuf,
    env: BTreeMap<String, String>,
    limits: Limits,
    ceiling: Limits,
    max_return_bytes: u64,
    turns: u64,
    created: Instant,
    created_at: SystemTime,
    last_used: Instant,
    idle_timeout: Duration,
    max_lifetime: Duration,
    ended: Option<String>,
    /// What the names earlier turns imported stand for, for the policy's check of the next.
    bindings: crate::policy::Bindings,
}

impl crate::Sandbox {
    /// Starts a session of `language`: a guest (or, for shell, a scratch directory) that keeps
    /// its state between turns. Refused like a run when the options break the sandbox's
    /// ceilings.
    pub fn session(&self, language: Language, options: &SessionOptions) -> Result<Session, SessionError> {
        let config = self.config();
        let request = ExecRequest {
            files: options.files.clone(),
            env: options.env.clone(),
            limits: options.limits,
            ..ExecRequest::new(language, "")
        };
        let rejected = |detail: String| SessionError { status: Status::Rejected, detail };
        request.validate(&config.ceiling).map_err(|e| rejected(e.to_string()))?;
        let sane = |d: Duration| !d.is_zero() && d <= SessionOptions::MAX_DURATION;
        if !sane(options.idle_timeout) || !sane(options.max_lifetime) {
            return Err(rejected("a session's idle timeout and lifetime must be above zero and at most a year".into()));
        }
        let backend = self.backend(language).map_err(|e| SessionError {
            status: match e {
                crate::PrepareError::Unavailable(_) => Status::Rejected,
                crate::PrepareError::Runtime(_) => Status::InternalError,
            },
            detail: e.to_string(),
        })?;
        let root = backend.scratch_root().unwrap_or(&config.scratch_root).to_owned();
        let mut slot = ScratchSlot::new(&root, quota_for(&*backend, &request.limits), &request.files);
        let live = match backend.start_live(&request, &mut slot) {
            Some(Ok(live)) => Some(live),
            Some(Err(failed)) => return Err(SessionError { status: failed.status, detail: failed.detail.unwrap_or_default() }),
            None => {
                slot.fresh().map_err(|e| SessionError { status: e.status, detail: e.detail })?;
                None
            }
        };
        let scratch = slot.into_scratch().ok_or_else(|| SessionError {
            status: Status::InternalError,
            detail: "the session's guest started without a scratch directory".into(),
        })?;
        let now = Instant::now();
        let session = Session {
            id: Uuid::new_v4(),
            language,
            backend,
            live,
            scratch: Some(scratch),
            scratch_root: root,
            env: options.env.clone(),
            limits: options.limits,
            ceiling: config.ceiling,
            max_return_bytes: config.max_return_bytes,
            turns: 0,
            created: now,
            created_at: SystemTime::now(),
            last_used: now,
            idle_timeout: options.idle_timeout,
            max_lifetime: options.max_lifetime,
            ended: None,
            bindings: crate::policy::Bindings::default(),
        };
        tracing::info!(session_id = %session.id, %language, "session started");
        Ok(session)
    }
}

impl Session {
    /// Runs one turn in the state the earlier turns left and returns its result, which carries
    /// the session's id and the turn's number (from 1; every call counts, refused ones too).
    ///
    /// The turn's limits bound it alone (fuel, deadline, output, disk); memory is the
    /// session's. A turn that ends by `timeout`, `out_of_fuel` or `internal_error`, or that
    /// traps or exits the interpreter, or is killed, ends the session: its guest and scratch directory are released at once and
    /// later turns are refused. An exception (or a `MemoryError`) does not.
    pub fn run(&mut self, turn: &TurnRequest) -> ExecResult {
        match self.request(turn.clone()) {
            Ok(request) => self.run_request(&request),
            Err(detail) => {
                self.turns += 1;
                self.refuse(detail)
            }
        }
    }

    /// The run `turn` makes in this session, checked against the session's memory and the
    /// sandbox's ceilings; why it is refused otherwise. With [`Session::run_request`], what
    /// [`Session::run`] does, for callers that own the turn and want to refuse it before
    /// running (a server answering 400).
    pub fn request(&self, turn: TurnRequest) -> Result<ExecRequest, String> {
        let limits = turn.limits.unwrap_or(self.limits);
        if limits.memory_mb != self.limits.memory_mb {
            return Err(format!("memory_mb is the session's ({} MiB) and cannot change in a turn", self.limits.memory_mb));
        }
        let request = ExecRequest {
            language: self.language,
            code: turn.code,
            stdin: turn.stdin,
            files: turn.files,
            env: self.env.clone(),
            limits,
            return_files: turn.return_files,
            on_output: turn.on_output,
            handle: turn.handle,
            policy: turn.policy,
        };
        request.validate(&self.ceiling).map_err(|e| e.to_string())?;
        Ok(request)
    }

    /// Runs `request` (made by [`Session::request`]) as the next turn.
    pub fn run_request(&mut self, request: &ExecRequest) -> ExecResult {
        self.turns += 1;
        self.end_if_expired();
        if let Some(why) = &self.ended {
            return self.refuse(format!("the session has ended: {why}")).of(request);
        }
        if request.language != self.language || request.limits.memory_mb != self.limits.memory_mb || request.env != self.env {
            return self.refuse("a turn's language, memory and environment are the session's: make it with Session::request".into()).of(request);
        }
        // Names earlier turns imported stand for the same modules in this one.
        let verdict = crate::sandbox::check_policy(request, &mut self.bindings);
        if let Some(verdict) = verdict.as_ref().filter(|v| v.decision == crate::policy::Decision::Deny) {
            // It never ran: it does not take a turn's number (the guest numbers its turns too).
            let mut refused = self.refuse(verdict.refusal()).of(request);
            self.turns -= 1;
            refused.policy = Some(verdict.clone());
            return refused;
        }
        let mut result = self.run_checked(request);
        result.policy = verdict;
        result
    }

    /// Runs `request`, let through by its policy.
    fn run_checked(&mut self, request: &ExecRequest) -> ExecResult {
        if let Some(why) = request.handle.as_ref().and_then(crate::request::RunHandle::killed) {
            self.end(format!("turn {} was killed: {why}", self.turns));
            return self.tag(ExecResult::not_run(self.language, Status::Killed, why)).of(request);
        }
        self.last_used = Instant::now();
        let Some(kept) = self.scratch.take() else {
            return self.refuse("the session has ended".into()).of(request);
        };
        let quota = quota_for(&*self.backend, &request.limits);
        let (mut slot, ready) = ScratchSlot::keep(&self.scratch_root, quota, &request.files, kept);
        let outcome = match (ready, self.live.as_mut()) {
            (Err(e), _) => e.into(),
            (Ok(()), Some(live)) => live.run(request),
            (Ok(()), None) => self.backend.run(request, &mut slot),
        };
        self.scratch = slot.into_scratch();
        let result = self.tag(assemble(request, outcome));
        let result = match &self.scratch {
            Some(scratch) => finish(result, scratch, request.return_files, self.max_return_bytes),
            None => result,
        };
        self.last_used = Instant::now();
        let ended = self.live.as_ref().and_then(|live| live.ended()).map(str::to_owned).or_else(|| match result.status {
            Status::Timeout | Status::OutOfFuel | Status::Killed => Some(format!("turn {} ended by {}", self.turns, result.status)),
            // A kept directory the sandbox can no longer start in (a shell guest made it
            // unusable) would fail every later turn the same way.
            Status::InternalError => Some(format!("turn {} failed: {}", self.turns, result.detail.as_deref().unwrap_or("internal error"))),
            _ if self.scratch.is_none() => Some("its scratch directory was lost".into()),
            _ => None,
        });
        if let Some(why) = ended {
            self.end(why);
        }
        result
    }

    /// `result` marked as this session's current turn.
    fn tag(&self, mut result: ExecResult) -> ExecResult {
        result.session_id = Some(self.id);
        result.turn = Some(self.turns);
        result
    }

    /// The result of the current turn, refused for `detail`.
    fn refuse(&self, detail: String) -> ExecResult {
        self.tag(ExecResult::not_run(self.language, Status::Rejected, detail))
    }

    /// Ends the session now (as dropping it would, but keeping its id and turn count): the
    /// guest stops and the scratch directory is removed.
    pub fn end(&mut self, why: impl Into<String>) {
        if self.ended.is_none() {
            let why = why.into();
            tracing::info!(session_id = %self.id, turns = self.turns, reason = %why, "session ended");
            self.ended = Some(why);
        }
        self.live = None;
        self.scratch = None;
    }

    /// Ends the session when it has been idle or alive for too long.
    fn end_if_expired(&mut self) {
        if self.ended.is_none() {
            if let Some(why) = self.expired(Instant::now()) {
                self.end(why);
            }
        }
    }

    /// Why the session is past its idle timeout or lifetime at `now`, if it is.
    pub fn expired(&self, now: Instant) -> Option<String> {
        if now.saturating_duration_since(self.last_used) >= self.idle_timeout {
            return Some(format!("idle for {} ms, past its idle timeout", self.idle_timeout.as_millis()));
        }
        if now.saturating_duration_since(self.created) >= self.max_lifetime {
            return Some(format!("alive for {} ms, past its lifetime", self.max_lifetime.as_millis()));
        }
        None
    }

    /// The session's id: a random (v4) UUID.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The session's language.
    pub fn language(&self) -> Language {
        self.language
    }

    /// Turns run so far.
    pub fn turns(&self) -> u64 {
        self.turns
    }

    /// The limits a turn gets when it gives none.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Why the session ended, once it has.
    pub fn ended(&self) -> Option<&str> {
        self.ended.as_deref()
    }

    /// Linear memory the guest holds now, in bytes (0 for shell, which keeps no guest).
    pub fn memory_bytes(&self) -> u64 {
        self.live.as_ref().map_or(0, |live| live.memory_bytes())
    }

    /// How long since the last turn ended (or the session started).
    pub fn idle(&self) -> Duration {
        self.last_used.elapsed()
    }

    /// When the session started.
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }

    /// When the session will end at the latest (its lifetime).
    pub fn expires_at(&self) -> SystemTime {
        self.created_at + self.max_lifetime
    }

    /// How long it may sit idle.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// How long it may live.
    pub fn max_lifetime(&self) -> Duration {
        self.max_lifetime
    }

    /// The host path of the scratch directory (`/scratch` inside), while the session lives.
    pub fn scratch_path(&self) -> Option<&Path> {
        self.scratch.as_ref().map(Scratch::path)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.ended.is_none() {
            tracing::info!(session_id = %self.id, turns = self.turns, "session closed");
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("language", &self.language)
            .field("turns", &self.turns)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_move_between_threads() {
        fn send<T: Send>() {}
        send::<Session>();
    }
}
