//! The pre-initialized interpreters (Python and JavaScript): what a run sees is fresh each time,
//! errors and imports are cheap, and a damaged snapshot is rebuilt, never half-used.

mod common;

use common::{assert_status, javascript, python, request, sandbox};
use wsbx::{Language, Sandbox, SandboxConfig, Status};

#[test]
fn every_run_gets_fresh_random_numbers() {
    let code = "import random, numpy\nprint(random.random(), numpy.random.rand())";
    let (a, b) = (python(code), python(code));
    assert_status(&a, Status::Ok);
    assert_ne!(a.stdout, b.stdout, "two runs drew the same numbers");
}

/// numpy's global generator keeps the `SeedSequence` it was made with, for `spawn()`: one
/// frozen in the snapshot would give every run the same spawned streams. Each run's either
/// differ or cannot be spawned (as after `numpy.random.seed`).
#[test]
fn streams_spawned_from_numpys_global_generator_are_never_the_same_twice() {
    let code = "import numpy\ntry:\n    child = numpy.random.get_bit_generator().spawn(1)[0]\n    print(numpy.random.Generator(child).integers(1 << 62))\nexcept Exception as e:\n    print(type(e).__name__)";
    let (a, b) = (python(code), python(code));
    assert_status(&a, Status::Ok);
    let spawned = a.stdout.trim().parse::<u64>().is_ok();
    assert!(!spawned || a.stdout != b.stdout, "two runs spawned the same stream: {}", a.stdout);
}

/// A guest made in the run gets fresh generator states written by the host before the user's
/// code; a guest prepared ahead too, and then runs a first turn of its own that warms the
/// compiler. Both draw fresh numbers, start from the globals of `python -c`, and count the
/// user's code as `<turn 1>` under the same frames.
#[test]
fn guests_made_in_the_run_and_prepared_ahead_draw_fresh_numbers_alike() {
    let fresh = Sandbox::new(SandboxConfig { warm_instances: 0, ..SandboxConfig::default() });
    let prepared = Sandbox::new(SandboxConfig { warm_instances: 1, ..SandboxConfig::default() });
    prepared.prepare(Language::Python).expect("runtime loads");
    let draw = "import random, numpy\nprint(random.random(), numpy.random.rand())";
    let mut drawn = std::collections::BTreeSet::new();
    let mut stacks = std::collections::BTreeSet::new();
    for (sandbox, how) in [(&fresh, "made in the run"), (&prepared, "prepared")] {
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let (r, phases) = sandbox.run_profiled(&request(Language::Python, draw));
            assert_status(&r, Status::Ok);
            assert_eq!(phases.prepared, how == "prepared", "{how}");
            assert!(drawn.insert(r.stdout.clone()), "{how}: drew {} again", r.stdout);
            let r = sandbox.run(&request(Language::Python, "import traceback\ntraceback.print_stack()\nraise KeyError(1)"));
            let (stack, traceback) = r.stderr.split_once("Traceback").unwrap_or_default();
            assert_eq!(traceback, " (most recent call last):\n  File \"<turn 1>\", line 3, in <module>\n    raise KeyError(1)\nKeyError: 1\n", "{how}: {}", r.stderr);
            stacks.insert(stack.to_owned());
            let r = sandbox.run(&request(Language::Python, "print(sorted(n for n in globals() if not n.startswith('__')))"));
            assert_eq!(r.stdout, "[]\n", "{how}: {r:#?}");
            // The host wrote both states whole (19,937 bits of entropy each, where a seed gives
            // at most what the seed holds), the first word's top bit set as MT19937's own
            // seeding does, and each positioned to twist the whole state before its first draw.
            let state = "import random, numpy\nkey, pos = numpy.random.get_state()[1:3]\nwords = random.getstate()[1]\nprint(key[0], pos, words[0], words[-1], key[1], words[1])";
            let r = sandbox.run(&request(Language::Python, state));
            let fields: Vec<&str> = r.stdout.split_whitespace().collect();
            assert_eq!(fields[..4], ["2147483648", "624", "2147483648", "624"], "{how}: {r:#?}");
            // And a different state in every run.
            let again = sandbox.run(&request(Language::Python, state));
            assert_ne!(r.stdout, again.stdout, "{how}: the same state twice");
        }
    }
    // The same frames under the user's code either way: preparing left nothing behind.
    assert_eq!(stacks.len(), 1, "{stacks:#?}");
}

