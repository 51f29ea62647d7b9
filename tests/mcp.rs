//! wsbx as an MCP server, driven by clients nobody here wrote: the official MCP Python SDK
//! (pinned in `tests/mcp/requirements.txt`, installed into a virtual environment under
//! `target/` the first time) over stdio and over streamable HTTP, and the `rmcp` client in Rust.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::running_with;
use common::server::Server;

/// The virtual environment's python, made (once per target directory, under a lock) with the
/// pinned SDK.
fn sdk_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mcp-venv");
            let python = venv.join("bin/python");
            let requirements = root.join("tests/mcp/requirements.txt");
            let stamp = venv.join("installed.txt");
            let wanted = std::fs::read_to_string(&requirements).expect("requirements");
            // Test binaries may run at once: one of them installs, the others wait.
            let lock = std::fs::File::create(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mcp-venv.lock")).expect("lock file");
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("lock");
            if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
                let _ = std::fs::remove_dir_all(&venv);
                let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3 runs");
                assert!(made.success(), "python3 -m venv failed: install python3-venv");
                let pip = Command::new(&python)
                    .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
                    .arg(&requirements)
                    .status()
                    .expect("pip runs");
                assert!(pip.success(), "installing the MCP SDK failed");
                std::fs::write(&stamp, wanted).expect("stamp");
            }
            python
        })
        .clone()
}

/// Runs the SDK client script with `args` and returns what it saw.
fn sdk_client(args: &[&str]) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
    let out = Command::new(sdk_python()).arg(script).args(args).output().expect("client runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("client said no JSON ({e}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}

fn assert_client_saw_everything(seen: &Value) {
    assert_eq!(seen["tools"], serde_json::json!(["close_session", "create_session", "run_javascript", "run_python", "run_shell"]));
    assert_eq!(seen["run_python_schema"], serde_json::json!(["code", "files", "session_id", "stdin", "timeout_ms"]));
    assert_eq!(seen["python"]["is_error"], false, "{seen}");
    assert!(seen["python"]["text"].as_str().unwrap().contains("--- stdout ---\n42\n"), "{seen}");
    let images = seen["plot"]["images"].as_array().expect("images");
    assert_eq!(images.len(), 1, "the plot comes back as one image: {seen}");
    assert_eq!(images[0][0], "image/png");
    assert!(images[0][1].as_u64().unwrap() > 1000, "{seen}");
    assert_eq!(seen["plot"]["png_magic"], "iVBORw0K", "base64 of the PNG signature");
    assert!(seen["javascript"].as_str().unwrap().contains("[ 2, 4, 6 ]"), "{seen}");
    assert_eq!(seen["timeout"]["is_error"], true);
    assert!(seen["timeout"]["text"].as_str().unwrap().contains("status: timeout"), "{seen}");
    assert!(seen["session"].as_str().unwrap().contains("--- stdout ---\n6\n"), "state kept between calls: {seen}");
    assert!(seen["closed"].as_str().unwrap().contains("closed"), "{seen}");
    assert_eq!(seen["after_close"]["is_error"], true, "{seen}");
    let bad = seen["bad"].as_array().expect("bad calls");
    assert_eq!(bad.len(), 3);
    assert!(bad[0]["error"].is_string(), "an unknown tool is a JSON-RPC error: {seen}");
    for wrong in &bad[1..] {
        // The spec has argument errors come back as tool errors the model can correct.
        assert_eq!(wrong["is_error"], true, "{seen}");
    }
    assert!(seen["still_serving"].as_str().unwrap().contains("still serving"), "{seen}");
}

#[test]
fn the_python_sdk_drives_wsbx_mcp_over_stdio() {
    let seen = sdk_client(&["stdio", env!("CARGO_BIN_EXE_wsbx")]);
    assert_client_saw_everything(&seen);
}

#[test]
fn the_python_sdk_drives_mcp_over_streamable_http_behind_the_token() {
    let server = Server::start(&["--token", "mcp-secret"]);
    let url = server.url("/mcp");
    let seen = sdk_client(&["http", &url, "mcp-secret"]);
    assert_client_saw_everything(&seen);
    // The same token as /v1/: without it, nothing.
    let status = raw_post_status(&url);
    assert_eq!(status, 401);
}

/// The Rust SDK's client, over stdio; and bytes that are not JSON-RPC do not stop the server.
#[tokio::test(flavor = "multi_thread")]
async fn the_rmcp_client_runs_code_and_garbage_does_not_stop_the_server() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::TokioChildProcess;
    use rmcp::ServiceExt;

    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsbx"));
    command.arg("mcp");
    let transport = TokioChildProcess::new(command).expect("wsbx mcp starts");
    let client = ().serve(transport).await.expect("initialized");
    let tools = client.list_all_tools().await.expect("tools");
    assert_eq!(tools.len(), 5);
    let args = serde_json::json!({"code": "console.log(6 * 7)"});
    let result = client
        .call_tool(CallToolRequestParams::new("run_javascript").with_arguments(args.as_object().unwrap().clone()))
        .await
        .expect("called");
    assert_eq!(result.is_error, Some(false));
    let text = serde_json::to_string(&result.content).unwrap();
    assert!(text.contains("42"), "{text}");
    client.cancel().await.expect("closed");

    // Raw lines: garbage, then a real initialize; the answer to it still comes.
    let mut child = raw_mcp(None);
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "this is not json\n{{\"jsonrpc\": \"2.0\", \"id\": \n{INITIALIZE}").unwrap();
    }
    let out = child.wait_with_output().expect("ends at end of input");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l.contains("\"id\":1") && l.contains("serverInfo")), "{stdout}");
}

