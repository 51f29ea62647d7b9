//! `wsbx serve` as clients meet it: a real server process on 127.0.0.1, a real HTTP client.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::server::Server;

async fn exec(client: &reqwest::Client, server: &Server, body: Value) -> (u16, Value) {
    let response = client.post(server.url("/v1/exec")).json(&body).send().await.expect("server answers");
    let status = response.status().as_u16();
    let value = response.json::<Value>().await.expect("JSON body");
    (status, value)
}

async fn metric(client: &reqwest::Client, server: &Server, name_and_labels: &str) -> f64 {
    let text = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn http_exec_runs_each_language() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    for (language, code) in [("python", "print(6*7)"), ("javascript", "console.log(6*7)"), ("shell", "echo $((6*7))")] {
        let (status, v) = exec(&client, &server, json!({"language": language, "code": code})).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["status"], "ok", "{v}");
        assert_eq!(v["stdout"], "42\n", "{v}");
        assert_eq!(v["language"], language);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_exec_takes_stdin_files_env_and_returns_files() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let body = json!({
        "language": "python",
        "code": "import os, sys\nopen('out.bin', 'wb').write(open('in.bin', 'rb').read()[::-1])\nprint(sys.stdin.read(), open('notes.txt').read(), os.environ['MODE'])",
        "stdin": "from stdin",
        "files": [
            {"path": "in.bin", "content": "AQID", "encoding": "base64"},
            {"path": "notes.txt", "content": "plain text"}
        ],
        "env": {"MODE": "test"},
        "limits": {"timeout_ms": 5000, "fuel": 1000000000, "memory_mb": 256, "max_output_bytes": 65536},
        "return_files": true
    });
    let (status, v) = exec(&client, &server, body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "from stdin plain text test\n", "{v}");
    let out = v["files"].as_array().unwrap().iter().find(|f| f["path"] == "out.bin").expect("out.bin returned");
    assert_eq!(out["encoding"], "base64");
    assert_eq!(out["content"], "AwIB");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_routes_answer() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    let runtimes: Value = client.get(server.url("/v1/runtimes")).send().await.unwrap().json().await.unwrap();
    let languages: Vec<_> = runtimes.as_array().unwrap().iter().map(|r| r["language"].as_str().unwrap().to_owned()).collect();
    assert_eq!(languages, ["python", "javascript"]);
    assert!(runtimes[0]["sha256"].as_str().unwrap().len() == 64);

    let metrics = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    for name in ["wsbx_exec_in_flight", "wsbx_runtime_info", "wsbx_http_requests_total"] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }

    let missing = client.get(server.url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.json::<Value>().await.unwrap()["error"].is_string());
    let wrong_method = client.get(server.url("/v1/exec")).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert!(wrong_method.json::<Value>().await.unwrap()["error"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn http_bad_requests_are_400_with_a_json_error() {
    let server = Server::start(&["--max-timeout", "5"]);
    let client = reqwest::Client::new();
    let not_json = client.post(server.url("/v1/exec")).body("{nope").send().await.unwrap();
    assert_eq!(not_json.status(), 400);
    assert!(not_json.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("bad request body"));

    let cases = [
        (json!({"language": "cobol", "code": "x"}), "unknown language"),
        (json!({"language": "python", "code": "x", "limits": {"timeout_ms": 6000}}), "ceiling of 5000"),
        (json!({"language": "python", "code": "x", "limits": {"memory_mb": 0}}), "greater than zero"),
        (json!({"language": "python", "code": "x", "limits": {"fuel": -1}}), "bad request body"),
        (json!({"language": "python", "code": "x", "files": [{"path": "../x", "content": ""}]}), "climbs out"),
        (json!({"language": "python", "code": "x", "files": [{"path": "/etc/x", "content": ""}]}), "absolute"),
        (json!({"language": "python", "code": "x", "files": [{"path": "a", "content": "!!", "encoding": "base64"}]}), "base64"),
        (json!({"language": "python", "code": "x", "colour": "blue"}), "unknown field"),
        (json!({"language": "python"}), "missing field"),
    ];
    for (body, expected) in cases {
        let (status, v) = exec(&client, &server, body.clone()).await;
        assert_eq!(status, 400, "{body} → {v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{body} → {error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_token_is_required_when_set() {
    let server = Server::start(&["--token", "s3cret"]);
    let client = reqwest::Client::new();
    let body = json!({"language": "python", "code": "print(1)"});
    let none = client.post(server.url("/v1/exec")).json(&body).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert!(none.json::<Value>().await.unwrap()["error"].is_string());
    let wrong = client.post(server.url("/v1/exec")).bearer_auth("s3cre").json(&body).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let runtimes = client.get(server.url("/v1/runtimes")).send().await.unwrap();
    assert_eq!(runtimes.status(), 401);
    let right = client.post(server.url("/v1/exec")).bearer_auth("s3cret").json(&body).send().await.unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(client.get(server.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_token_can_come_from_the_environment() {
    let server = Server::start_with_env(&[], &[("WSBX_TOKEN", "from-env")]);
    let client = reqwest::Client::new();
    let body = json!({"language": "javascript", "code": "console.log(1)"});
    assert_eq!(client.post(server.url("/v1/exec")).json(&body).send().await.unwrap().status(), 401);
    let ok = client.post(server.url("/v1/exec")).bearer_auth("from-env").json(&body).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_body_too_large_is_413() {
    let server = Server::start(&["--max-body-bytes", "1000"]);
    let client = reqwest::Client::new();
    let code = format!("print('{}')", "x".repeat(2000));
    let (status, v) = exec(&client, &server, json!({"language": "python", "code": code})).await;
    assert_eq!(status, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("1000 bytes"));
}

#[tokio::test(flavor = "multi_thread")]
async fn http_slow_job_does_not_hold_up_a_hello() {
    let server = Server::start(&["--max-concurrency", "2"]);
    let client = reqwest::Client::new();
    let slow = {
        let client = client.clone();
        let url = server.url("/v1/exec");
        tokio::spawn(async move {
            let body = json!({"language": "python", "code": "while True: pass", "limits": {"timeout_ms": 3000}});
            let v: Value = client.post(url).json(&body).send().await.unwrap().json().await.unwrap();
            (Instant::now(), v)
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, hello) = exec(&client, &server, json!({"language": "python", "code": "print('hello')"})).await;
    let hello_done = Instant::now();
    assert_eq!(status, 200);
    assert_eq!(hello["stdout"], "hello\n");
    let (slow_done, slow) = slow.await.unwrap();
    assert_eq!(slow["status"], "timeout");
    assert!(hello_done < slow_done, "the hello waited for the slow job");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_saturation_answers_429_and_loses_nothing() {
    let server = Server::start(&["--max-concurrency", "2"]);
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let client = client.clone();
        let url = server.url("/v1/exec");
        tasks.push(tokio::spawn(async move {
            let body = json!({"language": "python", "code": format!("import time\ntime.sleep(0.3)\nprint({i})")});
            let response = tokio::time::timeout(Duration::from_secs(60), client.post(url).json(&body).send())
                .await
                .expect("answered in time")
                .expect("answered");
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").is_some();
            let v: Value = response.json().await.unwrap();
            (i, status, retry_after, v)
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for task in tasks {
        let (i, status, retry_after, v) = task.await.unwrap();
        match status {
            200 => {
                assert_eq!(v["stdout"], format!("{i}\n"), "{v}");
                ok += 1;
            }
            429 => {
                assert!(retry_after, "429 without Retry-After");
                assert!(v["error"].is_string());
                busy += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(ok + busy, 30);
    assert!(ok >= 2, "only {ok} ran");
    assert!(busy >= 1, "a 2-slot server with a short queue never pushed back");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_metrics_follow_known_runs() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let ok_before = metric(&client, &server, "wsbx_exec_total{language=\"python\",status=\"ok\"}").await;
    let timeout_before = metric(&client, &server, "wsbx_exec_total{language=\"python\",status=\"timeout\"}").await;
    let fuel_before = metric(&client, &server, "wsbx_exec_fuel_consumed_total{language=\"python\"}").await;
    for _ in 0..2 {
        exec(&client, &server, json!({"language": "python", "code": "print(1)"})).await;
    }
    exec(&client, &server, json!({"language": "python", "code": "while True: pass", "limits": {"timeout_ms": 200}})).await;
    exec(&client, &server, json!({"language": "nope", "code": ""})).await;
    assert_eq!(metric(&client, &server, "wsbx_exec_total{language=\"python\",status=\"ok\"}").await, ok_before + 2.0);
    assert_eq!(metric(&client, &server, "wsbx_exec_total{language=\"python\",status=\"timeout\"}").await, timeout_before + 1.0);
    assert!(metric(&client, &server, "wsbx_exec_fuel_consumed_total{language=\"python\"}").await > fuel_before);
    assert!(metric(&client, &server, "wsbx_exec_duration_seconds_count{language=\"python\"}").await >= 3.0);
    assert!(metric(&client, &server, "wsbx_http_requests_total{code=\"400\",route=\"/v1/exec\"}").await >= 1.0);
    assert_eq!(metric(&client, &server, "wsbx_exec_in_flight").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_server_survives_hostile_jobs() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let hostile = [
        json!({"language": "python", "code": "open('/etc/passwd').read()"}),
        json!({"language": "python", "code": "x = []\nwhile True: x.append(' ' * 10**7)", "limits": {"memory_mb": 64}}),
        json!({"language": "python", "code": "import sys\nsys.setrecursionlimit(10**6)\ndef f(): f()\nf()"}),
        json!({"language": "python", "code": "print('x' * 10**7)", "limits": {"max_output_bytes": 100}}),
        json!({"language": "python", "code": "import time\ntime.sleep(60)", "limits": {"timeout_ms": 300}}),
        json!({"language": "javascript", "code": "const a = []; while (true) a.push(new ArrayBuffer(1 << 20))", "limits": {"memory_mb": 64}}),
        json!({"language": "javascript", "code": "function f() { return f() + 1 } f()"}),
        json!({"language": "javascript", "code": "setTimeout(() => {}, 60000)", "limits": {"timeout_ms": 300}}),
        json!({"language": "shell", "code": "cat /etc/shadow; ls /root; echo > /dev/tcp/127.0.0.1/1"}),
        json!({"language": "shell", "code": "yes", "limits": {"timeout_ms": 300, "max_output_bytes": 1000}}),
        json!({"language": "python", "code": "\u{0}"}),
    ];
    for body in hostile {
        let response = client.post(server.url("/v1/exec")).json(&body).send().await.expect("server answers");
        assert!(matches!(response.status().as_u16(), 200 | 400), "{body}: {}", response.status());
        let v: Value = response.json().await.unwrap();
        assert!(v["status"] != "ok" || v["stdout_truncated"] == true, "{body}: {v}");
        assert_ne!(v["status"], "internal_error", "{body}: {v}");
    }
    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let (status, v) = exec(&client, &server, json!({"language": "python", "code": "print('still here')"})).await;
    assert_eq!((status, v["stdout"].as_str()), (200, Some("still here\n")));
}

#[tokio::test(flavor = "multi_thread")]
async fn http_sigterm_finishes_in_flight_runs_and_removes_their_scratch() {
    let scratch_root = tempfile::tempdir().unwrap();
    let mut server = Server::start_with_env(&[], &[("TMPDIR", scratch_root.path().to_str().unwrap())]);
    let client = reqwest::Client::new();
    let url = server.url("/v1/exec");
    let running = tokio::spawn(async move {
        let body = json!({"language": "python", "code": "import time\ntime.sleep(1.5)\nprint('finished')"});
        client.post(url).json(&body).send().await.unwrap().json::<Value>().await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SAFETY: sending SIGTERM to our own child.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let v = running.await.unwrap();
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["stdout"], "finished\n");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let left: Vec<_> = std::fs::read_dir(scratch_root.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A run's directory is detached just after its answer leaves, off the request's path: what
/// the run wrote is gone from the host soon after, and the run is over at once for whoever asks
/// next (back-to-back requests on one slot with no queue are never refused as busy, and the
/// in-flight gauge is back at zero).
#[tokio::test(flavor = "multi_thread")]
async fn http_a_runs_directory_goes_after_its_answer_and_its_slot_is_free_at_once() {
    let scratch_root = tempfile::tempdir().unwrap();
    let root = scratch_root.path().to_str().unwrap().to_owned();
    let server = Server::start_with_env(&["--max-concurrency", "1", "--max-queue", "0"], &[("TMPDIR", &root)]);
    let client = reqwest::Client::new();
    let mounted = || std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(&root)).count();
    let files = |dir: &std::path::Path| -> Vec<String> {
        walkdir(dir).into_iter().filter(|p| p.is_file()).map(|p| p.display().to_string()).collect()
    };
    for i in 0..50 {
        let code = format!("open('secret-{i}.txt', 'w').write('x' * 1000)\nprint({i})");
        for language in ["python", "javascript"] {
            let code = if language == "python" { code.clone() } else { format!("console.log({i})") };
            let (status, v) = exec(&client, &server, json!({"language": language, "code": code})).await;
            assert_eq!(status, 200, "run {i} ({language}) refused as busy: {v}");
            assert_eq!(v["stdout"], format!("{i}\n"), "{v}");
        }
        assert_eq!(metric(&client, &server, "wsbx_exec_in_flight").await, 0.0, "after run {i}");
    }
    // Soon after the last answer nothing the runs wrote is left, and no tmpfs is mounted but
    // the prepared guests' (empty) and at most 8 kept for the next runs, which no run touched.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = files(scratch_root.path());
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "files left under the scratch root: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(mounted() <= 2 * 2 + 8, "more tmpfs mounts than the prepared guests' and those kept ({})", mounted());
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            found.extend(walkdir(&path));
        }
        found.push(path);
    }
    found
}

/// Without a token, a web page the user's browser opens must not reach the server: a foreign
/// Host (DNS rebinding) or Origin (a cross-site POST) is refused; with a token, the token
/// decides.
#[tokio::test(flavor = "multi_thread")]
async fn http_without_a_token_refuses_foreign_hosts_and_origins() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let body = json!({"language": "python", "code": "print(1)"});
    let url = server.url("/v1/exec");
    for (name, value) in [("Host", "evil.example.com"), ("Host", "127.0.0.1.evil.example.com:80"), ("Origin", "http://evil.example.com")] {
        let response = client.post(&url).header(name, value).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 403, "{name}: {value}");
    }
    let mcp = client.post(server.url("/mcp")).header("Origin", "https://evil.example.com").json(&json!({})).send().await.unwrap();
    assert_eq!(mcp.status(), 403);
    let local = client.post(&url).header("Origin", "http://localhost:3000").json(&body).send().await.unwrap();
    assert_eq!(local.status(), 200, "a page served from this machine may");

    let guarded = Server::start(&["--token", "t0ken"]);
    let response = client.post(guarded.url("/v1/exec")).header("Host", "sandbox.example.com").bearer_auth("t0ken").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200, "with a token, any host");
}
