//! Shared helpers for the integration tests: one real sandbox per test process, installed
//! through the same code path as the CLI when the runtimes are missing.
#![allow(dead_code)]

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