/// A JSON-RPC `initialize` request with id 1, as one line.
const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

/// `wsbx mcp` with piped stdin and stdout, scratch under `tmpdir` when given.
fn raw_mcp(tmpdir: Option<&std::path::Path>) -> std::process::Child {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wsbx"));
    command.arg("mcp").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    if let Some(dir) = tmpdir {
        command.env("TMPDIR", dir);
    }
    command.spawn().expect("wsbx mcp starts")
}

/// The status of an unauthenticated POST, with a plain HTTP/1.1 request.
fn raw_post_status(url: &str) -> u16 {
    raw_post(url, "application/json", "{}").0
}

/// A POST of `body` as `content_type` that accepts what MCP answers, with a plain HTTP/1.1
/// request: the status and the body.
fn raw_post(url: &str, content_type: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut stream = std::net::TcpStream::connect(host).expect("connects");
    write!(
        stream,
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, answer.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
}

/// Over stdio, every bad line gets its JSON-RPC error (with the request's id when it has one)
/// and good lines around them are answered as usual.
#[test]
fn bad_json_rpc_on_stdio_gets_json_rpc_errors() {
    let mut child = raw_mcp(None);
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let lines = [
            INITIALIZE,
            "this is not json",
            "[1, 2]",
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":5}"#,
            r#"{"jsonrpc":"2.0","id":8,"method":"no/such/method"}"#,
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#,
        ];
        writeln!(stdin, "{}", lines.join("\n")).unwrap();
    }
    let out = child.wait_with_output().expect("ends at end of input");
    let answers: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON lines")).collect();
    let code = |id: Value| -> Vec<i64> { answers.iter().filter(|a| a["id"] == id).filter_map(|a| a["error"]["code"].as_i64()).collect() };
    assert_eq!(code(Value::Null), [-32700, -32600], "{answers:?}");
    assert_eq!(code(7.into()), [-32602], "{answers:?}");
    assert_eq!(code(8.into()), [-32601], "{answers:?}");
    assert!(answers.iter().any(|a| a["id"] == 9 && a["result"]["tools"].is_array()), "still serving: {answers:?}");
    assert_eq!(answers.len(), 6, "one answer per request: {answers:?}");
}

/// Over HTTP, a body that is not JSON-RPC is a 400 carrying the JSON-RPC error; a wrong content
/// type stays 415, an oversized body 413; the server serves on.
#[test]
fn bad_json_rpc_over_http_gets_json_rpc_errors() {
    let server = Server::start(&["--max-body-bytes", "4096"]);
    let url = server.url("/mcp");
    for (body, code, id) in [
        ("this is not json", -32700, Value::Null),
        ("[]", -32600, Value::Null),
        (r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":5}"#, -32602, Value::from("a")),
        // Params the SDK would take for a custom method's, and answer "method not found".
        (r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{}}"#, -32602, Value::from(2)),
        (r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":5}}"#, -32602, Value::from(3)),
        (r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"run_python","arguments":[]}}"#, -32602, Value::from(4)),
        (r#"{"jsonrpc":"2.0","id":5,"method":"initialize","params":{}}"#, -32602, Value::from(5)),
    ] {
        let (status, answer) = raw_post(&url, "application/json", body);
        assert_eq!(status, 400, "{body}: {answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{body}: not JSON ({e}): {answer}"));
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        assert_eq!(answer["id"], id, "{body}: {answer}");
    }
    assert_eq!(raw_post(&url, "text/plain", INITIALIZE).0, 415);
    assert_eq!(raw_post(&url, "application/json", &"x".repeat(5000)).0, 413);
    // A byte order mark before the JSON is ignored, as on stdio.
    let (status, answer) = raw_post(&url, "application/json", &format!("\u{feff}{INITIALIZE}"));
    assert_eq!(status, 200, "{answer}");
    // A declared length over the cap is refused before any of the body is sent.
    {
        use std::io::{Read, Write};
        let host = url.strip_prefix("http://").unwrap().split_once('/').unwrap().0;
        let mut stream = std::net::TcpStream::connect(host).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(stream, "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: 999999999\r\n\r\n").unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).expect("an answer without the body");
        assert_eq!(&head, b"HTTP/1.1 413");
    }
    let (status, answer) = raw_post(&url, "application/json", INITIALIZE);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("serverInfo"), "{answer}");
}

