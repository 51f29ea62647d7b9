//! `wsbx serve`: the HTTP surface. Handlers are thin — parse, call [`Sandbox`], map the result
//! to a status code; everything about running code lives in the library.
//!
//! Routes: `POST /v1/exec`, `GET /v1/runtimes`, the sessions' routes ([`sessions`]), the
//! operators' routes ([`admin`]: executions, agents), `/mcp`, `GET /healthz`, `GET /metrics`.
//! Every failure answers `{"error": "..."}`.
//!
//! Every run goes the same way, whatever the surface (HTTP, SSE, MCP, a session's turn):
//! identity (the bearer token names the agent) → admission (approval, the agent's quotas, a
//! run slot) → run (entered in the table of running runs, killable) → record (metrics, the
//! agent's usage, the audit row).

mod admin;
mod check;
mod events;
mod mcp;
mod sessions;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::agents::{Agent, Agents, Caller, Ticket};
use crate::audit::{Audit, Kind};
use crate::config::{Config, LimitTable};
use crate::executions::Executions;
use crate::metrics::Metrics;
use crate::request::{ExecRequest, InputFile, Language, Limits, RunHandle};
use crate::sandbox::{Sandbox, SandboxConfig};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Bearer token every `/v1/` request must carry; `None` serves without authentication.
    pub token: Option<String>,
    /// Runs executing at once; more wait in the queue.
    pub max_concurrency: usize,
    /// Requests that may wait for a run slot; beyond it, 429.
    pub max_queue: usize,
    /// Largest request body in bytes; beyond it, 413.
    pub max_body_bytes: usize,
    /// Connections open at once; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection stays open waiting for the next request.
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
    /// The most any request may ask for (and the defaults are clamped to it).
    pub ceiling: Limits,
    /// Sessions alive at once; creating one more answers 429.
    pub max_sessions: usize,
    /// A session's idle timeout when its request gives none, and the most it may ask for.
    pub session_idle_timeout: Duration,
    /// A session's lifetime when its request gives none, and the most it may ask for.
    pub session_lifetime: Duration,
    /// The sandbox's own configuration.
    pub sandbox: SandboxConfig,
    /// What the config file adds: limits per language, agents, the admin token, audit
    /// settings (its `[server]` section is already in the fields above).
    pub file: Config,
    /// Where the audit log is written; `None`: runs are not audited.
    pub audit: Option<std::path::PathBuf>,
    /// The agent `wsbx mcp`'s client on stdio runs as (there is no token there; see
    /// [`crate::agents::Agents::local`]); `None` for a server without stdio.
    pub stdio_agent: Option<String>,
}

impl ServeConfig {
    /// Guests the wasm engine's instance pool must hold at once for this configuration: every
    /// session's live guest, twice the concurrent runs (a run's guest, and the one before it
    /// still being torn down on the reaper thread), the guests kept warm (Python and
    /// JavaScript, each `warm_instances`, plus one being prepared), and a margin; at least
    /// the library's default. Each slot reserves address space, not memory.
    pub fn pool_instances(&self) -> u32 {
        let warm = 2 * (self.sandbox.warm_instances + 1);
        let needed = self.max_sessions + 2 * self.max_concurrency + warm + 8;
        u32::try_from(needed).unwrap_or(u32::MAX).max(crate::backend::wasm::engine::POOL_INSTANCES)
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        ServeConfig {
            token: None,
            max_concurrency: cores,
            max_queue: cores * 4,
            max_body_bytes: 16 << 20,
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            ceiling: Limits { timeout_ms: 60_000, memory_mb: 1024, max_output_bytes: 16 << 20, disk_mb: 1024, ..Limits::CEILING },
            max_sessions: 64,
            session_idle_timeout: crate::SessionOptions::IDLE_TIMEOUT,
            session_lifetime: crate::SessionOptions::MAX_LIFETIME,
            sandbox: SandboxConfig::default(),
            file: Config::default(),
            audit: None,
            stdio_agent: None,
        }
    }
}

