//! The policy checked before a run, end to end: a real `wsbx serve` with a real config file and
//! SQLite audit log, `wsbx exec`/`wsbx check` as processes, and the library. A denied run never
//! starts (what it would have written is not there), a warned one runs with its findings, an
//! agent's own thresholds win, and every denial leaves an audit row.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wsbx::policy::{Decision, Risk};
use wsbx::{Language, Status};

mod common;
use common::server::Server;

const ADMIN: &str = "admin-token";

/// The policy of these tests: Python imports of subprocess are high, `eval` medium; deny from
/// high, warn from medium.
const POLICY: &str = r#"
[policy.python]
deny_at = "high"
warn_at = "medium"
[[policy.python.rules]]
id = "no-subprocess"
kind = "import"
match = "subprocess"
risk = "high"
why = "spawns processes"
[[policy.python.rules]]
id = "dynamic-code"
kind = "call"
match = "eval"
risk = "medium"
[policy.shell]
deny_at = "high"
[[policy.shell.rules]]
id = "network-tools"
kind = "command"
match = ["curl", "wget"]
risk = "high"
"#;

/// What a denied run would have left behind, had it run.
const WRITES_A_MARKER: &str = "open('marker.txt', 'w').write('it ran')\nprint('it ran')\nimport subprocess\n";

fn hash(token: &str) -> String {
    hex::encode(wsbx::config::token_sha256(token))
}

