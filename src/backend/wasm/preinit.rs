//! A pre-initialized Python: the interpreter's memory snapshotted with wsbx's prelude run and
//! the modules agents use most already imported, so a run starts where they left off.
//!
//! Built once per machine (at install, or the first time Python is loaded) with
//! `wasmtime-wizer`: instrument the pinned module, instantiate it with the same grants a run
//! has (the preopen table is baked into the snapshot, so the order and guest paths must match),
//! run the prelude and the imports of [`IMPORTS`], snapshot the instance into a new module,
//! then compile that like the original. Every run still gets a fresh instance of it
//! (copy-on-write): nothing of one run reaches another. What a snapshot would freeze is
//! refreshed at the start of each run by [`RESEED`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Linker, Store};
use wasmtime_wizer::{InstanceState, SnapshotVal, Wizer};

use super::limits::MemoryCap;
use super::wasi::{self, GuestIo, Grants};
use super::GuestState;

/// Modules imported into the snapshot: the traceback machinery an uncaught exception needs
/// (92 M fuel, 40 ms on a fresh interpreter), and the data stack (`import pandas` alone is
/// 4.4 G fuel, a second).
pub const IMPORTS: &[&str] = &["traceback", "linecache", "json", "re", "random", "numpy", "pandas", "matplotlib", "matplotlib.pyplot"];

/// Defines, in the snapshot, what [`RESEED`] calls: fresh seeds for `random` and numpy's
/// global generator (a snapshot would otherwise give every run the same numbers), and the turn
/// counter back at zero so the user's code is `<turn 1>`. Compiled once here, so a run only
/// compiles the one-line call (compiling the body on every run was a tenth of a hello).
///
/// The seeds are fixed-size draws from the host's entropy, so that seeding leaves the heap the
/// same shape in every run and the user's code costs the same fuel each time.
const RESEED_SETUP: &str = "
def _wsbx_reseed(os=os, random=random, numpy=numpy, reactor=_reactor):
    random.seed(int.from_bytes(os.urandom(8)) | 1 << 63)
    numpy.random.seed(int.from_bytes(os.urandom(4)) & 0x7fffffff | 1 << 30)
    reactor._turns = 0
_reactor._wsbx_reseed = _wsbx_reseed
del _wsbx_reseed
";

/// Run at the start of every run of the snapshot: see [`RESEED_SETUP`].
pub const RESEED: &str = "_reactor._wsbx_reseed()\n";

/// Bumped whenever what goes into a snapshot changes in a way the inputs below do not show.
const RECIPE: &str = "wsbx-preinit-2";

/// Where the snapshot of `base_sha256` with `prelude` lives under `dir`: its name carries
/// everything it was made from, so a change to any of it makes a new one.
pub fn snapshot_path(dir: &Path, base_sha256: &str, prelude: &str) -> PathBuf {
    let mut hasher = Sha256::new();
    for part in [RECIPE, base_sha256, prelude, RESEED_SETUP, env!("CARGO_PKG_VERSION")] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    for module in IMPORTS {
        hasher.update(module.as_bytes());
        hasher.update([0]);
    }
    dir.join(format!("python-preinit-{}.wasm", &hex::encode(hasher.finalize())[..16]))
}

/// The file holding the snapshot's own sha256, written after the snapshot itself: a snapshot
/// without it (an interrupted build) is never used.
pub fn stamp_path(snapshot: &Path) -> PathBuf {
    snapshot.with_extension("sha256")
}

