//! Sessions through the library, against the real interpreters and real Firejail: state
//! persists between turns, limits end a session and exceptions do not, sessions are isolated
//! from each other, and nothing is left behind.

mod common;

use std::time::Duration;

use common::{assert_status, sandbox};
use wsbx::{InputFile, Language, Limits, Session, SessionOptions, Status, TurnRequest};

fn options() -> SessionOptions {
    SessionOptions { limits: Limits { timeout_ms: 20_000, ..Limits::default() }, ..SessionOptions::default() }
}

fn start(language: Language) -> Session {
    sandbox().session(language, &options()).expect("the session starts")
}

fn turn(session: &mut Session, code: &str) -> wsbx::ExecResult {
    session.run(&TurnRequest::new(code))
}

#[test]
fn python_keeps_variables_imports_and_functions() {
    let mut s = start(Language::Python);
    let first = turn(&mut s, "import json\nx = 41\ndef bump(v):\n    return v + 1");
    assert_status(&first, Status::Ok);
    assert_eq!((first.session_id, first.turn), (Some(s.id()), Some(1)));
    let second = turn(&mut s, "x = bump(x)\nprint(json.dumps({'x': x}))");
    assert_status(&second, Status::Ok);
    assert_eq!(second.stdout, "{\"x\": 42}\n");
    assert_eq!(second.turn, Some(2));
    assert_eq!(s.turns(), 2);
}

/// A session's monotonic clock runs on across its turns (it once restarted at zero with each
/// turn, so a time saved in one turn went backwards in the next); a one-shot run's, and a
/// session's first turn's, start near zero.
#[test]
fn the_monotonic_clock_runs_on_across_a_sessions_turns() {
    let mut s = start(Language::Python);
    let first = turn(&mut s, "import time\na = time.monotonic_ns()\nprint(a < 5_000_000_000)");
    assert_eq!(first.stdout, "True\n", "{first:#?}");
    std::thread::sleep(Duration::from_millis(300));
    let second = turn(&mut s, "b = time.monotonic_ns()\nprint(b - a >= 300_000_000)");
    assert_eq!(second.stdout, "True\n", "{second:#?}");
    // A sleep (an absolute one on that clock, in CPython) still lasts what it asks.
    let third = turn(&mut s, "c = time.monotonic_ns()\ntime.sleep(0.05)\nd = time.monotonic_ns()\nprint(50_000_000 <= d - c < 5_000_000_000)");
    assert_eq!(third.stdout, "True\n", "{third:#?}");
    let mut js = start(Language::Javascript);
    let first = turn(&mut js, "globalThis.a = performance.now(); console.log(a < 5000)");
    assert_eq!(first.stdout, "true\n", "{first:#?}");
    std::thread::sleep(Duration::from_millis(300));
    let second = turn(&mut js, "console.log(performance.now() - a >= 300)");
    assert_eq!(second.stdout, "true\n", "{second:#?}");
}

#[test]
fn python_pandas_frame_survives_to_the_next_turn() {
    let mut s = start(Language::Python);
    assert_status(&turn(&mut s, "import pandas as pd; df = pd.DataFrame({'a': [1, 2, 3]})"), Status::Ok);
    let sum = turn(&mut s, "print(df.a.sum())");
    assert_status(&sum, Status::Ok);
    assert_eq!(sum.stdout, "6\n");
}

#[test]
fn an_exception_or_memory_error_keeps_the_session() {
    let mut s = start(Language::Python);
    turn(&mut s, "kept = 'yes'");
    let raised = turn(&mut s, "raise ValueError('boom')");
    assert_status(&raised, Status::Error);
    assert!(raised.stderr.contains("ValueError: boom"), "{raised:#?}");
    let memory = turn(&mut s, "big = bytearray(1500 * 2**20)");
    assert_status(&memory, Status::Error);
    assert!(memory.stderr.contains("MemoryError"), "{memory:#?}");
    let after = turn(&mut s, "print(kept)");
    assert_status(&after, Status::Ok);
    assert_eq!(after.stdout, "yes\n");
    assert!(s.ended().is_none());
}

#[test]
fn python_sys_exit_ends_the_turn_not_the_session() {
    let mut s = start(Language::Python);
    turn(&mut s, "kept = 3");
    let exited = turn(&mut s, "import sys; sys.exit(kept)");
    assert_eq!(exited.exit_code, Some(3), "{exited:#?}");
    let after = turn(&mut s, "print(kept)");
    assert_eq!(after.stdout, "3\n", "{after:#?}");
}

