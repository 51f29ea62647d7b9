//! The sessions' routes: `POST /v1/sessions`, `GET /v1/sessions`, `GET|DELETE
//! /v1/sessions/{id}`, `POST /v1/sessions/{id}/exec`; and the table that holds them, with the
//! reaper that ends idle and old ones.
//!
//! A session's turn takes a run slot like any run. One turn at a time per session: a second
//! gets 409. A session a turn ended (timeout, out of fuel, a trap, an exit) releases its guest
//! and scratch directory at once and answers 410 until its idle timeout passes; then, like a
//! session that expired, it is gone (404).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{bad_request, read_json, refused, run_slot, runner, to_files, too_many, ApiError, AppState, FileBody, KillOnDrop, LimitsBody};
use crate::agents::{Agent, Caller, SessionTicket};
use crate::audit::{Event, Kind};
use crate::executions::Running;
use crate::request::{Language, Limits, RunHandle};
use crate::session::{Session, SessionOptions, TurnRequest};

/// The routes, to merge behind the token check.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/sessions", post(create).get(list))
        .route("/v1/sessions/{id}", get(show).delete(close))
        .route("/v1/sessions/{id}/exec", post(turn))
}

/// The request body of `POST /v1/sessions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    language: String,
    #[serde(default)]
    files: Vec<FileBody>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    limits: LimitsBody,
    idle_timeout_ms: Option<u64>,
    max_lifetime_ms: Option<u64>,
}

/// The request body of `POST /v1/sessions/{id}/exec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TurnBody {
    code: String,
    #[serde(default)]
    stdin: String,
    #[serde(default)]
    files: Vec<FileBody>,
    #[serde(default)]
    limits: LimitsBody,
    #[serde(default)]
    return_files: bool,
}

/// A session as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct View {
    pub(super) id: Uuid,
    /// The agent it belongs to.
    agent: String,
    language: Language,
    /// RFC 3339, UTC.
    created_at: String,
    /// When its lifetime ends, RFC 3339, UTC.
    expires_at: String,
    idle_timeout_ms: u64,
    max_lifetime_ms: u64,
    turns: u64,
    idle_ms: u64,
    /// Linear memory its guest held after its last turn (0 for shell).
    memory_bytes: u64,
    /// `idle`, `busy` (a turn runs) or `ended`.
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended: Option<String>,
    /// The limits a turn gets when it gives none.
    limits: Limits,
}

/// What the table knows of a session without taking its lock (a turn may hold it).
struct Entry {
    session: Arc<tokio::sync::Mutex<Option<Session>>>,
    agent: String,
    /// Its place in its agent's `max_sessions`, given back when it ends.
    ticket: Option<SessionTicket>,
    language: Language,
    limits: Limits,
    created: Instant,
    created_at: SystemTime,
    idle_timeout: Duration,
    max_lifetime: Duration,
    turns: u64,
    last_used: Instant,
    memory_bytes: u64,
    /// Why and when it ended; then it holds nothing and answers 410 until its idle timeout.
    ended: Option<(String, Instant)>,
}

impl Entry {
    /// Whether the table should forget it at `now`: idle or too old while alive, or ended an
    /// idle timeout ago.
    fn expired(&self, now: Instant) -> bool {
        match &self.ended {
            Some((_, at)) => now.saturating_duration_since(*at) >= self.idle_timeout,
            None => {
                now.saturating_duration_since(self.last_used) >= self.idle_timeout
                    || now.saturating_duration_since(self.created) >= self.max_lifetime
            }
        }
    }

    fn view(&self, id: Uuid, now: Instant) -> View {
        let busy = self.session.try_lock().is_err();
        View {
            id,
            agent: self.agent.clone(),
            language: self.language,
            created_at: rfc3339(self.created_at),
            expires_at: rfc3339(self.created_at + self.max_lifetime),
            idle_timeout_ms: millis(self.idle_timeout),
            max_lifetime_ms: millis(self.max_lifetime),
            turns: self.turns,
            idle_ms: if busy { 0 } else { millis(now.saturating_duration_since(self.last_used)) },
            memory_bytes: self.memory_bytes,
            state: match (&self.ended, busy) {
                (Some(_), _) => "ended",
                (None, true) => "busy",
                (None, false) => "idle",
            },
            ended: self.ended.as_ref().map(|(why, _)| why.clone()),
            limits: self.limits,
        }
    }
}

