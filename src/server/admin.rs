//! The operators' routes: what runs now and what ran (`/v1/executions`), the kill switch, and
//! the agents (`/v1/agents`: usage, kill, approve, revoke).
//!
//! The admin token sees and acts on everything; an agent's token sees and kills only its own
//! runs and sessions (another agent's are not found: 404), and sees only itself in
//! `/v1/agents`. Approving and revoking take the admin token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use uuid::Uuid;

use super::{bad_request, sessions, ApiError, AppState};
use crate::agents::{AgentView, Caller};
use crate::audit::{Event, Filter, Kind};
use crate::executions::Running;

/// The routes, to merge behind the token check.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/executions", get(list))
        .route("/v1/executions/{id}", get(show).delete(kill))
        .route("/v1/agents", get(agents))
        .route("/v1/agents/{id}/kill", post(kill_agent))
        .route("/v1/agents/{id}/approve", post(approve))
        .route("/v1/agents/{id}/revoke", post(revoke))
}

/// The query of `GET /v1/executions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// `running` (default) or `finished`.
    state: Option<String>,
    agent: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

/// How `caller` names who acted, in a killed run's detail and the audit log.
fn by(caller: &Caller) -> String {
    match caller {
        Caller::Admin => "killed by the admin".into(),
        Caller::Agent(agent) => format!("killed by agent {}", agent.id),
    }
}

/// Runs and sessions alive now that `caller` may see, oldest first.
fn running(state: &AppState, caller: &Caller, agent: Option<&str>) -> Vec<Running> {
    let visible = |owner: &str| caller.may_manage(owner) && agent.is_none_or(|a| a == owner);
    let mut all = state.executions.list(visible);
    all.extend(sessions::running(state, visible));
    all.sort_by_key(|r| std::cmp::Reverse(r.age_ms));
    all
}

async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(agent) = &query.agent {
        if !caller.may_manage(agent) {
            return Ok(Json(serde_json::json!([])));
        }
    }
    match query.state.as_deref().unwrap_or("running") {
        "running" => {
            let mut runs = running(&state, &caller, query.agent.as_deref());
            if let Some(limit) = query.limit {
                runs.truncate(limit);
            }
            Ok(Json(serde_json::to_value(runs).unwrap_or_default()))
        }
        "finished" => {
            let agent = match &caller {
                Caller::Admin => query.agent.clone(),
                Caller::Agent(own) => Some(own.id.clone()),
            };
            let filter = Filter {
                agent,
                status: query.status.clone(),
                kinds: vec![Kind::Run, Kind::Turn, Kind::PolicyDeny],
                limit: Some(query.limit.unwrap_or(100).min(10_000)),
                ..Filter::default()
            };
            Ok(Json(serde_json::to_value(finished(&state, filter).await?).unwrap_or_default()))
        }
        other => Err(bad_request(format!("state must be running or finished, not {:?}", other.chars().take(20).collect::<String>()))),
    }
}

/// Audit rows `filter` selects, read off the async workers.
async fn finished(state: &Arc<AppState>, filter: Filter) -> Result<Vec<crate::audit::Row>, ApiError> {
    let Some(path) = state.audit.as_ref().map(|a| a.path().to_owned()) else {
        return Err(ApiError::new(StatusCode::CONFLICT, "finished executions come from the audit log, and this server keeps none (give it a config file)"));
    };
    tokio::task::spawn_blocking(move || crate::audit::list(&path, &filter))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))
}

fn not_found(id: &str) -> ApiError {
    let shown: String = id.chars().take(36).collect();
    ApiError::new(StatusCode::NOT_FOUND, format!("no execution {shown} running or recorded"))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    super::strict_id(id, not_found)
}

async fn show(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let key = parse_id(&id)?;
    if let Some(run) = running(&state, &caller, None).into_iter().find(|r| r.id == key) {
        return Ok(Json(serde_json::to_value(run).unwrap_or_default()));
    }
    if state.audit.is_some() {
        let filter = Filter { execution_id: Some(key.to_string()), kinds: vec![Kind::Run, Kind::Turn, Kind::PolicyDeny], limit: Some(1), code: true, ..Filter::default() };
        if let Some(row) = finished(&state, filter).await?.into_iter().find(|r| caller.may_manage(&r.event.agent)) {
            return Ok(Json(serde_json::to_value(row).unwrap_or_default()));
        }
    }
    Err(not_found(&id))
}