struct AppState {
    sandbox: Arc<Sandbox>,
    metrics: Metrics,
    agents: Agents,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_queue: usize,
    max_body_bytes: usize,
    body_timeout: Duration,
    limits: LimitTable,
    sessions: sessions::Sessions,
    executions: Arc<Executions>,
    audit: Option<Audit>,
    /// The config's policy, with its own thresholds (each agent has its own copy with its
    /// thresholds).
    policy: Option<crate::policy::Policy>,
    /// The caller of `wsbx mcp` on stdio.
    stdio_caller: Option<Caller>,
    /// Cancelled when the server shuts down: ends the MCP transport's open streams, which would
    /// otherwise hold their connections past the graceful shutdown.
    stop: tokio_util::sync::CancellationToken,
}

/// The request body of `POST /v1/exec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecBody {
    language: String,
    code: String,
    #[serde(default)]
    stdin: String,
    #[serde(default)]
    files: Vec<FileBody>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    limits: LimitsBody,
    #[serde(default)]
    return_files: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBody {
    path: String,
    content: String,
    #[serde(default)]
    encoding: Encoding,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Encoding {
    #[default]
    Utf8,
    Base64,
}

/// Limits as sent: any left out take the server's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    timeout_ms: Option<u64>,
    fuel: Option<u64>,
    memory_mb: Option<u64>,
    max_output_bytes: Option<u64>,
    disk_mb: Option<u64>,
    max_files: Option<u64>,
}

/// An error answer: a status code and `{"error": message}`; a 429 also says when to come
/// back (`Retry-After`).
struct ApiError {
    code: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(code: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into(), retry_after: None }
    }

    /// The same answer, saying to come back in `seconds` when it is a 429.
    fn retry_after(mut self, seconds: Option<u64>) -> ApiError {
        self.retry_after = seconds;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.code, Json(serde_json::json!({ "error": self.message }))).into_response();
        if self.code == StatusCode::TOO_MANY_REQUESTS {
            // Busy or over a quota, not refused for good: the client may come back then.
            let seconds = self.retry_after.unwrap_or(1).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message.into())
}

/// Builds the router for `config`. An empty token is refused: it would look like
/// authentication and be none.
pub fn router(config: ServeConfig) -> Result<Router, String> {
    app(config).map(|(router, _)| router)
}

/// The router and the state behind it.
fn app(config: ServeConfig) -> Result<(Router, Arc<AppState>), String> {
    if let Err(e) = crate::backend::wasm::engine::set_pool_instances(config.pool_instances()) {
        tracing::warn!("the wasm instance pool keeps its size: {e}");
    }
    if config.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err("the token is empty: give a real token, or none to serve without authentication".into());
    }
    let limits = LimitTable::new(config.ceiling, &config.file.limits);
    let agents = Agents::new(&config.file, config.token.as_deref())?;
    let audit = match &config.audit {
        Some(path) => {
            let settings = &config.file.audit;
            let audit = Audit::open(path, settings.store_code, settings.retention_days)?.committing_before_answer(settings.commit_before_answer);
            // Approvals changed through the API outlive restarts: they override the file's.
            for (id, approved) in audit.approvals()? {
                if let Some(agent) = agents.get(&id) {
                    agent.set_approved(approved);
                }
            }
            Some(audit)
        }
        None => None,
    };
    let stdio_caller = match config.stdio_agent.as_deref() {
        Some(id) => Some(Caller::Agent(agents.local(Some(id)).ok_or_else(|| format!("no agent {id:?} in the config file"))?)),
        None => None,
    };
    let metrics = Metrics::new().map_err(|e| format!("registering metrics: {e}"))?;
    let sandbox = Arc::new(Sandbox::new(SandboxConfig { ceiling: limits.highest(), ..config.sandbox }));
    if let Ok(runtimes) = sandbox.runtimes() {
        metrics.set_runtimes(&runtimes);
    }
    let state = Arc::new(AppState {
        sandbox,
        metrics,
        agents,
        slots: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
        waiting: AtomicUsize::new(0),
        max_queue: config.max_queue,
        max_body_bytes: config.max_body_bytes,
        body_timeout: config.body_timeout,
        limits,
        sessions: sessions::Sessions::new(config.max_sessions, config.session_idle_timeout, config.session_lifetime),
        executions: Arc::default(),
        audit,
        policy: config.file.policy(),
        stdio_caller,
        stop: tokio_util::sync::CancellationToken::new(),
    });
    sessions::start_reaper(&state);
    let api = Router::new()
        .route("/v1/exec", post(exec))
        .route("/v1/runtimes", get(runtimes))
        .merge(sessions::routes())
        .merge(admin::routes())
        .merge(check::routes())
        .nest_service("/mcp", mcp::http_service(&state))
        .route_layer(middleware::from_fn_with_state(state.clone(), identify));
    let router = Router::new()
        .merge(api)
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route")
        })
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state.clone());
    Ok((router, state))
}