#[test]
fn a_timeout_ends_the_session_and_releases_it() {
    let mut s = start(Language::Python);
    let path = s.scratch_path().expect("a live session has a directory").to_owned();
    let limits = Limits { timeout_ms: 300, ..*s.limits() };
    let spun = s.run(&TurnRequest { limits: Some(limits), ..TurnRequest::new("while True: pass") });
    assert_status(&spun, Status::Timeout);
    assert!(s.ended().is_some());
    assert!(!path.exists(), "the ended session's scratch directory is removed at once");
    let later = turn(&mut s, "print(1)");
    assert_status(&later, Status::Rejected);
    assert!(later.detail.as_deref().unwrap_or("").contains("the session has ended"), "{later:#?}");
    assert_eq!(later.turn, Some(2));
}

#[test]
fn out_of_fuel_ends_the_session() {
    let mut s = start(Language::Javascript);
    let limits = Limits { fuel: 1_000_000, ..*s.limits() };
    let spun = s.run(&TurnRequest { limits: Some(limits), ..TurnRequest::new("for (;;) {}") });
    assert_status(&spun, Status::OutOfFuel);
    assert_status(&turn(&mut s, "console.log(1)"), Status::Rejected);
}

#[test]
fn a_turn_cannot_change_the_sessions_memory() {
    let mut s = start(Language::Python);
    let limits = Limits { memory_mb: s.limits().memory_mb * 2, ..*s.limits() };
    let refused = s.run(&TurnRequest { limits: Some(limits), ..TurnRequest::new("print(1)") });
    assert_status(&refused, Status::Rejected);
    assert_status(&turn(&mut s, "print(1)"), Status::Ok);
}

#[test]
fn javascript_keeps_globals_functions_and_promises() {
    let mut s = start(Language::Javascript);
    let first = turn(
        &mut s,
        "var n = 40; function twice(v) { return 2 * v; }\nglobalThis.later = Promise.resolve(1);\nsetTimeout(() => { n += 1; }, 5);",
    );
    assert_status(&first, Status::Ok);
    let second = turn(&mut s, "later.then(v => console.log(twice(n + v) / 2));");
    assert_status(&second, Status::Ok);
    assert_eq!(second.stdout, "42\n");
    let thrown = turn(&mut s, "throw new Error('boom')");
    assert_status(&thrown, Status::Error);
    let rejected = turn(&mut s, "Promise.reject(new Error('nobody listens'))");
    assert_status(&rejected, Status::Error);
    let after = turn(&mut s, "console.log(n)");
    assert_status(&after, Status::Ok);
    assert_eq!(after.stdout, "41\n");
}

#[test]
fn javascript_process_exit_ends_the_session() {
    let mut s = start(Language::Javascript);
    let exited = turn(&mut s, "process.exit(4)");
    assert_eq!(exited.exit_code, Some(4), "{exited:#?}");
    assert!(s.ended().is_some());
    assert_status(&turn(&mut s, "console.log(1)"), Status::Rejected);
}

#[test]
fn shell_keeps_its_files_and_takes_new_ones() {
    let mut s = start(Language::Shell);
    assert_status(&turn(&mut s, "echo first > notes.txt; mkdir -p d && echo x > d/y"), Status::Ok);
    let files = vec![InputFile { path: "in.txt".into(), content: b"given\n".to_vec() }];
    let second = s.run(&TurnRequest { files, ..TurnRequest::new("echo second >> notes.txt; cat notes.txt in.txt d/y") });
    assert_status(&second, Status::Ok);
    assert_eq!(second.stdout, "first\nsecond\ngiven\nx\n");
}

#[test]
fn python_turns_see_earlier_files_and_replaced_inputs() {
    let mut s = start(Language::Python);
    let v1 = vec![InputFile { path: "data/v.txt".into(), content: b"one".to_vec() }];
    s.run(&TurnRequest { files: v1, ..TurnRequest::new("open('/scratch/mine.txt', 'w').write('kept')") });
    let v2 = vec![InputFile { path: "data/v.txt".into(), content: b"two".to_vec() }];
    let read = s.run(&TurnRequest { files: v2, ..TurnRequest::new("print(open('/scratch/data/v.txt').read(), open('/scratch/mine.txt').read())") });
    assert_eq!(read.stdout, "two kept\n", "{read:#?}");
}

#[test]
fn two_sessions_see_neither_each_others_variables_nor_files() {
    let mut a = start(Language::Python);
    let mut b = start(Language::Python);
    turn(&mut a, "secret = 'a'\nopen('/scratch/a.txt', 'w').write('a')");
    let peek = turn(&mut b, "import os\nprint('secret' in globals(), sorted(os.listdir('/scratch')))");
    assert_eq!(peek.stdout, "False []\n", "{peek:#?}");
    assert_ne!(a.scratch_path(), b.scratch_path());
}

#[test]
fn dropping_a_session_removes_its_scratch_directory() {
    for language in [Language::Python, Language::Javascript, Language::Shell] {
        let s = start(language);
        let path = s.scratch_path().expect("a live session has a directory").to_owned();
        assert!(path.is_dir());
        drop(s);
        assert!(!path.exists(), "{language}: {} is left behind", path.display());
    }
}

