//! What is reused between runs to make them fast — guest threads, pool slots, sandboxes and
//! scratch directories prepared ahead — never carries anything from one run to the next, and
//! nothing is left behind after many runs, one after another or at once.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{assert_status, request};
use wsbx::{Language, Sandbox, SandboxConfig, Status};

/// Writes a file and a variable, then (in the next run) looks for both.
fn leave_then_look(language: Language) -> (&'static str, &'static str) {
    match language {
        Language::Python => (
            "secret = 41\nopen('left.txt', 'w').write('x')\nprint('left')",
            "import os\nprint(os.listdir('.'), 'secret' in globals())",
        ),
        Language::Javascript => (
            "import * as std from 'qjs:std'; globalThis.secret = 41; std.open('/scratch/left.txt', 'w').puts('x'); console.log('left')",
            "import * as os from 'qjs:os'; console.log(JSON.stringify(os.readdir('/scratch')[0].filter(n => n[0] != '.')), typeof globalThis.secret !== 'undefined')",
        ),
        Language::Shell => (
            "export secret=41; echo x > left.txt; echo x > /tmp/left; echo left",
            "ls /scratch; ls /tmp/left 2>/dev/null; echo ${secret:-unset}",
        ),
    }
}

/// The tests here count threads and child processes of the whole test process: one at a time.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn a_run_never_sees_what_the_previous_run_left_in_a_reused_thread_slot_or_sandbox() {
    let _serial = one_at_a_time();
    // Prepared guests and sandboxes (the default) and guests made in the run both reuse
    // threads and pool slots: check both.
    for warm in [2, 0] {
        let sandbox = Sandbox::new(SandboxConfig { warm_instances: warm, ..SandboxConfig::default() });
        for language in [Language::Python, Language::Javascript, Language::Shell] {
            let (leave, look) = leave_then_look(language);
            for _ in 0..5 {
                let first = sandbox.run(&request(language, leave));
                assert_status(&first, Status::Ok);
                assert_eq!(first.stdout, "left\n");
                // A pause lets the pools refill, so the next run takes a prepared one.
                std::thread::sleep(Duration::from_millis(if language == Language::Shell { 150 } else { 20 }));
                let second = sandbox.run(&request(language, look));
                assert_status(&second, Status::Ok);
                let expected = match language {
                    Language::Python => "[] False\n",
                    Language::Javascript => "[] false\n",
                    Language::Shell => "unset\n",
                };
                assert_eq!(second.stdout, expected, "{language} (warm {warm}) saw the previous run: {second:#?}");
            }
        }
    }
}

/// A run that writes nothing leaves its directory's tmpfs mounted for the next run: what it
/// did to the directory itself (its times) is not seen by the next, nor is a file made and
/// removed again (that tmpfs is not kept). A directory made ahead or kept shows nothing older
/// than its run: not its birth (once shown as the change time), not when it was made.
#[test]
fn a_directory_kept_for_the_next_run_shows_nothing_of_the_run_before() {
    let _serial = one_at_a_time();
    for warm in [0, 2] {
        let sandbox = Sandbox::new(SandboxConfig { warm_instances: warm, ..SandboxConfig::default() });
        for _ in 0..5 {
            let first = sandbox.run(&request(Language::Python, "import os\nos.utime('.', (1, 1))\nprint(os.stat('.').st_mtime)"));
            assert_status(&first, Status::Ok);
            assert_eq!(first.stdout, "1.0\n");
            // Long enough that a directory made ahead, or kept, is visibly older than the run.
            std::thread::sleep(Duration::from_millis(1200));
            let look = "import os, time\ns = os.stat('.')\nprint(abs(time.time() - s.st_mtime) < 1, abs(time.time() - s.st_atime) < 1, s.st_ctime_ns == s.st_mtime_ns, os.listdir('.'))";
            let second = sandbox.run(&request(Language::Python, look));
            assert_status(&second, Status::Ok);
            assert_eq!(second.stdout, "True True True []\n", "warm {warm}: {second:#?}");
            let look = "import * as os from 'qjs:os'; const [s] = os.stat('/scratch'); console.log(Math.abs(Date.now() - s.mtime) < 1000, s.ctime === s.mtime)";
            let js = sandbox.run(&request(Language::Javascript, look));
            assert_eq!(js.stdout, "true true\n", "warm {warm}: {js:#?}");
            let made = sandbox.run(&request(Language::Python, "import os\nopen('gone', 'w').write('x' * 5000)\nos.remove('gone')\nos.mkdir('d')\nos.rmdir('d')\nprint('ok')"));
            assert_status(&made, Status::Ok);
            std::thread::sleep(Duration::from_millis(20));
            let after = sandbox.run(&request(Language::Python, "import os\nprint(os.listdir('.'))"));
            assert_eq!(after.stdout, "[]\n", "warm {warm}: {after:#?}");
        }
    }
}