/// A snapshot whose record of where its generators are does not match it is never run: the
/// run fails and says why, rather than drawing the numbers the snapshot froze.
#[test]
fn a_snapshot_whose_generator_record_is_wrong_is_never_run() {
    let real = SandboxConfig::default().home;
    let parent = real.parent().expect("the home has a parent");
    let home = tempfile::tempdir_in(parent).unwrap();
    // The installed runtimes and compiled modules, linked rather than copied (gigabytes).
    for dir in ["runtimes", "compiled"] {
        let status = std::process::Command::new("cp").arg("-al").arg(real.join(dir)).arg(home.path()).status().unwrap();
        assert!(status.success(), "linking {dir}");
    }
    let mut records = 0;
    for entry in glob(&home.path().join("runtimes"), "python-preinit-", ".seeds") {
        // Replaced, not written through: the file is a link to the real home's.
        let wrong = entry.with_extension("wrong");
        std::fs::write(&wrong, "random=0 numpy=0\n").unwrap();
        std::fs::rename(&wrong, &entry).unwrap();
        records += 1;
    }
    assert!(records > 0, "no record of the generators under {}", home.path().display());
    let sandbox = Sandbox::new(SandboxConfig { home: home.path().to_owned(), warm_instances: 0, ..SandboxConfig::default() });
    let r = sandbox.run(&request(Language::Python, "import random\nprint(random.random())"));
    assert_eq!((r.status, r.stdout.as_str()), (Status::InternalError, ""), "{r:#?}");
    assert!(r.detail.as_deref().unwrap_or_default().contains("not where the snapshot's record says"), "{r:#?}");
}

/// Files under `dir` (one level of subdirectories deep) named `prefix…suffix`.
fn glob(dir: &std::path::Path, prefix: &str, suffix: &str) -> Vec<std::path::PathBuf> {
    let matches = |p: &std::path::Path| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix));
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten().map(|e| e.path()))
        .filter(|p| matches(p))
        .collect()
}

/// A request for `code` that starts from the plain interpreter: its memory cap is below the
/// snapshot's footprint (100 MiB).
fn on_the_plain_interpreter(code: &str) -> wsbx::ExecRequest {
    let mut req = request(Language::Python, code);
    req.limits.memory_mb = 64;
    req
}

/// The user's code starts from the globals `python -c` gives it, whichever interpreter it
/// starts from: nothing of the prelude's or of the snapshot's imports.
#[test]
fn a_run_starts_with_the_globals_of_python_c() {
    let names = "print(sorted(n for n in globals() if not n.startswith('__')), __name__)";
    for r in [python(names), sandbox().run(&on_the_plain_interpreter(names))] {
        assert_eq!(r.stdout, "[] __main__\n", "{r:#?}");
    }
}

#[test]
fn a_run_cannot_see_the_previous_runs_variables() {
    assert_status(&python("secret = 42\nimport numpy\nnumpy.shared = 1"), Status::Ok);
    let r = python("print(secret)");
    assert_status(&r, Status::Error);
    assert!(r.stderr.contains("NameError: name 'secret' is not defined"), "{}", r.stderr);
    let r = python("import numpy\nprint(hasattr(numpy, 'shared'))");
    assert_eq!(r.stdout, "False\n");
}

/// The snapshot's set-up draws a chart, and matplotlib keeps each font it loads open: no file
/// of the set-up may live on in a run, where its descriptor number could be a file the run
/// opens. A run sees no open file but the standard streams, its first file gets the first free
/// number after the grants, and it can still draw text (the fonts load again).
#[test]
fn a_run_inherits_no_open_file_from_the_snapshot() {
    let code = "import gc, io, os\n\
                print([repr(o) for o in gc.get_objects() if isinstance(o, io.FileIO) and not o.closed and o.fileno() > 2])\n\
                plain = os.open('probe.txt', os.O_CREAT | os.O_WRONLY)\n\
                import matplotlib.pyplot as plt\n\
                plt.title('fonts'); plt.savefig('t.png')\n\
                print(plain)";
    let r = python(code);
    assert_status(&r, Status::Ok);
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some("[]"), "{r:#?}");
    // Three grants (/usr/local/lib, matplotlib's data, /scratch) after the standard streams.
    assert_eq!(lines.next(), Some("6"), "{r:#?}");
}

