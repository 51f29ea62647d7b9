//! JavaScript: QuickJS-NG with our driver (`guests/quickjs/driver.c`), a WASI reactor, one
//! fresh instance per run. A run starts from the pre-initialized snapshot (runtime, context and
//! globals already made, see [`super::preinit`]) when it can, or from a guest prepared ahead of
//! the request when the sandbox keeps guests warm.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use wasmtime::{Instance, InstancePre, Linker, Store};

use super::wasi::{self, Grants};
use super::{preinit, run_guest, run_warm, start_live, warm_pool, Guest, GuestState, Init, Preinit, Start, WasmEngine};
use crate::backend::pool::WarmPool;
use crate::scratch::Scratch;
use crate::backend::{Backend, LiveGuest, Outcome};
use crate::request::ExecRequest;
use crate::runtimes::{Javascript, Runtimes};
use crate::scratch::ScratchSlot;

/// Runs JavaScript jobs.
pub struct JavascriptBackend {
    engine: Arc<WasmEngine>,
    /// The interpreter as built: runs that set environment variables (the snapshot froze
    /// `process.env`) or cap memory below the snapshot's start here, with [`prepare`].
    pre: InstancePre<GuestState>,
    /// The pre-initialized snapshot, when it could be built: every other run starts here.
    preinit: Option<Preinit>,
    warm: Option<WarmPool<(Guest, Scratch)>>,
}

impl JavascriptBackend {
    /// Links the interpreter (and the pre-initialized snapshot, when given) once; every run
    /// instantiates from the result. With `warm` > 0, a background thread keeps that many
    /// guests ready (instantiated, each with a fresh scratch directory).
    pub fn new(
        engine: Arc<WasmEngine>,
        javascript: Javascript,
        preinitialized: Option<wasmtime::Module>,
        scratch_root: &Path,
        warm: usize,
    ) -> Result<JavascriptBackend, String> {
        let mut linker = Linker::new(engine.engine());
        wasi::link(&mut linker).map_err(|e| format!("linking WASI: {e}"))?;
        let pre = linker
            .instantiate_pre(&javascript.module)
            .map_err(|e| format!("linking the javascript module: {e}"))?;
        // `process.env` is read into the snapshot: a run that sets any variable starts plain.
        let preinit = preinitialized.map(|module| Preinit::new(&linker, &module, |env| env.is_empty())).transpose()?;
        let warm_grants = move |scratch: &Path| grants(scratch, &BTreeMap::new());
        let warm = match &preinit {
            Some(p) => warm_pool(warm, engine.clone(), p.pre.clone(), scratch_root, warm_grants, Arc::new(started)),
            None => warm_pool(warm, engine.clone(), pre.clone(), scratch_root, warm_grants, Arc::new(prepare)),
        };
        Ok(JavascriptBackend { engine, pre, preinit, warm })
    }

    /// Where a guest for `request` starts, in order ([`Guest::prepare_first`]): the snapshot
    /// when the request fits it, then the plain interpreter.
    fn interpreters(&self, request: &ExecRequest) -> impl Iterator<Item = Start<'_>> {
        let snapshot = match &self.preinit {
            Some(p) if p.fits(request) => Some(Ok((&p.pre, Arc::new(started) as Init))),
            _ => None,
        };
        snapshot.into_iter().chain(std::iter::once(Ok((&self.pre, Arc::new(prepare) as Init))))
    }
}

/// Loads the pre-initialized interpreter for `javascript` (`wsbx_prepare` done), building it
/// first (once per machine, under the install lock) when it is missing or damaged.
pub fn preinitialized(runtimes: &Runtimes, engine: &WasmEngine, javascript: &Javascript, progress: &mut dyn std::io::Write) -> Result<wasmtime::Module, String> {
    let dir = javascript.module_path.parent().unwrap_or(Path::new("."));
    let snapshot = preinit::snapshot_path(dir, "javascript", &javascript.module_sha256, &[]);
    let build = |progress: &mut dyn std::io::Write| {
        let scratch = tempfile::tempdir().map_err(|e| format!("creating a scratch directory for the snapshot: {e}"))?;
        let grants = grants(scratch.path(), &BTreeMap::new());
        let recipe = preinit::Recipe {
            name: "javascript",
            base: &javascript.module_path,
            grants: &grants,
            link: wasi::link,
            what: "runtime, context and globals made",
        };
        let set_up = |store: &mut Store<GuestState>, instance: &Instance, io: &wasi::GuestIo| {
            prepare(store, instance).map_err(|e| {
                let (stderr, _) = io.stderr.take();
                format!("preparing the interpreter: {e:#} {}", String::from_utf8_lossy(&stderr))
            })
        };
        preinit::build(&recipe, set_up, &snapshot, progress)
    };
    runtimes.preinit(engine, &snapshot, "javascript", build, progress).map_err(|e| e.to_string())
}

