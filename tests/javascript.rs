//! JavaScript in the sandbox, against the real QuickJS-NG module built by `wsbx runtime install`.

mod common;

use common::{assert_status, javascript, request, sandbox};
use wsbx::{InputFile, Language, Status};

#[test]
fn javascript_prints_hello() {
    let r = javascript("console.log('hello')");
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "hello\n");
    assert_eq!(r.exit_code, Some(0));
    assert!(r.fuel_consumed.unwrap() > 0);
    assert!(r.peak_memory_bytes > 0);
}

#[test]
fn javascript_async_then_prints_42() {
    let r = javascript("const f = async x => x * 2; f(21).then(v => console.log(v))");
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "42\n");
}

#[test]
fn javascript_has_modern_language_features() {
    let code = r#"
class Point { #x; constructor(x) { this.#x = x } get x() { return this.#x } static of(x) { return new Point(x) } }
const big = 2n ** 64n;
const m = new Map([["a", 1]]); const s = new Set([1, 2, 2]);
const o = { deep: { value: 7 } };
const { groups } = /(?<year>\d{4})-(?<month>\d{2})/.exec("2026-11");
const json = JSON.parse(JSON.stringify({ list: [1, 2, 3] }));
(async () => {
  const v = await Promise.all([1, 2].map(async n => n * 10));
  console.log(Point.of(3).x, big, m.get("a"), s.size, o?.deep?.value, o?.missing?.value ?? "none",
              groups.year, groups.month, json.list.length, v.join("+"), [1, [2, [3]]].flat(Infinity).length,
              Object.entries({ a: 1 }).length, "abc".at(-1));
})();
"#;
    let r = javascript(code);
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "3 18446744073709551616n 1 2 7 none 2026 11 3 10+20 3 1 c\n");
}

#[test]
fn javascript_console_shows_objects_and_routes_streams() {
    let r = javascript("console.log({a: 1, b: [1, 'x'], n: null}); console.info('info'); console.error('bad', 1); console.warn({w: true})");
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "{ a: 1, b: [ 1, \"x\" ], n: null }\ninfo\n");
    assert_eq!(r.stderr, "bad 1\n{ w: true }\n");
}

#[test]
fn javascript_thrown_error_is_an_error_with_message_and_stack() {
    let r = javascript("function go() { throw new Error('boom') }\ngo()");
    assert_status(&r, Status::Error);
    assert_eq!(r.exit_code, Some(1));
    assert!(r.stderr.contains("Error: boom"), "{}", r.stderr);
    assert!(r.stderr.contains("at go"), "{}", r.stderr);
}

#[test]
fn javascript_unhandled_rejection_is_an_error() {
    let r = javascript("Promise.reject(new Error('nope')); console.log('sync part ran')");
    assert_status(&r, Status::Error);
    assert_eq!(r.stdout, "sync part ran\n");
    assert!(r.stderr.contains("nope"), "{}", r.stderr);
}

#[test]
fn javascript_handled_rejection_is_fine() {
    let r = javascript("Promise.reject(new Error('nope')).catch(e => console.log('caught', e.message))");
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "caught nope\n");
}

#[test]
fn javascript_syntax_error_is_an_error() {
    let r = javascript("let x = ;");
    assert_status(&r, Status::Error);
    assert!(r.stderr.contains("SyntaxError"), "{}", r.stderr);
}

#[test]
fn javascript_top_level_await_and_imports_run_as_a_module() {
    let r = javascript("const v = await Promise.resolve(5); console.log(v)");
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "5\n");
    let r = javascript("import * as std from 'qjs:std'; console.log(typeof std.loadFile)");
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "function\n");
}

/// Code that can be a classic script runs as one (as documented, and as node runs a file):
/// sloppy mode, `this` is the global object. Only code that cannot be a script is a module.
#[test]
fn javascript_plain_code_runs_as_a_script() {
    let r = javascript("undeclared = 5; console.log(typeof this, this === globalThis, undeclared)");
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "object true 5\n");
    let r = javascript("export const x = 1; console.log(typeof this)");
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "undefined\n", "a module's top-level this");
    // A SyntaxError that no module would fix is reported once, as a SyntaxError.
    let r = javascript("import x from; await 1");
    assert_status(&r, Status::Error);
    assert!(r.stderr.contains("SyntaxError"), "{}", r.stderr);
}

