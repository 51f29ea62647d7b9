//! The table of runs executing now (one-shot runs and session turns), each with its agent and
//! its [`RunHandle`]: what `wsbx ps` shows and what a kill acts on.
//!
//! A run is entered before it starts and leaves the table when its [`Registration`] drops,
//! whichever way it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::request::{Language, RunHandle};

/// Runs executing now.
#[derive(Debug, Default)]
pub struct Executions {
    table: Mutex<HashMap<Uuid, Entry>>,
}

#[derive(Debug)]
struct Entry {
    agent: String,
    language: Language,
    session_id: Option<Uuid>,
    started: Instant,
    started_at: SystemTime,
    handle: RunHandle,
}

/// A run as `GET /v1/executions?state=running` and `wsbx ps` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Running {
    /// The run's id (its result's `id`).
    pub id: Uuid,
    /// Its agent.
    pub agent: String,
    /// `run` or `turn`.
    pub kind: String,
    /// Its language.
    pub language: Language,
    /// The session, for a turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Uuid>,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// How long it has run, in milliseconds.
    pub age_ms: u64,
    /// Fuel burnt so far (as of its last 10 ms tick; absent for shell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_so_far: Option<u64>,
    /// Whether a kill was asked for and it has not ended yet.
    pub killed: bool,
}

/// A run's place in the table, removed when dropped.
#[derive(Debug)]
pub struct Registration {
    table: Arc<Executions>,
    id: Uuid,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
    }
}

impl Executions {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enters the run `handle` names, of `agent`, until the registration drops.
    pub fn register(self: &Arc<Self>, handle: &RunHandle, agent: &str, language: Language, session_id: Option<Uuid>) -> Registration {
        let entry = Entry {
            agent: agent.to_owned(),
            language,
            session_id,
            started: Instant::now(),
            started_at: SystemTime::now(),
            handle: handle.clone(),
        };
        self.lock().insert(handle.id(), entry);
        Registration { table: self.clone(), id: handle.id() }
    }

    /// The runs `visible` lets through (by agent), oldest first.
    pub fn list(&self, visible: impl Fn(&str) -> bool) -> Vec<Running> {
        let mut runs: Vec<Running> = self.lock().iter().filter(|(_, e)| visible(&e.agent)).map(|(id, e)| view(*id, e)).collect();
        runs.sort_by_key(|r| std::cmp::Reverse(r.age_ms));
        runs
    }

    /// Whether no run is registered.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The run `id`.
    pub fn get(&self, id: Uuid) -> Option<Running> {
        self.lock().get(&id).map(|e| view(id, e))
    }

    /// Kills run `id` when `allowed` lets its agent be managed; the run as it was, or `None`
    /// when there is no such run (or it is not the caller's to see).
    pub fn kill(&self, id: Uuid, allowed: impl Fn(&str) -> bool, why: &str) -> Option<Running> {
        let table = self.lock();
        let entry = table.get(&id).filter(|e| allowed(&e.agent))?;
        entry.handle.kill(why);
        Some(view(id, entry))
    }

    /// Kills every run of `agent` (`None`: of everyone), or only those of session `session`;
    /// the runs killed.
    pub fn kill_where(&self, agent: Option<&str>, session: Option<Uuid>, why: &str) -> Vec<Running> {
        let table = self.lock();
        table
            .iter()
            .filter(|(_, e)| agent.is_none_or(|a| a == e.agent) && session.is_none_or(|s| e.session_id == Some(s)))
            .map(|(id, e)| {
                e.handle.kill(why);
                view(*id, e)
            })
            .collect()
    }
}

fn view(id: Uuid, entry: &Entry) -> Running {
    Running {
        id,
        agent: entry.agent.clone(),
        kind: if entry.session_id.is_some() { "turn" } else { "run" }.into(),
        language: entry.language,
        session_id: entry.session_id,
        started_at: humantime::format_rfc3339_millis(entry.started_at).to_string(),
        age_ms: u64::try_from(entry.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        fuel_so_far: (entry.language != Language::Shell).then(|| entry.handle.fuel_so_far()),
        killed: entry.handle.is_killed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_leave_the_table_when_their_registration_drops() {
        let table = Arc::new(Executions::default());
        let (a, b) = (RunHandle::new(), RunHandle::new());
        let ra = table.register(&a, "a", Language::Python, None);
        let _rb = table.register(&b, "b", Language::Shell, Some(Uuid::new_v4()));
        assert_eq!(table.list(|_| true).len(), 2);
        assert_eq!(table.list(|agent| agent == "a").len(), 1);
        assert!(table.kill(b.id(), |agent| agent == "a", "no").is_none(), "a cannot kill b's run");
        assert!(!b.is_killed());
        assert!(table.kill(a.id(), |agent| agent == "a", "asked").is_some());
        assert_eq!(a.killed().as_deref(), Some("asked"));
        drop(ra);
        assert!(table.get(a.id()).is_none());
        assert_eq!(table.kill_where(Some("b"), None, "all").len(), 1);
        assert!(b.is_killed());
    }
}