/// The snapshot's set-up ran as turns too, and `linecache` keeps each turn's source under its
/// `<turn N>` name: a run's code, named the same way, must find only its own there, as on the
/// plain interpreter.
#[test]
fn a_run_finds_no_source_of_the_snapshots_set_up() {
    let code = "import linecache\nprint(sorted(k for k in linecache._interactive_cache if str(k[0]).startswith('<turn ')))";
    let (snapshot, plain) = (python(code), sandbox().run(&on_the_plain_interpreter(code)));
    assert_status(&snapshot, Status::Ok);
    assert_eq!(snapshot.stdout, plain.stdout, "{snapshot:#?}");
}

/// The objects the snapshot's set-up left alive are immortal, so a run that uses them does not
/// write to their pages; the objects a run makes are counted and freed as usual, and the
/// collector has nothing of the snapshot's left to walk.
#[test]
fn the_snapshots_objects_are_immortal_and_a_runs_own_are_not() {
    let code = "import sys, gc, json, numpy, matplotlib.pyplot as plt\n\
                mine = [object()]\n\
                print([sys._is_immortal(o) for o in (json.dumps, json, json.dumps.__code__, numpy.ndarray, plt.plot, sys.modules, mine, mine[0])])\n\
                print(sys.getrefcount(mine), len(gc.get_objects()) < 5000, gc.get_freeze_count() > 50000)";
    let r = python(code);
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "[True, True, True, True, True, True, False, False]\n2 True True\n"), "{r:#?}");
    // The plain interpreter counts them all.
    let r = sandbox().run(&on_the_plain_interpreter("import sys, json\nprint(sys._is_immortal(json.dumps))"));
    assert_eq!(r.stdout, "False\n", "{r:#?}");
}

/// Immortal means never freed: code that tears down what the snapshot holds (modules deleted,
/// caches cleared, the collector's frozen generation thawed and collected) leaks it for the
/// rest of its run, and works on; the next run starts from the snapshot as ever.
#[test]
fn a_run_that_tears_the_snapshot_down_still_works_and_the_next_is_whole() {
    let code = "import gc, sys, re, json, linecache, functools, weakref\n\
                del json.dumps\n\
                re.purge(); linecache.clearcache(); functools.lru_cache.__wrapped__ = None\n\
                gc.unfreeze(); print(gc.collect() >= 0, len(gc.get_objects()) < 5000)\n\
                import pandas as pd\n\
                for name in [n for n in sys.modules if n.startswith(('json', 'pandas.io.formats'))]:\n    del sys.modules[name]\n\
                gc.collect()\n\
                import json\n\
                print(pd.DataFrame({'v': [1, 2, 3]}).v.sum(), re.sub('a+', 'b', 'caaat'), json.loads('[1]'))\n\
                class Probe: pass\n\
                probe = Probe(); ref = weakref.ref(probe); del probe\n\
                print(ref() is None, sys.getrefcount(object()))";
    let r = python(code);
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "True True\n6 cbt [1]\nTrue 1\n"), "{r:#?}");
    let r = python("import json, pandas, gc\nprint(json.dumps([1]), pandas.Series([1, 2]).sum(), gc.get_freeze_count() > 50000)");
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "[1] 3 True\n"), "{r:#?}");
}