#[test]
fn javascript_process_exit_sets_the_exit_code() {
    let r = javascript("console.log('bye'); process.exit(4)");
    assert_status(&r, Status::Error);
    assert_eq!(r.exit_code, Some(4));
    assert_eq!(r.stdout, "bye\n");
}

#[test]
fn javascript_reads_stdin() {
    let mut req = request(Language::Javascript, "import * as std from 'qjs:std'; console.log(std.in.readAsString().toUpperCase())");
    req.stdin = "héllo".as_bytes().to_vec();
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "HÉLLO\n");
}

#[test]
fn javascript_reads_and_writes_files_in_scratch() {
    let mut req = request(
        Language::Javascript,
        "import * as std from 'qjs:std';\nconst data = std.loadFile('in.txt');\nconst f = std.open('/scratch/out.txt', 'w'); f.puts(data.toUpperCase()); f.close();\nconsole.log(std.loadFile('out.txt'))",
    );
    req.files.push(InputFile { path: "in.txt".into(), content: b"abc".to_vec() });
    req.return_files = true;
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "ABC\n");
    assert!(r.files.unwrap().iter().any(|f| f.path == "out.txt"));
}

#[test]
fn javascript_infinite_loop_is_stopped() {
    let mut req = request(Language::Javascript, "while (true) {}");
    req.limits.timeout_ms = 500;
    assert_status(&sandbox().run(&req), Status::Timeout);
    let mut req = request(Language::Javascript, "for (;;) {}");
    req.limits.fuel = 10_000_000;
    assert_status(&sandbox().run(&req), Status::OutOfFuel);
}

#[test]
fn javascript_timer_does_not_outlive_the_deadline() {
    let mut req = request(Language::Javascript, "setTimeout(() => console.log('never'), 60000); console.log('armed')");
    req.limits.timeout_ms = 1000;
    let r = sandbox().run(&req);
    assert_status(&r, Status::Timeout);
    assert_eq!(r.stdout, "armed\n");
    assert!(r.wall_ms < 10_000.0, "{}", r.wall_ms);
}

#[test]
fn javascript_timers_run_in_order() {
    let r = javascript("setTimeout(() => console.log('b'), 20); setTimeout(() => console.log('a'), 5); const t = setTimeout(() => console.log('x'), 1); clearTimeout(t)");
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "a\nb\n");
}

#[test]
fn javascript_memory_bombs_end_cleanly() {
    for code in ["const a = new Array(1e9).fill(1)", "let s = 'x'; while (true) s += s", "const all = []; while (true) all.push(new ArrayBuffer(1 << 20))"] {
        let mut req = request(Language::Javascript, code);
        req.limits.memory_mb = 64;
        let r = sandbox().run(&req);
        assert!(matches!(r.status, Status::Error | Status::MemoryLimit), "{code}: {r:#?}");
        assert!(r.peak_memory_bytes <= 64 << 20, "{code}: {r:#?}");
    }
    assert_status(&javascript("console.log('alive')"), Status::Ok);
    // An exception thrown because the cap was reached says so in the result.
    let mut req = request(Language::Javascript, "const all = []; while (true) all.push({ n: all.length })");
    req.limits.memory_mb = 64;
    let r = sandbox().run(&req);
    assert_eq!((r.status, r.exit_code), (Status::Error, Some(1)), "{r:#?}");
    assert!(r.stderr.starts_with("InternalError: out of memory"), "{r:#?}");
    assert_eq!(r.detail.as_deref(), Some("the guest reached its memory cap of 64 MiB"), "{r:#?}");
    // An exception that has nothing to do with memory has no such detail, even after one
    // request far past the cap was refused and caught.
    assert_eq!(javascript("throw new Error('x')").detail, None);
    let mut req = request(Language::Javascript, "try { new ArrayBuffer(2 ** 30) } catch (e) {}\nJSON.parse('{bad')");
    req.limits.memory_mb = 64;
    let r = sandbox().run(&req);
    assert_eq!((r.status, r.detail.as_deref()), (Status::Error, None), "{r:#?}");
}