/// A line of JSON-RPC for a `tools/call` of `tool` with `arguments`, with id `id`.
fn call_line(id: u32, tool: &str, arguments: Value) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}).to_string()
}

/// SIGTERM or SIGINT to `wsbx mcp` while a shell call runs: the job dies before wsbx exits (a
/// shell job must never outlive its supervisor).
#[test]
fn stopping_wsbx_mcp_mid_call_ends_its_shell_job() {
    use std::io::{BufRead, BufReader, Write};
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let marker = format!("wsbx-mcp-orphan-{}-{signal}", std::process::id());
        let mut child = raw_mcp(None);
        let mut stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        writeln!(stdin, "{INITIALIZE}").unwrap();
        assert!(lines.next().expect("an answer").unwrap().contains("serverInfo"));
        let code = format!("# {marker}\nsleep 25");
        writeln!(stdin, "{}", call_line(2, "run_shell", serde_json::json!({"code": code, "timeout_ms": 30000}))).unwrap();
        let started = std::time::Instant::now();
        while running_with(&marker).is_empty() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!running_with(&marker).is_empty(), "the job never started");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        assert!(running_with(&marker).is_empty(), "left running after wsbx mcp exited: {:?}", running_with(&marker));
    }
}

/// A client that sends requests and never reads the answers is not read past a bounded number
/// of them: the process does not grow with what it is sent.
#[test]
fn a_client_that_never_reads_cannot_grow_wsbx_mcp() {
    let mut child = raw_mcp(None);
    let mut stdin = child.stdin.take().unwrap();
    let _unread = child.stdout.take().unwrap();
    let pid = child.id();
    std::thread::spawn(move || {
        use std::io::Write;
        let _ = writeln!(stdin, "{INITIALIZE}");
        // Blocks for good once wsbx stops reading; ends when the process is killed.
        for id in 2.. {
            let ping = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
            if writeln!(stdin, "{ping}").is_err() {
                return;
            }
        }
    });
    let rss_mib = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
        kib >> 10
    };
    std::thread::sleep(Duration::from_secs(1));
    let early = rss_mib();
    std::thread::sleep(Duration::from_secs(3));
    let late = rss_mib();
    let _ = child.kill();
    let _ = child.wait();
    // Unbounded, it grew by ~70 MiB a second here.
    assert!(late < early + 30 && late < 200, "RSS {early} MiB after 1 s, {late} MiB after 4 s");
}

/// A request id still in progress cannot be used again: the second request gets an error with
/// that id, and the first is still answered.
#[test]
fn a_reused_id_is_refused_while_its_request_runs() {
    use std::io::{BufRead, BufReader, Write};
    let mut child = raw_mcp(None);
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    writeln!(stdin, "{INITIALIZE}").unwrap();
    let slow = call_line(7, "run_javascript", serde_json::json!({"code": "const t = Date.now(); while (Date.now() - t < 1500) {} console.log('first')"}));
    let again = r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#;
    writeln!(stdin, "{slow}\n{again}").unwrap();
    let mut sevens = Vec::new();
    while sevens.len() < 2 {
        let line = lines.next().expect("answers").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["id"] == 7 {
            sevens.push(v);
        }
    }
    assert_eq!(sevens[0]["error"]["code"], -32600, "{sevens:?}");
    assert!(sevens[1]["result"]["content"][0]["text"].as_str().unwrap_or("").contains("first"), "{sevens:?}");
    drop(stdin);
    let _ = child.wait();
}