/// Waits (at most two seconds) until the runs `ids` have left the table: their results are
/// out when the kill is answered.
async fn ended(state: &AppState, ids: &[Uuid]) {
    let start = Instant::now();
    while ids.iter().any(|id| state.executions.get(*id).is_some()) && start.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `DELETE /v1/executions/{id}`: kills a run or turn (it ends as `killed`), or ends a session
/// (killing its running turn). Answers once the run has ended.
async fn kill(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let key = parse_id(&id)?;
    let why = by(&caller);
    let killed = match state.executions.kill(key, |owner| caller.may_manage(owner), &why) {
        Some(run) => run,
        None => sessions::kill(&state, &caller, &id, &why).await.map_err(|_| not_found(&id))?,
    };
    state.audit(Event {
        execution_id: (killed.kind != "session").then(|| killed.id.to_string()),
        session_id: killed.session_id.or((killed.kind == "session").then_some(killed.id)).map(|s| s.to_string()),
        language: Some(killed.language.to_string()),
        detail: Some(why),
        ..Event::new(Kind::Kill, &killed.agent)
    });
    ended(&state, &[killed.id]).await;
    Ok(Json(serde_json::json!({ "killed": [killed] })))
}

/// The agent `id` as `caller` may act on it.
fn agent(state: &AppState, caller: &Caller, id: &str) -> Result<Arc<crate::agents::Agent>, ApiError> {
    let unknown = || ApiError::new(StatusCode::NOT_FOUND, format!("no agent {:?}", id.chars().take(64).collect::<String>()));
    if !caller.may_manage(id) {
        return Err(unknown());
    }
    state.agents.get(id).ok_or_else(unknown)
}

async fn agents(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>) -> Json<Vec<AgentView>> {
    Json(state.agents.all().filter(|a| caller.may_manage(&a.id)).map(|a| a.view()).collect())
}

/// `POST /v1/agents/{id}/kill`: ends every run and session of the agent.
async fn kill_agent(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let agent = agent(&state, &caller, &id)?;
    let why = by(&caller);
    let runs = state.executions.kill_where(Some(&agent.id), None, &why);
    let mut ended_sessions = Vec::new();
    for session in sessions::running(&state, |owner| owner == agent.id) {
        if sessions::kill(&state, &caller, &session.id.to_string(), &why).await.is_ok() {
            ended_sessions.push(session.id);
        }
    }
    state.audit(Event {
        detail: Some(format!("{why}: {} runs, {} sessions", runs.len(), ended_sessions.len())),
        ..Event::new(Kind::Kill, &agent.id)
    });
    let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
    ended(&state, &ids).await;
    Ok(Json(serde_json::json!({ "agent": agent.id, "killed": runs, "sessions_ended": ended_sessions })))
}

async fn approve(state: State<Arc<AppState>>, caller: Extension<Caller>, id: Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    set_approval(state, caller, id, true).await
}

async fn revoke(state: State<Arc<AppState>>, caller: Extension<Caller>, id: Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    set_approval(state, caller, id, false).await
}

/// Approves or revokes agent `id`, and records it in the audit log, where it outlives a
/// restart (`persisted`). Revoking refuses the agent's next runs; what runs now goes on (kill
/// it with `POST /v1/agents/{id}/kill`).
async fn set_approval(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    approved: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !matches!(caller, Caller::Admin) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "only the admin token approves or revokes agents"));
    }
    let agent = agent(&state, &caller, &id)?;
    state.audit_ready()?;
    let kind = if approved { Kind::Approve } else { Kind::Revoke };
    // An approval is written in a transaction of its own before it takes effect: it is on
    // disk exactly when the server acts on it (what it does now and after a restart agree),
    // or, failing, neither.
    let persisted = match &state.audit {
        Some(_) => {
            let worker = state.clone();
            let event = Event::new(kind, &agent.id);
            let written = tokio::task::spawn_blocking(move || worker.audit.as_ref().map_or(Ok(()), |audit| audit.append_now(&event)))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            written.map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the change could not be written to the audit log ({e}); nothing changed")))?;
            true
        }
        None => false,
    };
    agent.set_approved(approved);
    let mut view = serde_json::to_value(agent.view()).unwrap_or_default();
    view["persisted"] = serde_json::Value::Bool(persisted);
    Ok(Json(view))
}