/// A config in `dir`: [`POLICY`], the admin, the audit log `dir/audit.db`, and the agents `dev`
/// (the file's thresholds), `trusted` (denied only at critical) and `strict` (denied from
/// medium); each agent's token is `<id>-token`.
fn config(dir: &Path) -> PathBuf {
    let mut text = format!("{POLICY}\n[admin]\ntoken_sha256 = \"{}\"\n[audit]\npath = \"{}\"\n", hash(ADMIN), dir.join("audit.db").display());
    for (id, body) in [("dev", ""), ("trusted", "policy_deny_at = \"critical\""), ("strict", "policy_deny_at = \"medium\"")] {
        text.push_str(&format!("[[agents]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\n{body}\n", hash(&format!("{id}-token"))));
    }
    let path = dir.join("wsbx.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn serve(config: &Path, scratch: &Path) -> Server {
    Server::start_with_env(&["--config", config.to_str().unwrap()], &[("TMPDIR", scratch.to_str().unwrap())])
}

async fn post(client: &reqwest::Client, server: &Server, path: &str, token: &str, body: Value) -> (u16, Value) {
    let response = client.post(server.url(path)).bearer_auth(token).json(&body).send().await.expect("the server answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The audit rows at `db` once there are at least `rows` (waits at most 5 s: a row is
/// committed a moment after its run is answered).
async fn audit_rows(db: &Path, rows: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let found = wsbx::audit::list(db, &Default::default()).unwrap_or_default();
        if found.len() >= rows || start.elapsed() > Duration::from_secs(5) {
            return found.into_iter().map(|row| serde_json::to_value(row).unwrap()).collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `wsbx` with `args` (and no `$WSBX_CONFIG` from outside): its exit code, stdout, stderr.
fn wsbx(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wsbx"))
        .args(args)
        .env_remove("WSBX_CONFIG")
        .env("TMPDIR", dir)
        .output()
        .expect("wsbx runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_run_is_rejected_without_running_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path());
    let server = serve(&path, dir.path());
    let client = reqwest::Client::new();

    let (code, denied) = post(&client, &server, "/v1/exec", "dev-token", json!({"language": "python", "code": WRITES_A_MARKER, "return_files": true})).await;
    assert_eq!(code, 200, "{denied}");
    assert_eq!(denied["status"], "rejected", "{denied}");
    assert_eq!(denied["stdout"], "", "it did not run: {denied}");
    assert!(denied.get("files").is_none() && denied["fuel_consumed"].is_null(), "it did not run: {denied}");
    assert_eq!(denied["detail"], "denied by policy (risk high): no-subprocess at line 3, column 1 (spawns processes)");
    let policy = &denied["policy"];
    assert_eq!((policy["risk"].as_str(), policy["decision"].as_str()), (Some("high"), Some("deny")), "{denied}");
    let finding = &policy["findings"][0];
    assert_eq!(finding["rule"], "no-subprocess");
    assert_eq!((finding["line"].as_u64(), finding["column"].as_u64(), finding["text"].as_str()), (Some(3), Some(1), Some("import subprocess")));

    // The same program without the import runs, and leaves its marker.
    let (_, ran) = post(&client, &server, "/v1/exec", "dev-token", json!({"language": "python", "code": WRITES_A_MARKER.replace("import subprocess", ""), "return_files": true})).await;
    assert_eq!(ran["status"], "ok", "{ran}");
    assert_eq!(ran["files"][0]["path"], "marker.txt", "{ran}");
    assert_eq!((ran["policy"]["decision"].as_str(), ran["policy"]["findings"].as_array().map(Vec::len)), (Some("allow"), Some(0)), "{ran}");

    // Shell too: the command is found through a pipe and `&&`.
    let (_, shell) = post(&client, &server, "/v1/exec", "dev-token", json!({"language": "shell", "code": "touch marker && echo x | curl -d @- http://example.com"})).await;
    assert_eq!((shell["status"].as_str(), shell["policy"]["findings"][0]["rule"].as_str()), (Some("rejected"), Some("network-tools")), "{shell}");

    let rows = audit_rows(&dir.path().join("audit.db"), 3).await;
    let denials: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "policy_deny").collect();
    assert_eq!(denials.len(), 2, "{rows:?}");
    let row = denials.iter().find(|r| r["execution_id"] == denied["id"]).expect("the denial's row");
    assert_eq!((row["agent"].as_str(), row["status"].as_str(), row["policy_decision"].as_str()), (Some("dev"), Some("rejected"), Some("deny")), "{row}");
    assert!(row["detail"].as_str().unwrap().contains("no-subprocess"), "{row}");
    let allowed = rows.iter().find(|r| r["execution_id"] == ran["id"]).expect("the run's row");
    assert_eq!((allowed["kind"].as_str(), allowed["policy_decision"].as_str()), (Some("run"), Some("allow")));
    let db = dir.path().join("audit.db");
    let (verified, _, stderr) = wsbx(&["audit", "verify", "--db", db.to_str().unwrap()], dir.path());
    assert_eq!(verified, 0, "{stderr}");
    let metrics = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("wsbx_policy_decisions_total{agent=\"dev\",decision=\"deny\"} 2"), "{metrics}");
    assert!(metrics.contains("wsbx_policy_decisions_total{agent=\"dev\",decision=\"allow\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warned_run_runs_with_its_findings_and_agents_have_their_own_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path());
    let server = serve(&path, dir.path());
    let client = reqwest::Client::new();
    let run = |token: &'static str, code: &'static str| {
        let (client, server) = (&client, &server);
        async move { post(client, server, "/v1/exec", token, json!({"language": "python", "code": code})).await.1 }
    };

    let warned = run("dev-token", "print(eval('6 * 7'))").await;
    assert_eq!((warned["status"].as_str(), warned["stdout"].as_str()), (Some("ok"), Some("42\n")), "{warned}");
    assert_eq!((warned["policy"]["risk"].as_str(), warned["policy"]["decision"].as_str()), (Some("medium"), Some("warn")), "{warned}");
    assert_eq!(warned["policy"]["findings"][0]["rule"], "dynamic-code");

    // `trusted` is denied only at critical: the import runs, with a warning.
    let trusted = run("trusted-token", "import subprocess\nprint('ran')").await;
    assert_eq!((trusted["status"].as_str(), trusted["stdout"].as_str()), (Some("ok"), Some("ran\n")), "{trusted}");
    assert_eq!(trusted["policy"]["decision"], "warn", "{trusted}");
    assert_eq!(run("dev-token", "import subprocess\nprint('ran')").await["status"], "rejected");
    // `strict` is denied from medium: `eval` does not run.
    let strict = run("strict-token", "print(eval('6 * 7'))").await;
    assert_eq!((strict["status"].as_str(), strict["policy"]["decision"].as_str()), (Some("rejected"), Some("deny")), "{strict}");

    // A comment or a string never matches a rule of the syntax tree.
    let quiet = run("strict-token", "# import subprocess\nprint('eval(1)')").await;
    assert_eq!((quiet["status"].as_str(), quiet["policy"]["decision"].as_str()), (Some("ok"), Some("allow")), "{quiet}");

    // `/v1/check` answers the same verdicts, runs nothing, and writes no row.
    let rows_before = audit_rows(&dir.path().join("audit.db"), 6).await.len();
    let check = |token: &'static str, code: &'static str| {
        let (client, server) = (&client, &server);
        async move { post(client, server, "/v1/check", token, json!({"language": "python", "code": code})).await }
    };
    let (code, verdict) = check("strict-token", "print(eval('1'))").await;
    assert_eq!((code, verdict["decision"].as_str()), (200, Some("deny")), "{verdict}");
    assert_eq!((verdict["findings"][0]["line"].as_u64(), verdict["findings"][0]["column"].as_u64()), (Some(1), Some(7)), "{verdict}");
    assert_eq!(check("dev-token", "print(eval('1'))").await.1["decision"], "warn");
    assert_eq!(check(ADMIN, "import subprocess").await.1["decision"], "deny", "the admin checks with the file's thresholds");
    let (bad, error) = post(&client, &server, "/v1/check", "dev-token", json!({"language": "cobol", "code": "x"})).await;
    assert_eq!(bad, 400, "{error}");
    let (unknown, error) = post(&client, &server, "/v1/check", "dev-token", json!({"language": "python", "code": "x", "run": true})).await;
    assert_eq!(unknown, 400, "{error}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(audit_rows(&dir.path().join("audit.db"), 0).await.len(), rows_before, "a check is not a run");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_turn_is_rejected_and_its_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path());
    let server = serve(&path, dir.path());
    let client = reqwest::Client::new();
    let (code, session) = post(&client, &server, "/v1/sessions", "dev-token", json!({"language": "python"})).await;
    assert_eq!(code, 201, "{session}");
    let turns = format!("/v1/sessions/{}/exec", session["id"].as_str().unwrap());
    let (_, first) = post(&client, &server, &turns, "dev-token", json!({"code": "x = 41"})).await;
    assert_eq!(first["status"], "ok", "{first}");
    let (_, denied) = post(&client, &server, &turns, "dev-token", json!({"code": "x += 1\nimport subprocess"})).await;
    assert_eq!((denied["status"].as_str(), denied["turn"].as_u64()), (Some("rejected"), Some(2)), "{denied}");
    let (_, after) = post(&client, &server, &turns, "dev-token", json!({"code": "print(x)"})).await;
    assert_eq!((after["status"].as_str(), after["stdout"].as_str()), (Some("ok"), Some("41\n")), "the denied turn did not run: {after}");
    assert_eq!(after["turn"], 2, "a denied turn does not take a number: {after}");
    // What one turn imports, the next may use: the check follows the names across turns.
    let (_, aliased) = post(&client, &server, &turns, "dev-token", json!({"code": "import importlib as il"})).await;
    assert_eq!(aliased["status"], "ok", "{aliased}");
    let (_, denied) = post(&client, &server, &turns, "dev-token", json!({"code": "il.import_module('subprocess')"})).await;
    assert_eq!((denied["status"].as_str(), denied["policy"]["findings"][0]["rule"].as_str()), (Some("rejected"), Some("no-subprocess")), "{denied}");
    let rows = audit_rows(&dir.path().join("audit.db"), 6).await;
    let row = rows.iter().find(|r| r["kind"] == "policy_deny").expect("a policy_deny row");
    assert_eq!(row["session_id"], session["id"], "{row}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_policy_nothing_is_checked_and_noise_never_crashes_the_checker() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(&[], &[("TMPDIR", dir.path().to_str().unwrap())]);
    let client = reqwest::Client::new();
    let (_, result) = post(&client, &server, "/v1/exec", "", json!({"language": "python", "code": "import subprocess\nprint(1)"})).await;
    assert_eq!(result["status"], "ok", "{result}");
    assert!(result.get("policy").is_none(), "no policy, no verdict: {result}");
    let (_, verdict) = post(&client, &server, "/v1/check", "", json!({"language": "python", "code": "import subprocess"})).await;
    assert_eq!((verdict["risk"].as_str(), verdict["decision"].as_str()), (Some("none"), Some("allow")), "{verdict}");

    // With a policy: a megabyte of random characters in every language is a verdict, not a crash.
    let path = config(dir.path());
    let strict = serve(&path, dir.path());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: String = (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from_u32((state % 0x2_0000) as u32).unwrap_or('\u{fffd}')
        })
        .collect();
    for language in ["python", "javascript", "shell"] {
        let (code, verdict) = post(&client, &strict, "/v1/check", "dev-token", json!({"language": language, "code": noise})).await;
        assert_eq!(code, 200, "{language}: {verdict}");
        // JavaScript has no policy in this file: it is not read at all. The others are too
        // large to check: `unchecked`, at the highest risk of their rules (so: denied).
        let expected = if language == "javascript" { Value::Null } else { json!("unchecked") };
        assert_eq!(verdict["findings"][0]["rule"], expected, "{language}: {verdict}");
        if language != "javascript" {
            assert_eq!(verdict["decision"], "deny", "{language}: {verdict}");
        }
    }
    // Code built against the checker itself (an outside attack): a chain of subscripts deep
    // enough to overflow a native stack per level, one that took 2^n steps, aliases that make
    // every short line stand for a long name. Each is a verdict; the server lives on, and a
    // run of such code answers as its check and limits say, not never.
    let binds: String = (0..2000).map(|i| format!("a{i} = os.{}\n", "p".repeat(100))).collect();
    // (The 250 KB one's parse alone is near the budget on a busy machine: unchecked is right
    // for it too.)
    for (code, rules) in [
        (format!("x{}()", "[\"a\"]".repeat(50_000)), &[Value::Null, json!("unchecked")][..]),
        (format!("x{}()", "[\"a\"]".repeat(40)), &[Value::Null][..]),
        (format!("import os\n{binds}"), &[json!("unchecked")][..]),
    ] {
        let (status, verdict) = post(&client, &strict, "/v1/check", "dev-token", json!({"language": "python", "code": code})).await;
        assert_eq!(status, 200, "{verdict}");
        assert!(rules.contains(&verdict["findings"][0]["rule"]), "{verdict}");
    }
    let (_, result) = post(&client, &strict, "/v1/exec", "dev-token", json!({"language": "python", "code": format!("x = {{'a': 0}}\nx{}()", "['a']".repeat(40))})).await;
    assert_eq!(result["status"], "error", "{result}");
    assert!(result["stderr"].as_str().unwrap().contains("TypeError"), "{result}");
    let health = client.get(strict.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[test]
fn wsbx_check_prints_the_verdict_and_wsbx_exec_refuses_with_126() {
    let dir = tempfile::tempdir().unwrap();
    let starter = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policy.toml");
    let (code, out, err) = wsbx(&["check", "--lang", "python", "-c", "import subprocess; subprocess.run([\"ls\"])", "--config", starter], dir.path());
    assert_eq!(code, 126, "{out}{err}");
    let verdict: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((verdict["risk"].as_str(), verdict["decision"].as_str()), (Some("high"), Some("deny")), "{verdict}");
    let finding = &verdict["findings"][0];
    assert_eq!((finding["rule"].as_str(), finding["line"].as_u64(), finding["column"].as_u64()), (Some("process-spawn"), Some(1), Some(1)), "{verdict}");
    let (code, out, _) = wsbx(&["check", "--lang", "python", "-c", "print('import subprocess')", "--config", starter], dir.path());
    assert_eq!(code, 0, "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["decision"], "allow");
    let (code, _, err) = wsbx(&["check", "--lang", "python", "-c", "print(1)"], dir.path());
    assert_eq!(code, 126);
    assert!(err.contains("no policy to check against"), "{err}");

    // An agent's thresholds, from the file.
    let path = config(dir.path());
    let config = path.to_str().unwrap();
    let (code, out, _) = wsbx(&["check", "--lang", "python", "-c", "import subprocess", "--config", config, "--agent", "trusted"], dir.path());
    assert_eq!((code, serde_json::from_str::<Value>(&out).unwrap()["decision"].as_str()), (0, Some("warn")), "{out}");
    let (code, _, err) = wsbx(&["check", "--lang", "python", "-c", "1", "--config", config, "--agent", "nobody"], dir.path());
    assert!(code == 126 && err.contains("nobody"), "{err}");

    // `wsbx exec` refuses before running: the marker is not in --out-dir, and the audit log
    // says who tried.
    let out_dir = dir.path().join("out");
    let (code, out, err) = wsbx(&["exec", "--lang", "python", "-c", WRITES_A_MARKER, "--out-dir", out_dir.to_str().unwrap(), "--config", config, "--agent", "dev"], dir.path());
    assert_eq!(code, 126, "{out}{err}");
    assert!(err.contains("wsbx: rejected: denied by policy (risk high): no-subprocess"), "{err}");
    assert!(!out.contains("it ran") && !out_dir.join("marker.txt").exists(), "the denied code ran");
    let rows = wsbx::audit::list(&dir.path().join("audit.db"), &Default::default()).unwrap();
    let row = serde_json::to_value(rows.last().unwrap()).unwrap();
    assert_eq!((row["kind"].as_str(), row["agent"].as_str()), (Some("policy_deny"), Some("dev")), "{row}");
    // Trusted, the same code runs and leaves its marker, and the warning is on stderr.
    let (code, out, err) = wsbx(&["exec", "--lang", "python", "-c", WRITES_A_MARKER, "--out-dir", out_dir.to_str().unwrap(), "--config", config, "--agent", "trusted"], dir.path());
    assert_eq!((code, out.as_str()), (0, "it ran\n"), "{err}");
    assert!(err.contains("wsbx: policy warning (risk high): no-subprocess at line 3, column 1"), "{err}");
    assert!(out_dir.join("marker.txt").exists());
    let (_, out, _) = wsbx(&["exec", "--json", "--lang", "python", "-c", "eval('1')", "--config", config], dir.path());
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((result["status"].as_str(), result["policy"]["decision"].as_str()), (Some("ok"), Some("warn")), "{result}");
}

#[test]
fn the_library_checks_a_request_s_policy_before_its_backend() {
    let config = wsbx::config::Config::parse(POLICY).unwrap();
    let policy = config.policy().unwrap();
    let mut request = common::request(Language::Python, WRITES_A_MARKER);
    request.policy = Some(policy.clone());
    request.return_files = true;
    let result = common::sandbox().run(&request);
    common::assert_status(&result, Status::Rejected);
    assert!(result.files.is_none() && result.stdout.is_empty());
    let verdict = result.policy.unwrap();
    assert_eq!((verdict.risk, verdict.decision), (Risk::High, Decision::Deny));
    // A trusted caller's thresholds: it runs.
    request.policy = Some(policy.with_thresholds(Some(Risk::Critical), None));
    let result = common::sandbox().run(&request);
    common::assert_status(&result, Status::Ok);
    assert_eq!(result.files.unwrap()[0].path, "marker.txt");
    assert_eq!(result.policy.unwrap().decision, Decision::Warn);
}

/// Over MCP (the Rust SDK's client, `wsbx mcp --config F --agent ID`): a denied call is an
/// error result that says why; a warned one runs and says what was found.
#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_call_is_checked_like_any_run() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::TokioChildProcess;
    use rmcp::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path());
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsbx"));
    command.args(["mcp", "--config", path.to_str().unwrap(), "--agent", "dev"]).env_remove("WSBX_CONFIG").env("TMPDIR", dir.path());
    let client = ().serve(TokioChildProcess::new(command).expect("wsbx mcp starts")).await.expect("initialized");
    let call = |code: &str| {
        let args = json!({ "code": code });
        CallToolRequestParams::new("run_python").with_arguments(args.as_object().unwrap().clone())
    };
    let denied = client.call_tool(call(WRITES_A_MARKER)).await.expect("called");
    assert_eq!(denied.is_error, Some(true));
    let text = serde_json::to_string(&denied.content).unwrap();
    assert!(text.contains("status: rejected") && text.contains("denied by policy (risk high): no-subprocess at line 3, column 1"), "{text}");
    assert!(!text.contains("it ran"), "{text}");
    let warned = client.call_tool(call("print(eval('6 * 7'))")).await.expect("called");
    assert_eq!(warned.is_error, Some(false));
    let text = serde_json::to_string(&warned.content).unwrap();
    assert!(text.contains("42") && text.contains("policy warning (risk medium): dynamic-code at line 1, column 7"), "{text}");
    client.cancel().await.expect("closed");
    let rows = audit_rows(&dir.path().join("audit.db"), 2).await;
    assert!(rows.iter().any(|r| r["kind"] == "policy_deny" && r["agent"] == "dev"), "{rows:?}");
    // Without `--agent`, or with `--agent default`, on a file without that agent: the operator,
    // under the file's policy and thresholds (as `wsbx exec` runs), not a refusal of every call.
    for named in [&[][..], &["--agent", "default"][..]] {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsbx"));
        command.args(["mcp", "--config", path.to_str().unwrap()]).args(named).env_remove("WSBX_CONFIG").env("TMPDIR", dir.path());
        let client = ().serve(TokioChildProcess::new(command).expect("wsbx mcp starts")).await.expect("initialized");
        let ran = client.call_tool(call("print(6 * 7)")).await.expect("called");
        let text = serde_json::to_string(&ran.content).unwrap();
        assert_eq!(ran.is_error, Some(false), "{named:?}: {text}");
        assert!(text.contains("42"), "{text}");
        let denied = client.call_tool(call(WRITES_A_MARKER)).await.expect("called");
        assert_eq!(denied.is_error, Some(true), "{named:?}");
        client.cancel().await.expect("closed");
    }
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsbx"));
    command.args(["mcp", "--config", path.to_str().unwrap(), "--agent", "nobody"]).env_remove("WSBX_CONFIG").env("TMPDIR", dir.path());
    let output = command.stdin(std::process::Stdio::null()).output().await.unwrap();
    assert_eq!(output.status.code(), Some(126), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("no agent \"nobody\""), "{output:?}");
}
