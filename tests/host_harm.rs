//! Regressions from the outside review: what a guest could do to the host through wsbx's own
//! host-side work (copying files out, cleaning up, reading the scratch directory), and what a
//! shell job could reach of the kernel or of other jobs. Each test fails without its fix.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{assert_status, request, running_with, sandbox, shell};
use wsbx::{Language, Status};

fn wsbx(args: &[&str], tmpdir: Option<&std::path::Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsbx"));
    cmd.args(args);
    if let Some(dir) = tmpdir {
        cmd.env("TMPDIR", dir);
    }
    cmd.output().expect("wsbx runs")
}

#[test]
fn out_dir_never_carries_a_setuid_bit_to_the_host() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("out");
    let o = wsbx(
        &["exec", "--lang", "shell", "--out-dir", dir.to_str().unwrap(), "-c", "cp /bin/id ./suid; chmod 6755 ./suid; echo x > plain; chmod 4644 plain"],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let mode = |name: &str| std::fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(mode("plain"), 0o644);
    assert_eq!(std::fs::read(dir.join("suid")).unwrap(), std::fs::read("/bin/id").unwrap());
}

#[test]
fn an_out_dir_that_is_a_file_is_refused_before_the_run() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let o = wsbx(&["exec", "--lang", "shell", "--out-dir", file.path().to_str().unwrap(), "-c", "echo ran"], None);
    assert_eq!(o.status.code(), Some(126), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.is_empty());
}

#[test]
fn out_dir_skips_links_and_fifos_and_says_so() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("out");
    let o = wsbx(
        &["exec", "--lang", "shell", "--out-dir", dir.to_str().unwrap(), "-c", "ln -s /etc/passwd pw; mkfifo pipe; echo ok > f"],
        None,
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(dir.join("f")).unwrap(), "ok\n");
    assert!(std::fs::symlink_metadata(dir.join("pw")).is_err());
    assert!(std::fs::symlink_metadata(dir.join("pipe")).is_err());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("pw: a symbolic link") && err.contains("pipe: not a regular file"), "{err}");
}

/// The host's clean-up after a shell job read `.bashrc` with an unbounded, link-following read:
/// a link to /dev/zero grew wsbx without end, a FIFO hung the run forever.
#[test]
fn a_bashrc_link_to_dev_zero_or_a_fifo_does_not_harm_the_host() {
    for code in ["rm -f .bashrc; ln -s /dev/zero .bashrc", "rm -f .bashrc .inputrc; mkfifo .bashrc; mkfifo .inputrc"] {
        let started = Instant::now();
        let r = shell(code);
        assert_status(&r, Status::Ok);
        assert!(started.elapsed() < Duration::from_secs(10), "{code}: took {:?}", started.elapsed());
    }
    // And the returned files neither follow nor open them.
    let mut req = request(Language::Shell, "rm -f .bashrc; ln -s /dev/zero .bashrc; mkfifo f; echo hi > ok");
    req.return_files = true;
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    let files = r.files.unwrap();
    assert_eq!(files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["ok"]);
    let skipped: Vec<_> = r.files_skipped.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(skipped, [".bashrc", "f"]);
}

#[test]
fn a_huge_sparse_file_is_not_returned_or_copied() {
    let mut req = request(Language::Python, "with open('big', 'wb') as f:\n    f.truncate(1 << 30)\nopen('small', 'w').write('s')");
    req.return_files = true;
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    let files = r.files.unwrap();
    assert_eq!(files.iter().map(|f| (f.path.as_str(), f.size)).collect::<Vec<_>>(), [("small", 1)]);
    assert!(r.files_truncated);

    let out = tempfile::tempdir().unwrap();
    let o = wsbx(
        &["exec", "--lang", "shell", "--out-dir", out.path().to_str().unwrap(), "--max-return-bytes", "1000", "-c", "truncate -s 1G big; echo s > small"],
        None,
    );
    assert_eq!(o.status.code(), Some(0));
    assert!(out.path().join("small").exists());
    assert!(!out.path().join("big").exists());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--max-return-bytes"));
}