/// Input that ends while a call runs, as from `printf '…' | wsbx mcp`, still gets the call's
/// answer: the SDK alone would wait 5 s for it and exit without it.
#[test]
fn a_call_in_progress_at_the_end_of_input_is_answered() {
    let mut child = raw_mcp(None);
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let slow = call_line(2, "run_javascript", serde_json::json!({"code": "const t = Date.now(); while (Date.now() - t < 6500) {} console.log('finished')", "timeout_ms": 20000}));
        writeln!(stdin, "{INITIALIZE}\n{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}}\n{slow}").unwrap();
    }
    let out = child.wait_with_output().expect("ends at end of input");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answer = stdout.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|v| v["id"] == 2);
    let answer = answer.unwrap_or_else(|| panic!("no answer to the call: {stdout}"));
    assert!(answer["result"]["content"][0]["text"].as_str().unwrap_or("").contains("finished"), "{answer}");
}

/// `printf '…' | wsbx mcp` with a shell call: the input ends while the next shell sandbox is
/// being prepared ahead. It is ended cleanly, not torn from under Firejail: stderr stays quiet
/// (no warning, no Firejail complaint) and nothing is left behind.
#[test]
fn a_quick_end_of_input_stops_what_is_prepared_quietly() {
    use std::io::Write;
    let root = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wsbx"));
        command.arg("mcp").env("TMPDIR", root.path()).env_remove("RUST_LOG");
        let mut child = command.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let call = call_line(2, "run_shell", serde_json::json!({"code": "echo hi"}));
        writeln!(child.stdin.take().unwrap(), "{INITIALIZE}\n{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}}\n{call}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("hi\\n"), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "stderr");
    }
    let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `wsbx mcp` stopped by a signal (as MCP clients stop their servers) leaves no scratch
/// directory or tmpfs behind: not its sessions', not its prepared guests'.
#[test]
fn wsbx_mcp_stopped_by_sigterm_leaves_nothing_behind() {
    use std::io::{BufRead, BufReader, Write};
    let root = tempfile::tempdir().unwrap();
    let mut child = raw_mcp(Some(root.path()));
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut call = |id: u32, body: &str| -> Value {
        writeln!(stdin, "{body}").unwrap();
        loop {
            let line = lines.next().expect("an answer").expect("utf-8");
            let v: Value = serde_json::from_str(&line).expect("JSON-RPC");
            if v["id"] == id {
                return v;
            }
        }
    };
    call(1, INITIALIZE);
    // A notification has no answer: sent along with the next request.
    let created = call(2, r#"{"jsonrpc":"2.0","method":"notifications/initialized"}
{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"create_session","arguments":{"language":"python"}}}"#);
    let text = created["result"]["content"][0]["text"].as_str().expect("text").to_owned();
    let id = text.split("session_id: ").nth(1).and_then(|t| t.split_whitespace().next()).expect("an id").to_owned();
    let wrote = call(3, &format!(r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"run_python","arguments":{{"code":"open('secret.txt', 'w').write('x')","session_id":"{id}"}}}}}}"#));
    assert_eq!(wrote["result"]["isError"], false, "{wrote}");
    assert!(std::fs::read_dir(root.path()).unwrap().count() > 0, "the session's directory exists meanwhile");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A call the client cancels (`notifications/cancelled`, which the Rust SDK sends when a call's
/// future is dropped) kills its run: the guest stops and its scratch directory goes, long
/// before the run's own deadline; the server serves on.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_call_kills_its_run() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::TokioChildProcess;
    use rmcp::ServiceExt;

    let root = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsbx"));
    command.arg("mcp").env("TMPDIR", root.path());
    let client = ().serve(TokioChildProcess::new(command).expect("wsbx mcp starts")).await.expect("initialized");
    let marked = |root: &std::path::Path| std::fs::read_dir(root).unwrap().flatten().any(|e| e.path().join("busy").exists());
    let args = serde_json::json!({"code": "open('/scratch/busy', 'w').write('x')\nwhile True: pass", "timeout_ms": 60000});
    let call = client.call_tool(CallToolRequestParams::new("run_python").with_arguments(args.as_object().unwrap().clone()));
    tokio::select! {
        ended = call => panic!("the endless run ended by itself: {ended:?}"),
        () = async { while !marked(root.path()) { tokio::time::sleep(Duration::from_millis(20)).await } } => {}
    }
    // The call's future is dropped here: the SDK tells the server it is cancelled.
    let cancelled = std::time::Instant::now();
    while marked(root.path()) && cancelled.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!marked(root.path()), "the cancelled run still holds its scratch directory after 5 s");
    let args = serde_json::json!({"code": "console.log(6 * 7)"});
    let result = client.call_tool(CallToolRequestParams::new("run_javascript").with_arguments(args.as_object().unwrap().clone())).await.expect("called");
    assert!(serde_json::to_string(&result.content).unwrap().contains("42"));
    client.cancel().await.expect("closed");
}