/// Entries of `dir` (empty when it does not exist).
fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn threads() -> usize {
    entries(Path::new("/proc/self/task")).len()
}

/// Processes whose parent is this test process (Firejail sandboxes, prepared or running).
fn children() -> Vec<i32> {
    let me = std::process::id().to_string();
    entries(Path::new("/proc"))
        .into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid ...`: the command may hold spaces, so split after ')'.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.to_owned();
            (ppid == me).then(|| pid.parse().ok()).flatten()
        })
        .collect()
}

/// Runs `n` hellos of `language` one after another and `n` more from 8 threads at once, then
/// drops the sandbox: no scratch directory, sandbox process or extra thread is left.
fn many_runs_leave_nothing(language: Language, n: usize) {
    let _serial = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let job_root = Path::new("/run/wsbx-jobs");
    let jobs_before = entries(job_root);
    let threads_before = threads();
    let sandbox = Sandbox::new(SandboxConfig { scratch_root: root.path().to_owned(), ..SandboxConfig::default() });
    let code = match language {
        Language::Python => "print('hi')",
        Language::Javascript => "console.log('hi')",
        Language::Shell => "echo hi",
    };
    let run = || {
        let r = sandbox.run(&request(language, code));
        assert_status(&r, Status::Ok);
        assert_eq!(r.stdout, "hi\n");
    };
    for _ in 0..n {
        run();
    }
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| (0..n / 8).for_each(|_| run()));
        }
    });
    drop(sandbox);
    assert_eq!(entries(root.path()), BTreeSet::new(), "scratch directories left under the scratch root");
    let root_name = root.path().to_str().unwrap().to_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<_> = mounts.lines().filter(|l| l.contains(&root_name)).collect();
    assert_eq!(left, Vec::<&str>::new(), "scratch tmpfs left mounted");
    let jobs_left: Vec<_> = entries(job_root).difference(&jobs_before).cloned().collect();
    assert_eq!(jobs_left, Vec::<String>::new(), "shell scratch directories left");
    // Guest threads wait a while for the next run, at most `MAX_IDLE` of them (8); the warm
    // and reaper threads stop with the sandbox or are one per process.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(children(), Vec::<i32>::new(), "sandbox processes left running");
    let extra = threads().saturating_sub(threads_before);
    assert!(extra <= 8 + 2, "{extra} threads more than before {n} runs");
}

#[test]
fn a_thousand_python_runs_in_a_row_and_at_once_leave_nothing() {
    many_runs_leave_nothing(Language::Python, 1000);
}

#[test]
fn a_thousand_javascript_runs_in_a_row_and_at_once_leave_nothing() {
    many_runs_leave_nothing(Language::Javascript, 1000);
}

#[test]
fn shell_runs_in_a_row_and_at_once_leave_nothing() {
    // Each shell run starts processes: fewer of them keep the test under a minute.
    many_runs_leave_nothing(Language::Shell, 200);
}

/// Scratch directories of prepared shell sandboxes: Firejail has put its `.bashrc` there.
fn prepared_dirs() -> Vec<std::path::PathBuf> {
    let root = Path::new("/run/wsbx-jobs");
    entries(root).into_iter().map(|name| root.join(name)).filter(|dir| dir.join(".bashrc").exists()).collect()
}

/// Waits until this process has a prepared sandbox waiting in the pool, and returns its pid.
fn wait_for_prepared() -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while (children().is_empty() || prepared_dirs().is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its set-up ends moments after the home is made; then the pool takes it in.
    std::thread::sleep(Duration::from_millis(300));
    children()
}

#[test]
fn a_prepared_sandbox_killed_or_tampered_with_before_use_is_replaced_and_the_job_still_runs_isolated() {
    let _serial = one_at_a_time();
    let sandbox = Sandbox::new(SandboxConfig { warm_instances: 1, ..SandboxConfig::default() });
    sandbox.prepare(Language::Shell).unwrap();
    let isolated = "echo \"$(id -un) [$(ls /scratch)] $(wc -l < /proc/net/dev) $(ls /proc | grep -c '^[0-9]')\"";
    for round in 0..2 {
        let prepared = wait_for_prepared();
        assert_eq!(prepared.len(), 1, "one sandbox is prepared ahead");
        if round == 0 {
            // Killed while waiting: its whole process group.
            unsafe { libc::kill(-prepared[0], libc::SIGKILL) };
        } else {
            // Tampered with: a file slipped into its scratch directory from the host.
            let planted = prepared_dirs().into_iter().filter(|dir| std::fs::write(dir.join("planted"), "x").is_ok()).count();
            assert!(planted >= 1, "found the prepared sandbox's directory");
        }
        let r = sandbox.run(&request(Language::Shell, isolated));
        assert_status(&r, Status::Ok);
        let fields: Vec<&str> = r.stdout.split_whitespace().collect();
        // The job user, an empty scratch directory (nothing planted), a network namespace
        // with at most loopback (two header lines and `lo`), and only the sandbox's own few
        // processes.
        assert_eq!(fields[..2], ["wsbx-job", "[]"], "{r:#?}");
        let interfaces: usize = fields[2].parse().unwrap();
        assert!(interfaces <= 3, "{r:#?}");
        let processes: usize = fields[3].parse().unwrap();
        assert!(processes < 10, "{r:#?}");
    }
}

#[test]
fn a_shell_job_gets_the_same_answer_from_a_prepared_sandbox_and_one_started_for_it() {
    let _serial = one_at_a_time();
    let warm = Sandbox::new(SandboxConfig { warm_instances: 1, ..SandboxConfig::default() });
    let cold = Sandbox::new(SandboxConfig { warm_instances: 0, ..SandboxConfig::default() });
    warm.prepare(Language::Shell).unwrap();
    // Code and environment well past Firejail's 4 KiB argument limit, an input under a name
    // that collides with Firejail's own files, and the limit itself.
    let long = format!("echo {}", "x".repeat(20_000));
    let mut requests = vec![request(Language::Shell, &long)];
    let mut env = request(Language::Shell, "echo ${#BIG}; cat .bashrc/x");
    env.env.insert("BIG".into(), "y".repeat(30_000));
    env.files.push(wsbx::InputFile { path: ".bashrc/x".into(), content: b"in\n".to_vec() });
    requests.push(env);
    requests.push(request(Language::Shell, &format!("# {}", "z".repeat(70_000))));
    for req in &requests {
        std::thread::sleep(Duration::from_millis(300));
        let (prepared, _) = warm.run_profiled(req);
        let fresh = cold.run(req);
        assert_eq!(
            (prepared.status, &prepared.stdout, &prepared.detail),
            (fresh.status, &fresh.stdout, &fresh.detail),
            "{:.40}",
            req.code
        );
    }
    let (first, _) = warm.run_profiled(&requests[0]);
    assert_status(&first, Status::Ok);
    assert_eq!(first.stdout.len(), 20_001);
    let second = cold.run(&requests[1]);
    assert_eq!(second.stdout, "30000\nin\n", "{second:#?}");
    let third = cold.run(&requests[2]);
    assert_status(&third, Status::Rejected);
    assert!(third.detail.as_deref().unwrap_or("").contains("60 KiB"), "{third:#?}");
}

#[test]
fn a_shell_sandbox_holds_no_copy_of_another_runs_scratch_directory() {
    let _serial = one_at_a_time();
    // Another run's directory, in flight while the sandbox starts: a tmpfs of its own (wsbx
    // runs as root here) holding a file.
    let root = tempfile::tempdir().unwrap();
    let other = wsbx::scratch::Scratch::create(root.path(), wsbx::scratch::Quota { bytes: 1 << 20, files: 8 }).unwrap();
    std::fs::write(other.path().join("data"), vec![7u8; 512 << 10]).unwrap();
    let name = other.path().file_name().unwrap().to_str().unwrap().to_owned();
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(host.lines().any(|l| l.contains(&name) && l.contains(" - tmpfs wsbx-scratch ")), "the other run's directory is a tmpfs: {host}");
    // A copy of that mount in a sandbox's mount namespace would keep its memory after the
    // host detaches it, for as long as the sandbox waits for its job. Prepared sandboxes and
    // sandboxes started for their job are made the same way: check both.
    for warm in [1, 0] {
        let sandbox = Sandbox::new(SandboxConfig { warm_instances: warm, ..SandboxConfig::default() });
        if warm > 0 {
            sandbox.prepare(Language::Shell).unwrap();
            wait_for_prepared();
        }
        let r = sandbox.run(&request(Language::Shell, "cat /proc/self/mountinfo"));
        assert_status(&r, Status::Ok);
        assert!(r.stdout.lines().any(|l| l.split(' ').nth(4) == Some("/scratch")), "the job's own directory is there: {}", r.stdout);
        let copies: Vec<&str> = r.stdout.lines().filter(|l| l.contains(&name)).collect();
        assert!(copies.is_empty(), "warm {warm}: the sandbox holds another run's directory: {copies:#?}");
    }
    drop(other);
}

/// Where the host's mounts are shared (systemd's default; here a namespace made so), a copy of
/// them would keep receiving every mount made after the sandbox started — another run's
/// directory, listed in the job's mountinfo. A sandbox's mounts are private: it receives none.
#[test]
fn a_shell_sandbox_receives_no_mount_made_after_it_started_where_mounts_are_shared() {
    let dir = tempfile::tempdir().unwrap();
    let (point, out) = (dir.path().join("wsbx-later"), dir.path().join("mountinfo"));
    std::fs::create_dir(&point).unwrap();
    // The job waits 2 s; the directory is mounted 1 s in, long after its sandbox started.
    let script = format!(
        "{wsbx} exec --lang shell --timeout 20 -c 'sleep 2; cat /proc/self/mountinfo' > {out} & sleep 1; mount -t tmpfs wsbx-scratch {point} && grep -c wsbx-later /proc/self/mountinfo; wait $!",
        wsbx = env!("CARGO_BIN_EXE_wsbx"),
        out = out.display(),
        point = point.display(),
    );
    let ran = std::process::Command::new("unshare").args(["--mount", "--propagation", "shared", "sh", "-c", &script]).output().unwrap();
    assert!(ran.status.success(), "{ran:?}");
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "1", "mounted where the sandbox's copies would receive it: {ran:?}");
    let seen = std::fs::read_to_string(&out).unwrap();
    assert!(seen.lines().any(|l| l.split(' ').nth(4) == Some("/scratch")), "the job ran: {seen}");
    assert!(!seen.contains("wsbx-later"), "the sandbox received a mount made after it started: {seen}");
}
