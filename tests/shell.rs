//! Shell jobs, against real bash inside real Firejail.

mod common;

use common::{assert_status, request, sandbox, shell};
use wsbx::{InputFile, Language, Sandbox, SandboxConfig, Status};

#[test]
fn shell_prints_hello_and_sees_only_its_scratch() {
    let r = shell("echo hi; ls; pwd; echo \"$HOME\"");
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "hi\n/scratch\n/scratch\n");
    assert_eq!(r.fuel_consumed, None);
    assert!(r.peak_memory_bytes > 0);
}

#[test]
fn shell_exit_code_is_the_exit_code() {
    let r = shell("echo hi; exit 3");
    assert_status(&r, Status::Error);
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.stdout, "hi\n");
    assert_status(&shell("true"), Status::Ok);
    let r = shell("false");
    assert_eq!(r.exit_code, Some(1));
    // A job ended by a signal is 128 + N, and its stderr is its own: nothing of the wrapper
    // it runs under ("line 1: 10 Killed /usr/bin/timeout ...").
    for (signal, code) in [("KILL", 137), ("SEGV", 139), ("TERM", 143)] {
        let r = shell(&format!("echo err >&2; kill -{signal} $$"));
        assert_eq!((r.exit_code, r.stderr.as_str()), (Some(code), "err\n"), "{signal}: {r:#?}");
    }
}

#[test]
fn shell_reads_stdin() {
    let mut req = request(Language::Shell, "tr a-z A-Z");
    req.stdin = b"hello\n".to_vec();
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "HELLO\n");
}

#[test]
fn shell_ignoring_a_large_stdin_does_not_hang() {
    let mut req = request(Language::Shell, "echo done");
    req.stdin = vec![b'x'; 8 << 20];
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "done\n");
}

#[test]
fn shell_files_in_and_out() {
    let mut req = request(Language::Shell, "cat in/a.txt | rev > out.txt; ls -A");
    req.files.push(InputFile { path: "in/a.txt".into(), content: b"abc\n".to_vec() });
    req.return_files = true;
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    // During the run the home holds Firejail's dotfiles too; afterwards only the job's files.
    assert_eq!(r.stdout, ".bashrc\n.inputrc\nin\nout.txt\n");
    let files = r.files.unwrap();
    let paths: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["in/a.txt", "out.txt"]);
}

#[test]
fn shell_environment_holds_only_what_the_request_sets() {
    std::env::set_var("WSBX_TEST_HOST_SECRET", "leaked");
    let mut req = request(Language::Shell, "env | cut -d= -f1 | sort | tr '\\n' ' '");
    req.env.insert("MODE".into(), "test".into());
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "HOME MODE PATH PWD SHLVL _ ");
}

#[test]
fn shell_cannot_read_secrets_or_list_private_places() {
    let project = env!("CARGO_MANIFEST_DIR");
    let binaries = std::env::current_exe().unwrap().parent().unwrap().display().to_string();
    let r = shell(&format!(
        "if cat /etc/shadow >/dev/null 2>&1; then echo 'VISIBLE /etc/shadow'; else echo 'hidden /etc/shadow'; fi\n\
         for p in /root /home {project} {binaries} /root/.cache; do if ls \"$p\" >/dev/null 2>&1; then echo \"VISIBLE $p\"; else echo \"hidden $p\"; fi; done"
    ));
    assert_status(&r, Status::Ok);
    assert!(!r.stdout.contains("VISIBLE"), "{}", r.stdout);
    assert_eq!(r.stdout.lines().count(), 6, "{}", r.stdout);
}

#[test]
fn shell_cannot_reach_the_host_network() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = shell(&format!(
        "if (echo hello > /dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo CONNECTED; else echo refused; fi\n\
         if command -v curl >/dev/null; then curl -s -m 2 http://127.0.0.1:{port}/ && echo CURL-CONNECTED || echo curl-refused; fi\n\
         ip -o link 2>/dev/null | grep -v ' lo' | wc -l"
    ));
    assert_status(&r, Status::Ok);
    assert!(r.stdout.starts_with("refused\n"), "{}", r.stdout);
    assert!(!r.stdout.contains("CONNECTED"), "{}", r.stdout);
    // Nothing arrived at the listener.
    assert_eq!(listener.accept().unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
}

