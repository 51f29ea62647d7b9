//! A fork bomb, alone in its test binary: each job's process limit is its own (a pids control
//! group), but a bomb still loads the machine's two cores for its whole deadline.

mod common;

use common::{assert_status, request, sandbox, shell};
use wsbx::{Language, Status};

#[test]
fn shell_fork_bomb_ends_at_the_deadline_and_leaves_no_process() {
    let marker = format!("wsbx-bomb-{}", std::process::id());
    let mut req = request(Language::Shell, &format!("# {marker}\n:(){{ :|:& }};:"));
    req.limits.timeout_ms = 2000;
    let r = sandbox().run(&req);
    assert!(matches!(r.status, Status::Timeout | Status::Ok | Status::Error), "{r:#?}");
    assert!(r.wall_ms < 20_000.0, "{}", r.wall_ms);
    // Nothing of the job is left in the host's process table.
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&marker))
        .collect();
    assert!(survivors.is_empty(), "left running: {survivors:?}");
    assert_status(&shell("echo alive"), Status::Ok);
}