/// The server's sessions.
pub(super) struct Sessions {
    table: Mutex<Table>,
    max: usize,
    idle_timeout: Duration,
    lifetime: Duration,
}

struct Table {
    entries: HashMap<Uuid, Entry>,
    /// Places taken by sessions being started.
    starting: usize,
}

impl Table {
    fn alive(&self) -> usize {
        self.entries.values().filter(|e| e.ended.is_none()).count()
    }
}

impl Sessions {
    pub(super) fn new(max: usize, idle_timeout: Duration, lifetime: Duration) -> Sessions {
        Sessions { table: Mutex::new(Table { entries: HashMap::new(), starting: 0 }), max, idle_timeout, lifetime }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the expired entries, except those a turn holds, and returns them with their
    /// sessions for the caller to drop off the async workers.
    fn reap(&self, now: Instant) -> Vec<(Uuid, Entry, Option<Session>)> {
        let mut table = self.lock();
        let expired: Vec<Uuid> = table.entries.iter().filter(|(_, e)| e.expired(now)).map(|(id, _)| *id).collect();
        let mut ended = Vec::new();
        for id in expired {
            let held = table.entries.get(&id).and_then(|e| e.session.clone().try_lock_owned().ok());
            if let Some(mut guard) = held {
                let session = guard.take();
                if let Some(entry) = table.entries.remove(&id) {
                    ended.push((id, entry, session));
                }
            }
        }
        ended
    }

    /// The gauges' values: sessions alive and the memory their guests hold.
    fn gauges(&self) -> (usize, u64) {
        let table = self.lock();
        let memory = table.entries.values().filter(|e| e.ended.is_none()).map(|e| e.memory_bytes).sum();
        (table.alive(), memory)
    }
}

/// Ends idle and old sessions about once a second, off the request path, for as long as the
/// server's state lives.
pub(super) fn start_reaper(state: &Arc<AppState>) {
    let weak = Arc::downgrade(state);
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        // Outside a runtime (a router built for a test without one) expiry is still enforced
        // when a session is next used.
        return;
    };
    handle.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { return };
            let ended = state.sessions.reap(Instant::now());
            if !ended.is_empty() {
                tracing::info!(count = ended.len(), "ended idle or expired sessions");
                for (id, entry, session) in &ended {
                    if entry.ended.is_none() {
                        let why = session.as_ref().and_then(|s| s.expired(Instant::now())).unwrap_or_else(|| "expired".into());
                        audit_end(&state, *id, entry, &why);
                    }
                }
                // Dropping a session removes its scratch directory: file system work.
                let _ = tokio::task::spawn_blocking(move || drop(ended)).await;
            }
            let (alive, memory) = state.sessions.gauges();
            state.metrics.set_sessions(alive, memory);
        }
    });
}

/// Forgets every session and ends them all; how many there were. For shutdown.
pub(super) fn close_all(state: &AppState) -> usize {
    let entries: Vec<(Uuid, Entry)> = state.sessions.lock().entries.drain().collect();
    let count = entries.len();
    for (id, entry) in entries {
        if entry.ended.is_none() {
            audit_end(state, id, &entry, "the server stopped");
        }
        // A turn still running (past the shutdown grace) holds its session; it is dropped
        // when that turn ends. Otherwise the session ends here.
        if let Ok(mut session) = entry.session.try_lock() {
            session.take();
        }
    }
    count
}

