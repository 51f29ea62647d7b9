//! wsbx on hosts as users have them: any scratch root, a disk quota the kernel enforces,
//! nothing left behind after a stop or a crash, set-up that recovers. Each test fails without
//! its fix.

mod common;

use std::time::{Duration, Instant};

use common::server::Server;
use wsbx::{ExecRequest, InputFile, Language, Limits, Sandbox, SandboxConfig, Status};

fn request(language: Language, code: &str) -> ExecRequest {
    let mut request = ExecRequest::new(language, code);
    request.limits = Limits { timeout_ms: 20_000, ..Limits::default() };
    request
}

fn hello(language: Language) -> &'static str {
    match language {
        Language::Python => "open('f', 'w').write('x'); print('hi')",
        Language::Javascript => "import * as std from 'qjs:std'; std.open('/scratch/f', 'w').puts('x'); console.log('hi')",
        Language::Shell => "echo x > f; echo hi",
    }
}

#[test]
fn every_language_runs_from_awkward_scratch_roots_and_leaves_nothing() {
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let var_tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let spaced = tempfile::tempdir().unwrap();
    let roots = [private.path().join("inner"), var_tmp.path().join("x"), spaced.path().join("with a space")];
    for root in &roots {
        for warm in [0, 1] {
            let sandbox = Sandbox::new(SandboxConfig { scratch_root: root.clone(), warm_instances: warm, ..Default::default() });
            for language in Language::ALL {
                let r = sandbox.run(&request(language, hello(language)));
                assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "hi\n"), "{language} in {}: {r:#?}", root.display());
            }
            drop(sandbox);
            let left: Vec<_> = std::fs::read_dir(root).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
            assert!(left.is_empty(), "{} left {left:?}", root.display());
        }
    }
}

fn host_free_bytes() -> u64 {
    let stat = rustix::fs::statvfs("/").unwrap();
    stat.f_bavail * stat.f_frsize
}

#[test]
fn a_guest_writing_a_gigabyte_under_a_small_quota_gets_enospc_and_the_host_disk_is_spared() {
    let programs = [
        (Language::Python, "import errno\ntry:\n    with open('big', 'wb') as f:\n        for _ in range(1024): f.write(b'x' * (1 << 20))\nexcept OSError as e:\n    print('ENOSPC' if e.errno == errno.ENOSPC else e)"),
        (Language::Javascript, "import * as std from 'qjs:std'; const f = std.open('/scratch/big', 'w'); const mb = 'x'.repeat(1 << 20); for (let i = 0; i < 1024 && !f.error(); i++) f.puts(mb); f.flush(); console.log(f.error() ? 'ENOSPC' : 'wrote it all')"),
        (Language::Shell, "head -c 1G /dev/zero > big 2>/dev/null || echo ENOSPC"),
    ];
    for (language, code) in programs {
        // Installing a runtime writes hundreds of megabytes: do it before measuring the disk.
        common::sandbox().prepare(language).expect("runtime ready");
        let mut req = request(language, code);
        req.limits.disk_mb = 64;
        req.limits.memory_mb = 256;
        let before = host_free_bytes();
        let lowest = std::sync::atomic::AtomicU64::new(before);
        let done = std::sync::atomic::AtomicBool::new(false);
        let r = std::thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    lowest.fetch_min(host_free_bytes(), std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
            let r = common::sandbox().run(&req);
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            r
        });
        assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "ENOSPC\n"), "{language}: {r:#?}");
        assert!(r.disk_bytes <= 64 << 20 && r.disk_bytes > 60 << 20, "{language}: disk_bytes {}", r.disk_bytes);
        let dropped = before.saturating_sub(lowest.into_inner());
        // Other processes write too: allow the quota itself plus slack, never the gigabyte.
        assert!(dropped < (64 + 32) << 20, "{language}: the host lost {dropped} bytes");
    }
}

