//! Pre-initialized interpreters: an interpreter's memory snapshotted once it is set up (for
//! Python: wsbx's prelude run and the modules agents use most imported; for JavaScript: the
//! runtime, context and globals made), so a run starts where the set-up left off.
//!
//! Built once per machine (at install, or the first time the interpreter is loaded) with
//! `wasmtime-wizer`: instrument the pinned module, instantiate it with the same grants a run
//! has (the preopen table is baked into the snapshot, so the order and guest paths must match),
//! run the set-up, snapshot the instance into a new module, then compile that like the
//! original. Every run still gets a fresh instance of it (copy-on-write): nothing of one run
//! reaches another. What a snapshot would freeze (seeds, clocks) each interpreter refreshes at
//! the start of a run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Instance, Linker, Store};
use wasmtime_wizer::{InstanceState, SnapshotVal, Wizer};

use super::limits::MemoryCap;
use super::wasi::{self, GuestIo, Grants};
use super::GuestState;

/// Bumped whenever what goes into a snapshot changes in a way the inputs do not show.
const RECIPE: &str = "wsbx-preinit-4";

/// Where the snapshot of the module `base_sha256` of interpreter `name`, set up from `inputs`
/// (the code its set-up runs, the modules it imports), lives under `dir`: its name carries
/// everything it was made from, so a change to any of it makes a new one.
pub fn snapshot_path(dir: &Path, name: &str, base_sha256: &str, inputs: &[&str]) -> PathBuf {
    let mut hasher = Sha256::new();
    for part in [RECIPE, base_sha256, env!("CARGO_PKG_VERSION")].iter().chain(inputs) {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    dir.join(format!("{name}-preinit-{}.wasm", &hex::encode(hasher.finalize())[..16]))
}

/// The file holding the snapshot's own sha256, written after the snapshot itself: a snapshot
/// without it (an interrupted build) is never used.
pub fn stamp_path(snapshot: &Path) -> PathBuf {
    snapshot.with_extension("sha256")
}

/// How a snapshot is made: which interpreter, what it links, and its set-up.
pub struct Recipe<'a> {
    /// The interpreter, as messages name it: "python", "javascript".
    pub name: &'static str,
    /// The pinned module the snapshot is made from.
    pub base: &'a Path,
    /// What a run's guest is granted (with a throwaway scratch directory).
    pub grants: &'a Grants,
    /// Defines the module's imports, as the run engine's linker does.
    pub link: fn(&mut Linker<GuestState>) -> wasmtime::Result<()>,
    /// What "set up" means, for the progress line.
    pub what: &'a str,
}

/// Builds the snapshot `recipe` describes into `out` (and its stamp): `set_up` runs in the
/// instance (given the guest's streams, to report what failed), then its memory and globals
/// become the snapshot. Returns the snapshot's sha256.
pub fn build<S>(recipe: &Recipe<'_>, set_up: S, out: &Path, progress: &mut dyn Write) -> Result<String, String>
where
    S: FnOnce(&mut Store<GuestState>, &Instance, &GuestIo) -> Result<(), String> + Send,
{
    let started = Instant::now();
    let name = recipe.name;
    let _ = writeln!(progress, "wsbx: pre-initializing {name} ({}, once per machine)", recipe.what);
    let wasm = std::fs::read(recipe.base).map_err(|e| format!("reading {}: {e}", recipe.base.display()))?;
    let wizer = Wizer::new();
    let (cx, instrumented) = wizer.instrument(&wasm).map_err(|e| format!("instrumenting the {name} module: {e}"))?;

    // The instrumented module runs once: compile it fast rather than well.
    let mut config = Config::new();
    config.wasm_exceptions(true);
    // As in the run engine: the async stack first, or wasmtime refuses the wasm stack.
    config.async_stack_size(super::engine::MAX_WASM_STACK + (1 << 20));
    config.max_wasm_stack(super::engine::MAX_WASM_STACK);
    config.cranelift_opt_level(wasmtime::OptLevel::None);
    let engine = Engine::new(&config).map_err(|e| format!("creating the snapshot engine: {e}"))?;
    let heartbeat = super::engine::Heartbeat::start(&format!("pre-initializing {name}"), progress);
    let module = wasmtime::Module::new(&engine, &instrumented).map_err(|e| format!("compiling the instrumented module: {e}"));
    drop(instrumented);
    let module = module?;

    let mut linker = Linker::new(&engine);
    (recipe.link)(&mut linker).map_err(|e| format!("linking the {name} module's imports: {e}"))?;
    let io = GuestIo::new(1 << 20);
    let clock = wasi::RunClock::starting_now();
    let ctx = wasi::context(recipe.grants, &io, &clock)?;
    let state = GuestState::new(ctx, MemoryCap::new(u64::MAX), clock, Instant::now() + std::time::Duration::from_secs(3600));
    let mut store = Store::new(&engine, state);
    store.limiter(|s| &mut s.memory);

    let snapshot = super::on_guest_stack(move || -> Result<Vec<u8>, String> {
        let instance = linker.instantiate(&mut store, &module).map_err(|e| format!("instantiating: {e}"))?;
        set_up(&mut store, &instance, &io)?;
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
        "wsbx: pre-initialized {name} in {:.1} s ({} MB)",
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