/// Serves on `listener` until SIGTERM or Ctrl-C, then stops accepting, lets in-flight runs
/// finish (each ends by its own deadline; the wait is bounded by the timeout ceiling plus a
/// margin) so their scratch directories are removed, and returns.
///
/// Connections are capped (`max_connections`: beyond it new clients wait in the kernel's
/// backlog), a client must send its headers within `header_timeout` (which also closes idle
/// keep-alive connections) and its body within `body_timeout`: slow or idle clients cannot
/// hold the server's descriptors.
pub async fn serve(listener: tokio::net::TcpListener, config: ServeConfig) -> std::io::Result<()> {
    let grace = Duration::from_millis(config.ceiling.timeout_ms.min(Limits::CEILING.timeout_ms)) + Duration::from_secs(5);
    let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let header_timeout = config.header_timeout;
    let (app, state) = app(config).map_err(std::io::Error::other)?;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(shutdown_signal());
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors (or a connection reset before accept): back off briefly
                    // instead of spinning; the server stays up.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    tracing::info!("shutting down: finishing in-flight runs");
    state.stop.cancel();
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => tracing::warn!("in-flight runs did not finish within {grace:?}; exiting"),
    }
    // Sessions end with the server: their guests stop and their scratch directories go.
    // Then every queued audit row is written.
    let closed = tokio::task::spawn_blocking(move || {
        let closed = sessions::close_all(&state);
        if let Some(audit) = &state.audit {
            audit.close();
        }
        closed
    })
    .await
    .unwrap_or(0);
    if closed > 0 {
        tracing::info!(closed, "closed the sessions");
    }
    Ok(())
}