#[test]
fn an_uncaught_exception_is_complete_names_the_users_line_and_is_cheap() {
    let r = python("def f():\n    raise ValueError('boom')\n\nf()");
    assert_status(&r, Status::Error);
    // Exactly the user's frames: none of wsbx's or the runtime's own.
    let frames: Vec<&str> = r.stderr.lines().filter(|l| l.trim_start().starts_with("File ")).collect();
    assert_eq!(frames, ["  File \"<turn 1>\", line 4, in <module>", "  File \"<turn 1>\", line 2, in f"], "{}", r.stderr);
    assert!(r.stderr.starts_with("Traceback (most recent call last):\n") && r.stderr.ends_with("ValueError: boom\n"), "{}", r.stderr);
    // The traceback machinery is in the snapshot: a few million fuel, not ninety.
    assert!(r.fuel_consumed.unwrap() < 20_000_000, "{:?}", r.fuel_consumed);
}

#[test]
fn pandas_and_numpy_are_ready_and_correct() {
    let code = "import pandas as pd, numpy as np\n\
                df = pd.DataFrame({'k': ['a', 'b', 'a'], 'v': [1, 2, 3]})\n\
                print(df.groupby('k').v.sum().to_dict())\n\
                slope, intercept = np.polyfit([0, 1, 2, 3], [1, 3, 5, 7], 1)\n\
                print(round(slope, 6), round(intercept, 6))";
    let r = python(code);
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "{'a': 4, 'b': 2}\n2.0 1.0\n"), "{r:#?}");
    assert!(r.fuel_consumed.unwrap() < 1_000_000_000, "{:?}", r.fuel_consumed);
}

/// An environment variable nothing read while the snapshot was built is set in the snapshot
/// before the run's code, so a script given an API key does not pay the imports again. The
/// code sees the value exactly, in `os.environ` and the C environment, and nothing of the
/// set-up: no name, no source, its own code as `<turn 1>`, and the fuel of its own code only.
#[test]
fn environment_variables_are_set_in_the_snapshot_and_the_code_sees_nothing_else() {
    let value = "quote ' double \" backslash \\ newline \n tab \t é 😀 ${HOME} %s '), ('X', '";
    let code = "import os, sys, linecache\n\
                print('numpy' in sys.modules)\n\
                print(os.environ['GREETING'] == os.getenv('GREETING') == os.environb[b'GREETING'].decode() == sys.stdin.read())\n\
                print(list(os.environ))\n\
                print(sorted(n for n in globals() if not n.startswith('__')), sorted({k[0] for k in linecache._interactive_cache}))\n\
                raise KeyError(os.environ['API_KEY'])";
    let mut req = request(Language::Python, code);
    req.stdin = value.as_bytes().to_vec();
    req.env.insert("GREETING".into(), value.into());
    req.env.insert("API_KEY".into(), "k".into());
    let r = sandbox().run(&req);
    assert_status(&r, Status::Error);
    assert_eq!(
        r.stdout,
        "True\nTrue\n['HOME', 'TMPDIR', 'MPLBACKEND', 'API_KEY', 'GREETING']\n['linecache', 'os', 'sys'] ['<turn 1>']\n",
        "{r:#?}"
    );
    assert_eq!(
        r.stderr,
        "Traceback (most recent call last):\n  File \"<turn 1>\", line 6, in <module>\n    raise KeyError(os.environ['API_KEY'])\nKeyError: 'k'\n",
        "{r:#?}"
    );
    // Setting the variables is set-up, not the request's code: a hello costs what it costs
    // without them (within what warming the turn machinery moves it, ~0.5 %), not the
    // set-up turn's compile on top.
    let hello = |env: &[(&str, &str)]| {
        let mut req = request(Language::Python, "print('hello')");
        req.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let r = sandbox().run(&req);
        assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "hello\n"), "{r:#?}");
        r.fuel_consumed.unwrap() as f64
    };
    let (without, with) = (hello(&[]), hello(&[("API_KEY", "k"), ("GREETING", value)]));
    assert!((with - without).abs() / without < 0.01, "a hello cost {without} fuel without variables, {with} with");
    // A run after it, without variables, sees none of them.
    let r = python("import os\nprint(sorted(os.environ))");
    assert_eq!(r.stdout, "['HOME', 'MPLBACKEND', 'TMPDIR']\n", "{r:#?}");
}