#[test]
fn an_idle_session_expires() {
    let mut s = sandbox()
        .session(Language::Python, &SessionOptions { idle_timeout: Duration::from_millis(200), ..options() })
        .expect("starts");
    assert_status(&turn(&mut s, "x = 1"), Status::Ok);
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.expired(std::time::Instant::now()).is_some());
    let late = turn(&mut s, "print(x)");
    assert_status(&late, Status::Rejected);
    assert!(s.scratch_path().is_none());
}

#[test]
fn a_session_over_the_ceiling_is_refused() {
    let too_much = SessionOptions { limits: Limits { memory_mb: Limits::CEILING.memory_mb + 1, ..Limits::default() }, ..options() };
    let refused = sandbox().session(Language::Python, &too_much).expect_err("refused");
    assert_eq!(refused.status, Status::Rejected);
}

#[test]
fn a_thousand_turns_do_not_grow_memory_without_bound() {
    for (language, code) in [(Language::Python, "x += 1\nprint(x)"), (Language::Javascript, "x += 1; console.log(x)")] {
        let mut s = start(language);
        assert_status(&turn(&mut s, if language == Language::Python { "x = 0" } else { "var x = 0" }), Status::Ok);
        for _ in 0..50 {
            turn(&mut s, code);
        }
        let before = s.memory_bytes();
        let mut last = None;
        for _ in 0..1000 {
            last = Some(turn(&mut s, code));
        }
        let last = last.expect("ran");
        assert_status(&last, Status::Ok);
        assert_eq!(last.stdout, "1050\n");
        let after = s.memory_bytes();
        // Linear memory only grows in 64 KiB pages; an allocator's slack is a page or two, a
        // leak of the code or its output per turn would be hundreds.
        assert!(after <= before + (1 << 20), "{language}: linear memory grew from {before} to {after} bytes over 1,000 turns");
    }
}

/// A guest that plants a link where a later turn's input goes must not make the host write
/// through it: the turn is refused and nothing is written outside the scratch directory.
#[test]
fn a_planted_link_never_carries_a_turns_input_outside() {
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("victim");
    std::fs::create_dir(&target).expect("mkdir");
    let mut s = start(Language::Shell);
    let plant = format!("ln -s {} data; ln -s {}/file.txt file.txt", target.display(), target.display());
    assert_status(&turn(&mut s, &plant), Status::Ok);
    for path in ["data/x.txt", "file.txt"] {
        let files = vec![InputFile { path: path.into(), content: b"pwned".to_vec() }];
        let refused = s.run(&TurnRequest { files, ..TurnRequest::new("true") });
        // A link is neither a directory to write into nor a regular file to replace.
        assert_status(&refused, Status::Rejected);
        assert!(std::fs::read_dir(&target).expect("read").next().is_none(), "{path}: something was written through the link");
    }
    assert!(s.ended().is_none(), "a refused turn does not end the session");
}

/// A shell guest that takes its own rights to /scratch away must not break every later turn.
#[test]
fn a_shell_guest_cannot_lock_its_session_out_of_its_directory() {
    let mut s = start(Language::Shell);
    assert_status(&turn(&mut s, "echo kept > f; chmod 000 /scratch"), Status::Ok);
    let after = turn(&mut s, "cat f");
    assert_status(&after, Status::Ok);
    assert_eq!(after.stdout, "kept\n");
}

/// Firejail refuses a home whose `.bashrc` is a link: a guest that left one saw every later
/// turn fail as `internal_error` (an outside review). The link is dropped before the turn.
#[test]
fn a_shell_guests_bashrc_link_does_not_break_its_later_turns() {
    let mut s = start(Language::Shell);
    assert_status(&turn(&mut s, "echo kept > f; rm -f .bashrc; ln -s /etc/passwd .bashrc"), Status::Ok);
    let after = turn(&mut s, "cat f; if test -L .bashrc; then echo still a link; fi");
    assert_status(&after, Status::Ok);
    assert_eq!(after.stdout, "kept\n");
}

/// A turn may not shrink the directory below what it holds: refused with a message that says
/// so (and no host path), and the session goes on.
#[test]
fn a_turn_whose_disk_quota_is_below_the_directorys_contents_is_refused() {
    let mut s = start(Language::Python);
    assert_status(&turn(&mut s, "open('/scratch/big', 'wb').write(b'x' * (3 << 20))"), Status::Ok);
    let limits = Limits { disk_mb: 1, ..*s.limits() };
    let refused = s.run(&TurnRequest { limits: Some(limits), ..TurnRequest::new("print(1)") });
    assert_status(&refused, Status::Rejected);
    let detail = refused.detail.clone().unwrap_or_default();
    assert!(detail.contains("holds") && !detail.contains("/tmp"), "{detail}");
    assert_status(&turn(&mut s, "print(1)"), Status::Ok);
}