/// Serves the Model Context Protocol on stdin and stdout (`wsbx mcp`) until the client closes
/// its end, with the same tools, limits and sessions as `/mcp`; then ends every session.
///
/// SIGTERM, SIGINT (and a client's end of input) end it cleanly: every session ends and every
/// scratch directory of the process (sessions', prepared guests', runs in flight) is removed.
pub async fn serve_mcp_stdio(config: ServeConfig) -> std::io::Result<()> {
    let (_, state) = app(config).map_err(std::io::Error::other)?;
    let served = tokio::select! {
        served = mcp::serve_stdio(&state) => served,
        () = shutdown_signal() => Ok(()),
    };
    state.stop.cancel();
    // Calls still running end now, and the process waits (briefly) for them to be gone: a shell
    // job must not outlive the process that supervises it.
    state.executions.kill_where(None, None, "wsbx mcp is stopping");
    let waited = std::time::Instant::now();
    while !state.executions.is_empty() && waited.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = tokio::task::spawn_blocking(move || {
        sessions::close_all(&state);
        if let Some(audit) = &state.audit {
            audit.close();
        }
        // What is prepared ahead ends cleanly first (a shell sandbox being started would
        // otherwise lose its directory mid-start, and say so).
        state.sandbox.stop_preparing();
        // A run still going (its client left, or the signal came mid-call) loses its
        // directory now rather than leaving it behind when the process exits.
        crate::scratch::remove_all_live();
    })
    .await;
    served
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Counts every response in `wsbx_http_requests_total{route,code}`.
async fn count_requests(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    state.metrics.record_http(&route, response.status().as_u16());
    response
}

/// Without a token, a server answers only requests addressed to a loopback name and not sent
/// by a foreign web page: otherwise any page a local browser opens could post runs to it (a
/// plain cross-site POST needs no preflight) or, through DNS rebinding, read their results.
/// With a token, the token is the defence.
fn from_a_foreign_page(state: &AppState, headers: &HeaderMap) -> Option<&'static str> {
    if state.agents.require_token() {
        return None;
    }
    let loopback = |authority: &str| {
        let host = match authority.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => authority.rsplit_once(':').map_or(authority, |(h, port)| if port.chars().all(|c| c.is_ascii_digit()) { h } else { authority }),
        };
        matches!(host.to_ascii_lowercase().as_str(), "localhost" | "127.0.0.1" | "::1")
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !loopback(host) {
        return Some("without --token this server answers only requests to localhost, 127.0.0.1 or [::1]; give it a token to serve others");
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if !loopback(authority.trim_end_matches('/')) {
            return Some("without --token this server refuses requests from web pages of other origins");
        }
    }
    None
}

