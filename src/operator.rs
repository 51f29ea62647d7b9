//! The operators' commands: `wsbx token`, `wsbx ps`, `wsbx kill`, `wsbx agents`, `wsbx audit`.
//!
//! `ps`, `kill` and `agents` talk to a running server (`--server URL --token TOKEN`, or
//! `$WSBX_SERVER` and `$WSBX_TOKEN`); `audit` reads the SQLite file itself. Each prints a
//! table for people, or JSON with `--json`. Exit codes: 0 done, 1 the audit log is broken,
//! 126 refused (bad arguments, 4xx from the server), 127 the server or file could not be
//! reached.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use wsbx::audit::{Filter, Kind, Row};

use super::{EXIT_INTERNAL, EXIT_REJECTED};

/// Where the server is and who is asking.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(long, value_name = "URL", env = "WSBX_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The admin token (sees everything), or an agent's (sees its own).
    #[arg(long, env = "WSBX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct TokenArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PsArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Only this agent's.
    #[arg(long, value_name = "ID")]
    agent: Option<String>,
}

#[derive(Args)]
pub struct KillArgs {
    /// The run's (or session's) id.
    id: String,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand)]
pub enum AgentsAction {
    /// The agents, their approval and their usage against their quotas.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Lets an agent run code again (admin token; outlives a restart).
    Approve {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Refuses an agent's next runs (admin token; outlives a restart).
    Revoke {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Ends every run and session of an agent.
    Kill {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Which audit log.
#[derive(Args)]
pub struct LogArgs {
    /// The config file naming the log (`[audit] path`; `$WSBX_CONFIG`).
    #[arg(long, value_name = "FILE", env = "WSBX_CONFIG")]
    config: Option<PathBuf>,
    /// The log itself [default: $WSBX_HOME/audit.db].
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    db: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum AuditAction {
    /// The rows, newest first.
    List {
        #[command(flatten)]
        log: LogArgs,
        /// Only this agent's.
        #[arg(long, value_name = "ID")]
        agent: Option<String>,
        /// Only rows with this status (ok, error, timeout, killed, rejected, ...).
        #[arg(long)]
        status: Option<String>,
        /// Only rows of this kind (run, turn, session_start, session_end, kill, approve, revoke, policy_deny).
        #[arg(long)]
        kind: Option<String>,
        /// Only rows since then: an RFC 3339 time or a duration back from now ("1h", "2d").
        #[arg(long)]
        since: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Checks the hash chain: exit 0 when intact, 1 naming the first broken row.
    Verify {
        #[command(flatten)]
        log: LogArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn token(args: TokenArgs) -> ExitCode {
    let mut bytes = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut bytes) {
        wsbx::errln!("wsbx: internal_error: no randomness: {e}");
        return ExitCode::from(EXIT_INTERNAL);
    }
    let token = format!("wsbx_{}", hex::encode(bytes));
    let hash = hex::encode(wsbx::config::token_sha256(&token));
    if args.json {
        wsbx::outln!("{}", serde_json::json!({ "token": token, "token_sha256": hash }));
    } else {
        wsbx::outln!("token:        {token}");
        wsbx::outln!("token_sha256: {hash}");
        wsbx::errln!("wsbx: give the token to its holder; put only token_sha256 in the config file");
    }
    ExitCode::SUCCESS
}

/// A failed command: the message and the exit code.
struct Failed(String, u8);

fn finish(result: Result<(), Failed>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed(message, code)) => {
            wsbx::errln!("wsbx: {message}");
            ExitCode::from(code)
        }
    }
}

/// Sends one request to the server and returns its JSON answer; a 4xx or 5xx is a failure
/// carrying the server's message.
fn call(server: &ServerArgs, method: &str, path: &str) -> Result<serde_json::Value, Failed> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Failed(e.to_string(), EXIT_INTERNAL))?;
    runtime.block_on(async {
        let url = format!("{}{path}", server.server.trim_end_matches('/'));
        let mut request = hyper::Request::builder().method(method).uri(&url).header("accept", "application/json");
        if let Some(token) = &server.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .map_err(|e| Failed(format!("rejected: {url}: {e}"), EXIT_REJECTED))?;
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
            .await
            .map_err(|_| Failed(format!("error: {url}: no answer within 30 s"), EXIT_INTERNAL))?
            .map_err(|e| Failed(format!("error: cannot reach {url}: {e}"), EXIT_INTERNAL))?;
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map_err(|e| Failed(format!("error: reading the answer of {url}: {e}"), EXIT_INTERNAL))?
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
        if !status.is_success() {
            let message = value.get("error").and_then(|e| e.as_str()).map(str::to_owned).unwrap_or_else(|| value.to_string());
            let code = if status.is_client_error() { EXIT_REJECTED } else { EXIT_INTERNAL };
            return Err(Failed(format!("{}: {message}", status.as_u16()), code));
        }
        Ok(value)
    })
}

/// Prints `rows` as aligned columns under `header`.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        wsbx::outln!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn text(value: &serde_json::Value, key: &str) -> String {
    match value.get(key) {
        None | Some(serde_json::Value::Null) => "-".into(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn print_json(value: &impl serde::Serialize) {
    wsbx::outln!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

pub fn ps(args: PsArgs) -> ExitCode {
    finish((|| {
        let path = match &args.agent {
            Some(agent) => format!("/v1/executions?state=running&agent={agent}"),
            None => "/v1/executions?state=running".into(),
        };
        let runs = call(&args.server, "GET", &path)?;
        if args.server.json {
            print_json(&runs);
            return Ok(());
        }
        let rows = runs
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let age = r.get("age_ms").and_then(|a| a.as_u64()).map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
                vec![text(r, "id"), text(r, "agent"), text(r, "kind"), text(r, "language"), age, text(r, "fuel_so_far")]
            })
            .collect();
        table(&["ID", "AGENT", "KIND", "LANGUAGE", "AGE", "FUEL"], rows);
        Ok(())
    })())
}

pub fn kill(args: KillArgs) -> ExitCode {
    finish((|| {
        let answer = call(&args.server, "DELETE", &format!("/v1/executions/{}", args.id))?;
        if args.server.json {
            print_json(&answer);
        } else {
            for run in answer.get("killed").and_then(|k| k.as_array()).into_iter().flatten() {
                wsbx::outln!("killed {} {} of agent {}", text(run, "kind"), text(run, "id"), text(run, "agent"));
            }
        }
        Ok(())
    })())
}

pub fn agents(action: AgentsAction) -> ExitCode {
    finish((|| {
        let (server, answer) = match &action {
            AgentsAction::List { server } => (server, call(server, "GET", "/v1/agents")?),
            AgentsAction::Approve { id, server } => (server, call(server, "POST", &format!("/v1/agents/{id}/approve"))?),
            AgentsAction::Revoke { id, server } => (server, call(server, "POST", &format!("/v1/agents/{id}/revoke"))?),
            AgentsAction::Kill { id, server } => (server, call(server, "POST", &format!("/v1/agents/{id}/kill"))?),
        };
        if server.json {
            print_json(&answer);
            return Ok(());
        }
        match &action {
            AgentsAction::Kill { id, .. } => {
                let runs = answer.get("killed").and_then(|k| k.as_array()).map_or(0, Vec::len);
                let sessions = answer.get("sessions_ended").and_then(|k| k.as_array()).map_or(0, Vec::len);
                wsbx::outln!("agent {id}: killed {runs} runs, ended {sessions} sessions");
            }
            _ => {
                let list = match answer {
                    serde_json::Value::Array(list) => list,
                    one => vec![one],
                };
                let quota = |a: &serde_json::Value, used: &str, key: &str| {
                    let max = a.get("quotas").map_or("-".into(), |q| text(q, key));
                    format!("{}/{max}", text(a, used))
                };
                let rows = list
                    .iter()
                    .map(|a| {
                        vec![
                            text(a, "id"),
                            text(a, "approved"),
                            quota(a, "running", "max_concurrent"),
                            quota(a, "runs_last_minute", "runs_per_minute"),
                            quota(a, "fuel_last_hour", "fuel_per_hour"),
                            quota(a, "sessions", "max_sessions"),
                            text(a, "runs_total"),
                            text(a, "refused_total"),
                        ]
                    })
                    .collect();
                table(&["AGENT", "APPROVED", "RUNNING", "RUNS/MIN", "FUEL/HOUR", "SESSIONS", "RUNS", "REFUSED"], rows);
            }
        }
        Ok(())
    })())
}

/// The audit log's file from `--db`, `--config` or the default.
fn log_path(log: &LogArgs) -> Result<PathBuf, Failed> {
    if let Some(db) = &log.db {
        return Ok(db.clone());
    }
    let home = wsbx::SandboxConfig::default().home;
    match &log.config {
        Some(path) => Ok(wsbx::config::Config::load(path).map_err(|e| Failed(format!("rejected: {e}"), EXIT_REJECTED))?.audit_path(&home)),
        None => Ok(home.join("audit.db")),
    }
}

/// `--since` as the log writes times: RFC 3339 as given, or a duration back from now.
fn since(given: &str) -> Result<String, Failed> {
    if let Ok(time) = humantime::parse_rfc3339_weak(given) {
        return Ok(humantime::format_rfc3339_millis(time).to_string());
    }
    let back = humantime::parse_duration(given)
        .map_err(|_| Failed(format!("rejected: --since {given:?}: give an RFC 3339 time or a duration such as 1h"), EXIT_REJECTED))?;
    let time = std::time::SystemTime::now().checked_sub(back).unwrap_or(std::time::UNIX_EPOCH);
    Ok(humantime::format_rfc3339_millis(time).to_string())
}

pub fn audit(action: AuditAction) -> ExitCode {
    finish((|| match action {
        AuditAction::List { log, agent, status, kind, since: from, limit, json } => {
            let kinds = match kind.as_deref() {
                None => Vec::new(),
                Some(name) => {
                    let kind: Kind = serde_json::from_value(serde_json::Value::String(name.to_owned()))
                        .map_err(|_| Failed(format!("rejected: --kind {name:?} is not a kind the log writes"), EXIT_REJECTED))?;
                    vec![kind]
                }
            };
            let filter = Filter { agent, status, kinds, since: from.as_deref().map(since).transpose()?, limit: Some(limit), code: json, ..Filter::default() };
            let rows = wsbx::audit::list(&log_path(&log)?, &filter).map_err(|e| Failed(format!("error: {e}"), EXIT_INTERNAL))?;
            if json {
                print_json(&rows);
                return Ok(());
            }
            let cells = |row: &Row| {
                let e = &row.event;
                let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                vec![
                    row.id.to_string(),
                    e.time.clone(),
                    e.agent.clone(),
                    e.kind.map_or("-", Kind::as_str).to_owned(),
                    dash(&e.language),
                    dash(&e.status),
                    e.wall_ms.map_or("-".into(), |w| format!("{w:.1}")),
                    dash(&e.execution_id.clone().or(e.session_id.clone())),
                ]
            };
            table(&["ROW", "TIME", "AGENT", "KIND", "LANGUAGE", "STATUS", "WALL_MS", "EXECUTION"], rows.iter().map(cells).collect());
            Ok(())
        }
        AuditAction::Verify { log, json } => {
            let path = log_path(&log)?;
            let verdict = wsbx::audit::verify(&path).map_err(|e| Failed(format!("error: {e}"), EXIT_INTERNAL))?;
            match verdict {
                Ok(verified) => {
                    if json {
                        let answer = serde_json::json!({ "intact": true, "rows": verified.rows, "last_id": verified.last_id, "last_hash": verified.last_hash });
                        wsbx::outln!("{answer}");
                    } else {
                        wsbx::outln!("the audit log {} is intact: {} rows chain", path.display(), verified.rows);
                        wsbx::outln!("last row {}: {}  (keep it elsewhere to detect truncation later)", verified.last_id, verified.last_hash);
                    }
                    Ok(())
                }
                Err(broken) => {
                    if json {
                        wsbx::outln!("{}", serde_json::json!({ "intact": false, "row": broken.id, "why": broken.why }));
                    }
                    Err(Failed(format!("the audit log {} is broken: {broken}", path.display()), 1))
                }
            }
        }
    })())
}