#[test]
fn shell_cannot_see_host_processes() {
    let me = std::process::id();
    let r = shell(&format!("ps -e -o pid=,comm= ; test -e /proc/{me}/cmdline && echo SEES-HOST-PID"));
    assert_status(&r, Status::Error);
    assert!(!r.stdout.contains("SEES-HOST-PID"), "{}", r.stdout);
    // Firejail's init, the shells, ps: nothing of the host.
    assert!(r.stdout.lines().count() <= 8, "{}", r.stdout);
    assert!(!r.stdout.contains("cargo") && !r.stdout.contains("shell-"), "{}", r.stdout);
}

#[test]
fn shell_cannot_write_outside_scratch() {
    let r = shell(
        "for p in /etc/wsbx-evil /usr/wsbx-evil /wsbx-evil /var/wsbx-evil /opt/wsbx-evil /bin/wsbx-evil; do \
           if (echo x > \"$p\") 2>/dev/null; then echo \"WROTE $p\"; fi; done; echo ok > mine.txt && cat mine.txt",
    );
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "ok\n");
    for p in ["/etc/wsbx-evil", "/usr/wsbx-evil", "/wsbx-evil", "/var/wsbx-evil", "/opt/wsbx-evil", "/bin/wsbx-evil"] {
        assert!(!std::path::Path::new(p).exists(), "{p} written");
    }
}

#[test]
fn shell_cannot_gain_privileges() {
    let r = shell("id -u; sudo -n true 2>/dev/null && echo SUDO; su -c true root </dev/null 2>/dev/null && echo SU; echo end");
    assert_status(&r, Status::Ok);
    assert!(!r.stdout.contains("SUDO") && !r.stdout.contains("SU\n"), "{}", r.stdout);
    assert!(!r.stdout.starts_with("0\n"), "runs as root: {}", r.stdout);
}

#[test]
fn shell_yes_is_truncated_and_ends_at_the_deadline() {
    let mut req = request(Language::Shell, "yes");
    req.limits.max_output_bytes = 1000;
    req.limits.timeout_ms = 1000;
    let r = sandbox().run(&req);
    assert_status(&r, Status::Timeout);
    assert!(r.stdout_truncated);
    assert_eq!(r.stdout.len(), 1000);
    assert!(r.stdout.starts_with("y\ny\n"));
    assert!(r.wall_ms < 10_000.0, "{}", r.wall_ms);
}

#[test]
fn shell_sleep_ends_at_the_deadline() {
    let mut req = request(Language::Shell, "echo start; sleep 60; echo never");
    req.limits.timeout_ms = 1000;
    let r = sandbox().run(&req);
    assert_status(&r, Status::Timeout);
    assert_eq!(r.stdout, "start\n");
    assert!(r.wall_ms < 10_000.0, "{}", r.wall_ms);
}

#[test]
fn shell_memory_hog_is_stopped_by_the_memory_limit() {
    let mut req = request(Language::Shell, "x=$(head -c 1000000000 /dev/zero | tr '\\0' a); echo \"got ${#x}\"");
    req.limits.memory_mb = 64;
    let r = sandbox().run(&req);
    assert_ne!(r.status, Status::Ok, "{r:#?}");
    assert!(!r.stdout.contains("got 1000000000"), "{r:#?}");
    assert_status(&shell("echo alive"), Status::Ok);
}

#[test]
fn no_scratch_directory_is_left_behind() {
    let root = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxConfig { scratch_root: root.path().to_owned(), ..SandboxConfig::default() });
    let mut sleeper = request(Language::Shell, "touch a; mkdir -p d/e; chmod 000 d; sleep 30");
    sleeper.limits.timeout_ms = 500;
    for req in [request(Language::Shell, "echo x > f; mkdir -p deep/er; chmod 000 deep"), sleeper] {
        let r = sandbox.run(&req);
        assert_ne!(r.status, Status::InternalError, "{r:#?}");
    }
    let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
