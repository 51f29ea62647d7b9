//! wsbx runs untrusted code — most often code an AI agent just wrote — isolated, fast and
//! under hard limits, and tells you exactly what happened.
//!
//! Python runs as CPython and JavaScript as QuickJS, both compiled to WebAssembly and run inside
//! wasmtime with fuel metering, a memory cap, a wall-clock deadline, no network and one scratch
//! directory; shell jobs run in bash under Firejail. The same [`Sandbox`] serves the CLI
//! (`wsbx exec`) and HTTP ([`server`]).
//!
//! ```no_run
//! use wsbx::{ExecRequest, Language, Limits, Sandbox};
//! let sandbox = Sandbox::new(Default::default());
//! let mut request = ExecRequest::new(Language::Python, "while True: pass");
//! request.limits = Limits { timeout_ms: 500, ..Limits::default() };
//! let result = sandbox.run(&request);
//! assert_eq!(result.status, wsbx::Status::Timeout);
//! ```
#![warn(missing_docs)]

/// `println!` that never panics: when the reader of stdout went away (`wsbx exec … | head`),
/// the CLI must still finish its run, clean up and exit with the run's code.
#[doc(hidden)]
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `eprintln!` that never panics; see [`outln!`].
#[doc(hidden)]
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod agents;
pub mod audit;
pub mod backend;
pub mod config;
pub mod executions;
pub mod policy;
pub mod metrics;
pub mod request;
pub mod result;
pub mod runtimes;
pub mod sandbox;
pub mod scratch;
pub mod server;
pub mod session;

pub use request::{ExecRequest, InputFile, Language, Limits, RequestError};
pub use result::{ExecResult, OutputFile, Status};
pub use runtimes::{InstallOptions, RuntimeError, RuntimeInfo};
pub use session::{Session, SessionError, SessionOptions, TurnRequest};
pub use sandbox::{Phases, PrepareError, Sandbox, SandboxConfig, GUEST_THREAD_STACK};
