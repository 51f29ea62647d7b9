//! Output as it happens: Server-Sent Events on both exec routes of a real server, and `wsbx exec`
//! printing as the guest writes.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::server::Server;

const COUNT: &str = "import time\nfor i in range(3):\n    print(i); time.sleep(1)";

/// One event as received, with when it arrived.
#[derive(Debug)]
struct Received {
    at: Instant,
    event: String,
    data: Value,
}

/// Posts `body` asking for events and reads them all.
async fn events(client: &reqwest::Client, url: String, body: Value) -> Vec<Received> {
    let mut response = client.post(url).header("Accept", "text/event-stream").json(&body).send().await.expect("answer");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut buffer = String::new();
    let mut received = Vec::new();
    while let Some(chunk) = response.chunk().await.expect("body") {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if !event.is_empty() {
                received.push(Received { at: Instant::now(), event, data: serde_json::from_str(&data).expect("JSON data") });
            }
        }
    }
    received
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_delivers_output_as_it_is_written_then_the_result() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let received = events(&client, server.url("/v1/exec"), json!({"language": "python", "code": COUNT})).await;
    // Python may write a line and its newline separately: pieces, not lines, are events.
    let (last, output) = received.split_last().expect("events");
    assert_eq!(last.event, "result", "{received:#?}");
    assert!(output.iter().all(|r| r.event == "stdout"), "{received:#?}");
    let text: String = output.iter().map(|r| r.data["text"].as_str().unwrap()).collect();
    assert_eq!(text, "0\n1\n2\n");
    let early = last.at - output[0].at;
    assert!(early > Duration::from_millis(1500), "the first line came only {early:?} before the result");
    let result = &last.data;
    let plain: Value = client.post(server.url("/v1/exec")).json(&json!({"language": "python", "code": COUNT})).send().await.unwrap().json().await.unwrap();
    for field in ["status", "exit_code", "stdout", "stderr", "stdout_truncated", "language"] {
        assert_eq!(result[field], plain[field], "{field}: {result} vs {plain}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_on_a_session_turn_and_refusals_stay_plain_http() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let created: Value = client.post(server.url("/v1/sessions")).json(&json!({"language": "shell"})).send().await.unwrap().json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    let url = server.url(&format!("/v1/sessions/{id}/exec"));
    let received = events(&client, url.clone(), json!({"code": "echo out; echo err >&2; printf '\\xe2\\x82'; sleep 0.2; printf '\\xac\\n'"})).await;
    let last = received.last().expect("events");
    assert_eq!(last.event, "result");
    assert_eq!(last.data["session_id"], id);
    assert_eq!(last.data["turn"], 1);
    let out: String = received.iter().filter(|r| r.event == "stdout").map(|r| r.data["text"].as_str().unwrap()).collect();
    let err: String = received.iter().filter(|r| r.event == "stderr").map(|r| r.data["text"].as_str().unwrap()).collect();
    assert_eq!((out.as_str(), err.as_str()), ("out\n€\n", "err\n"), "a character split between writes arrives whole");

    // A refusal is an HTTP error, not an event stream.
    let response = client.post(server.url("/v1/exec")).header("Accept", "text/event-stream").json(&json!({"language": "cobol", "code": ""})).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let gone = client.post(server.url("/v1/sessions/00000000-0000-4000-8000-000000000000/exec")).header("Accept", "text/event-stream").json(&json!({"code": "true"})).send().await.unwrap();
    assert_eq!(gone.status(), 404);
}

/// A client that does not read never slows the guest, and one that leaves mid-run leaves
/// nothing behind once the run ends.
#[tokio::test(flavor = "multi_thread")]
async fn slow_and_vanishing_clients_cost_the_guest_nothing_and_leave_nothing() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(&[], &[("TMPDIR", root.path().to_str().unwrap())]);
    let client = reqwest::Client::new();
    // 1 MiB of output in small writes while the client reads nothing for two seconds.
    let code = "import sys\nfor i in range(16384):\n    sys.stdout.write('x' * 63 + '\\n')";
    let mut response = client
        .post(server.url("/v1/exec"))
        .header("Accept", "text/event-stream")
        .json(&json!({"language": "python", "code": code}))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&body);
    let result_line = text.lines().skip_while(|l| *l != "event: result").nth(1).expect("a result event");
    let result: Value = serde_json::from_str(result_line.trim_start_matches("data: ")).unwrap();
    assert_eq!(result["status"], "ok", "{result}");
    assert!(result["wall_ms"].as_f64().unwrap() < 1500.0, "the guest waited for the client: {result}");
    let streamed: usize = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["text"].as_str().map(str::len))
        .sum();
    assert_eq!(streamed, 1 << 20, "every byte under the cap is streamed once");

    // Leave after the first event of a run that would go on writing for 20 s: the run is
    // killed, not left to its deadline.
    let mut response = client
        .post(server.url("/v1/exec"))
        .header("Accept", "text/event-stream")
        .json(&json!({"language": "python", "limits": {"timeout_ms": 20000}, "code": "import time\nopen('/scratch/marker', 'w').write('x')\nfor i in range(400):\n    print(i, flush=True); time.sleep(0.05)"}))
        .send()
        .await
        .unwrap();
    let _first = response.chunk().await.unwrap();
    drop(response);
    let left_at = std::time::Instant::now();
    let gone = |root: &std::path::Path| std::fs::read_dir(root).unwrap().flatten().all(|e| !e.path().join("marker").exists());
    while !gone(root.path()) && left_at.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone(root.path()), "the run's scratch directory outlived its client by 3 s: the run was not killed");
    let metrics = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "wsbx_exec_in_flight 0"), "{metrics}");
    assert!(metrics.lines().any(|l| l == r#"wsbx_exec_total{language="python",status="killed"} 1"#), "{metrics}");
}

#[test]
fn wsbx_exec_prints_as_the_guest_writes() {
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wsbx"))
        .args(["exec", "--lang", "python", "-c", COUNT])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "0");
    let first = started.elapsed();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(rest, ["1", "2"]);
    assert!(child.wait().unwrap().success());
    let all = started.elapsed();
    assert!(all - first > Duration::from_millis(1500), "the first line came at {first:?}, the end at {all:?}");
}