/// Empty files under long paths cost a result nothing in content: their paths and entries
/// count against the cap, or a job could make a response (and the host's memory) of any size.
#[test]
fn many_empty_files_under_long_paths_do_not_grow_a_result_past_its_cap() {
    let cap = 256 << 10;
    let sandbox = wsbx::Sandbox::new(wsbx::SandboxConfig { warm_instances: 0, max_return_bytes: cap, ..Default::default() });
    // 3,000 files under a 1,000-byte directory path: 3 MB of paths, no content.
    let code = "d=$(printf 'd%.0s' $(seq 200)); p=$d/$d/$d/$d/$d; mkdir -p $p; cd $p; f=$(printf 'f%.0s' $(seq 100)); for i in $(seq 3000); do : > $f$i; done";
    let mut req = request(Language::Shell, code);
    req.return_files = true;
    let r = sandbox.run(&req);
    assert_status(&r, Status::Ok);
    let files = r.files.as_deref().unwrap_or_default();
    let carried: u64 = files.iter().map(|f| f.size + f.path.len() as u64 + 100).sum();
    assert!(!files.is_empty() && carried <= cap, "{} files, {carried} bytes carried", files.len());
    assert!(files.len() < 3000 && r.files_truncated, "{} files", files.len());
    // A control character is six bytes in JSON (`\u0001`): names of them cost what the
    // response carries, not their length on disk.
    let mut req = request(Language::Python, "import os\nd = '\\x01' * 200\nos.makedirs(d)\nfor i in range(3000):\n    open(f'{d}/{i}' + '\\x01' * 200, 'w').close()");
    req.return_files = true;
    let r = sandbox.run(&req);
    assert_status(&r, Status::Ok);
    let body = serde_json::to_string(&r.files).unwrap();
    assert!(r.files_truncated && (body.len() as u64) < cap + (cap / 4), "{} bytes of files for a cap of {cap}", body.len());
}

#[test]
fn shell_memory_cap_bounds_what_tmpfs_can_pin() {
    let mut req = request(Language::Shell, "head -c 200M /dev/zero > /dev/shm/fill; head -c 200M /dev/zero > /tmp/fill; echo survived");
    req.limits.memory_mb = 64;
    req.limits.disk_mb = 16;
    let r = sandbox().run(&req);
    assert_status(&r, Status::MemoryLimit);
    assert!(!r.stdout.contains("survived"), "{r:#?}");
    // The job's group holds its memory and its scratch quota (a tmpfs): 64 + 16 MiB.
    assert!(r.peak_memory_bytes <= 80 << 20, "{}", r.peak_memory_bytes);
}

fn host_shm_segments() -> usize {
    std::fs::read_to_string("/proc/sysvipc/shm").unwrap().lines().skip(1).count()
}

#[test]
fn shell_sysv_ipc_is_private_to_the_job() {
    let before = host_shm_segments();
    let r = shell("ipcmk -M 10000000 >/dev/null && ipcs -m | grep -c '^0x'");
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout.trim(), "1");
    assert_eq!(host_shm_segments(), before, "the job's segment reached the host");
    let r = shell("ipcs -m | grep -c '^0x' || true");
    assert_eq!(r.stdout.trim(), "0", "a later job saw an earlier one's segment");
}

#[test]
fn shell_jobs_cannot_make_namespaces_or_use_io_uring() {
    let r = shell("unshare -Urn true && echo made-a-namespace; true");
    assert_status(&r, Status::Ok);
    assert!(!r.stdout.contains("made-a-namespace"), "{r:#?}");
    let python = "import ctypes; libc = ctypes.CDLL(None, use_errno=True); params = ctypes.create_string_buffer(120); print(libc.syscall(425, 1, params))";
    let r = shell(&format!("/usr/bin/python3 -c '{python}'"));
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "-1\n", "io_uring_setup succeeded: {r:#?}");
}