/// The audit row of a session's end.
fn audit_end(state: &AppState, id: Uuid, entry: &Entry, why: &str) {
    state.audit(Event {
        session_id: Some(id.to_string()),
        language: Some(entry.language.to_string()),
        detail: Some(why.to_owned()),
        ..Event::new(Kind::SessionEnd, &entry.agent)
    });
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn not_found(id: &str) -> ApiError {
    // An id is 36 characters; never echo more than that of what a client sent.
    let shown: String = id.chars().take(36).collect();
    ApiError::new(StatusCode::NOT_FOUND, format!("no session {shown} (never made, closed, or ended by its idle timeout or lifetime)"))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    super::strict_id(id, not_found)
}

/// A duration asked for in milliseconds, at most `ceiling`; `ceiling` when not asked.
fn duration(asked: Option<u64>, ceiling: Duration, name: &str) -> Result<Duration, ApiError> {
    match asked {
        None => Ok(ceiling),
        Some(0) => Err(bad_request(format!("{name} must be above zero"))),
        Some(ms) if Duration::from_millis(ms) > ceiling => {
            Err(bad_request(format!("{name} = {ms} is above the server's ceiling of {}", millis(ceiling))))
        }
        Some(ms) => Ok(Duration::from_millis(ms)),
    }
}

async fn create(State(state): State<Arc<AppState>>, axum::Extension(caller): axum::Extension<Caller>, body: Body) -> Result<Response, ApiError> {
    let agent = runner(&caller)?;
    let body: CreateBody = read_json(&state, body).await?;
    let language: Language = body.language.parse().map_err(|e: crate::RequestError| bad_request(e.to_string()))?;
    let asked = Asked {
        files: to_files(body.files)?,
        env: body.env,
        limits: body.limits,
        idle_timeout_ms: body.idle_timeout_ms,
        max_lifetime_ms: body.max_lifetime_ms,
    };
    let view = start(&state, agent, language, asked).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// What a client asks of a new session.
#[derive(Debug, Default)]
pub(super) struct Asked {
    pub(super) files: Vec<crate::InputFile>,
    pub(super) env: std::collections::BTreeMap<String, String>,
    pub(super) limits: LimitsBody,
    pub(super) idle_timeout_ms: Option<u64>,
    pub(super) max_lifetime_ms: Option<u64>,
}

/// Starts a session of `agent` and enters it in the table: the one way a session starts, for
/// HTTP and MCP.
pub(super) async fn start(state: &Arc<AppState>, agent: &Arc<Agent>, language: Language, asked: Asked) -> Result<View, ApiError> {
    let sessions = &state.sessions;
    let options = SessionOptions {
        files: asked.files,
        env: asked.env,
        limits: asked.limits.or(&state.defaults(agent, language)),
        idle_timeout: duration(asked.idle_timeout_ms, sessions.idle_timeout, "idle_timeout_ms")?,
        max_lifetime: duration(asked.max_lifetime_ms, sessions.lifetime, "max_lifetime_ms")?,
    };
    // Checked here for a 400; `Sandbox::session` checks again.
    let check = crate::ExecRequest { env: options.env.clone(), limits: options.limits, ..crate::ExecRequest::new(language, "") };
    check.validate(&state.ceiling(agent, language)).map_err(|e| bad_request(e.to_string()))?;
    state.audit_ready()?;
    let ticket = agent.admit_session(language).map_err(|refusal| refused(state, &agent.id, refusal))?;
    let Some(place) = Place::take(state) else {
        return Err(too_many(&format!("the server holds its maximum of {} sessions; close one or retry later", sessions.max)));
    };
    let slot = run_slot(state).await?;
    let worker = state.clone();
    let started = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        worker.sandbox.session(language, &options)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("starting the session failed: {e}")))?;
    let session = started.map_err(|e| {
        let code = match e.status {
            crate::Status::Rejected => StatusCode::BAD_REQUEST,
            crate::Status::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            // The interpreter hit a limit while starting (a memory cap below its footprint).
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(code, format!("the session could not start: {e}"))
    })?;
    let id = session.id();
    let now = Instant::now();
    let entry = Entry {
        agent: agent.id.clone(),
        ticket: Some(ticket),
        language,
        limits: *session.limits(),
        created: now,
        created_at: session.created_at(),
        idle_timeout: session.idle_timeout(),
        max_lifetime: session.max_lifetime(),
        turns: 0,
        last_used: now,
        memory_bytes: session.memory_bytes(),
        ended: None,
        session: Arc::new(tokio::sync::Mutex::new(Some(session))),
    };
    let view = entry.view(id, now);
    place.fill(id, entry);
    let receipt = state.audit(Event {
        session_id: Some(id.to_string()),
        language: Some(language.to_string()),
        ..Event::new(Kind::SessionStart, &agent.id)
    });
    super::written(receipt).await;
    Ok(view)
}

/// A place among `max_sessions` held while a session starts: filled by it, or given back.
struct Place<'a> {
    state: &'a AppState,
}

