//! The Model Context Protocol surface: `wsbx mcp` on stdio and `/mcp` (streamable HTTP) on
//! `wsbx serve`, through the official Rust SDK (`rmcp`).
//!
//! Tools: `run_python`, `run_javascript`, `run_shell` (`{"code", "stdin"?, "files"?,
//! "timeout_ms"?, "session_id"?}`), `create_session` and `close_session`. Each is a thin caller
//! of the same core as the HTTP routes ([`super::run_once`], [`super::sessions`]): the same
//! limits, ceilings, run slots and session table. A result is text (status, streams, what was
//! cut) plus one image for each PNG the run left in its scratch directory. What the SDK leaves
//! unanswered — bytes that are not a JSON-RPC message — is answered here ([`jsonrpc`]), on
//! stdio through wsbx's own line framing ([`stdio`]).

mod jsonrpc;
mod stdio;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::service::RequestContext;
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use serde::Deserialize;

use super::sessions::{self, Asked};
use super::{ApiError, AppState, LimitsBody};
use crate::agents::Caller;
use crate::request::{ExecRequest, InputFile, Language};
use crate::result::{ExecResult, Status};
use crate::session::TurnRequest;

/// What the guest sees, said once for every run tool: an LLM reads it to decide what to send.
const GUEST: &str = "Runs in an isolated sandbox: no network, no host files, a private \
    working directory /scratch (files you pass are written there; files the code writes there \
    come back, PNG images as images), and hard limits (a wall-clock timeout, CPU fuel, memory, \
    output size). With session_id, the code runs in that session (see create_session), with \
    the variables and files earlier calls left; otherwise each call starts from nothing.";

/// A file to place in /scratch before the code runs.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileArg {
    /// Path relative to /scratch, e.g. "data/input.csv".
    pub path: String,
    /// The file's content: text, or base64 when `encoding` is "base64".
    pub content: String,
    /// "utf8" (default) or "base64".
    #[serde(default)]
    pub encoding: Option<String>,
}

/// The arguments of `run_python`, `run_javascript` and `run_shell`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// The program to run.
    pub code: String,
    /// Text the program reads on its standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Files to place in /scratch first.
    #[serde(default)]
    pub files: Option<Vec<FileArg>>,
    /// Wall-clock limit in milliseconds (default 10000; the server caps it).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Run in this session (from create_session) instead of a fresh sandbox.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// The arguments of `create_session`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateArgs {
    /// "python", "javascript" or "shell".
    pub language: String,
    /// Files to place in /scratch at the start.
    #[serde(default)]
    pub files: Option<Vec<FileArg>>,
    /// End the session after this many milliseconds without a call (default: the server's).
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
}

/// The arguments of `close_session`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseArgs {
    /// The session to end (its variables and files are gone after).
    pub session_id: String,
}

/// The MCP server: tools over the server's state.
#[derive(Clone)]
pub struct Tools {
    state: Arc<AppState>,
    /// The images each session's turns returned, by session and path, with a hash of their
    /// content: a figure an earlier turn left in /scratch is shown again only when it changed.
    shown: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    tool_router: ToolRouter<Tools>,
}

impl Tools {
    pub(super) fn new(state: Arc<AppState>) -> Tools {
        Tools { state, shown: Arc::default(), tool_router: Tools::tool_router() }
    }

    /// Who calls: over HTTP, the caller the bearer token named; on stdio, `wsbx mcp`'s agent.
    fn caller(&self, context: &RequestContext<RoleServer>) -> Result<Caller, CallToolResult> {
        let from_http = context.extensions.get::<axum::http::request::Parts>().and_then(|parts| parts.extensions.get::<Caller>());
        from_http.or(self.state.stdio_caller.as_ref()).cloned().ok_or_else(|| refused("no agent: give wsbx mcp --agent ID"))
    }

    /// The caller and the agent it runs code as; the refusal to answer with otherwise.
    fn runner(&self, context: &RequestContext<RoleServer>) -> Result<(Caller, Arc<crate::agents::Agent>), CallToolResult> {
        let caller = self.caller(context)?;
        let agent = super::runner(&caller).map_err(|ApiError { message, .. }| refused(&message))?.clone();
        Ok((caller, agent))
    }