/// Names the caller from `Authorization: Bearer <token>` (the admin or an agent; without any
/// configured token, the agent `default`) for the handlers, or answers 401.
async fn identify(State(state): State<Arc<AppState>>, headers: HeaderMap, mut request: Request, next: Next) -> Response {
    if let Some(why) = from_a_foreign_page(&state, &headers) {
        return ApiError::new(StatusCode::FORBIDDEN, why).into_response();
    }
    // The scheme is case-insensitive (RFC 7235).
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim_start());
    match state.agents.identify(bearer) {
        Some(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        None => {
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// The agent a caller runs code as: the admin token manages, it runs nothing.
fn runner(caller: &Caller) -> Result<&Arc<Agent>, ApiError> {
    caller.agent().ok_or_else(|| {
        ApiError::new(StatusCode::FORBIDDEN, "the admin token manages the server; code runs with an agent's token")
    })
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

async fn runtimes(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let sandbox = state.sandbox.clone();
    let list = tokio::task::spawn_blocking(move || sandbox.runtimes())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Json(list).into_response())
}

async fn exec(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let agent = runner(&caller)?;
    let body: ExecBody = read_json(&state, body).await?;
    let mut request = to_request(body, &state, agent)?;
    if !wants_events(&headers) {
        return Ok(Json(run_once(&state, agent, request).await?).into_response());
    }
    let (feed, listener) = events::Feed::new();
    request.on_output = Some(listener);
    // Refusals (400, 403, 429, 503) are answered as such, before the event stream starts.
    let admitted = admit(&state, agent, &mut request, None).await?;
    let cancel = KillOnDrop::new(admitted.handle.clone());
    let worker = state.clone();
    let run = tokio::spawn(async move { execute(&worker, admitted, request).await });
    Ok(events::response(feed, run, cancel).into_response())
}

/// Whether the client asked for Server-Sent Events (`Accept: text/event-stream`).
fn wants_events(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains("text/event-stream"))
}

/// Runs one request of `agent`: admitted, run, recorded. The one way a one-shot run goes,
/// for HTTP and MCP alike.
async fn run_once(state: &Arc<AppState>, agent: &Arc<Agent>, mut request: ExecRequest) -> Result<crate::ExecResult, ApiError> {
    let admitted = admit(state, agent, &mut request, None).await?;
    execute(state, admitted, request).await
}

/// A run let in: its place in its agent's quotas, its entry in the table of running runs
/// (from the moment it is admitted, queued ones too, so a kill reaches them), and its run
/// slot.
struct Admitted {
    ticket: Ticket,
    handle: RunHandle,
    registration: crate::executions::Registration,
    /// `None` when the run was killed while it waited: it ends at once as `killed`, without
    /// running and without a slot.
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl AppState {
    /// The ceiling of `agent`'s runs of `language`.
    fn ceiling(&self, agent: &Agent, language: Language) -> Limits {
        agent.ceiling(&self.limits.ceiling(language))
    }

    /// The limits `agent`'s runs of `language` take when they give none.
    fn defaults(&self, agent: &Agent, language: Language) -> Limits {
        self.limits.default(language).lowered_to(&self.ceiling(agent, language))
    }

    /// Refuses work while the audit log cannot be written (503).
    fn audit_ready(&self) -> Result<(), ApiError> {
        match &self.audit {
            Some(audit) => audit.check().map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e)),
            None => Ok(()),
        }
    }

    /// Writes `event` to the audit log, if there is one; the receipt resolves once written,
    /// and is given only when the answer is to wait for it (`commit_before_answer`).
    fn audit(&self, event: crate::audit::Event) -> Option<crate::audit::Receipt> {
        let audit = self.audit.as_ref()?;
        let receipt = audit.record(event);
        audit.commit_before_answer().then_some(receipt)
    }

    /// Records a finished run or turn of `ticket`'s agent: its fuel against the agent's quota,
    /// the agent's metrics, its audit row.
    fn account(&self, kind: Kind, ticket: &Ticket, request: &ExecRequest, result: &crate::ExecResult) -> Option<crate::audit::Receipt> {
        let agent = ticket.agent();
        ticket.charge(result);
        self.metrics.record_agent_run(&agent.id, result);
        let store_code = self.audit.as_ref().is_some_and(Audit::store_code);
        self.audit(crate::audit::Event::of_run(kind, &agent.id, request, result, store_code))
    }
}

/// With `[audit] commit_before_answer`, waits (a little) for a row to be committed before
/// answering: a client that saw a result then finds its row even after the server is killed
/// with SIGKILL. A log that cannot be written does not hold the answer back for long; its
/// rows are retried. Without it (the default) the answer does not wait: the row is committed
/// a moment later (measured: +0.55 ms p50 on the round trip when waiting).
async fn written(receipt: Option<crate::audit::Receipt>) {
    if let Some(receipt) = receipt {
        let _ = tokio::time::timeout(Duration::from_secs(2), receipt).await;
    }
}

/// Lets `agent`'s `request` (a turn of session `session`, when given) in: checked against its
/// ceilings (400), refused while the audit log cannot be written (503), counted against its
/// approval and quotas (403, 429; its fuel lowered to what `fuel_per_hour` has left), entered
/// in the table of running runs, given a run slot (429 when the queue is full). The one
/// admission of runs and turns, for every surface.
async fn admit(state: &AppState, agent: &Arc<Agent>, request: &mut ExecRequest, session: Option<uuid::Uuid>) -> Result<Admitted, ApiError> {
    request.validate(&state.ceiling(agent, request.language)).map_err(|e| bad_request(e.to_string()))?;
    // Checked in the run itself (so a denial is a result like any other), by the agent's rules.
    request.policy = agent.policy().cloned();
    state.audit_ready()?;
    let ticket = agent.admit(request.language, request.limits.fuel).map_err(|refusal| refused(state, &agent.id, refusal))?;
    request.limits.fuel = ticket.fuel();
    let handle = request.handle.get_or_insert_with(RunHandle::new).clone();
    let registration = state.executions.register(&handle, &agent.id, request.language, session);
    // A run killed while it waits for a slot stops waiting.
    let waiting = Waiting { state, ticket: &ticket, request, session };
    let slot = tokio::select! {
        slot = run_slot(state) => slot.map(Some),
        () = until_killed(&handle) => Ok(None),
    };
    std::mem::forget(waiting);
    Ok(Admitted { ticket, handle, registration, slot: slot? })
}

/// A run waiting for its slot. Dropped there, its client went away (its connection closed):
/// the run is recorded as `killed` all the same, so that no admitted run lacks its row.
struct Waiting<'a> {
    state: &'a AppState,
    ticket: &'a Ticket,
    request: &'a ExecRequest,
    session: Option<uuid::Uuid>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut result = crate::ExecResult::not_run(self.request.language, crate::Status::Killed, "its client went away".into()).of(self.request);
        result.session_id = self.session;
        let kind = match self.session {
            Some(_) => {
                self.state.metrics.record_turn(&result);
                Kind::Turn
            }
            None => {
                self.state.metrics.record_run(&result);
                Kind::Run
            }
        };
        let _ = self.state.account(kind, self.ticket, self.request, &result);
    }
}

