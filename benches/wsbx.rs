//! The performance table: `cargo bench --bench wsbx`.
//!
//! Measures, on this machine, per-run latency of the library (a fresh instance per run, as in
//! production), and of a whole `wsbx exec` process. Prints a Markdown table; the figures
//! recorded in `benches/README.md` come from it.
//!
//! `WSBX_BENCH_RUNS` overrides the in-process run count (default 300).

use std::process::Command;
use std::time::{Duration, Instant};

use wsbx::{ExecRequest, Language, Sandbox, SandboxConfig, Status};

struct Row {
    what: String,
    runs: usize,
    p50: Duration,
    p99: Duration,
    note: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn measure(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

fn in_process(sandbox: &Sandbox, language: Language, code: &str, runs: usize) -> Row {
    let request = ExecRequest::new(language, code);
    if let Err(e) = sandbox.prepare(language) {
        return Row { what: format!("{language} `{code}` in-process"), runs: 0, p50: Duration::ZERO, p99: Duration::ZERO, note: format!("unavailable: {e}") };
    }
    let first = sandbox.run(&request);
    assert_eq!(first.status, Status::Ok, "{first:?}");
    for _ in 0..20 {
        sandbox.run(&request);
    }
    let (p50, p99) = measure(runs, || {
        let r = sandbox.run(&request);
        assert_eq!(r.status, Status::Ok);
    });
    Row {
        what: format!("{language} `{code}`, library, fresh instance"),
        runs,
        p50,
        p99,
        note: format!("{} fuel, guest wall {:.2} ms", first.fuel_consumed.unwrap_or(0), first.wall_ms),
    }
}

fn process(language: Language, code: &str, runs: usize) -> Row {
    let exe = env!("CARGO_BIN_EXE_wsbx");
    let run = || {
        let out = Command::new(exe)
            .args(["exec", "--lang", language.as_str(), "-c", code])
            .output()
            .expect("wsbx runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    for _ in 0..3 {
        run();
    }
    let (p50, p99) = measure(runs, run);
    Row { what: format!("{language} `{code}`, `wsbx exec` process"), runs, p50, p99, note: String::new() }
}

/// Firejail alone, with the same isolation options minus wsbx: what a shell job cannot go below.
fn bare_firejail(runs: usize) -> Row {
    let run = || {
        let out = Command::new("firejail")
            .args(["--quiet", "--noprofile", "--private-tmp", "--private-dev", "--net=none", "--caps.drop=all", "--nonewprivs", "--seccomp", "--", "/bin/true"])
            .output()
            .expect("firejail runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run();
    let (p50, p99) = measure(runs, run);
    Row { what: "bare `firejail ... /bin/true` (reference)".into(), runs, p50, p99, note: String::new() }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let runs: usize = std::env::var("WSBX_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let sandbox = Sandbox::new(SandboxConfig::default());
    let rows = vec![
        in_process(&sandbox, Language::Python, "print(\"hello\")", runs),
        process(Language::Python, "print(\"hello\")", 30),
        in_process(&sandbox, Language::Javascript, "console.log(1+1)", runs),
        process(Language::Javascript, "console.log(1+1)", 30),
        in_process(&sandbox, Language::Shell, "echo hi", 100.min(runs)),
        process(Language::Shell, "echo hi", 30),
        bare_firejail(30),
    ];
    println!("| what | runs | p50 ms | p99 ms | note |");
    println!("|---|---:|---:|---:|---|");
    for r in rows {
        println!("| {} | {} | {} | {} | {} |", r.what, r.runs, ms(r.p50), ms(r.p99), r.note);
    }
}
