//! A backend that could not be set up is tried again later: alone in its test binary, since it
//! changes the process's PATH.

use std::time::Duration;

use wsbx::{ExecRequest, Language, Sandbox, SandboxConfig, Status};

#[test]
fn shell_recovers_once_firejail_is_back_without_a_restart() {
    let sandbox = Sandbox::new(SandboxConfig { warm_instances: 0, ..Default::default() });
    let path = std::env::var_os("PATH").unwrap();
    let empty = tempfile::tempdir().unwrap();
    // SAFETY: this test binary has one test and no other thread reads the environment now.
    unsafe { std::env::set_var("PATH", empty.path()) };
    let r = sandbox.run(&ExecRequest::new(Language::Shell, "echo hi"));
    assert_eq!(r.status, Status::Rejected, "{r:#?}");
    assert!(r.detail.as_deref().unwrap_or("").contains("apt-get install firejail"), "{r:#?}");
    // SAFETY: as above.
    unsafe { std::env::set_var("PATH", &path) };
    // Within the back-off the failure is reported again, without a new attempt...
    assert_eq!(sandbox.run(&ExecRequest::new(Language::Shell, "echo hi")).status, Status::Rejected);
    // ...and after it, the backend is made.
    std::thread::sleep(Duration::from_millis(1100));
    let r = sandbox.run(&ExecRequest::new(Language::Shell, "echo hi"));
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "hi\n"), "{r:#?}");
}
