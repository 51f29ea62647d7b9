//! The audit log: a row per run, turn, session start and end, kill, approval change and policy
//! denial, in a SQLite file, each row chained to the one before by a sha256 (`prev_hash`,
//! `hash`) so that a changed, removed or reordered row is found by [`verify`].
//!
//! Rows are written by one thread, in batches (one transaction each), off the run's path: a
//! caller queues its row and may wait for it to be committed ([`Audit::record`] hands back a
//! receipt). With `commit_before_answer` the server waits for it before it answers, so a
//! client that saw a result finds its row even after a `SIGKILL`; by default it does not, and
//! a `SIGKILL` may lose the rows of the last moment's runs. When a write fails (the disk is full, another process holds
//! the database locked) the rows stay queued and are retried every quarter second; meanwhile
//! [`Audit::check`] fails, and the server refuses new runs (503) rather than run them
//! unaudited. Nothing queued is lost on a graceful shutdown: [`Audit::close`] writes it all.
//!
//! The chain is computed inside the writing transaction from the last row in the file, so
//! several processes (a server, `wsbx exec --config`) may append to one file.
//!
//! Retention (`retention_days`) deletes old rows and remembers the id and hash of the last one
//! it deleted (the anchor), so [`verify`] still checks the whole remaining chain.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::request::ExecRequest;
use crate::result::ExecResult;

/// What a row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A one-shot run.
    Run,
    /// A session's turn.
    Turn,
    /// A session started.
    SessionStart,
    /// A session ended (closed, expired, killed, or ended by a turn).
    SessionEnd,
    /// A kill was asked for (the killed run's own row follows with status `killed`).
    Kill,
    /// An agent was approved.
    Approve,
    /// An agent was revoked.
    Revoke,
    /// A run the policy denied.
    PolicyDeny,
}

impl Kind {
    /// The name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Run => "run",
            Kind::Turn => "turn",
            Kind::SessionStart => "session_start",
            Kind::SessionEnd => "session_end",
            Kind::Kill => "kill",
            Kind::Approve => "approve",
            Kind::Revoke => "revoke",
            Kind::PolicyDeny => "policy_deny",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        [Kind::Run, Kind::Turn, Kind::SessionStart, Kind::SessionEnd, Kind::Kill, Kind::Approve, Kind::Revoke, Kind::PolicyDeny]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One event, as queued and as stored (but for its id and hashes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When, RFC 3339 in UTC with milliseconds (sorts as text).
    pub time: String,
    /// The agent that ran (or, for approvals and kills, was acted on).
    pub agent: String,
    /// What happened.
    pub kind: Option<Kind>,
    /// The run's (or killed run's) id.
    pub execution_id: Option<String>,
    /// The session, for turns and session events.
    pub session_id: Option<String>,
    /// The language.
    pub language: Option<String>,
    /// The sha256 of the code, hex.
    pub code_sha256: Option<String>,
    /// The code itself, when `store_code = true`.
    pub code: Option<String>,
    /// The run's status.
    pub status: Option<String>,
    /// The guest's exit code.
    pub exit_code: Option<i64>,
    /// The guest's wall time.
    pub wall_ms: Option<f64>,
    /// Fuel burnt.
    pub fuel: Option<i64>,
    /// Peak memory in bytes.
    pub peak_memory_bytes: Option<i64>,
    /// The policy's decision (`allow`, `warn`, `deny`), when a policy is configured.
    pub policy_decision: Option<String>,
    /// Why: a limit's detail, who killed, why a session ended.
    pub detail: Option<String>,
}

impl Event {
    /// An event of `kind` by `agent`, now.
    pub fn new(kind: Kind, agent: &str) -> Event {
        Event { time: now(), agent: agent.to_owned(), kind: Some(kind), ..Event::default() }
    }

