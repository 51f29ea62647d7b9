//! `POST /v1/check`: the verdict the caller's policy gives some code, without running it.
//!
//! An agent's token checks with its own thresholds, the admin token with the file's. An agent
//! must be approved and within its `max_concurrent` to check, as to run. Without a
//! `[policy]` section every run is allowed, and so is every check: `allow`, nothing found.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::{bad_request, read_json, refused, run_slot, ApiError, AppState};
use crate::agents::Caller;
use crate::policy::Verdict;
use crate::request::Language;

/// The routes, to merge behind the token check.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/check", post(check))
}

/// The request body of `POST /v1/check`: `POST /v1/exec`'s first two fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    language: String,
    code: String,
}

async fn check(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>, body: Body) -> Result<Json<Verdict>, ApiError> {
    let body: CheckBody = read_json(&state, body).await?;
    let language: Language = body.language.parse().map_err(|e: crate::request::RequestError| bad_request(e.to_string()))?;
    // A check costs up to its budget of CPU: an agent's takes a place in its `max_concurrent`
    // (and needs its approval), and every check takes a run slot like a run, so checks are
    // bounded the same way runs are.
    let (policy, ticket) = match caller.agent() {
        Some(agent) => (agent.policy().cloned(), Some(agent.admit_check(language).map_err(|refusal| refused(&state, &agent.id, refusal))?)),
        None => (state.policy.clone(), None),
    };
    let slot = run_slot(&state).await?;
    let verdict = tokio::task::spawn_blocking(move || {
        let _held = (slot, ticket);
        policy.unwrap_or_default().check(language, &body.code)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the check failed: {e}")))?;
    Ok(Json(verdict))
}