/// A variable the snapshot's modules read as they import would not take effect if set later:
/// such a run starts from the plain interpreter, which reads it as it starts.
#[test]
fn variables_read_at_import_take_the_plain_interpreter_which_reads_them() {
    let code = "import sys, os\nloaded = 'numpy' in sys.modules\nimport matplotlib\nprint(loaded, matplotlib.get_backend(), os.environ['API_KEY'])";
    let run = |backend: Option<&str>| {
        let mut req = request(Language::Python, code);
        req.env.insert("API_KEY".into(), "k".into());
        if let Some(backend) = backend {
            req.env.insert("MPLBACKEND".into(), backend.into());
        }
        let r = sandbox().run(&req);
        assert_status(&r, Status::Ok);
        r.stdout
    };
    assert_eq!(run(Some("agg")), "False agg k\n");
    assert_eq!(run(None), "True module://wsbx_matplotlib k\n", "an API key alone left the snapshot");
    // The standard library's too: zoneinfo reads its search path as pandas imports it.
    let mut req = request(Language::Python, "import sys\nloaded = 'numpy' in sys.modules\nimport zoneinfo\nprint(loaded, zoneinfo.TZPATH)");
    req.env.insert("PYTHONTZPATH".into(), "/scratch/tz".into());
    let r = sandbox().run(&req);
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "False ('/scratch/tz',)\n"), "{r:#?}");
}

/// Setting an environment in the snapshot costs memory and time the plain interpreter's start
/// does not (~12 times its size): a large one starts plain, and fits a cap the snapshot alone
/// would just fit.
#[test]
fn a_large_environment_starts_from_the_plain_interpreter() {
    let mut req = request(Language::Python, "import sys, os\nprint('numpy' in sys.modules, len(os.environ['A']) + len(os.environ['B']))");
    req.limits.memory_mb = 100;
    for name in ["A", "B"] {
        req.env.insert(name.into(), "x".repeat(150_000));
    }
    let r = sandbox().run(&req);
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "False 300000\n"), "{r:#?}");
}

/// Many small variables fit under the size that starts plain, but setting each in the snapshot
/// costs memory of its own: at a cap just above the snapshot's footprint its set-up does not
/// fit, and the plain interpreter, which needs less, takes the run instead of it failing.
#[test]
fn many_variables_at_a_cap_just_above_the_snapshots_footprint_still_run() {
    let env: std::collections::BTreeMap<String, String> = (0..6000).map(|i| (format!("V{i}"), i.to_string())).collect();
    assert!(env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() < wsbx::backend::wasm::python::MAX_ENV_SET_IN_SNAPSHOT);
    let mut started = std::collections::BTreeSet::new();
    for memory_mb in (100..=124).step_by(3) {
        let mut req = request(Language::Python, "import os, sys\nprint(len(os.environ), os.environ['V5999'], 'numpy' in sys.modules)");
        req.limits.memory_mb = memory_mb;
        req.env = env.clone();
        let r = sandbox().run(&req);
        assert_eq!(r.status, Status::Ok, "{memory_mb} MiB: {r:#?}");
        let (count, last, numpy) = (r.stdout.split(' ').next(), r.stdout.split(' ').nth(1), r.stdout.trim_end().ends_with("True"));
        assert_eq!((count, last), (Some("6003"), Some("5999")), "{memory_mb} MiB: {r:#?}");
        started.insert(numpy);
    }
    // The range spans both: the plain interpreter below the footprint, the snapshot well above.
    assert_eq!(started.len(), 2, "both interpreters took runs");
}

