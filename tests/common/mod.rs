//! Shared helpers for the integration tests: one real sandbox per test process, installed
//! through the same code path as the CLI when the runtimes are missing.
#![allow(dead_code)]

pub mod server;

use std::sync::OnceLock;

use wsbx::{ExecRequest, ExecResult, Language, Limits, Sandbox, SandboxConfig};

/// The sandbox every test of this process shares.
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| Sandbox::new(SandboxConfig::default()))
}

/// A request for `language` with `code` and limits tightened so failures end fast.
pub fn request(language: Language, code: &str) -> ExecRequest {
    let mut request = ExecRequest::new(language, code);
    request.limits = Limits { timeout_ms: 20_000, ..Limits::default() };
    request
}

/// Runs `code` as Python with default test limits.
pub fn python(code: &str) -> ExecResult {
    sandbox().run(&request(Language::Python, code))
}

/// Asserts the run ended with `status`, showing the whole result otherwise.
#[track_caller]
pub fn assert_status(result: &ExecResult, status: wsbx::Status) {
    assert_eq!(result.status, status, "unexpected result: {result:#?}");
}

/// Runs `code` as JavaScript with default test limits.
pub fn javascript(code: &str) -> ExecResult {
    sandbox().run(&request(Language::Javascript, code))
}

/// Runs `code` as a shell job with default test limits.
pub fn shell(code: &str) -> ExecResult {
    sandbox().run(&request(Language::Shell, code))
}

/// Runs each program in a sandbox that prepares guests ahead and in one that does not, and
/// asserts both give the same result, fuel included. `clock_probe` prints whether the guest's
/// monotonic clock reads more than 0.2 s: it must not, even for a guest prepared long before
/// its run (its clock would tell the run when the previous run took the guest before it).
pub fn assert_prepared_guests_match_fresh_ones(language: Language, clock_probe: &str, programs: &[&str]) {
    let fresh = Sandbox::new(SandboxConfig { warm_instances: 0, ..SandboxConfig::default() });
    let prepared = Sandbox::new(SandboxConfig { warm_instances: 1, ..SandboxConfig::default() });
    let pause = || std::thread::sleep(std::time::Duration::from_millis(300));
    prepared.prepare(language).expect("runtime loads");
    pause();
    let (probed, phases) = prepared.run_profiled(&request(language, clock_probe));
    assert!(phases.prepared, "not served by a prepared guest");
    assert_eq!(probed.stdout, "false\n", "a prepared guest's clock ran before its run");
    let (probed, phases) = fresh.run_profiled(&request(language, clock_probe));
    assert!(!phases.prepared);
    assert_eq!(probed.stdout, "false\n");
    for code in programs {
        let mut req = request(language, code);
        req.stdin = b"input".to_vec();
        req.files.push(wsbx::InputFile { path: "i.txt".into(), content: b"ab".to_vec() });
        req.return_files = true;
        let expected = fresh.run(&req);
        pause();
        let (got, phases) = prepared.run_profiled(&req);
        assert!(phases.prepared, "{code}: not served by a prepared guest");
        assert_eq!(
            (got.status, got.exit_code, &got.stdout, &got.stderr, &got.files),
            (expected.status, expected.exit_code, &expected.stdout, &expected.stderr, &expected.files),
            "{code}"
        );
        // Fuel is the same up to a jitter of a few hundred units (seen: up to ~700 on 1.7 M)
        // in the pre-initialized Python, whose generators are reseeded from the host's entropy
        // at the start of every run; charging the interpreter's set-up (millions) would fail.
        let (got, expected) = (got.fuel_consumed.unwrap_or(0), expected.fuel_consumed.unwrap_or(0));
        assert!(got.abs_diff(expected) <= expected / 1_000 + 2_000, "{code}: fuel {got} vs {expected}");
    }
}

/// Command lines of the processes whose command line holds `marker` (a job's code carries one
/// as a comment, so a test can tell whether it still runs).
pub fn running_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(marker) && !c.contains("cargo"))
        .collect()
}