#[test]
fn one_shell_job_can_neither_starve_nor_see_another() {
    let marker = format!("wsbx-starve-{}", std::process::id());
    let hog = std::thread::spawn(move || {
        let mut req = request(Language::Shell, &format!("# {marker}\nfor i in $(seq 400); do sleep 5 & done 2>/dev/null; sleep 3"));
        req.limits.timeout_ms = 8000;
        sandbox().run(&req)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let r = shell("for i in $(seq 20); do /bin/true & done; wait; ps -e | wc -l");
    assert_status(&r, Status::Ok);
    let seen: usize = r.stdout.trim().parse().unwrap();
    assert!(seen < 10, "the job saw {seen} processes");
    hog.join().unwrap();
}

#[test]
fn a_job_cannot_read_how_it_was_launched() {
    let r = shell("cat /proc/1/cmdline | tr '\\0' ' '");
    assert_status(&r, Status::Ok);
    let home = wsbx::SandboxConfig::default().home;
    let scratch_root = std::env::temp_dir();
    for leak in ["blacklist", "private=", home.to_str().unwrap(), scratch_root.join("wsbx-").to_str().unwrap()] {
        assert!(!r.stdout.contains(leak), "PID 1 shows {leak:?}: {}", r.stdout);
    }
}

#[test]
fn a_job_that_leaves_a_process_behind_reports_its_own_exit() {
    let started = Instant::now();
    let r = shell("setsid sleep 20 & echo bye; exit 3");
    assert_eq!((r.status, r.exit_code, r.stdout.as_str()), (Status::Error, Some(3), "bye\n"), "{r:#?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[test]
fn shell_peak_memory_measures_the_job_not_wsbx() {
    // Make this process large first: a forked child starts with its resident set.
    let ballast = vec![1u8; 300 << 20];
    let r = shell("echo hi");
    assert_status(&r, Status::Ok);
    assert!(r.peak_memory_bytes > 0 && r.peak_memory_bytes < 100 << 20, "{}", r.peak_memory_bytes);
    drop(ballast);
}

#[test]
fn scratch_directories_and_inputs_are_private_while_a_run_goes_on() {
    let root = tempfile::tempdir().unwrap();
    let sandbox = wsbx::Sandbox::new(wsbx::SandboxConfig { scratch_root: root.path().to_owned(), warm_instances: 0, ..Default::default() });
    let mut req = request(Language::Python, "import time; time.sleep(1.5)");
    req.files.push(wsbx::InputFile { path: "secret/in.txt".into(), content: b"s".to_vec() });
    std::thread::scope(|scope| {
        let run = scope.spawn(|| sandbox.run(&req));
        std::thread::sleep(Duration::from_millis(700));
        let dirs: Vec<_> = std::fs::read_dir(root.path()).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dirs[0]), 0o700);
        assert_eq!(mode(&dirs[0].join("secret")), 0o700);
        assert_eq!(mode(&dirs[0].join("secret/in.txt")), 0o600);
        assert_status(&run.join().unwrap(), Status::Ok);
    });
}

#[test]
fn stopping_wsbx_exec_ends_its_shell_job_and_removes_its_scratch() {
    for signal in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
        let tmp = tempfile::tempdir().unwrap();
        let marker = format!("wsbx-orphan-{}-{signal}", std::process::id());
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsbx"))
            .args(["exec", "--lang", "shell", "--timeout", "30", "-c", &format!("# {marker}\nsleep 25")])
            .env("TMPDIR", tmp.path())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(128 + signal), "{status:?}");
        std::thread::sleep(Duration::from_millis(200));
        assert!(running_with(&marker).is_empty(), "left running: {:?}", running_with(&marker));
        assert_eq!(scratch_of(child.id()), Vec::<String>::new(), "scratch left behind");
    }
}

#[test]
fn a_killed_wsbx_exec_leaves_nothing_running_past_the_deadline_and_its_scratch_is_swept() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = format!("wsbx-killed-{}", std::process::id());
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsbx"))
        .args(["exec", "--lang", "shell", "--timeout", "1", "--file", "in.txt=/etc/hostname", "-c", &format!("# {marker}\nsleep 25")])
        .env("TMPDIR", tmp.path())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    child.kill().unwrap();
    child.wait().unwrap();
    // The job's own backstop ends it shortly after its deadline (1 s + 2 s).
    let until = Instant::now() + Duration::from_secs(10);
    while !running_with(&marker).is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(running_with(&marker).is_empty(), "left running: {:?}", running_with(&marker));
    // The next wsbx removes what the dead one left.
    assert_eq!(scratch_of(child.id()).len(), 1);
    let o = wsbx(&["exec", "--lang", "shell", "-c", "true"], Some(tmp.path()));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(scratch_of(child.id()), Vec::<String>::new());
}

/// The shell scratch directories of the wsbx process `pid`.
fn scratch_of(pid: u32) -> Vec<String> {
    let prefix = format!("wsbx-{pid}-");
    std::fs::read_dir(wsbx::backend::firejail::JOB_ROOT)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(&prefix)).collect())
        .unwrap_or_default()
}
