//! Sessions over HTTP: a real `wsbx serve` on 127.0.0.1 and a real client — the routes, their
//! codes, limits, expiry, the session cap, metrics, and that no scratch directory outlives its
//! session (DELETE, expiry, SIGTERM).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

mod common;
use common::server::Server;

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = client.post(url).json(&body).send().await.expect("server answers");
    let status = response.status().as_u16();
    let value = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, value)
}

async fn create(client: &reqwest::Client, server: &Server, body: Value) -> (u16, Value) {
    post(client, server.url("/v1/sessions"), body).await
}

async fn turn(client: &reqwest::Client, server: &Server, id: &str, body: Value) -> (u16, Value) {
    post(client, server.url(&format!("/v1/sessions/{id}/exec")), body).await
}

async fn get(client: &reqwest::Client, server: &Server, path: &str) -> (u16, Value) {
    let response = client.get(server.url(path)).send().await.expect("server answers");
    let status = response.status().as_u16();
    (status, response.json::<Value>().await.unwrap_or(Value::Null))
}

async fn delete(client: &reqwest::Client, server: &Server, id: &str) -> u16 {
    client.delete(server.url(&format!("/v1/sessions/{id}"))).send().await.expect("server answers").status().as_u16()
}

async fn metric(client: &reqwest::Client, server: &Server, name_and_labels: &str) -> f64 {
    let text = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// The scratch directory under `root` holding a file named `marker`.
fn dir_with(root: &Path, marker: &str) -> Option<PathBuf> {
    std::fs::read_dir(root).ok()?.flatten().map(|e| e.path()).find(|p| p.join(marker).exists())
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn http_session_keeps_a_pandas_frame_between_turns_and_delete_removes_it() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(&[], &[("TMPDIR", root.path().to_str().unwrap())]);
    let client = reqwest::Client::new();
    let (status, created) = create(&client, &server, json!({"language": "python"})).await;
    assert_eq!(status, 201, "{created}");
    let s = id(&created);
    assert_eq!(uuid::Uuid::parse_str(&s).unwrap().get_version_num(), 4);
    assert_eq!(created["turns"], 0);
    assert_eq!(created["language"], "python");
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'), "{created}");
    assert!(created["expires_at"].as_str().is_some(), "{created}");
    let code = "import pandas as pd; df = pd.DataFrame({\"a\": [1, 2, 3]})\nopen('marker-pandas', 'w').write('x')";
    let (status, first) = turn(&client, &server, &s, json!({"code": code})).await;
    assert_eq!((status, first["status"].as_str()), (200, Some("ok")), "{first}");
    assert_eq!((first["session_id"].as_str(), first["turn"].as_u64()), (Some(s.as_str()), Some(1)));
    let (status, second) = turn(&client, &server, &s, json!({"code": "print(df.a.sum())"})).await;
    assert_eq!((status, second["stdout"].as_str()), (200, Some("6\n")), "{second}");
    assert_eq!(second["turn"], 2);

    let (status, shown) = get(&client, &server, &format!("/v1/sessions/{s}")).await;
    assert_eq!(status, 200);
    assert_eq!((shown["turns"].as_u64(), shown["state"].as_str()), (Some(2), Some("idle")), "{shown}");
    assert!(shown["memory_bytes"].as_u64().unwrap() > 10 << 20, "{shown}");
    assert!(shown["idle_ms"].as_u64().is_some());
    let (_, listed) = get(&client, &server, "/v1/sessions").await;
    assert!(listed.as_array().unwrap().iter().any(|v| v["id"] == s.as_str()), "{listed}");

    let dir = dir_with(root.path(), "marker-pandas").expect("the session's directory is under TMPDIR");
    assert_eq!(delete(&client, &server, &s).await, 204);
    assert!(!dir.exists(), "DELETE left {} behind", dir.display());
    let (status, gone) = turn(&client, &server, &s, json!({"code": "print(df)"})).await;
    assert_eq!(status, 404, "{gone}");
    assert!(gone["error"].is_string());
    assert_eq!(delete(&client, &server, &s).await, 404);
}

/// DELETE of a session whose turn runs, or waits for its run slot, kills that turn: when the
/// 204 comes the guest has stopped and its directory is gone, and the turn answers `killed`.
#[tokio::test(flavor = "multi_thread")]
async fn http_delete_kills_a_running_or_waiting_turn_before_it_answers() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(&["--max-concurrency", "1", "--max-queue", "4"], &[("TMPDIR", root.path().to_str().unwrap())]);
    let client = reqwest::Client::new();
    for language in ["shell", "python"] {
        let (_, created) = create(&client, &server, json!({"language": language})).await;
        let s = id(&created);
        // Shell jobs' directories are under /run/wsbx-jobs, which the job user can reach.
        let marker = format!("marker-running-{}-{language}", std::process::id());
        let jobs = match language {
            "shell" => Path::new("/run/wsbx-jobs"),
            _ => root.path(),
        };
        let code = match language {
            "shell" => format!("echo x > {marker}; sleep 5; echo late > after"),
            _ => format!("open('{marker}', 'w').write('x')\nimport time\ntime.sleep(5)\nopen('after', 'w').write('late')"),
        };
        let running = {
            let (client, url) = (client.clone(), server.url(&format!("/v1/sessions/{s}/exec")));
            tokio::spawn(async move { post(&client, url, json!({"code": code, "return_files": true})).await })
        };
        let mut dir = None;
        for _ in 0..100 {
            dir = dir_with(jobs, &marker);
            if dir.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let dir = dir.unwrap_or_else(|| panic!("{language}: the turn never started"));
        assert_eq!(delete(&client, &server, &s).await, 204);
        assert!(!dir.exists(), "{language}: DELETE answered with {} still there", dir.display());
        let (status, killed) = running.await.unwrap();
        assert_eq!((status, killed["status"].as_str()), (200, Some("killed")), "{language}: {killed}");
        assert!(killed["files"].as_array().is_none_or(|f| f.iter().all(|f| f["path"] != "after")), "{killed}");
    }

    // A turn waiting for the one slot (a one-shot run holds it) is killed too, never run.
    let (_, created) = create(&client, &server, json!({"language": "shell"})).await;
    let s = id(&created);
    let busy = {
        let (client, url) = (client.clone(), server.url("/v1/exec"));
        tokio::spawn(async move { post(&client, url, json!({"language": "shell", "code": "sleep 2"})).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = {
        let (client, url) = (client.clone(), server.url(&format!("/v1/sessions/{s}/exec")));
        tokio::spawn(async move { post(&client, url, json!({"code": "echo ran > ran"})).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(delete(&client, &server, &s).await, 204);
    let (status, killed) = waiting.await.unwrap();
    assert_eq!((status, killed["status"].as_str()), (200, Some("killed")), "{killed}");
    busy.await.unwrap();
    assert!(dir_with(root.path(), "ran").is_none(), "the waiting turn ran after its session was closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_javascript_and_shell_sessions_keep_state() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let (_, js) = create(&client, &server, json!({"language": "javascript"})).await;
    let js = id(&js);
    turn(&client, &server, &js, json!({"code": "let total = 40; const add = v => total += v;"})).await;
    let (_, v) = turn(&client, &server, &js, json!({"code": "add(2); console.log(total)"})).await;
    assert_eq!(v["stdout"], "42\n", "{v}");
    let (_, sh) = create(&client, &server, json!({"language": "shell", "files": [{"path": "in.txt", "content": "given"}]})).await;
    let sh = id(&sh);
    turn(&client, &server, &sh, json!({"code": "cat in.txt > copy.txt; echo more >> copy.txt"})).await;
    let (_, v) = turn(&client, &server, &sh, json!({"code": "cat copy.txt"})).await;
    assert_eq!(v["stdout"], "givenmore\n", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_concurrent_turn_is_409_and_a_timeout_ends_the_session_with_410() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let (_, created) = create(&client, &server, json!({"language": "python"})).await;
    let s = id(&created);
    let slow = {
        let (client, url) = (client.clone(), server.url(&format!("/v1/sessions/{s}/exec")));
        tokio::spawn(async move { post(&client, url, json!({"code": "import time; time.sleep(1.5); print('slept')"})).await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, busy_view) = get(&client, &server, &format!("/v1/sessions/{s}")).await;
    assert_eq!(busy_view["state"], "busy", "{busy_view}");
    let (status, conflict) = turn(&client, &server, &s, json!({"code": "print(1)"})).await;
    assert_eq!(status, 409, "{conflict}");
    let (status, slept) = slow.await.unwrap();
    assert_eq!((status, slept["stdout"].as_str()), (200, Some("slept\n")), "{slept}");

    let (status, spun) = turn(&client, &server, &s, json!({"code": "while True: pass", "limits": {"timeout_ms": 300}})).await;
    assert_eq!((status, spun["status"].as_str()), (200, Some("timeout")), "{spun}");
    let (status, gone) = turn(&client, &server, &s, json!({"code": "print(1)"})).await;
    assert_eq!(status, 410, "{gone}");
    assert!(gone["error"].as_str().unwrap().contains("timeout"), "{gone}");
    let (_, view) = get(&client, &server, &format!("/v1/sessions/{s}")).await;
    assert_eq!(view["state"], "ended", "{view}");
    assert_eq!(delete(&client, &server, &s).await, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_an_idle_session_is_reaped_and_answers_404() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(&["--session-idle-timeout", "1"], &[("TMPDIR", root.path().to_str().unwrap())]);
    let client = reqwest::Client::new();
    let (_, created) = create(&client, &server, json!({"language": "python"})).await;
    assert_eq!(created["idle_timeout_ms"], 1000, "{created}");
    let s = id(&created);
    turn(&client, &server, &s, json!({"code": "open('marker-idle', 'w').write('x')"})).await;
    let dir = dir_with(root.path(), "marker-idle").expect("the session's directory");
    // The reaper runs about once a second: within three the session is gone, unasked.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(!dir.exists(), "an expired session's directory is removed by the reaper");
    assert_eq!(metric(&client, &server, "wsbx_sessions_active").await, 0.0);
    let (status, _) = get(&client, &server, &format!("/v1/sessions/{s}")).await;
    assert_eq!(status, 404);
    let (status, _) = turn(&client, &server, &s, json!({"code": "print(1)"})).await;
    assert_eq!(status, 404);
    // Asking for more than the server's ceiling is refused.
    let (status, v) = create(&client, &server, json!({"language": "python", "idle_timeout_ms": 5000})).await;
    assert_eq!(status, 400, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_max_sessions_answers_429_even_when_all_arrive_at_once() {
    let server = Server::start(&["--max-sessions", "3"]);
    let client = reqwest::Client::new();
    let creates = (0..8).map(|_| {
        let (client, url) = (client.clone(), server.url("/v1/sessions"));
        tokio::spawn(async move { post(&client, url, json!({"language": "javascript"})).await })
    });
    let mut made = Vec::new();
    let mut refused = 0;
    for handle in creates.collect::<Vec<_>>() {
        match handle.await.unwrap() {
            (201, v) => made.push(id(&v)),
            (429, v) => {
                assert!(v["error"].as_str().unwrap().contains("3 sessions"), "{v}");
                refused += 1;
            }
            (status, v) => panic!("unexpected {status}: {v}"),
        }
    }
    assert_eq!((made.len(), refused), (3, 5));
    assert_eq!(metric(&client, &server, "wsbx_sessions_active").await, 3.0);
    assert_eq!(delete(&client, &server, &made[0]).await, 204);
    let (status, v) = create(&client, &server, json!({"language": "javascript"})).await;
    assert_eq!(status, 201, "a closed session frees its place: {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_session_requests_are_checked() {
    let server = Server::start(&["--token", "s3cret"]);
    let client = reqwest::Client::new();
    let (status, _) = create(&client, &server, json!({"language": "python"})).await;
    assert_eq!(status, 401, "the token is required on the session routes");
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth("s3cret");
    let send = |r: reqwest::RequestBuilder| async move {
        let response = auth(r).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap_or(Value::Null))
    };
    let (status, created) = send(client.post(server.url("/v1/sessions")).json(&json!({"language": "python", "limits": {"memory_mb": 512}}))).await;
    assert_eq!(status, 201, "{created}");
    let s = id(&created);
    let url = server.url(&format!("/v1/sessions/{s}/exec"));
    for (body, why) in [
        (json!({"code": "print(1)", "limits": {"memory_mb": 256}}), "memory is the session's"),
        (json!({"code": "print(1)", "limits": {"timeout_ms": 0}}), "zero limit"),
        (json!({"code": "print(1)", "files": [{"path": "../x", "content": ""}]}), "path outside"),
        (json!({"code": 5}), "wrong type"),
        (json!({"code": "print(1)", "env": {}}), "env belongs to the session"),
    ] {
        let (status, v) = send(client.post(&url).json(&body)).await;
        assert_eq!(status, 400, "{why}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    let (status, v) = send(client.post(&url).json(&json!({"code": "import os; print(os.environ.get('HOME'))"}))).await;
    assert_eq!((status, v["stdout"].as_str()), (200, Some("/scratch\n")), "still usable after bad turns: {v}");
    for bad in ["not-a-uuid", "00000000-0000-4000-8000-000000000000"] {
        let (status, _) = send(client.post(server.url(&format!("/v1/sessions/{bad}/exec"))).json(&json!({"code": "1"}))).await;
        assert_eq!(status, 404, "{bad}");
    }
    let (status, v) = send(client.post(server.url("/v1/sessions")).json(&json!({"language": "cobol"}))).await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = send(client.post(server.url("/v1/sessions")).json(&json!({"language": "python", "limits": {"memory_mb": 999999}}))).await;
    assert_eq!(status, 400, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_session_metrics_count_turns() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let (_, created) = create(&client, &server, json!({"language": "python"})).await;
    let s = id(&created);
    turn(&client, &server, &s, json!({"code": "x = 1"})).await;
    turn(&client, &server, &s, json!({"code": "raise SystemExit(2)"})).await;
    assert_eq!(metric(&client, &server, "wsbx_session_turns_total{language=\"python\",status=\"ok\"}").await, 1.0);
    assert_eq!(metric(&client, &server, "wsbx_session_turns_total{language=\"python\",status=\"error\"}").await, 1.0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(metric(&client, &server, "wsbx_sessions_active").await, 1.0);
    assert!(metric(&client, &server, "wsbx_sessions_memory_bytes").await > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_sigterm_removes_every_sessions_scratch_directory() {
    let root = tempfile::tempdir().unwrap();
    let mut server = Server::start_with_env(&[], &[("TMPDIR", root.path().to_str().unwrap())]);
    let client = reqwest::Client::new();
    for language in ["python", "javascript", "shell"] {
        let (status, created) = create(&client, &server, json!({"language": language})).await;
        assert_eq!(status, 201, "{created}");
        let code = match language {
            "python" => "open('f', 'w').write('x')",
            "javascript" => "console.log(1)",
            _ => "echo x > f",
        };
        turn(&client, &server, &id(&created), json!({"code": code})).await;
    }
    let pid = server.child.id();
    // SAFETY: sending SIGTERM to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // Shell jobs' directories are under /run/wsbx-jobs, named for the process that made them.
    let ours = format!("wsbx-{pid}-");
    let left: Vec<_> = std::fs::read_dir("/run/wsbx-jobs").into_iter().flatten().flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().starts_with(&ours)).collect();
    assert!(left.is_empty(), "shell directories left behind: {left:?}");
}

/// Every place `--max-sessions` allows is usable by a Python session (whose guest holds two of
/// the engine's memory slots: its linear memory and its exceptions' GC heap), and one-shot runs
/// still find room while the sessions are all alive.
#[tokio::test(flavor = "multi_thread")]
async fn http_max_sessions_python_sessions_fit_beside_one_shot_runs() {
    let server = Server::start(&["--max-sessions", "40"]);
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for _ in 0..40 {
        let (status, v) = create(&client, &server, json!({"language": "python"})).await;
        assert_eq!(status, 201, "session {}: {v}", ids.len() + 1);
        let s = id(&v);
        let (_, raised) = turn(&client, &server, &s, json!({"code": "try:\n    raise ValueError()\nexcept ValueError:\n    print('caught')"})).await;
        assert_eq!(raised["stdout"], "caught\n", "{raised}");
        ids.push(s);
    }
    let (status, v) = create(&client, &server, json!({"language": "python"})).await;
    assert_eq!(status, 429, "{v}");
    for _ in 0..4 {
        let (status, v) = post(&client, server.url("/v1/exec"), json!({"language": "python", "code": "print('one-shot')"})).await;
        assert_eq!((status, v["stdout"].as_str()), (200, Some("one-shot\n")), "{v}");
    }
    // One spelling per id: no uppercase, braces or URN forms of a live session.
    let upper = ids[0].to_uppercase();
    let (status, _) = get(&client, &server, &format!("/v1/sessions/{upper}")).await;
    assert_eq!(status, 404);
    let (status, _) = get(&client, &server, &format!("/v1/sessions/urn:uuid:{}", ids[0])).await;
    assert_eq!(status, 404);
}