    /// The row of a finished run or turn (`kind`), or of one its policy denied
    /// ([`Kind::PolicyDeny`], its findings in `detail`).
    pub fn of_run(kind: Kind, agent: &str, request: &ExecRequest, result: &ExecResult, store_code: bool) -> Event {
        let decision = result.policy.as_ref().map(|v| v.decision);
        let kind = match decision {
            Some(crate::policy::Decision::Deny) => Kind::PolicyDeny,
            _ => kind,
        };
        Event {
            policy_decision: decision.map(|d| d.as_str().to_owned()),
            execution_id: Some(result.id.to_string()),
            session_id: result.session_id.map(|s| s.to_string()),
            language: Some(result.language.to_string()),
            code_sha256: Some(hex::encode(Sha256::digest(request.code.as_bytes()))),
            code: store_code.then(|| request.code.clone()),
            status: Some(result.status.to_string()),
            exit_code: result.exit_code.map(i64::from),
            wall_ms: Some(result.wall_ms),
            fuel: result.fuel_consumed.map(|f| i64::try_from(f).unwrap_or(i64::MAX)),
            peak_memory_bytes: Some(i64::try_from(result.peak_memory_bytes).unwrap_or(i64::MAX)),
            detail: result.detail.clone(),
            ..Event::new(kind, agent)
        }
    }
}

/// A stored row: its id, its event, and its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Its number, from 1, never reused.
    pub id: i64,
    /// What it records.
    #[serde(flatten)]
    pub event: Event,
    /// The hash of the row before it (the anchor's for the first row after a prune, empty for
    /// the first row ever).
    pub prev_hash: String,
    /// sha256 over this row's id, fields and `prev_hash`.
    pub hash: String,
}

/// Row `id`'s columns, `prev_hash` last: what is stored and what is hashed, in one order.
fn columns(id: i64, event: &Event, prev_hash: &str) -> [rusqlite::types::Value; 17] {
    use rusqlite::types::Value;
    let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Text);
    let int = |v: Option<i64>| v.map_or(Value::Null, Value::Integer);
    [
        Value::Integer(id),
        Value::Text(event.time.clone()),
        Value::Text(event.agent.clone()),
        Value::Text(event.kind.map_or("run", Kind::as_str).to_owned()),
        text(&event.execution_id),
        text(&event.session_id),
        text(&event.language),
        text(&event.code_sha256),
        text(&event.code),
        text(&event.status),
        int(event.exit_code),
        event.wall_ms.map_or(Value::Null, Value::Real),
        int(event.fuel),
        int(event.peak_memory_bytes),
        text(&event.policy_decision),
        text(&event.detail),
        Value::Text(prev_hash.to_owned()),
    ]
}

/// The chain hash of row `id` holding `event` after `prev_hash`: sha256 of a JSON array of
/// its columns.
fn chain_hash(id: i64, event: &Event, prev_hash: &str) -> String {
    hash_of(&columns(id, event, prev_hash))
}

/// sha256 of a JSON array of `columns`.
fn hash_of(columns: &[rusqlite::types::Value]) -> String {
    use rusqlite::types::Value;
    let material: Vec<serde_json::Value> = columns
        .iter()
        .map(|column| match column {
            Value::Null | Value::Blob(_) => serde_json::Value::Null,
            Value::Integer(n) => (*n).into(),
            Value::Real(x) => (*x).into(),
            Value::Text(t) => t.as_str().into(),
        })
        .collect();
    hex::encode(Sha256::digest(serde_json::Value::Array(material).to_string().as_bytes()))
}

/// The time now as the log writes it.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        agent TEXT NOT NULL,
        kind TEXT NOT NULL,
        execution_id TEXT,
        session_id TEXT,
        language TEXT,
        code_sha256 TEXT,
        code TEXT,
        status TEXT,
        exit_code INTEGER,
        wall_ms REAL,
        fuel INTEGER,
        peak_memory_bytes INTEGER,
        policy_decision TEXT,
        detail TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS events_time ON events(time);
    CREATE INDEX IF NOT EXISTS events_agent ON events(agent, time);
    CREATE INDEX IF NOT EXISTS events_execution ON events(execution_id);
    CREATE INDEX IF NOT EXISTS events_kind ON events(kind);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// Opens (and creates) the log at `path` for writing.
fn open_rw(path: &Path) -> Result<Connection, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let conn = Connection::open(path).map_err(|e| format!("opening the audit log {}: {e}", path.display()))?;
    conn.busy_timeout(Duration::from_millis(500)).map_err(|e| e.to_string())?;
    // WAL: readers (`wsbx audit list`) never block the writer. NORMAL: a commit is durable
    // against a crash of wsbx (SIGKILL); a power cut may lose the last commits.
    conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| format!("the audit log {}: {e}", path.display()))?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| e.to_string())?;
    conn.execute_batch(SCHEMA).map_err(|e| format!("the audit log {}: {e}", path.display()))?;
    // Without a shared-memory index WAL needs, a read-only opener could not read: keep the
    // file readable by its owner only (it may hold code).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(conn)
}