/// An environment that fills the memory cap before the code runs is the cap's doing: a guest
/// that cannot start ends `memory_limit` (never the request's `error`, never an
/// `internal_error`), one that starts at its cap and then fails says the cap was reached, and
/// one that runs has every variable — whichever interpreter took the run.
#[test]
fn an_environment_that_fills_the_memory_cap_is_reported_as_such() {
    let many = |count: usize, size: usize| -> std::collections::BTreeMap<String, String> { (0..count).map(|i| (format!("V{i}"), "d".repeat(size))).collect() };
    let cases = [
        (Language::Javascript, "console.log(Object.keys(process.env).length)", (6..=16).collect::<Vec<u64>>(), many(200, 5000)),
        (Language::Javascript, "console.log(Object.keys(process.env).length)", (12..=64).step_by(4).collect(), many(1, 12_000_000)),
        (Language::Python, "import os\nprint(len(os.environ))", (30..=48).step_by(2).collect(), many(200, 5000)),
        (Language::Python, "import os\nprint(len(os.environ))", (34..=50).step_by(2).collect(), many(45, 100_000)),
    ];
    for (language, code, caps, env) in cases {
        let mut req = request(language, code);
        req.env = env;
        let whole = sandbox().run(&req);
        assert_status(&whole, Status::Ok);
        let mut seen = Vec::new();
        for memory_mb in caps {
            req.limits.memory_mb = memory_mb;
            let r = sandbox().run(&req);
            let detail = r.detail.as_deref().unwrap_or("");
            match r.status {
                Status::Ok => assert_eq!(r.stdout, whole.stdout, "{language} {memory_mb} MiB: every variable is there: {r:#?}"),
                Status::MemoryLimit => assert!(detail.contains("could not start"), "{language} {memory_mb} MiB: {r:#?}"),
                Status::Error => assert!(detail.contains("memory cap") && !detail.contains("could not start"), "{language} {memory_mb} MiB: {r:#?}"),
                _ => panic!("{language} {memory_mb} MiB: {r:#?}"),
            }
            seen.push((memory_mb, r.status));
        }
        let statuses: std::collections::HashSet<Status> = seen.iter().map(|(_, status)| *status).collect();
        assert!(statuses.contains(&Status::MemoryLimit) && statuses.contains(&Status::Ok), "{language}: the caps span both ends: {seen:?}");
    }
}

#[test]
fn small_memory_caps_still_work_from_the_plain_interpreter() {
    let mut req = request(Language::Python, "import sys\nprint('small', 'numpy' in sys.modules)");
    req.limits.memory_mb = 48;
    let r = sandbox().run(&req);
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "small False\n"), "{r:#?}");
    // What the tests above compare the snapshot against is the plain interpreter.
    let r = sandbox().run(&on_the_plain_interpreter("import sys\nprint('numpy' in sys.modules)"));
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "False\n"), "{r:#?}");
}

#[test]
fn every_javascript_run_gets_fresh_random_numbers_and_its_own_clock() {
    let code = "console.log(Math.random(), Math.random())";
    let (a, b) = (javascript(code), javascript(code));
    assert_status(&a, Status::Ok);
    assert_ne!(a.stdout, b.stdout, "two runs drew the same numbers");
    let numbers: Vec<f64> = a.stdout.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert!(numbers.iter().all(|n| (0.0..1.0).contains(n)) && numbers[0] != numbers[1], "{numbers:?}");
    // performance.now() counts from the start of this run; timeOrigin is when that was.
    let r = javascript("const t = performance.now(); console.log(t, performance.timeOrigin + t - Date.now())");
    let [now, skew]: [f64; 2] = r.stdout.split_whitespace().map(|n| n.parse().unwrap()).collect::<Vec<_>>().try_into().unwrap();
    assert!((0.0..1000.0).contains(&now), "performance.now() = {now}");
    assert!(skew.abs() < 50.0, "timeOrigin is {skew} ms off the wall clock");
}

#[test]
fn javascript_environment_and_small_memory_caps_still_work_from_the_plain_interpreter() {
    let mut req = request(Language::Javascript, "console.log(process.env.GREETING, Math.random() < 1)");
    req.env.insert("GREETING".into(), "hello".into());
    let r = sandbox().run(&req);
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "hello true\n"), "{r:#?}");
    let r = javascript("console.log(process.env.GREETING, process.env.HOME)");
    assert_eq!(r.stdout, "undefined /scratch\n");
    // The snapshot holds no more memory than the interpreter it was made from (its C stack
    // alone is 8 MiB): the smallest cap that runs one runs the other.
    let mut req = request(Language::Javascript, "console.log('small')");
    req.limits.memory_mb = 9;
    let r = sandbox().run(&req);
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "small\n"), "{r:#?}");
    req.limits.memory_mb = 8;
    assert_status(&sandbox().run(&req), Status::MemoryLimit);
}