/// What a JavaScript guest is granted: its scratch directory read-write at /scratch and an
/// environment of HOME plus what the request sets.
fn grants(scratch: &Path, env: &BTreeMap<String, String>) -> Grants {
    let mut all: Vec<(String, String)> = vec![("HOME".into(), "/scratch".into())];
    all.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    Grants { args: vec!["qjs".to_owned()], env: all, dirs: vec![(scratch.to_owned(), "/scratch", true)] }
}

/// C runtime set-up, then the driver's: runtime, context, console, timers, process.
fn prepare(store: &mut Store<GuestState>, instance: &Instance) -> wasmtime::Result<()> {
    let initialize = instance.get_typed_func::<(), ()>(&mut *store, "_initialize")?;
    initialize.call(&mut *store, ())?;
    let prepare = instance.get_typed_func::<(), i32>(&mut *store, "wsbx_prepare")?;
    match prepare.call(&mut *store, ())? {
        0 => Ok(()),
        status => Err(wasmtime::format_err!("the javascript driver failed to start ({status})")),
    }
}

/// A fresh instance of the snapshot is ready as it is: the driver reseeds and restarts what the
/// snapshot froze at the start of each run.
fn started(_: &mut Store<GuestState>, _: &Instance) -> wasmtime::Result<()> {
    Ok(())
}

/// How the driver takes a program (`wsbx_run`'s mode).
#[derive(Clone, Copy)]
#[repr(i32)]
enum Mode {
    /// A script unless it cannot be one (then a module): a one-shot run.
    Detect = 0,
    /// A script whose declarations stay for the next turn, a module only when it must be.
    Turn = 3,
}

/// Hands a one-shot program to the driver and runs it; returns its exit status.
fn run_code(store: &mut Store<GuestState>, instance: &Instance, code: &str) -> wasmtime::Result<i32> {
    run_mode(store, instance, code, Mode::Detect)
}

/// Hands a session's turn to the driver and runs it in the context earlier turns left.
fn run_turn(store: &mut Store<GuestState>, instance: &Instance, code: &str) -> wasmtime::Result<i32> {
    run_mode(store, instance, code, Mode::Turn)
}

fn run_mode(store: &mut Store<GuestState>, instance: &Instance, code: &str, mode: Mode) -> wasmtime::Result<i32> {
    let alloc = instance.get_typed_func::<i32, i32>(&mut *store, "wsbx_alloc")?;
    let run = instance.get_typed_func::<(i32, i32, i32), i32>(&mut *store, "wsbx_run")?;
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| wasmtime::format_err!("the javascript module exports no memory"))?;
    let len = i32::try_from(code.len()).map_err(|_| wasmtime::format_err!("the program is too large"))?;
    let mut ptr = alloc.call(&mut *store, len)?;
    // No room for the program: the driver reports it when handed a null pointer.
    if ptr == 0 || memory.write(&mut *store, ptr as u32 as usize, code.as_bytes()).is_err() {
        ptr = 0;
    }
    run.call(&mut *store, (ptr, len, mode as i32))
}

impl Backend for JavascriptBackend {
    fn run(&self, request: &ExecRequest, scratch: &mut ScratchSlot<'_>) -> Outcome {
        let code = |store: &mut Store<GuestState>, instance: &Instance| run_code(store, instance, &request.code);
        if let Some(outcome) = run_warm(self.warm.as_ref(), request, scratch, code) {
            return outcome;
        }
        let scratch = match scratch.fresh() {
            Ok(scratch) => scratch,
            Err(e) => return e.into(),
        };
        let grants = grants(scratch.path(), &request.env);
        run_guest(&self.engine, self.interpreters(request), request, &grants, code)
    }

    /// A session keeps one runtime and context: each turn is evaluated in it, so globals,
    /// functions and resolved promises stay; a turn's jobs and timers run to its end.
    fn stop_preparing(&self) {
        if let Some(warm) = &self.warm {
            warm.stop();
        }
    }

    fn start_live(&self, request: &ExecRequest, scratch: &mut ScratchSlot<'_>) -> Option<Result<Box<dyn LiveGuest>, Outcome>> {
        let grants = |dir: &Path| grants(dir, &request.env);
        Some(start_live(&self.engine, self.warm.as_ref(), self.interpreters(request), grants, request, scratch, run_turn))
    }
}