#[test]
fn max_files_stops_the_next_file_and_inputs_count() {
    let programs = [
        (Language::Python, "n = 0\ntry:\n    while n < 200:\n        open(f'f{n}', 'w').close(); n += 1\nexcept OSError as e:\n    pass\nprint(n)"),
        (Language::Javascript, "import * as std from 'qjs:std'; let n = 0; while (n < 200) { const f = std.open('/scratch/f' + n, 'w'); if (!f) break; f.close(); n++; } console.log(n)"),
        (Language::Shell, "n=0; while [ $n -lt 200 ] && touch f$n 2>/dev/null; do n=$((n+1)); done; echo $n"),
    ];
    for (language, code) in programs {
        let mut req = request(language, code);
        req.limits.max_files = 100;
        let r = common::sandbox().run(&req);
        assert_eq!(r.stdout, "100\n", "{language}: {r:#?}");
        // Two input files (and the directory holding one of them) take three of the hundred.
        req.files = vec![
            InputFile { path: "a.txt".into(), content: b"a".to_vec() },
            InputFile { path: "d/b.txt".into(), content: b"b".to_vec() },
        ];
        let r = common::sandbox().run(&req);
        assert_eq!(r.stdout, "97\n", "{language} with inputs: {r:#?}");
    }
}

#[test]
fn inputs_over_the_quota_are_rejected_before_the_run() {
    let mut req = request(Language::Python, "print('ran')");
    req.limits.disk_mb = 1;
    req.files = vec![InputFile { path: "big".into(), content: vec![0; 2 << 20] }];
    let r = common::sandbox().run(&req);
    assert_eq!(r.status, Status::Rejected, "{r:#?}");
    assert!(r.detail.unwrap().contains("disk_mb"));
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_server_leaves_no_scratch_and_a_killed_ones_is_swept_by_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [("TMPDIR", tmp.path().to_str().unwrap())];
    let client = reqwest::Client::new();
    let warm_up = |server: &Server| {
        let url = server.url("/v1/exec");
        let client = client.clone();
        async move {
            for language in ["python", "javascript"] {
                let body = serde_json::json!({"language": language, "code": "1"});
                assert_eq!(client.post(&url).json(&body).send().await.unwrap().status(), 200);
            }
            // Give the pools time to prepare their next guests (each with a scratch directory).
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    };

    let mut server = Server::start_with_env(&[], &env);
    warm_up(&server).await;
    assert!(!entries(tmp.path()).is_empty(), "no prepared guests to test with");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    assert!(server.child.wait().unwrap().success());
    assert_eq!(entries(tmp.path()), Vec::<String>::new(), "a stopped server left scratch directories");

    let mut server = Server::start_with_env(&[], &env);
    warm_up(&server).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert!(!entries(tmp.path()).is_empty());
    std::fs::create_dir(tmp.path().join("not-wsbx")).unwrap();
    std::fs::create_dir(tmp.path().join("wsbx-notapid-x")).unwrap();
    let started = Instant::now();
    let server = Server::start_with_env(&[], &env);
    let left: Vec<String> = entries(tmp.path()).into_iter().filter(|n| !n.starts_with(&format!("wsbx-{}-", server.child.id()))).collect();
    assert_eq!(left, ["not-wsbx", "wsbx-notapid-x"], "after {:?}", started.elapsed());
}

#[test]
fn job_groups_of_a_dead_wsbx_in_another_control_group_are_swept() {
    // A wsbx killed outright while running in some other group (another service) leaves its
    // job groups there; the next wsbx to set up shell jobs removes them wherever they are.
    let root = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        std::path::PathBuf::from("/sys/fs/cgroup")
    } else {
        std::path::PathBuf::from("/sys/fs/cgroup/memory")
    };
    let elsewhere = root.join(format!("wsbx-test-elsewhere-{}", std::process::id()));
    if std::fs::create_dir(&elsewhere).is_err() {
        eprintln!("skipped: cannot make control groups here (not root?)");
        return;
    }
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let left = elsewhere.join(format!("wsbx-{dead}-7"));
    std::fs::create_dir(&left).unwrap();
    let sandbox = Sandbox::new(SandboxConfig { warm_instances: 0, ..SandboxConfig::default() });
    sandbox.prepare(Language::Shell).unwrap();
    let swept = !left.exists();
    let _ = std::fs::remove_dir(&left);
    let _ = std::fs::remove_dir(&elsewhere);
    assert!(swept, "{} was left", left.display());
}
