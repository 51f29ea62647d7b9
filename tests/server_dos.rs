//! Regressions from the outside review: denial of service of `wsbx serve` by its clients and
//! guests, against a real server on 127.0.0.1. Each test fails without its fix.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::server::Server;
use serde_json::{json, Value};

async fn metric(client: &reqwest::Client, server: &Server, name: &str) -> f64 {
    let text = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// Sends `body` and gives up after `after`, as an impatient client does.
async fn give_up(server: &Server, body: Value, after: Duration) {
    let client = reqwest::Client::builder().timeout(after).build().unwrap();
    assert!(client.post(server.url("/v1/exec")).json(&body).send().await.is_err(), "the run answered before the client gave up");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_has_its_run_killed_and_its_slot_freed_once_the_run_ends() {
    let server = Server::start(&["--max-concurrency", "1", "--max-queue", "0"]);
    let client = reqwest::Client::new();
    let sleeper = json!({"language": "shell", "code": "sleep 3"});
    let started = Instant::now();
    give_up(&server, sleeper, Duration::from_millis(600)).await;
    // The run is killed, not left to its 3 s; the slot comes back only when its thread is
    // done (the in-flight gauge drops with the slot, after the run was counted), so the
    // gauge reaching 0 finds the run already recorded as killed. How long the kill takes
    // depends on the machine's load: only "well before the sleep would end" is asserted.
    while metric(&client, &server, "wsbx_exec_in_flight").await != 0.0 {
        assert!(started.elapsed() < Duration::from_millis(2800), "the run of a client that left was not killed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&client, &server, r#"wsbx_exec_total{language="shell",status="killed"}"#).await, 1.0);
    let response = client.post(server.url("/v1/exec")).json(&json!({"language": "python", "code": "print(1)"})).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_gives_up_while_queued_frees_its_place_in_the_queue() {
    let server = Server::start(&["--max-concurrency", "1", "--max-queue", "1"]);
    let client = reqwest::Client::new();
    let busy = {
        let client = client.clone();
        let url = server.url("/v1/exec");
        tokio::spawn(async move {
            client.post(url).json(&json!({"language": "shell", "code": "sleep 2.5"})).send().await.unwrap().status()
        })
    };
    // Only once the sleeper holds the slot (not after a fixed pause, which a loaded machine
    // outlasts) does the next request go to the queue.
    while metric(&client, &server, "wsbx_exec_in_flight").await != 1.0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    give_up(&server, json!({"language": "python", "code": "print(1)"}), Duration::from_millis(300)).await;
    // The server learns that its client left when it reads the closed connection, which on a
    // loaded machine may come after the next request: wait until it has recorded the run that
    // never ran as killed (the queue's place is given back before that).
    while metric(&client, &server, r#"wsbx_exec_total{language="python",status="killed"}"#).await != 1.0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The queue's one place is free again: this request waits for the slot instead of a 429.
    let response = client.post(server.url("/v1/exec")).json(&json!({"language": "python", "code": "print(2)"})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["stdout"], "2\n");
    assert_eq!(busy.await.unwrap(), 200);
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_guest_cannot_take_the_servers_descriptors() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let before = open_descriptors(server.child.id());
    let code = "fs = []\nwhile True:\n    fs.append(open('/usr/local/lib/python315.zip', 'rb'))";
    let v: Value = client.post(server.url("/v1/exec")).json(&json!({"language": "python", "code": code})).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["status"], "error", "{v}");
    assert!(v["detail"].as_str().unwrap().contains("files open"), "{v}");
    // The guest's files close when its instance is torn down, which happens off the response's
    // path (on the reaper thread): give it a moment on a loaded machine.
    let settled = std::time::Instant::now();
    while open_descriptors(server.child.id()) >= before + 100 && settled.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(open_descriptors(server.child.id()) < before + 100, "{} descriptors after, {before} before", open_descriptors(server.child.id()));
    assert_eq!(client.get(server.url("/healthz")).send().await.unwrap().status(), 200);
}

fn host_port(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

#[test]
fn slow_and_idle_connections_are_closed_and_capped() {
    let server = Server::start(&["--max-connections", "2"]);
    let addr = host_port(&server);
    // Two clients take every connection: one idle, one sending half a request.
    let mut idle = TcpStream::connect(&addr).unwrap();
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"POST /v1/exec HTTP/1.1\r\nHost: x\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A third is not served while they hold the cap...
    let mut third = TcpStream::connect(&addr).unwrap();
    third.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    third.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut answer = Vec::new();
    assert!(third.read_to_end(&mut answer).is_err(), "served past the connection cap");
    // ...and is once the header timeout (10 s) closes them.
    let started = Instant::now();
    third.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    third.read_to_end(&mut answer).unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    assert!(started.elapsed() < Duration::from_secs(15));
    for stream in [&mut idle, &mut slow] {
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        // Closed by the server: end of file (after a 408, for the half-sent request).
        assert!(stream.read_to_end(&mut rest).is_ok());
    }
}

#[test]
fn an_empty_token_is_refused_at_start() {
    for (args, env) in [(vec!["--token", ""], vec![]), (vec![], vec![("WSBX_TOKEN", "")])] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_wsbx"))
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(&args)
            .envs(env)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(126), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("empty"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_peak_memory_under_serve_is_the_jobs() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let v: Value = client.post(server.url("/v1/exec")).json(&json!({"language": "shell", "code": "echo hi"})).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["status"], "ok", "{v}");
    let peak = v["peak_memory_bytes"].as_u64().unwrap();
    assert!(peak > 0 && peak < 64 << 20, "{peak}");
}