    async fn run(&self, context: RequestContext<RoleServer>, language: Language, args: RunArgs) -> Result<CallToolResult, ErrorData> {
        let (caller, agent) = match self.runner(&context) {
            Ok(runner) => runner,
            Err(refusal) => return Ok(refusal),
        };
        let agent = &agent;
        let files = match files(args.files) {
            Ok(files) => files,
            Err(message) => return Ok(refused(&message)),
        };
        let stdin = args.stdin.unwrap_or_default().into_bytes();
        let limits = LimitsBody { timeout_ms: args.timeout_ms, ..LimitsBody::default() };
        // A call the client cancels (`notifications/cancelled`) drops its run, which kills it.
        let work = async {
            match &args.session_id {
                Some(id) => {
                    let code = args.code;
                    let make = |session: &crate::Limits| TurnRequest {
                        code,
                        stdin,
                        files,
                        limits: Some(limits.or(session)),
                        return_files: true,
                        on_output: None,
                        handle: None,
                        policy: None,
                    };
                    sessions::run_turn(&self.state, &caller, id, Some(language), make, None).await
                }
                None => {
                    let request = ExecRequest {
                        stdin,
                        files,
                        limits: limits.or(&self.state.defaults(agent, language)),
                        return_files: true,
                        ..ExecRequest::new(language, args.code)
                    };
                    super::run_once(&self.state, agent, request).await
                }
            }
        };
        let ran = tokio::select! {
            ran = work => ran,
            // Dropping the work killed the run (`KillOnDrop`): say so as a result would.
            () = context.ct.cancelled() => {
                return Ok(CallToolResult::error(vec![ContentBlock::text("status: killed\ndetail: the call was cancelled".to_owned())]));
            }
        };
        Ok(match ran {
            Ok(mut result) => {
                self.drop_shown_images(&mut result);
                tool_result(&result)
            }
            Err(ApiError { message, .. }) => refused(&message),
        })
    }

    /// Leaves out of a session turn's result the images an earlier turn returned unchanged.
    fn drop_shown_images(&self, result: &mut ExecResult) {
        let (Some(session), Some(files)) = (result.session_id, result.files.as_mut()) else { return };
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        files.retain(|file| {
            if file.mime_type != "image/png" {
                return true;
            }
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(&file.content, &mut hasher);
            let hash = std::hash::Hasher::finish(&hasher);
            shown.insert(format!("{session}/{}", file.path), hash) != Some(hash)
        });
    }
}

#[tool_router]
impl Tools {
    /// Runs Python.
    #[tool(description = "Run Python 3 code (CPython with numpy, pandas and matplotlib; plt.show() saves each figure as /scratch/figure-<n>.png, returned as an image). Print what you want to see. Runs in an isolated sandbox: no network, no host files, a private working directory /scratch, hard limits. With session_id, runs in that session with the variables and files earlier calls left.")]
    async fn run_python(&self, context: RequestContext<RoleServer>, Parameters(args): Parameters<RunArgs>) -> Result<CallToolResult, ErrorData> {
        self.run(context, Language::Python, args).await
    }

    /// Runs JavaScript.
    #[tool(description = "Run JavaScript (QuickJS, ES2023; console.log prints; no Node APIs, no npm packages; files through the qjs:std and qjs:os modules). Runs in an isolated sandbox: no network, no host files, a private working directory /scratch, hard limits. With session_id, runs in that session with the globals and files earlier calls left.")]
    async fn run_javascript(&self, context: RequestContext<RoleServer>, Parameters(args): Parameters<RunArgs>) -> Result<CallToolResult, ErrorData> {
        self.run(context, Language::Javascript, args).await
    }

