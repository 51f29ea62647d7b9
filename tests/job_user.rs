//! The shell job user's set-up on a machine that has none yet, or half of one: alone in its
//! test binary, since it deletes the user that every other shell test runs as.

use std::process::Command;

fn run(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).output();
}

fn user_exists() -> bool {
    Command::new("id").arg("wsbx-job").output().is_ok_and(|o| o.status.success())
}

/// Eight first-time shell runs in eight processes at once: every one must be `ok`.
fn eight_at_once(case: &str) {
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_wsbx"))
                .args(["exec", "--lang", "shell", "--json", "-c", "id -un"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let o = child.wait_with_output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{case}: not JSON ({e}): {}", String::from_utf8_lossy(&o.stderr)));
        assert_eq!((v["status"].as_str(), v["stdout"].as_str()), (Some("ok"), Some("wsbx-job\n")), "{case}: {v}");
    }
}

#[test]
fn job_user_set_up_is_race_free_and_mends_half_made_users() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the job user is only made when wsbx runs as root");
        return;
    }
    // No user and no group: a fresh machine.
    run("userdel", &["wsbx-job"]);
    run("groupdel", &["wsbx-job"]);
    assert!(!user_exists());
    eight_at_once("fresh machine");

    // A group left behind by a useradd that did not finish.
    run("userdel", &["wsbx-job"]);
    run("groupadd", &["--system", "wsbx-job"]);
    assert!(!user_exists());
    eight_at_once("group without user");

    // A user with the wrong home.
    run("usermod", &["--home", "/nonexistent", "wsbx-job"]);
    eight_at_once("user with another home");

    // A correct user.
    eight_at_once("user present");
}