/// Returns once `handle`'s run is killed (checked every 10 ms, as the guests' epoch is).
async fn until_killed(handle: &RunHandle) {
    while !handle.is_killed() {
        tokio::time::sleep(crate::backend::wasm::engine::EPOCH_TICK).await;
    }
}

/// The answer to a refusal by approval or quota, counted in the agent's metrics.
fn refused(state: &AppState, agent: &str, refusal: crate::agents::Refusal) -> ApiError {
    state.metrics.record_refusal(agent, refusal.reason);
    let code = StatusCode::from_u16(refusal.code).unwrap_or(StatusCode::FORBIDDEN);
    ApiError::new(code, refusal.message).retry_after(refusal.retry_after)
}

/// Runs an admitted request on the blocking pool, entered in the table of running runs.
async fn execute(state: &Arc<AppState>, admitted: Admitted, request: ExecRequest) -> Result<crate::ExecResult, ApiError> {
    // A client that goes away (its connection closed, its MCP call cancelled) drops this
    // future: the run is killed rather than left to run to its deadline.
    let mut cancel = KillOnDrop::new(admitted.handle.clone());
    let worker = state.clone();
    // Runs are CPU-bound and synchronous: keep them off the async workers. The slot, the
    // ticket and the in-flight gauge go with the run, not with this handler.
    let (answer, answered) = tokio::sync::oneshot::channel();
    let _ = tokio::task::spawn_blocking(move || {
        let Admitted { ticket, slot, registration, .. } = admitted;
        let in_flight = worker.metrics.start_run();
        let (result, scratch) = worker.sandbox.run_keeping_scratch(&request);
        worker.metrics.record_run(&result);
        let receipt = worker.account(Kind::Run, &ticket, &request, &result);
        // When its answer leaves, the run is over for whoever asks next (its slot, its agent's
        // quota place and its entry in the running runs are free); its directory, whose files
        // were collected, is detached after: ~0.1 ms the client need not wait for. A stopping
        // server waits for this thread, and a stopping process removes what it left.
        drop((in_flight, registration, ticket, slot));
        let _ = answer.send((result, receipt));
        if let Some(scratch) = scratch {
            scratch.recycle();
        }
    });
    let (result, receipt) = answered.await.map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the run failed: its thread ended without a result"))?;
    cancel.disarm();
    written(receipt).await;
    Ok(result)
}

/// Kills a run when dropped, unless disarmed first: what ends a run whose client left.
pub(super) struct KillOnDrop(Option<RunHandle>);

impl KillOnDrop {
    pub(super) fn new(handle: RunHandle) -> KillOnDrop {
        KillOnDrop(Some(handle))
    }

    /// The run ended: nothing to kill.
    pub(super) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.kill("its client went away");
        }
    }
}

/// Reads a JSON request body within the body timeout and size cap.
async fn read_json<T: serde::de::DeserializeOwned>(state: &AppState, body: Body) -> Result<T, ApiError> {
    let bytes = read_body(state, body).await?;
    serde_json::from_slice(&bytes).map_err(|e| bad_request(format!("bad request body: {e}")))
}