    /// Runs a shell job.
    #[tool(description = "Run a bash script (coreutils and the usual command-line tools; no network, no sudo). Runs in an isolated sandbox in its private working directory /scratch, with hard limits. With session_id, runs in that session's /scratch, where earlier calls' files stay.")]
    async fn run_shell(&self, context: RequestContext<RoleServer>, Parameters(args): Parameters<RunArgs>) -> Result<CallToolResult, ErrorData> {
        self.run(context, Language::Shell, args).await
    }

    /// Starts a session.
    #[tool(description = "Start a session: a sandbox that keeps its state between calls (Python and JavaScript: variables, imports, functions; every language: the files in /scratch). Returns its session_id; pass it to run_python/run_javascript/run_shell, and end it with close_session. A call that times out ends the session; an exception does not. Idle sessions end by themselves.")]
    async fn create_session(&self, context: RequestContext<RoleServer>, Parameters(args): Parameters<CreateArgs>) -> Result<CallToolResult, ErrorData> {
        let (_, agent) = match self.runner(&context) {
            Ok(runner) => runner,
            Err(refusal) => return Ok(refusal),
        };
        let agent = &agent;
        let language: Language = match args.language.parse() {
            Ok(language) => language,
            Err(e) => return Ok(refused(&format!("{e}"))),
        };
        let files = match files(args.files) {
            Ok(files) => files,
            Err(message) => return Ok(refused(&message)),
        };
        let asked = Asked { files, idle_timeout_ms: args.idle_timeout_ms, ..Asked::default() };
        Ok(match sessions::start(&self.state, agent, language, asked).await {
            Ok(view) => {
                let text = format!("session_id: {}\n{language} session started.", view.id);
                let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
                // The session as `GET /v1/sessions/{id}` shows it, plus its id under the name
                // the other tools take it by.
                let mut structured = serde_json::to_value(&view).ok();
                if let Some(serde_json::Value::Object(fields)) = &mut structured {
                    fields.insert("session_id".into(), view.id.to_string().into());
                }
                result.structured_content = structured;
                result
            }
            Err(ApiError { message, .. }) => refused(&message),
        })
    }

    /// Ends a session.
    #[tool(description = "End a session: its sandbox stops and its /scratch files are deleted.")]
    async fn close_session(&self, context: RequestContext<RoleServer>, Parameters(args): Parameters<CloseArgs>) -> Result<CallToolResult, ErrorData> {
        let caller = match self.caller(&context) {
            Ok(caller) => caller,
            Err(refusal) => return Ok(refusal),
        };
        Ok(match sessions::end(&self.state, &caller, &args.session_id, "closed by its client").await {
            Ok(()) => CallToolResult::success(vec![ContentBlock::text(format!("session {} closed", args.session_id))]),
            Err(ApiError { message, .. }) => refused(&message),
        })
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("wsbx", env!("CARGO_PKG_VERSION")))
            .with_instructions(GUEST)
    }
}

/// The `/mcp` route: streamable HTTP, stateless, behind the same token as `/v1/`. Without a
/// token only loopback `Host` headers are accepted (a web page cannot reach a local server
/// through DNS rebinding); with one, the token is the defence and any host is.
///
/// The body is read here, within the server's size cap and body timeout, and a body that is
/// not a JSON-RPC message is answered `400` with the JSON-RPC error ([`jsonrpc`]).
pub(super) fn http_service(state: &Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .fallback_service(streamable_http(state))
        .layer(axum::middleware::from_fn_with_state(state.clone(), answer_malformed))
}