/// Builds the snapshot of the module at `base` into `out` (and its stamp), given the grants a
/// run has with a throwaway scratch directory. Returns the snapshot's sha256.
pub fn build(base: &Path, grants: &Grants, prelude: &str, out: &Path, progress: &mut dyn Write) -> Result<String, String> {
    let started = Instant::now();
    let _ = writeln!(progress, "wsbx: pre-initializing python (prelude and {} modules imported, once per machine)", IMPORTS.len());
    let wasm = std::fs::read(base).map_err(|e| format!("reading {}: {e}", base.display()))?;
    let wizer = Wizer::new();
    let (cx, instrumented) = wizer.instrument(&wasm).map_err(|e| format!("instrumenting the python module: {e}"))?;

    // The instrumented module runs once: compile it fast rather than well.
    let mut config = Config::new();
    config.wasm_exceptions(true);
    // As in the run engine: the async stack first, or wasmtime refuses the wasm stack.
    config.async_stack_size(super::engine::MAX_WASM_STACK + (1 << 20));
    config.max_wasm_stack(super::engine::MAX_WASM_STACK);
    config.cranelift_opt_level(wasmtime::OptLevel::None);
    let engine = Engine::new(&config).map_err(|e| format!("creating the snapshot engine: {e}"))?;
    let heartbeat = super::engine::Heartbeat::start("pre-initializing python", progress);
    let module = wasmtime::Module::new(&engine, &instrumented).map_err(|e| format!("compiling the instrumented module: {e}"));
    drop(instrumented);
    let module = module?;

    let mut linker = Linker::new(&engine);
    wasi::link(&mut linker).map_err(|e| format!("linking WASI: {e}"))?;
    linker
        .func_wrap("host", "call", |_: i32, _: i32, _: i32, _: i32| -1i32)
        .map_err(|e| format!("linking host.call: {e}"))?;
    let io = GuestIo::new(1 << 20);
    let clock = wasi::RunClock::starting_now();
    let ctx = wasi::context(grants, &io, &clock)?;
    let state = GuestState::new(ctx, MemoryCap::new(u64::MAX), clock, Instant::now() + std::time::Duration::from_secs(3600));
    let mut store = Store::new(&engine, state);
    store.limiter(|s| &mut s.memory);

    let snapshot = super::on_guest_thread(move || -> Result<Vec<u8>, String> {
        let instance = linker.instantiate(&mut store, &module).map_err(|e| format!("instantiating: {e}"))?;
        let imports = format!("import os, {}\n{RESEED_SETUP}", IMPORTS.join(", "));
        for (what, code) in [("the prelude", prelude), ("the imports", imports.as_str())] {
            let status = super::python::turn(&mut store, &instance, code.as_bytes()).map_err(|e| format!("running {what}: {e:#}"))?;
            if status != 0 {
                let (stderr, _) = io.stderr.take();
                return Err(format!("{what} failed ({status}): {}", String::from_utf8_lossy(&stderr)));
            }
        }
        let mut state = Snapshotting { store: &mut store, instance };
        block_on(wizer.snapshot(&cx, &mut state)).map_err(|e| format!("snapshotting: {e}"))
    })??;
    drop(heartbeat);

    let sha256 = hex::encode(Sha256::digest(&snapshot));
    let partial = out.with_extension("partial");
    std::fs::write(&partial, &snapshot)
        .and_then(|()| std::fs::rename(&partial, out))
        .and_then(|()| std::fs::write(stamp_path(out), &sha256))
        .map_err(|e| format!("writing {}: {e}", out.display()))?;
    let _ = writeln!(
        progress,
        "wsbx: pre-initialized python in {:.1} s ({} MB)",
        started.elapsed().as_secs_f64(),
        snapshot.len() >> 20
    );
    Ok(sha256)
}

/// What the snapshot reads of the instance: its exported globals and memory.
struct Snapshotting<'a> {
    store: &'a mut Store<GuestState>,
    instance: wasmtime::Instance,
}

impl InstanceState for Snapshotting<'_> {
    async fn global_get(&mut self, name: &str, _: wasmtime_wizer::ValType) -> SnapshotVal {
        let value = self.instance.get_global(&mut *self.store, name).map(|g| g.get(&mut *self.store));
        match value {
            Some(wasmtime::Val::I32(x)) => SnapshotVal::I32(x),
            Some(wasmtime::Val::I64(x)) => SnapshotVal::I64(x),
            Some(wasmtime::Val::F32(x)) => SnapshotVal::F32(x),
            Some(wasmtime::Val::F64(x)) => SnapshotVal::F64(x),
            Some(wasmtime::Val::V128(x)) => SnapshotVal::V128(x.as_u128()),
            // Wizer only asks for globals the instrumentation exported, all of number types.
            _ => SnapshotVal::I32(0),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        match self.instance.get_memory(&mut *self.store, name) {
            Some(memory) => contents(memory.data(&*self.store)),
            None => contents(&[]),
        }
    }
}

/// Runs a future that never waits on anything outside itself (Wizer's snapshot reads the
/// instance and returns) to completion on this thread.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::yield_now();
    }
}