/// Reads a request body within the body timeout and size cap (refused at once when its
/// declared length is over the cap).
async fn read_body(state: &AppState, body: Body) -> Result<bytes::Bytes, ApiError> {
    let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than {} bytes", state.max_body_bytes));
    if axum::body::HttpBody::size_hint(&body).lower() > state.max_body_bytes as u64 {
        return Err(too_large());
    }
    let read = tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, state.max_body_bytes));
    read.await
        .map_err(|_| ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("the request body did not arrive within {:?}", state.body_timeout)))?
        .map_err(|_| too_large())
}

/// A run slot: at once when one is free, after a wait in the queue otherwise; 429 when the
/// queue is full, 503 when shutting down.
async fn run_slot(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    if let Ok(slot) = state.slots.clone().try_acquire_owned() {
        return Ok(slot);
    }
    // Counted while waiting, uncounted on every way out: a client that gives up while queued
    // drops this future and with it the guard.
    let Some(_queued) = QueueTicket::take(state) else {
        return Err(too_many("all run slots and the queue are busy; retry"));
    };
    state
        .slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))
}

/// An id exactly as the server writes it (lowercase, hyphenated): one spelling per run or
/// session, so a proxy's rules on paths cannot be sidestepped with `{…}`, `urn:uuid:` or
/// uppercase forms. Anything else is `not_found`.
fn strict_id(id: &str, not_found: impl FnOnce(&str) -> ApiError) -> Result<uuid::Uuid, ApiError> {
    match uuid::Uuid::try_parse(id) {
        Ok(uuid) if uuid.hyphenated().to_string() == id => Ok(uuid),
        _ => Err(not_found(id)),
    }
}

/// A 429 answer (with `Retry-After: 1`).
fn too_many(message: &str) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
}

/// A place in the queue for a run slot, given back when dropped.
struct QueueTicket<'a>(&'a AtomicUsize);

impl<'a> QueueTicket<'a> {
    /// A place in `state`'s queue, or `None` when the queue is full.
    fn take(state: &'a AppState) -> Option<QueueTicket<'a>> {
        let taken = state.waiting.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < state.max_queue).then_some(n + 1));
        taken.ok().map(|_| QueueTicket(&state.waiting))
    }
}

impl Drop for QueueTicket<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn to_request(body: ExecBody, state: &AppState, agent: &Agent) -> Result<ExecRequest, ApiError> {
    let language: Language = body.language.parse().map_err(|e: crate::RequestError| bad_request(e.to_string()))?;
    let mut request = ExecRequest::new(language, body.code);
    request.stdin = body.stdin.into_bytes();
    request.env = body.env;
    request.return_files = body.return_files;
    request.limits = body.limits.or(&state.defaults(agent, language));
    request.files = to_files(body.files)?;
    Ok(request)
}

impl LimitsBody {
    /// The limits sent, each left out taken from `defaults`.
    fn or(&self, defaults: &Limits) -> Limits {
        Limits {
            timeout_ms: self.timeout_ms.unwrap_or(defaults.timeout_ms),
            fuel: self.fuel.unwrap_or(defaults.fuel),
            memory_mb: self.memory_mb.unwrap_or(defaults.memory_mb),
            max_output_bytes: self.max_output_bytes.unwrap_or(defaults.max_output_bytes),
            disk_mb: self.disk_mb.unwrap_or(defaults.disk_mb),
            max_files: self.max_files.unwrap_or(defaults.max_files),
        }
    }
}

/// The input files as sent, decoded.
fn to_files(files: Vec<FileBody>) -> Result<Vec<InputFile>, ApiError> {
    files
        .into_iter()
        .map(|file| {
            let content = match file.encoding {
                Encoding::Utf8 => file.content.into_bytes(),
                Encoding::Base64 => base64::engine::general_purpose::STANDARD
                    .decode(file.content.as_bytes())
                    .map_err(|e| bad_request(format!("file {:?}: bad base64: {e}", file.path)))?,
            };
            Ok(InputFile { path: file.path, content })
        })
        .collect()
}