/// QuickJS throws `null` when it cannot allocate even its out-of-memory error; at some caps
/// that is where a fill ends. It must still read as running out of memory, while a program's
/// own `throw null` stays `Uncaught null`, also in a session whose earlier turn ran out.
#[test]
fn javascript_out_of_memory_never_reads_as_a_thrown_null() {
    let fill = "const all = []; for (;;) all.push({ a: 1, b: [1, 2, 3] })";
    // A Map's fill left no memory to format its error at 48 and 56 MiB: QuickJS's own dump
    // then printed the message alone, "out of memory".
    let map_fill = "const m = new Map(); for (let i = 0; ; i++) m.set(i, { a: i })";
    let mut reported = Vec::new();
    for code in [fill, map_fill] {
        for memory_mb in (12..=64).step_by(2) {
            let mut req = request(Language::Javascript, code);
            req.limits.memory_mb = memory_mb;
            let r = sandbox().run(&req);
            assert_eq!((r.status, r.exit_code), (Status::Error, Some(1)), "{code} at {memory_mb} MiB: {r:#?}");
            assert!(r.stderr.starts_with("InternalError: out of memory"), "{code} at {memory_mb} MiB: {r:#?}");
            reported.push(r.stderr.lines().count());
        }
    }
    // Both faces were met: with a stack (the error was made) and without (it was not).
    assert!(reported.iter().any(|&lines| lines == 1) && reported.iter().any(|&lines| lines > 1), "{reported:?}");

    assert_eq!(javascript("throw null").stderr, "Uncaught null\n");
    let options = wsbx::SessionOptions { limits: wsbx::Limits { memory_mb: 36, ..wsbx::Limits::default() }, ..Default::default() };
    let mut session = sandbox().session(Language::Javascript, &options).expect("the session starts");
    let out = session.run(&wsbx::TurnRequest::new(fill));
    assert!(out.stderr.starts_with("InternalError: out of memory"), "{out:#?}");
    let thrown = session.run(&wsbx::TurnRequest::new("all.length = 0; throw null"));
    assert_eq!((thrown.status, thrown.stderr.as_str()), (Status::Error, "Uncaught null\n"), "{thrown:#?}");
}

#[test]
fn javascript_deep_recursion_ends_cleanly() {
    let r = javascript("function f(n) { return f(n + 1) + 1 }\nf(0)");
    assert_status(&r, Status::Error);
    assert_eq!(r.exit_code, None);
    assert!(r.detail.unwrap().contains("stack"));
    assert_status(&javascript("console.log('alive')"), Status::Ok);
}

#[test]
fn javascript_output_is_capped() {
    let mut req = request(Language::Javascript, "for (let i = 0; i < 10000; i++) console.log('line ' + i)");
    req.limits.max_output_bytes = 100;
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout.len(), 100);
    assert!(r.stdout_truncated);
}

#[test]
fn javascript_cannot_escape() {
    let r = javascript(
        "import * as std from 'qjs:std'; import * as os from 'qjs:os';\n\
         for (const p of ['/etc/passwd', '../etc/passwd', '/scratch/../../etc/passwd']) console.log(p, std.loadFile(p));\n\
         console.log('exec', typeof os.exec, 'socket', typeof os.socket, typeof fetch, typeof XMLHttpRequest);\n\
         const [entries, err] = os.readdir('/'); console.log('root', entries, err !== 0);",
    );
    assert_status(&r, Status::Ok);
    assert!(!r.stdout.contains("root:"), "{}", r.stdout);
    assert!(r.stdout.contains("/etc/passwd null"), "{}", r.stdout);
    assert!(r.stdout.contains("exec undefined socket undefined undefined undefined"), "{}", r.stdout);
    assert!(!r.stdout.contains("etc\""), "{}", r.stdout);
}

#[test]
fn javascript_environment_holds_only_what_the_request_sets() {
    std::env::set_var("WSBX_TEST_HOST_SECRET", "leaked");
    let mut req = request(Language::Javascript, "console.log(Object.keys(process.env).sort().join(','))");
    req.env.insert("MODE".into(), "test".into());
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "HOME,MODE\n");
}

#[test]
fn prepared_guests_give_the_same_results_as_fresh_ones() {
    common::assert_prepared_guests_match_fresh_ones(
        Language::Javascript,
        "console.log(performance.now() > 200)",
        &[
            "import * as std from 'qjs:std';\nconsole.log(std.in.readAsString(), std.loadFile('i.txt'), Object.keys(process.env));\nconst f = std.open('o.txt', 'w'); f.puts('out'); f.close();\nprocess.exit(5)",
            "const v = await Promise.resolve(7); console.log(v)",
            "throw new TypeError('t')",
        ],
    );
}