/// Opens the log at `path` for reading; it must exist.
fn open_ro(path: &Path) -> Result<Connection, String> {
    if !path.exists() {
        return Err(format!("no audit log at {}", path.display()));
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("opening the audit log {}: {e}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(|e| e.to_string())?;
    Ok(conn)
}

/// How the writer is doing, shared with the callers.
#[derive(Debug, Default)]
struct Health {
    /// The last write's error, while writes fail.
    failing: Mutex<Option<String>>,
    /// Rows queued and not yet written.
    pending: AtomicUsize,
}

/// Rows that may wait in memory while writes fail; beyond it, rows are refused too.
const MAX_PENDING: usize = 100_000;

enum Message {
    Row(Box<Event>, Option<tokio::sync::oneshot::Sender<()>>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// The log of a process, with its writer thread.
#[derive(Debug)]
pub struct Audit {
    path: PathBuf,
    store_code: bool,
    commit_before_answer: bool,
    sender: Mutex<Option<mpsc::Sender<Message>>>,
    health: Arc<Health>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// A queued row's promise: resolved once the row is committed.
pub type Receipt = tokio::sync::oneshot::Receiver<()>;

impl Audit {
    /// Opens the log at `path` (creating it), prunes rows older than `retention_days`, and
    /// starts its writer.
    pub fn open(path: &Path, store_code: bool, retention_days: Option<u32>) -> Result<Audit, String> {
        let mut conn = open_rw(path)?;
        let retention = retention_days.map(|days| Duration::from_secs(u64::from(days) * 86_400));
        if let Some(keep) = retention {
            prune(&mut conn, keep).map_err(|e| format!("pruning the audit log: {e}"))?;
        }
        let (sender, receiver) = mpsc::channel();
        let health = Arc::new(Health::default());
        let writer = {
            let health = health.clone();
            std::thread::Builder::new()
                .name("wsbx-audit".into())
                .spawn(move || write_loop(conn, receiver, &health, retention))
                .map_err(|e| format!("starting the audit writer: {e}"))?
        };
        Ok(Audit {
            path: path.to_owned(),
            store_code,
            commit_before_answer: false,
            sender: Mutex::new(Some(sender)),
            health,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether rows keep the code itself.
    pub fn store_code(&self) -> bool {
        self.store_code
    }

    /// The same log, whose users wait for a run's row to be committed before they answer
    /// (`[audit] commit_before_answer`).
    pub fn committing_before_answer(mut self, wait: bool) -> Audit {
        self.commit_before_answer = wait;
        self
    }

    /// Whether answers wait for their rows.
    pub fn commit_before_answer(&self) -> bool {
        self.commit_before_answer
    }

    /// Whether rows can be written now: `Err` says why not (writes fail, or too many rows
    /// wait), and the caller should refuse work it would have to audit.
    pub fn check(&self) -> Result<(), String> {
        if let Some(error) = &*self.health.failing.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(format!("the audit log cannot be written ({error}); runs are refused until it can"));
        }
        if self.health.pending.load(Ordering::SeqCst) >= MAX_PENDING {
            return Err("the audit log is too far behind; runs are refused until it catches up".into());
        }
        Ok(())
    }

    /// Queues `event`; the receipt resolves once it is committed. After [`Audit::close`] the
    /// row is dropped with a warning.
    pub fn record(&self, event: Event) -> Receipt {
        let (done, receipt) = tokio::sync::oneshot::channel();
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        match sender.as_ref() {
            Some(sender) => {
                self.health.pending.fetch_add(1, Ordering::SeqCst);
                if sender.send(Message::Row(Box::new(event), Some(done))).is_err() {
                    self.health.pending.fetch_sub(1, Ordering::SeqCst);
                    tracing::error!("the audit writer is gone; a row was lost");
                }
            }
            None => tracing::error!(kind = ?event.kind, "an audit row came after the log was closed; it was lost"),
        }
        receipt
    }

    /// Waits until every row queued so far is written (or `timeout` passes); whether it was.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = std::sync::mpsc::channel();
        let sent = self.sender.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|s| s.send(Message::Flush(done)).is_ok());
        sent && wait.recv_timeout(timeout).is_ok()
    }

    /// Writes every queued row and stops the writer. Rows that still cannot be written after
    /// a minute of retries are reported in the log as lost.
    pub fn close(&self) {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = writer.join();
        }
    }

    /// The approvals changed through the API, by agent (the latest `approve` or `revoke` row
    /// of each, over what pruned rows had set): they override the config's. They are read
    /// from the chained rows themselves, so changing one means forging the chain.
    pub fn approvals(&self) -> Result<Vec<(String, bool)>, String> {
        let conn = open_ro(&self.path)?;
        Ok(approvals(&conn).map_err(|e| e.to_string())?.into_iter().collect())
    }

    /// Writes `event` now, in a transaction of its own, and returns once it is committed or
    /// has failed: for a change (an approval) that must be on disk exactly when it takes effect,
    /// never later. The chain is computed inside the transaction, so it interleaves safely
    /// with the writer thread's batches.
    pub fn append_now(&self, event: &Event) -> Result<(), String> {
        let mut conn = open_rw(&self.path)?;
        append(&mut conn, std::iter::once(event))
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(mut conn: Connection, receiver: mpsc::Receiver<Message>, health: &Health, retention: Option<Duration>) {
    let mut pending: Vec<(Event, Option<tokio::sync::oneshot::Sender<()>>)> = Vec::new();
    let mut flushes: Vec<std::sync::mpsc::Sender<()>> = Vec::new();
    let mut closed = false;
    let mut pruned = std::time::Instant::now();
    let mut gave_up_at: Option<std::time::Instant> = None;
    loop {
        if pending.is_empty() && !closed {
            for flush in flushes.drain(..) {
                let _ = flush.send(());
            }
            match receiver.recv_timeout(Duration::from_secs(60)) {
                Ok(message) => take(message, &mut pending, &mut flushes),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => closed = true,
            }
        }
        while pending.len() < 1024 {
            match receiver.try_recv() {
                Ok(message) => take(message, &mut pending, &mut flushes),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if let Some(keep) = retention.filter(|_| pruned.elapsed() >= Duration::from_secs(3600)) {
            if let Err(e) = prune(&mut conn, keep) {
                tracing::warn!(error = %e, "pruning the audit log failed; will retry");
            }
            pruned = std::time::Instant::now();
        }
        if pending.is_empty() {
            if closed {
                break;
            }
            continue;
        }
        match append(&mut conn, pending.iter().map(|(e, _)| e)) {
            Ok(()) => {
                health.pending.fetch_sub(pending.len(), Ordering::SeqCst);
                for (_, done) in pending.drain(..) {
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
                *health.failing.lock().unwrap_or_else(|p| p.into_inner()) = None;
                gave_up_at = None;
            }
            Err(error) => {
                let mut failing = health.failing.lock().unwrap_or_else(|p| p.into_inner());
                if failing.is_none() {
                    tracing::error!(%error, rows = pending.len(), "writing the audit log failed; rows are kept and retried, runs refused");
                }
                *failing = Some(error);
                drop(failing);
                if closed {
                    let since = *gave_up_at.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= Duration::from_secs(60) {
                        tracing::error!(rows = pending.len(), "the audit log could not be written for a minute at shutdown: these rows are lost");
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    for flush in flushes {
        let _ = flush.send(());
    }
}

fn take(message: Message, pending: &mut Vec<(Event, Option<tokio::sync::oneshot::Sender<()>>)>, flushes: &mut Vec<std::sync::mpsc::Sender<()>>) {
    match message {
        Message::Row(event, done) => pending.push((*event, done)),
        Message::Flush(done) => flushes.push(done),
    }
}

/// Appends `events` in one transaction, each chained to the last row in the file.
fn append<'a>(conn: &mut Connection, events: impl Iterator<Item = &'a Event>) -> Result<(), String> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| e.to_string())?;
    let (mut id, mut prev) = last(&tx).map_err(|e| e.to_string())?;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO events (id, time, agent, kind, execution_id, session_id, language, code_sha256, code, status,
                 exit_code, wall_ms, fuel, peak_memory_bytes, policy_decision, detail, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
            )
            .map_err(|e| e.to_string())?;
        for event in events {
            id += 1;
            let columns = columns(id, event, &prev);
            let hash = hash_of(&columns);
            insert
                .execute(rusqlite::params_from_iter(columns.into_iter().chain([hash.clone().into()])))
                .map_err(|e| e.to_string())?;
            prev = hash;
        }
    }
    tx.commit().map_err(|e| e.to_string())
}

/// The id and hash the next row chains to: the last row's, or the anchor's when every row
/// was pruned, or `(0, "")` for an empty log.
fn last(conn: &Connection) -> rusqlite::Result<(i64, String)> {
    let row = conn.query_row("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
    match row {
        Some(row) => Ok(row),
        None => anchor(conn),
    }
}

/// The id and hash of the last pruned row, or `(0, "")`. An anchor that is not a row id
/// reads as id -1, which no row follows: `verify` then reports the first row broken.
fn anchor(conn: &Connection) -> rusqlite::Result<(i64, String)> {
    let get = |key: &str| conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get::<_, String>(0)).optional();
    let id = match get("anchor_id")? {
        Some(v) => v.parse().unwrap_or(-1),
        None => 0,
    };
    let hash = get("anchor_hash")?.unwrap_or_default();
    Ok((id, hash))
}

/// The approval state by agent: what the anchor carries from pruned rows, then the remaining
/// `approve` and `revoke` rows in order.
fn approvals(conn: &Connection) -> rusqlite::Result<std::collections::BTreeMap<String, bool>> {
    let carried = conn.query_row("SELECT value FROM meta WHERE key = 'anchor_approvals'", [], |r| r.get::<_, String>(0)).optional()?;
    let mut state: std::collections::BTreeMap<String, bool> = carried.and_then(|json| serde_json::from_str(&json).ok()).unwrap_or_default();
    let mut statement = conn.prepare("SELECT agent, kind FROM events WHERE kind IN ('approve', 'revoke') ORDER BY id")?;
    let rows = statement.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)? == "approve")))?;
    for row in rows {
        let (agent, approved) = row?;
        state.insert(agent, approved);
    }
    Ok(state)
}

/// Deletes the rows older than `keep`, moving the anchor to the last one deleted; the approval
/// state the deleted rows set is carried in the anchor, so pruning never undoes a revoke.
fn prune(conn: &mut Connection, keep: Duration) -> rusqlite::Result<usize> {
    let cutoff = humantime::format_rfc3339_millis(SystemTime::now() - keep).to_string();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let newest: Option<(i64, String)> = tx
        .query_row("SELECT id, hash FROM events WHERE time < ?1 ORDER BY id DESC LIMIT 1", [&cutoff], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((id, hash)) = newest else {
        return Ok(0);
    };
    // The approvals as of the new anchor: the old anchor's, then the rows about to go.
    let mut carried: std::collections::BTreeMap<String, bool> = tx
        .query_row("SELECT value FROM meta WHERE key = 'anchor_approvals'", [], |r| r.get::<_, String>(0))
        .optional()?
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default();
    {
        let mut statement = tx.prepare("SELECT agent, kind FROM events WHERE id <= ?1 AND kind IN ('approve', 'revoke') ORDER BY id")?;
        let rows = statement.query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)? == "approve")))?;
        for row in rows {
            let (agent, approved) = row?;
            carried.insert(agent, approved);
        }
    }
    let carried = serde_json::to_string(&carried).unwrap_or_else(|_| "{}".into());
    tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('anchor_approvals', ?1)", [carried])?;
    // Rows are appended in time order: every row up to the newest old one goes.
    let deleted = tx.execute("DELETE FROM events WHERE id <= ?1", [id])?;
    tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('anchor_id', ?1)", [id.to_string()])?;
    tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('anchor_hash', ?1)", [hash])?;
    tx.commit()?;
    tracing::info!(deleted, "pruned the audit log");
    Ok(deleted)
}

/// Deletes rows older than `keep` from the log at `path` (what the writer does hourly when
/// `retention_days` is set); how many.
pub fn prune_file(path: &Path, keep: Duration) -> Result<usize, String> {
    let mut conn = open_rw(path)?;
    prune(&mut conn, keep).map_err(|e| e.to_string())
}

/// Which rows [`list`] returns.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this agent's.
    pub agent: Option<String>,
    /// Only rows with this status.
    pub status: Option<String>,
    /// Only rows of these kinds (all when empty).
    pub kinds: Vec<Kind>,
    /// Only rows at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only the row(s) of this execution.
    pub execution_id: Option<String>,
    /// At most this many, newest first (default 100).
    pub limit: Option<usize>,
    /// Read each row's stored code too (`store_code`). Up to a request body's size each, so
    /// a list of many rows leaves it out (its `code` is `null`; `code_sha256` names it) and
    /// one row's answer carries it.
    pub code: bool,
}

/// The rows of the log at `path` that `filter` selects, newest first.
pub fn list(path: &Path, filter: &Filter) -> Result<Vec<Row>, String> {
    let conn = open_ro(path)?;
    // Not selected at all when not wanted: SQLite then never reads the (overflow) pages of
    // a row's code, which a list of thousands of 16 MiB rows would otherwise go through.
    let code = if filter.code { "code" } else { "NULL AS code" };
    let mut sql = format!(
        "SELECT id, time, agent, kind, execution_id, session_id, language, code_sha256, {code}, status, exit_code, \
         wall_ms, fuel, peak_memory_bytes, policy_decision, detail, prev_hash, hash FROM events WHERE 1 = 1"
    );
    let mut args: Vec<String> = Vec::new();
    let mut bind = |sql: &mut String, clause: &str, value: String| {
        args.push(value);
        sql.push_str(&format!(" AND {clause} ?{}", args.len()));
    };
    if let Some(agent) = &filter.agent {
        bind(&mut sql, "agent =", agent.clone());
    }
    if let Some(status) = &filter.status {
        bind(&mut sql, "status =", status.clone());
    }
    if let Some(since) = &filter.since {
        bind(&mut sql, "time >=", since.clone());
    }
    if let Some(id) = &filter.execution_id {
        bind(&mut sql, "execution_id =", id.clone());
    }
    if !filter.kinds.is_empty() {
        let names: Vec<String> = filter.kinds.iter().map(|k| format!("'{}'", k.as_str())).collect();
        sql.push_str(&format!(" AND kind IN ({})", names.join(", ")));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", filter.limit.unwrap_or(100).min(100_000)));
    let mut statement = conn.prepare(&sql).map_err(|e| e.to_string())?;
    let rows = statement.query_map(rusqlite::params_from_iter(args.iter()), read_row).map_err(|e| e.to_string())?;
    rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let kind: String = r.get("kind")?;
    Ok(Row {
        id: r.get("id")?,
        event: Event {
            time: r.get("time")?,
            agent: r.get("agent")?,
            kind: Kind::parse(&kind),
            execution_id: r.get("execution_id")?,
            session_id: r.get("session_id")?,
            language: r.get("language")?,
            code_sha256: r.get("code_sha256")?,
            code: r.get("code")?,
            status: r.get("status")?,
            exit_code: r.get("exit_code")?,
            wall_ms: r.get("wall_ms")?,
            fuel: r.get("fuel")?,
            peak_memory_bytes: r.get("peak_memory_bytes")?,
            policy_decision: r.get("policy_decision")?,
            detail: r.get("detail")?,
        },
        prev_hash: r.get("prev_hash")?,
        hash: r.get("hash")?,
    })
}

/// The first row that breaks the chain, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("row {id} is broken: {why}")]
pub struct Broken {
    /// The row's id.
    pub id: i64,
    /// What does not match.
    pub why: String,
}

/// What [`verify`] found intact: how many rows, and the last one's id and hash. Keep the
/// last hash somewhere else (another system, a ticket, a log shipper) to detect later that
/// rows after it were removed or the whole file rewritten: the chain alone cannot, since
/// anyone who can write the file can also recompute every hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// Rows checked.
    pub rows: u64,
    /// The last row's id (the anchor's when there are none).
    pub last_id: i64,
    /// The last row's hash.
    pub last_hash: String,
}

/// Checks the whole chain of the log at `path`: what is intact, or the first broken row
/// (`Ok(Err(..))`); `Err` when the file cannot be read.
///
/// It finds a row changed, removed or reordered anywhere but at the very end, and rows
/// removed from the start without the anchor that pruning writes. It cannot find rows cut
/// off the end, or a file rewritten with recomputed hashes: compare [`Verified::last_hash`]
/// with one kept elsewhere for that.
pub fn verify(path: &Path) -> Result<Result<Verified, Broken>, String> {
    let conn = open_ro(path)?;
    let (mut last_id, mut prev) = anchor(&conn).map_err(|e| e.to_string())?;
    if last_id < 0 {
        return Ok(Err(Broken { id: 0, why: "the anchor (meta anchor_id) is not a row id: the log was tampered with".into() }));
    }
    let mut statement = conn.prepare("SELECT * FROM events ORDER BY id").map_err(|e| e.to_string())?;
    let mut rows = statement.query([]).map_err(|e| e.to_string())?;
    let mut checked = 0u64;
    while let Some(raw) = rows.next().map_err(|e| e.to_string())? {
        let row = match read_row(raw) {
            Ok(row) => row,
            Err(e) => {
                let id = raw.get::<_, i64>("id").unwrap_or(last_id + 1);
                return Ok(Err(Broken { id, why: format!("unreadable: {e}") }));
            }
        };
        let broken = |why: String| Ok(Err(Broken { id: row.id, why }));
        if row.id != last_id + 1 {
            return broken(format!("expected row {} next: rows were removed", last_id + 1));
        }
        if row.prev_hash != prev {
            return broken("its prev_hash is not the hash of the row before it".into());
        }
        if row.event.kind.is_none() {
            return broken("its kind is not one wsbx writes".into());
        }
        if chain_hash(row.id, &row.event, &row.prev_hash) != row.hash {
            return broken("its contents do not match its hash (the row was changed)".into());
        }
        last_id = row.id;
        prev = row.hash;
        checked += 1;
    }
    Ok(Ok(Verified { rows: checked, last_id, last_hash: prev }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> Event {
        Event { status: Some("ok".into()), wall_ms: Some(0.1 * n as f64), fuel: Some(n as i64), ..Event::new(Kind::Run, "a") }
    }

    #[test]
    fn rows_chain_and_verify_finds_a_changed_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let audit = Audit::open(&path, false, None).unwrap();
        for n in 0..10 {
            drop(audit.record(event(n)));
        }
        assert!(audit.flush(Duration::from_secs(10)));
        assert_eq!(verify(&path).unwrap().map(|v| v.rows), Ok(10));
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE events SET status = 'error' WHERE id = 4", []).unwrap();
        assert_eq!(verify(&path).unwrap().unwrap_err().id, 4);
        conn.execute("UPDATE events SET status = 'ok' WHERE id = 4", []).unwrap();
        conn.execute("DELETE FROM events WHERE id = 6", []).unwrap();
        assert_eq!(verify(&path).unwrap().unwrap_err().id, 7);
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('anchor_id', 'abc')", []).unwrap();
        assert!(verify(&path).unwrap().unwrap_err().why.contains("anchor"), "a garbage anchor breaks the chain");
    }

    #[test]
    fn pruning_keeps_the_chain_verifiable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let audit = Audit::open(&path, false, None).unwrap();
        let old = humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(10 * 86_400)).to_string();
        for n in 0..5 {
            drop(audit.record(Event { time: old.clone(), ..event(n) }));
        }
        for n in 5..8 {
            drop(audit.record(event(n)));
        }
        assert!(audit.flush(Duration::from_secs(10)));
        assert_eq!(prune_file(&path, Duration::from_secs(86_400)).unwrap(), 5);
        assert_eq!(verify(&path).unwrap().map(|v| v.rows), Ok(3));
        drop(audit.record(event(9)));
        assert!(audit.flush(Duration::from_secs(10)));
        assert_eq!(verify(&path).unwrap().map(|v| v.rows), Ok(4));
        let rows = list(&path, &Filter::default()).unwrap();
        assert_eq!(rows.first().map(|r| r.id), Some(9), "ids are never reused");
    }

    #[test]
    fn approvals_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let audit = Audit::open(&path, false, None).unwrap();
        drop(audit.record(Event::new(Kind::Revoke, "a")));
        drop(audit.record(Event::new(Kind::Approve, "b")));
        drop(audit.record(Event::new(Kind::Revoke, "b")));
        drop(audit.record(Event::new(Kind::Approve, "b")));
        assert!(audit.flush(Duration::from_secs(10)));
        assert_eq!(audit.approvals().unwrap(), vec![("a".into(), false), ("b".into(), true)], "the latest change wins");
        // Pruning every row keeps what they decided.
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE events SET time = '2000-01-01T00:00:00.000Z'", []).unwrap();
        drop(conn);
        assert_eq!(prune_file(&path, Duration::from_secs(86_400)).unwrap(), 4);
        assert_eq!(audit.approvals().unwrap(), vec![("a".into(), false), ("b".into(), true)], "pruning does not undo a revoke");
    }
}