impl<'a> Place<'a> {
    fn take(state: &'a AppState) -> Option<Place<'a>> {
        let mut table = state.sessions.lock();
        if table.alive() + table.starting >= state.sessions.max {
            return None;
        }
        table.starting += 1;
        Some(Place { state })
    }

    fn fill(self, id: Uuid, entry: Entry) {
        self.state.sessions.lock().entries.insert(id, entry);
        let (alive, memory) = self.state.sessions.gauges();
        self.state.metrics.set_sessions(alive, memory);
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut table = self.state.sessions.lock();
        table.starting = table.starting.saturating_sub(1);
    }
}

async fn list(State(state): State<Arc<AppState>>, axum::Extension(caller): axum::Extension<Caller>) -> Json<Vec<View>> {
    Json(views(&state, &caller))
}

/// The sessions `caller` may see (an agent its own, the admin all), oldest first.
pub(super) fn views(state: &AppState, caller: &Caller) -> Vec<View> {
    let now = Instant::now();
    let table = state.sessions.lock();
    let mut views: Vec<View> = table
        .entries
        .iter()
        .filter(|(_, e)| !e.expired(now) && caller.may_manage(&e.agent))
        .map(|(id, e)| e.view(*id, now))
        .collect();
    views.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    views
}

/// Session `id` as `caller` may see it.
pub(super) fn view(state: &AppState, caller: &Caller, id: &str) -> Result<View, ApiError> {
    let key = parse_id(id)?;
    let now = Instant::now();
    let table = state.sessions.lock();
    match table.entries.get(&key) {
        Some(entry) if !entry.expired(now) && caller.may_manage(&entry.agent) => Ok(entry.view(key, now)),
        _ => Err(not_found(id)),
    }
}

async fn show(State(state): State<Arc<AppState>>, axum::Extension(caller): axum::Extension<Caller>, Path(id): Path<String>) -> Result<Json<View>, ApiError> {
    view(&state, &caller, &id).map(Json)
}

async fn close(State(state): State<Arc<AppState>>, axum::Extension(caller): axum::Extension<Caller>, Path(id): Path<String>) -> Result<Response, ApiError> {
    end(&state, &caller, &id, "closed by its client").await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Kills session `id`: its running turn (if any) ends as `killed`, then the session ends.
/// The session as it was.
pub(super) async fn kill(state: &Arc<AppState>, caller: &Caller, id: &str, why: &str) -> Result<Running, ApiError> {
    let key = parse_id(id)?;
    let shown = running(state, |owner| caller.may_manage(owner)).into_iter().find(|s| s.id == key).ok_or_else(|| not_found(id))?;
    end(state, caller, id, why).await?;
    Ok(shown)
}

/// The sessions alive now whose agent `visible` lets through, as the table of running
/// executions shows them.
pub(super) fn running(state: &AppState, visible: impl Fn(&str) -> bool) -> Vec<Running> {
    let now = Instant::now();
    let table = state.sessions.lock();
    table
        .entries
        .iter()
        .filter(|(_, e)| e.ended.is_none() && !e.expired(now) && visible(&e.agent))
        .map(|(id, e)| Running {
            id: *id,
            agent: e.agent.clone(),
            kind: "session".into(),
            language: e.language,
            session_id: None,
            started_at: rfc3339(e.created_at),
            age_ms: millis(now.saturating_duration_since(e.created)),
            fuel_so_far: None,
            killed: false,
        })
        .collect()
}

/// How long closing a session waits for its turn to end once killed: a killed guest stops
/// within an epoch tick and a killed shell job at once, so this is only a bound.
const TURN_END_WAIT: Duration = Duration::from_secs(5);

/// Forgets session `id` and ends it for `why`: a turn running or waiting for its slot is
/// killed, and the guest stops and its directory is removed before this returns. Another
/// agent's session is not found.
pub(super) async fn end(state: &Arc<AppState>, caller: &Caller, id: &str, why: &str) -> Result<(), ApiError> {
    let key = parse_id(id)?;
    let mut entry = {
        let mut table = state.sessions.lock();
        if !table.entries.get(&key).is_some_and(|e| caller.may_manage(&e.agent)) {
            return Err(not_found(id));
        }
        table.entries.remove(&key).ok_or_else(|| not_found(id))?
    };
    // Its place in its agent's max_sessions is free from now.
    entry.ticket = None;
    // Kill again while waiting: a turn that held the session but had not yet entered the table
    // of running runs when the first kill was sent is killed by the next.
    let waited = Instant::now();
    let held = loop {
        state.executions.kill_where(None, Some(key), why);
        match tokio::time::timeout(Duration::from_millis(20), entry.session.clone().lock_owned()).await {
            Ok(held) => break Some(held),
            Err(_) if waited.elapsed() < TURN_END_WAIT => continue,
            Err(_) => break None,
        }
    };
    // After the turn's own row: the audit log reads in the order things happened.
    if entry.ended.is_none() {
        audit_end(state, key, &entry, why);
    }
    match held {
        Some(mut held) => {
            let _ = tokio::task::spawn_blocking(move || held.take()).await;
        }
        None => {
            tracing::warn!(session = %key, "a closed session's turn did not end once killed; its guest goes when it does");
            tokio::spawn(close_when_idle(entry));
        }
    }
    let (alive, memory) = state.sessions.gauges();
    state.metrics.set_sessions(alive, memory);
    Ok(())
}

/// Ends a closed session whose turn was still running when it was closed, once the turn ends.
async fn close_when_idle(entry: Entry) {
    let mut held = entry.session.lock_owned().await;
    if held.is_some() {
        let _ = tokio::task::spawn_blocking(move || held.take()).await;
    }
}

async fn turn(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body: TurnBody = read_json(&state, body).await?;
    let files = to_files(body.files)?;
    let (feed, on_output) = match super::wants_events(&headers) {
        true => {
            let (feed, listener) = super::events::Feed::new();
            (Some(feed), Some(listener))
        }
        false => (None, None),
    };
    let make = |limits: &Limits| TurnRequest {
        code: body.code,
        stdin: body.stdin.into_bytes(),
        files,
        limits: Some(body.limits.or(limits)),
        return_files: body.return_files,
        on_output,
        handle: Some(RunHandle::new()),
        policy: None,
    };
    // Refusals (404, 409, 410, 400, 403, 429, 503) are answered as such, before any event
    // stream.
    let claimed = claim(&state, &caller, &id, None, make, body.limits.memory_mb).await?;
    match feed {
        None => Ok(Json(claimed.run(&state).await?).into_response()),
        Some(feed) => {
            let cancel = KillOnDrop::new(claimed.handle());
            let worker = state.clone();
            let run = tokio::spawn(async move { claimed.run(&worker).await });
            Ok(super::events::response(feed, run, cancel).into_response())
        }
    }
}

/// Runs a turn in session `id`: the one way a turn runs, for HTTP and MCP. `make` builds the
/// turn from the session's limits; `memory_mb` is what the client asked for, if anything (it
/// must be the session's); `language`, when given, must be the session's.
pub(super) async fn run_turn(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    language: Option<Language>,
    make: impl FnOnce(&Limits) -> TurnRequest,
    memory_mb: Option<u64>,
) -> Result<crate::ExecResult, ApiError> {
    claim(state, caller, id, language, make, memory_mb).await?.run(state).await
}

/// A turn allowed to run: its session held (no other turn can start), its request checked, a
/// run slot taken.
pub(super) struct Claimed {
    key: Uuid,
    held: tokio::sync::OwnedMutexGuard<Option<Session>>,
    request: crate::ExecRequest,
    admitted: super::Admitted,
}

/// Checks that `caller` may run the turn `make` builds in session `id` now (its own session,
/// within its quotas), and holds the session for that turn.
async fn claim(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    language: Option<Language>,
    make: impl FnOnce(&Limits) -> TurnRequest,
    memory_mb: Option<u64>,
) -> Result<Claimed, ApiError> {
    let agent = runner(caller)?;
    let key = parse_id(id)?;
    let session = {
        let mut table = state.sessions.lock();
        let entry = table.entries.get(&key).filter(|e| e.agent == agent.id).ok_or_else(|| not_found(id))?;
        if entry.expired(Instant::now()) && entry.session.try_lock().is_ok() {
            table.entries.remove(&key);
            return Err(not_found(id));
        }
        if let Some((why, _)) = &entry.ended {
            return Err(ApiError::new(StatusCode::GONE, format!("the session has ended: {why}")));
        }
        if language.is_some_and(|l| l != entry.language) {
            return Err(bad_request(format!("session {id} runs {}, not {}", entry.language, language.map_or("", |l| l.as_str()))));
        }
        if memory_mb.is_some_and(|m| m != entry.limits.memory_mb) {
            return Err(bad_request(format!("memory_mb is the session's ({} MiB) and cannot change in a turn", entry.limits.memory_mb)));
        }
        entry.session.clone()
    };
    let Ok(held) = session.try_lock_owned() else {
        return Err(ApiError::new(StatusCode::CONFLICT, "a turn of this session is running; one turn at a time"));
    };
    let Some(live) = held.as_ref() else {
        return Err(ApiError::new(StatusCode::GONE, "the session has ended"));
    };
    let mut request = live.request(make(live.limits())).map_err(bad_request)?;
    // The agent's own ceilings and quotas, as for a one-shot run.
    let admitted = super::admit(state, agent, &mut request, Some(key)).await?;
    Ok(Claimed { key, held, request, admitted })
}

impl Claimed {
    /// The turn's handle.
    fn handle(&self) -> RunHandle {
        self.admitted.handle.clone()
    }

    /// Runs the turn on the blocking pool, entered in the table of running runs, and records
    /// it in the sessions' table and the audit log.
    async fn run(self, state: &Arc<AppState>) -> Result<crate::ExecResult, ApiError> {
        let Claimed { key, mut held, request, admitted } = self;
        let mut cancel = KillOnDrop::new(admitted.handle.clone());
        let worker = state.clone();
        let (result, receipt) = tokio::task::spawn_blocking(move || {
            let super::Admitted { ticket, slot, registration, .. } = admitted;
            let _slot = slot;
            let _registration = registration;
            let Some(session) = held.as_mut() else {
                return Err(ApiError::new(StatusCode::GONE, "the session has ended"));
            };
            let result = {
                let _in_flight = worker.metrics.start_run();
                session.run_request(&request)
            };
            worker.metrics.record_turn(&result);
            let receipt = worker.account(Kind::Turn, &ticket, &request, &result);
            let ended = session.ended().map(str::to_owned);
            let (turns, memory_bytes) = (session.turns(), session.memory_bytes());
            if ended.is_some() {
                // Its guest and directory are released already; drop the rest too.
                held.take();
            }
            let mut table = worker.sessions.lock();
            if let Some(entry) = table.entries.get_mut(&key) {
                entry.turns = turns;
                entry.last_used = Instant::now();
                entry.memory_bytes = memory_bytes;
                if let Some(why) = ended {
                    if entry.ended.is_none() {
                        audit_end(&worker, key, entry, &why);
                    }
                    entry.ticket = None;
                    entry.ended = Some((why, Instant::now()));
                }
            }
            Ok((result, receipt))
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the turn failed: {e}")))??;
        cancel.disarm();
        super::written(receipt).await;
        Ok(result)
    }
}