/// Checks a POST's JSON body as stdio does ([`jsonrpc::check`]) and answers what JSON-RPC says
/// of a bad one (`400`): the SDK would answer unreadable JSON with a plain `415` and a standard
/// method with params it cannot read with `-32601`. A body of another content type goes to the
/// SDK, whose `415` is the answer.
async fn answer_malformed(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let json = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim_start().starts_with("application/json"));
    let (parts, body) = request.into_parts();
    let body = match super::read_body(&state, body).await {
        // RFC 8259 lets a parser ignore a byte order mark; the SDK does on stdio only.
        Ok(body) if body.starts_with(b"\xEF\xBB\xBF") => body.slice(3..),
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    if json {
        if let Err(bad) = jsonrpc::check(&body) {
            return (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/json")], bad.answer()).into_response();
        }
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

fn streamable_http(state: &Arc<AppState>) -> StreamableHttpService<Tools, LocalSessionManager> {
    // Stateless: every request stands alone (a wsbx session is named by `session_id`, held in
    // the server's own capped and reaped table), so MCP clients cannot pile up transport
    // sessions the server would have to keep. The body cap is the server's.
    let mut config = StreamableHttpServerConfig::default()
        .with_cancellation_token(state.stop.child_token())
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_max_request_body_bytes(state.max_body_bytes);
    if state.agents.require_token() {
        config = config.disable_allowed_hosts();
    }
    let state = state.clone();
    StreamableHttpService::new(move || Ok(Tools::new(state.clone())), Arc::new(LocalSessionManager::default()), config)
}

/// Serves the tools on stdin and stdout until the client closes its end.
pub(super) async fn serve_stdio(state: &Arc<AppState>) -> std::io::Result<()> {
    stdio::serve(Tools::new(state.clone()), state.max_body_bytes).await
}

/// The input files as given, decoded; why not otherwise.
fn files(given: Option<Vec<FileArg>>) -> Result<Vec<InputFile>, String> {
    given
        .unwrap_or_default()
        .into_iter()
        .map(|file| {
            let content = match file.encoding.as_deref() {
                None | Some("utf8") => file.content.into_bytes(),
                Some("base64") => base64::engine::general_purpose::STANDARD
                    .decode(file.content.as_bytes())
                    .map_err(|e| format!("file {:?}: bad base64: {e}", file.path))?,
                Some(other) => return Err(format!("file {:?}: encoding {other:?} is neither utf8 nor base64", file.path)),
            };
            Ok(InputFile { path: file.path, content })
        })
        .collect()
}

/// A tool call refused before anything ran: an error result the model can read and act on.
fn refused(message: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!("rejected: {message}"))])
}

/// A run's result as the model sees it: the status line, each stream (saying plainly when it
/// was cut), and each PNG the run left as an image. `is_error` unless the status is `ok`.
fn tool_result(result: &ExecResult) -> CallToolResult {
    let mut text = match result.exit_code {
        Some(code) => format!("status: {} (exit code {code})", result.status),
        None => format!("status: {}", result.status),
    };
    if let Some(detail) = &result.detail {
        text.push_str(&format!("\ndetail: {detail}"));
    }
    if let Some(verdict) = result.policy.as_ref().filter(|v| v.decision == crate::policy::Decision::Warn) {
        text.push_str(&format!("\n{}", verdict.warning()));
    }
    if let (Some(session), Some(turn)) = (result.session_id, result.turn) {
        text.push_str(&format!("\nsession_id: {session} (turn {turn})"));
    }
    for (name, stream, truncated) in [("stdout", &result.stdout, result.stdout_truncated), ("stderr", &result.stderr, result.stderr_truncated)] {
        if stream.is_empty() {
            continue;
        }
        text.push_str(&format!("\n--- {name} ---\n{stream}"));
        if !stream.ends_with('\n') {
            text.push('\n');
        }
        if truncated {
            text.push_str(&format!("[{name} was cut off here: the run wrote more than its output limit]\n"));
        }
    }
    let mut content = vec![ContentBlock::text(text)];
    let mut listed = Vec::new();
    for file in result.files.iter().flatten() {
        if file.mime_type == "image/png" {
            content.push(ContentBlock::image(file.content.clone(), "image/png"));
        } else {
            listed.push(format!("{} ({} bytes)", file.path, file.size));
        }
    }
    if !listed.is_empty() {
        content.push(ContentBlock::text(format!("files in /scratch: {}", listed.join(", "))));
    }
    if result.files_truncated {
        content.push(ContentBlock::text("some files were left out: the result's size limit was reached".to_owned()));
    }
    match result.status {
        Status::Ok => CallToolResult::success(content),
        _ => CallToolResult::error(content),
    }
}