/// `[python] preinit_imports` (`SandboxConfig::preinit_imports`): the modules named are
/// imported in a snapshot of their own, so a run starts with them in `sys.modules`, and the
/// default snapshot, used by every sandbox without the list, still starts without them. A
/// module may print as it imports (`this` prints the Zen of Python): the snapshot is built all
/// the same, and no run sees that output.
#[test]
fn configured_modules_are_imported_in_a_snapshot_of_their_own() {
    let code = "import sys\nprint([name in sys.modules for name in ('statistics', 'graphlib', 'numpy', 'this')])";
    let modules = ["statistics", "graphlib", "numpy", "this"].map(String::from).to_vec();
    let sandbox = Sandbox::new(SandboxConfig { warm_instances: 0, preinit_imports: modules, ..SandboxConfig::default() });
    let own = sandbox.run(&request(Language::Python, code));
    assert_status(&own, Status::Ok);
    assert_eq!(own.stdout, "[True, True, True, True]\n");
    let default = python(code);
    assert_eq!(default.stdout, "[False, False, True, False]\n");
    // The names stay unbound until imported, as with the default list.
    let clean = sandbox.run(&request(Language::Python, "print(sorted(n for n in globals() if not n.startswith('__')))\nimport statistics\nprint(statistics.mean([1, 2, 3]))"));
    assert_eq!(clean.stdout, "[]\n2\n", "{clean:#?}");
}

/// A listed module that cannot be imported (a typo, a module the runtime does not have) makes
/// no snapshot: Python runs on the plain interpreter, and still runs.
#[test]
fn a_configured_module_that_fails_to_import_leaves_runs_on_the_plain_interpreter() {
    let config = SandboxConfig { warm_instances: 0, preinit_imports: vec!["wsbx_no_such_module".into()], ..SandboxConfig::default() };
    let r = Sandbox::new(config).run(&request(Language::Python, "import sys\nprint('numpy' in sys.modules, 6 * 7)"));
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "False 42\n");
}

/// The build-and-verify mechanism, on a tiny module so it runs in milliseconds.
#[test]
fn a_damaged_snapshot_is_rebuilt_never_used() {
    let home = tempfile::tempdir().unwrap();
    let runtimes = wsbx::runtimes::Runtimes::new(home.path());
    let engine = wsbx::backend::wasm::WasmEngine::shared().unwrap();
    let snapshot = home.path().join("python-preinit-test.wasm");
    let builds = std::cell::Cell::new(0);
    let build = |_: &mut dyn std::io::Write| -> Result<String, String> {
        builds.set(builds.get() + 1);
        let wasm = wat_module(builds.get());
        std::fs::write(&snapshot, &wasm).unwrap();
        let sha = wsbx::runtimes::sha256_file(&snapshot).unwrap();
        std::fs::write(snapshot.with_extension("sha256"), &sha).unwrap();
        Ok(sha)
    };
    let mut progress = Vec::new();
    runtimes.preinit(&engine, &snapshot, "test", build, &mut progress).unwrap();
    assert_eq!(builds.get(), 1);
    // Loaded from the compiled cache: no build.
    let again = |_: &mut dyn std::io::Write| -> Result<String, String> { panic!("rebuilt an intact snapshot") };
    runtimes.preinit(&engine, &snapshot, "test", again, &mut progress).unwrap();
    // The compiled file and the snapshot both damaged: rebuilt. Damaged by replacing them:
    // truncating a file this process has mapped (the shared engine holds the module, and the
    // unwinder its frame tables) would turn the next panic's backtrace in any test into SIGBUS.
    let damage = |path: &std::path::Path, bytes: &[u8]| {
        let garbage = path.with_extension("garbage");
        std::fs::write(&garbage, bytes).unwrap();
        std::fs::rename(&garbage, path).unwrap();
    };
    for entry in std::fs::read_dir(home.path().join("compiled")).unwrap() {
        damage(&entry.unwrap().path(), b"garbage");
    }
    damage(&snapshot, b"\0asm garbage");
    let fresh = wsbx::backend::wasm::WasmEngine::new().unwrap();
    runtimes.preinit(&fresh, &snapshot, "test", build, &mut progress).unwrap();
    assert_eq!(builds.get(), 2);
}

/// Building a snapshot removes the ones of the same interpreter it replaces (other inputs, an
/// earlier wsbx), and their compiled files, once unused for a week: an upgrade must not leave
/// half a gigabyte behind for good, and two builds of wsbx sharing one home must not rebuild
/// each other's snapshot every time the other ran.
#[test]
fn a_new_snapshot_removes_the_ones_it_replaces_once_unused() {
    let home = tempfile::tempdir().unwrap();
    let runtimes = wsbx::runtimes::Runtimes::new(home.path());
    let engine = wsbx::backend::wasm::WasmEngine::shared().unwrap();
    let build = |snapshot: &std::path::Path, n: u32| {
        let snapshot = snapshot.to_owned();
        move |_: &mut dyn std::io::Write| -> Result<String, String> {
            std::fs::write(&snapshot, wat_module(n)).unwrap();
            std::fs::write(snapshot.with_extension("seeds"), "a record\n").unwrap();
            let sha = wsbx::runtimes::sha256_file(&snapshot).unwrap();
            std::fs::write(snapshot.with_extension("sha256"), &sha).unwrap();
            Ok(sha)
        }
    };
    let old = home.path().join("test-preinit-0001.wasm");
    let other = home.path().join("othertest-preinit-0001.wasm");
    let mut progress = Vec::new();
    runtimes.preinit(&engine, &old, "test", build(&old, 1), &mut progress).unwrap();
    runtimes.preinit(&engine, &other, "othertest", build(&other, 2), &mut progress).unwrap();
    let files = |dir: &std::path::Path| -> std::collections::BTreeSet<String> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
    };
    assert_eq!(files(&home.path().join("compiled")).len(), 2);
    let old_sha = std::fs::read_to_string(old.with_extension("sha256")).unwrap();
    let old_compiled = home.path().join("compiled").join(engine.compiled_name(&old_sha));
    assert!(old_compiled.is_file());

    // Just used: another build of wsbx may be running from it.
    let new = home.path().join("test-preinit-0002.wasm");
    runtimes.preinit(&engine, &new, "test", build(&new, 3), &mut progress).unwrap();
    let left = files(home.path());
    for kept in ["test-preinit-0001.wasm", "test-preinit-0001.sha256", "test-preinit-0001.seeds", "test-preinit-0002.wasm"] {
        assert!(left.contains(kept), "{kept} removed: {left:?}");
    }
    assert_eq!(files(&home.path().join("compiled")).len(), 3);

    // Unused for eight days: the next build takes it and its compiled file away.
    let eight_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(8 * 24 * 3600);
    for path in [old.clone(), old.with_extension("sha256"), old.with_extension("seeds"), old_compiled.clone()] {
        let times = std::fs::FileTimes::new().set_accessed(eight_days_ago).set_modified(eight_days_ago);
        std::fs::File::options().write(true).open(&path).unwrap().set_times(times).unwrap();
    }
    let newest = home.path().join("test-preinit-0003.wasm");
    runtimes.preinit(&engine, &newest, "test", build(&newest, 4), &mut progress).unwrap();
    let left = files(home.path());
    for gone in ["test-preinit-0001.wasm", "test-preinit-0001.sha256", "test-preinit-0001.seeds"] {
        assert!(!left.contains(gone), "{gone} left: {left:?}");
    }
    for kept in ["test-preinit-0002.wasm", "test-preinit-0002.sha256", "test-preinit-0003.wasm", "test-preinit-0003.seeds", "othertest-preinit-0001.wasm"] {
        assert!(left.contains(kept), "{kept} removed: {left:?}");
    }
    // The old compiled file went with it; the other interpreter's, 0002's and 0003's are there.
    assert!(!old_compiled.exists());
    assert_eq!(files(&home.path().join("compiled")).len(), 3);
    assert!(String::from_utf8_lossy(&progress).contains("removed 3 replaced test snapshot files"), "{}", String::from_utf8_lossy(&progress));
}

fn wat_module(n: u32) -> Vec<u8> {
    format!("(module (func (export \"f\") (result i32) i32.const {n}))").into_bytes()
}
