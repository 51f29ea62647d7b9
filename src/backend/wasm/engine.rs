//! The wasmtime engine every wasm guest shares, its epoch ticker, and the compiled-module cache.

use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};

use crate::request::Limits;

/// How often the engine's epoch advances. The wall-clock deadline of a compute-bound guest is
/// checked at this granularity: a run overshoots its deadline by at most one tick. Shorter ticks
/// cost a wake-up of the ticker thread each; 10 ms is invisible next to CPython's start-up and
/// keeps the ticker's cost near zero.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Wasm stack a guest may use. CPython's recursion and QuickJS's parser need deep stacks; 8 MiB
/// lets Python reach its default recursion limit of 1000 frames with room to spare. Guests run
/// on a host thread with [`HOST_THREAD_STACK`] so this never meets the native guard page.
pub const MAX_WASM_STACK: usize = 8 << 20;

/// Native stack of the thread a guest runs on: the wasm stack plus room for wasmtime's and
/// WASI's own frames.
pub const HOST_THREAD_STACK: usize = MAX_WASM_STACK + (4 << 20);

/// Instances that may be alive at once in the shared engine's pool unless
/// [`set_pool_instances`] says otherwise. Each slot reserves address space (not memory) for a
/// linear memory of up to [`Limits::CEILING`]`.memory_mb`.
pub const POOL_INSTANCES: u32 = 64;

/// The pool size the shared engine is built with.
static POOL_SIZE: AtomicU32 = AtomicU32::new(POOL_INSTANCES);

/// Sizes the shared engine's instance pool: room for every guest alive at once — runs in
/// flight, guests kept warm, sessions' live guests, and retired guests still being torn down.
/// A guest that finds the pool full fails with `internal_error`, so a server sizes it from its
/// flags (see `wsbx serve --max-sessions`). Only takes effect before the shared engine is
/// built (the first run or [`WasmEngine::shared`]); says so otherwise. Compiled modules do not
/// depend on it.
pub fn set_pool_instances(instances: u32) -> Result<(), String> {
    POOL_SIZE.store(instances.max(1), Ordering::SeqCst);
    let built = BUILT_POOL.load(Ordering::SeqCst);
    match SHARED_BUILT.load(Ordering::SeqCst) {
        true if built < instances => Err(format!("the wasm engine was built already, with room for {built} guests, not {instances}")),
        _ => Ok(()),
    }
}

/// Whether the shared engine exists, and the pool size it was built with.
static SHARED_BUILT: AtomicBool = AtomicBool::new(false);
static BUILT_POOL: AtomicU32 = AtomicU32::new(0);

/// Table elements per instance in the pool: CPython's snapshot needs 47,157.
const POOL_TABLE_ELEMENTS: usize = 65_536;

/// Per-instance metadata size in the pool: CPython's snapshot needs about 1.6 MB.
const POOL_MAX_INSTANCE_SIZE: usize = 16 << 20;

/// Linear memory a pool slot keeps resident between instances (see `config`).
const KEEP_RESIDENT_MEMORY: usize = 32 << 20;

/// Table bytes a pool slot keeps resident: all of CPython's table (47,157 elements).
const KEEP_RESIDENT_TABLE: usize = 1 << 20;

/// Idle pool slots that keep their resident memory for the next instance of the same module.
const KEEP_WARM_SLOTS: u32 = 8;

/// The engine configuration. The compiled-module cache is keyed by it (through wasmtime's
/// compatibility hash), so changing anything here recompiles the runtimes once.
fn config(pool_instances: u32) -> Result<Config, wasmtime::Error> {
    let mut config = Config::new();
    // CPython's snapshot is built with wasm exception handling.
    config.wasm_exceptions(true);
    // CPU metering (`out_of_fuel`) and the wall-clock deadline (`timeout`).
    config.consume_fuel(true);
    config.epoch_interruption(true);
    // wasmtime requires the async stack to be at least the wasm stack, so set it first.
    config.async_stack_size(MAX_WASM_STACK + (1 << 20));
    config.max_wasm_stack(MAX_WASM_STACK);
    // Copy-on-write memory images: a fresh instance maps the snapshot's memory instead of
    // copying it (measured: without it each Python run costs +6.5 ms and +15.8 M fuel).
    config.memory_init_cow(true);

    let mut pool = PoolingAllocationConfig::new();
    // A store that throws a wasm exception (CPython does, for every Python exception) gets a
    // GC heap, which the pool backs with a slot of its memory pool: two memories per guest.
    pool.total_core_instances(pool_instances)
        .total_memories(pool_instances.saturating_mul(2))
        .total_gc_heaps(pool_instances)
        .total_tables(pool_instances)
        .total_stacks(pool_instances)
        .max_memory_size(Limits::CEILING.memory_bytes() as usize)
        .table_elements(POOL_TABLE_ELEMENTS)
        .max_core_instance_size(POOL_MAX_INSTANCE_SIZE);
    // Where the kernel can say which pages an instance dirtied (PAGEMAP_SCAN, Linux 6.7+), a
    // slot's dirtied pages are copied back from the image instead of unmapped, so the next
    // instance in it does not fault them in again (measured: 340 → 213 page faults per Python
    // hello, about -0.3 ms). Without the scan wasmtime would reset the whole kept range by
    // memset, several times slower than unmapping, so then nothing is kept. At most
    // `KEEP_WARM_SLOTS` idle slots keep memory, bounding what idle slots hold resident.
    //
    // Not while swap is on: this wasmtime's scan counts only *present* dirty pages, so a page
    // an instance dirtied that was swapped out since would be left as it is and seen by the
    // next instance in the slot (wasmtime 50 fixed this; it needs a newer Rust than ours).
    if PoolingAllocationConfig::is_pagemap_scan_available() && !swap_in_use() {
        pool.pagemap_scan(wasmtime::Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(KEEP_RESIDENT_TABLE)
            .max_unused_warm_slots(KEEP_WARM_SLOTS);
    }
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Ok(config)
}

/// Whether the kernel may swap this process's pages out: any active swap area, or no way to
/// tell (`/proc/swaps` unreadable).
fn swap_in_use() -> bool {
    std::fs::read_to_string("/proc/swaps").map_or(true, |swaps| swap_areas(&swaps) > 0)
}

/// The swap areas `/proc/swaps` lists (a header line, then one line per area).
fn swap_areas(swaps: &str) -> usize {
    swaps.lines().skip(1).filter(|line| !line.trim().is_empty()).count()
}

/// The engine every wasm guest of the process shares, the thread that advances its epoch, and
/// the modules loaded into it.
pub struct WasmEngine {
    engine: Engine,
    ticker_stop: Arc<AtomicBool>,
    loaded: Mutex<HashMap<PathBuf, Module>>,
}

impl WasmEngine {
    /// The process-wide engine, built on first use. One engine per process means one instance
    /// pool sized for the process, one epoch ticker, and each compiled module mapped once
    /// however many [`Sandbox`](crate::Sandbox)es use it.
    pub fn shared() -> Result<Arc<WasmEngine>, String> {
        static SHARED: OnceLock<Result<Arc<WasmEngine>, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                SHARED_BUILT.store(true, Ordering::SeqCst);
                let instances = POOL_SIZE.load(Ordering::SeqCst);
                BUILT_POOL.store(instances, Ordering::SeqCst);
                WasmEngine::with_pool(instances).map(Arc::new).map_err(|e| format!("creating the wasm engine: {e}"))
            })
            .clone()
    }

    /// Builds an engine of its own and starts its epoch ticker. Prefer [`WasmEngine::shared`].
    pub fn new() -> Result<WasmEngine, wasmtime::Error> {
        WasmEngine::with_pool(POOL_INSTANCES)
    }

    /// Like [`WasmEngine::new`], with room for `pool_instances` guests alive at once.
    pub fn with_pool(pool_instances: u32) -> Result<WasmEngine, wasmtime::Error> {
        let engine = Engine::new(&config(pool_instances)?)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let stop = ticker_stop.clone();
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wsbx-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(wasmtime::Error::new)?;
        Ok(WasmEngine { engine, ticker_stop, loaded: Mutex::new(HashMap::new()) })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The file name of `module_sha256` compiled for this engine: the module's hash, wasmtime's
    /// version, the engine configuration and [`COMPILE_RECIPE`] all go into it. It starts with
    /// the module's own name ([`module_prefix`]), so the files one module was compiled to by
    /// other builds of wsbx can be found and removed.
    pub fn compiled_name(&self, module_sha256: &str) -> String {
        let mut hasher = ShaHasher(Sha256::new());
        hasher.write(module_sha256.as_bytes());
        hasher.write(COMPILE_RECIPE.as_bytes());
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut hasher);
        format!("{}-{}.cwasm", module_prefix(module_sha256), &hex::encode(hasher.0.finalize())[..32])
    }

    /// Loads a compiled module from `dir`, or compiles `wasm` into it first.
    ///
    /// The compiled file is written to a temporary name and renamed, so a crash mid-write never
    /// leaves a file that counts as compiled. A compiled file that wasmtime refuses to load
    /// (truncated, from another build) is compiled again.
    pub fn load_or_compile(
        &self,
        wasm: &Path,
        module_sha256: &str,
        dir: &Path,
        what: &str,
        progress: &mut dyn Write,
    ) -> Result<Module, String> {
        let cwasm = dir.join(self.compiled_name(module_sha256));
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(module) = loaded.get(&cwasm) {
            return Ok(module.clone());
        }
        let module = self.load_or_compile_uncached(wasm, &cwasm, what, progress)?;
        loaded.insert(cwasm, module.clone());
        Ok(module)
    }

    fn load_or_compile_uncached(
        &self,
        wasm: &Path,
        cwasm: &Path,
        what: &str,
        progress: &mut dyn Write,
    ) -> Result<Module, String> {
        if cwasm.exists() {
            match self.deserialize(cwasm) {
                Ok(module) => return Ok(module),
                Err(e) => {
                    let _ = writeln!(progress, "wsbx: compiled {what} is unusable ({e}); compiling again");
                    let _ = std::fs::remove_file(cwasm);
                }
            }
        }
        self.compile(wasm, cwasm, what, progress)?;
        remove_replaced(cwasm, progress);
        self.deserialize(cwasm)
    }

    /// Loads `module_sha256` compiled for this engine from `dir`, never compiling: `Err` when it
    /// is not there or does not load.
    pub fn load_compiled(&self, module_sha256: &str, dir: &Path) -> Result<Module, String> {
        let cwasm = dir.join(self.compiled_name(module_sha256));
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(module) = loaded.get(&cwasm) {
            return Ok(module.clone());
        }
        let module = self.deserialize(&cwasm)?;
        loaded.insert(cwasm, module.clone());
        Ok(module)
    }

    /// Whether `module_sha256` is already compiled for this engine in `dir`.
    pub fn is_compiled(&self, module_sha256: &str, dir: &Path) -> bool {
        dir.join(self.compiled_name(module_sha256)).exists()
    }

    fn deserialize(&self, cwasm: &Path) -> Result<Module, String> {
        // SAFETY: the file was written by `compile` below through `Engine::precompile_module`
        // of an engine with this configuration (its name carries the configuration's hash), and
        // it lives in wsbx's own cache directory. wasmtime checks the header and the engine
        // compatibility again before mapping it.
        unsafe { Module::deserialize_file(&self.engine, cwasm) }.map_err(|e| e.to_string())
    }

    fn compile(&self, wasm: &Path, cwasm: &Path, what: &str, progress: &mut dyn Write) -> Result<(), String> {
        let bytes = std::fs::read(wasm).map_err(|e| format!("reading {}: {e}", wasm.display()))?;
        let bytes = without_names(&bytes);
        let dir = cwasm.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let _ = writeln!(
            progress,
            "wsbx: compiling {what} for this machine (once per machine; Python takes 1-3 minutes)..."
        );
        let started = Instant::now();
        let heartbeat = Heartbeat::start(&format!("compiling {what}"), progress);
        let compiled = self.engine.precompile_module(&bytes);
        drop(heartbeat);
        let compiled = compiled.map_err(|e| format!("compiling {what}: {e}"))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| format!("creating a temporary file in {}: {e}", dir.display()))?;
        tmp.write_all(&compiled)
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(|e| format!("writing {}: {e}", cwasm.display()))?;
        tmp.persist(cwasm).map_err(|e| format!("writing {}: {e}", cwasm.display()))?;
        let _ = writeln!(
            progress,
            "wsbx: compiled {what} in {:.1} s ({} MB)",
            started.elapsed().as_secs_f64(),
            compiled.len() >> 20
        );
        Ok(())
    }
}

/// The start of every compiled file name of the module `module_sha256`: 16 of its hex digits.
fn module_prefix(module_sha256: &str) -> &str {
    module_sha256.get(..16).filter(|p| p.bytes().all(|b| b.is_ascii_hexdigit())).unwrap_or("module")
}

/// Removes every file in `dir` the module `module_sha256` was compiled to, by any build of
/// wsbx, and says how many bytes that freed: for a module nothing will load again.
pub(crate) fn remove_compiled(dir: &Path, module_sha256: &str) -> u64 {
    let prefix = format!("{}-", module_prefix(module_sha256));
    remove_files(dir, |name, _| name.starts_with(&prefix) && name.ends_with(".cwasm"))
}

/// Removes the files in `dir` that `pick` picks by name and metadata, and says how many bytes
/// that freed. Metadata is `symlink_metadata`: a link is judged (and removed) as itself, never
/// its target.
fn remove_files(dir: &Path, pick: impl Fn(&str, &std::fs::Metadata) -> bool) -> u64 {
    let mut freed = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let (Some(name), Ok(meta)) = (entry.file_name().to_str().map(str::to_owned), std::fs::symlink_metadata(entry.path())) else {
            continue;
        };
        if pick(&name, &meta) && std::fs::remove_file(entry.path()).is_ok() {
            freed += meta.len();
        }
    }
    freed
}

/// How long a file the same module was compiled to before (or a replaced snapshot) must have
/// gone unused before [`remove_replaced`] (or a snapshot's build) removes it. Two builds of
/// wsbx with different wasmtimes can share one `$WSBX_HOME` (an installed release and a
/// development build): removing the other's file at once would have each recompile CPython
/// (~2.5 minutes) every time the other ran. Mapping a
/// file updates its access time (at least daily under `relatime`), so a week unused means
/// nothing runs from it; what an upgrade replaces goes at the next upgrade.
pub(crate) const REPLACED_UNUSED_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// Whether the file `meta` describes was neither read nor written for [`REPLACED_UNUSED_FOR`].
pub(crate) fn long_unused(meta: &std::fs::Metadata) -> bool {
    let last_used = [meta.accessed(), meta.modified()].into_iter().flatten().max();
    last_used.and_then(|t| t.elapsed().ok()).is_some_and(|idle| idle >= REPLACED_UNUSED_FOR)
}

/// Removes the files in `cwasm`'s directory that the same module was compiled to before (by
/// another wasmtime, engine configuration or [`COMPILE_RECIPE`]), and those named the way
/// wsbx named compiled files before they carried the module's name, once unused for
/// [`REPLACED_UNUSED_FOR`]: CPython's are ~400 MB each. Runs under the install lock, right
/// after `cwasm` was written; a process still running from a removed file keeps its mapping.
fn remove_replaced(cwasm: &Path, progress: &mut dyn Write) {
    let (Some(dir), Some(name)) = (cwasm.parent(), cwasm.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let Some((prefix, _)) = name.split_once('-') else {
        return;
    };
    let replaced = |other: &str| {
        let Some(stem) = other.strip_suffix(".cwasm") else {
            return false;
        };
        let unnamed = stem.len() == 32 && stem.bytes().all(|b| b.is_ascii_hexdigit());
        other != name && (unnamed || stem.split_once('-').is_some_and(|(p, _)| p == prefix))
    };
    let freed = remove_files(dir, |other, meta| replaced(other) && long_unused(meta));
    if freed > 0 {
        let _ = writeln!(progress, "wsbx: removed files earlier builds compiled it to, unused for a week ({} MB)", freed >> 20);
    }
}

/// What [`WasmEngine::compile`] does to a module besides compiling it, part of the compiled
/// file's name so a cache written by an older recipe is compiled again rather than reused.
const COMPILE_RECIPE: &str = "name section dropped";

/// `wasm` without its `name` custom section; the rest byte for byte.
///
/// wasmtime keeps an entry per function from that section in the compiled module's metadata,
/// and every process that loads the module deserializes them all: CPython's 90,000 functions
/// were 8 % of a whole `wsbx exec` hello (~1.3 ms). The names only label wasm backtraces and
/// profiles (`wasm-function[891]` instead of `PyObject_CallFunctionObjArgs`), which no result
/// shows; the downloaded module on disk keeps them for whoever needs to map an index back.
///
/// Anything that does not walk as a module's sections is returned as it is, for wasmtime to
/// refuse with its own message.
fn without_names(wasm: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    /// The start and end of each top-level section (header included), and whether it is `name`.
    fn sections(wasm: &[u8]) -> Option<Vec<(usize, usize, bool)>> {
        let leb = |at: &mut usize| -> Option<usize> {
            let mut value = 0u64;
            for shift in (0..35).step_by(7) {
                let byte = *wasm.get(*at)?;
                *at += 1;
                value |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return usize::try_from(value).ok();
                }
            }
            None
        };
        let mut at = 8;
        let mut found = Vec::new();
        while at < wasm.len() {
            let start = at;
            let id = wasm[at];
            at += 1;
            let size = leb(&mut at)?;
            let end = at.checked_add(size).filter(|&end| end <= wasm.len())?;
            let is_name = id == 0 && {
                let len = leb(&mut at)?;
                at.checked_add(len).filter(|&e| e <= end).is_some_and(|e| &wasm[at..e] == b"name")
            };
            found.push((start, end, is_name));
            at = end;
        }
        Some(found)
    }
    if wasm.get(..8) != Some(b"\0asm\x01\0\0\0".as_slice()) {
        return Cow::Borrowed(wasm);
    }
    match sections(wasm) {
        Some(sections) if sections.iter().any(|&(_, _, is_name)| is_name) => {
            let mut kept = wasm[..8].to_vec();
            for (start, end, _) in sections.into_iter().filter(|&(_, _, is_name)| !is_name) {
                kept.extend_from_slice(&wasm[start..end]);
            }
            Cow::Owned(kept)
        }
        _ => Cow::Borrowed(wasm),
    }
}

impl Drop for WasmEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Feeds `Hash` output into SHA-256, so the cache key is stable across Rust versions (the
/// standard library's hasher is not).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Says on stderr every 15 s that a long step (`what`) is still going, until dropped.
pub(crate) struct Heartbeat {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    pub(crate) fn start(what: &str, _progress: &mut dyn Write) -> Heartbeat {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let what = what.to_owned();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let mut last = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() >= Duration::from_secs(15) {
                    last = Instant::now();
                    crate::errln!("wsbx: still {what} ({} s)", started.elapsed().as_secs());
                }
            }
        });
        Heartbeat { done, thread: Some(thread) }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where compiled modules live inside a wsbx home.
pub fn compiled_dir(home: &Path) -> PathBuf {
    home.join("compiled")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module exporting an empty `f`, with a `name` section naming it and another custom
    /// section (`keep`) after it.
    fn named_module() -> (Vec<u8>, std::ops::Range<usize>) {
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        wasm.extend([1, 4, 1, 0x60, 0, 0]); // types: () -> ()
        wasm.extend([3, 2, 1, 0]); // functions: one of type 0
        wasm.extend([7, 5, 1, 1, b'f', 0, 0]); // exports: "f" = function 0
        wasm.extend([10, 4, 1, 2, 0, 0x0b]); // code: an empty body
        let names = wasm.len();
        wasm.extend([0, 11, 4, b'n', b'a', b'm', b'e', 1, 4, 1, 0, 1, b'f']); // function 0 is "f"
        let names = names..wasm.len();
        wasm.extend([0, 6, 4, b'k', b'e', b'e', b'p', 0xaa]);
        (wasm, names)
    }

    #[test]
    fn the_name_section_is_dropped_and_every_other_byte_kept() {
        let (wasm, names) = named_module();
        let stripped = without_names(&wasm);
        let mut expected = wasm[..names.start].to_vec();
        expected.extend_from_slice(&wasm[names.end..]);
        assert_eq!(&*stripped, &expected[..]);
        let engine = Engine::default();
        let module = Module::new(&engine, &*stripped).expect("the stripped module is valid");
        assert!(module.get_export("f").is_some());
        // Without a name section nothing changes, and nothing is copied.
        assert!(matches!(without_names(&stripped), std::borrow::Cow::Borrowed(b) if b == &stripped[..]));
    }

    #[test]
    fn what_does_not_walk_as_sections_is_left_for_wasmtime_to_refuse() {
        let (wasm, names) = named_module();
        let truncated = wasm[..names.start + 3].to_vec(); // the name section claims 11 bytes
        let mut long_name = wasm[..names.end].to_vec();
        long_name[names.start + 2] = 40; // the section's name runs past the section
        for junk in [&b"junk"[..], &b""[..], &wasm[..4], &truncated, &long_name, &[0x80; 64][..]] {
            assert!(matches!(without_names(junk), std::borrow::Cow::Borrowed(b) if b == junk));
        }
        let mut huge = wasm[..8].to_vec();
        huge.extend([1, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]); // a section size past 35 bits
        assert!(matches!(without_names(&huge), std::borrow::Cow::Borrowed(b) if b == &huge[..]));
    }

    #[test]
    fn only_files_the_same_module_was_compiled_to_and_left_unused_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let current = dir.path().join(format!("0123456789abcdef-{}.cwasm", "1".repeat(32)));
        let file = |name: &str, idle_days: u64| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").expect("write");
            let then = std::time::SystemTime::now() - Duration::from_secs(idle_days * 24 * 3600);
            let times = std::fs::FileTimes::new().set_accessed(then).set_modified(then);
            std::fs::File::options().write(true).open(&path).expect("open").set_times(times).expect("set_times");
            path
        };
        std::fs::write(&current, b"x").expect("write");
        let removed = [
            file(&format!("0123456789abcdef-{}.cwasm", "2".repeat(32)), 8), // same module, older build
            file(&format!("{}.cwasm", "a".repeat(32)), 30),                  // named before module prefixes
        ];
        let kept = [
            file(&format!("0123456789abcdef-{}.cwasm", "3".repeat(32)), 1), // another build, used yesterday
            file(&format!("fedcba9876543210-{}.cwasm", "4".repeat(32)), 30), // another module
            file(&format!("0123456789abcdef-{}.sha256", "5".repeat(32)), 30), // not a compiled file
            file(&format!("{}.cwasm", "g".repeat(32)), 30),                  // not 32 hex digits
        ];
        let mut progress = Vec::new();
        remove_replaced(&current, &mut progress);
        assert!(current.exists());
        for path in &removed {
            assert!(!path.exists(), "{} was left", path.display());
        }
        for path in &kept {
            assert!(path.exists(), "{} was removed", path.display());
        }
        assert!(String::from_utf8_lossy(&progress).contains("removed files earlier builds compiled it to"));
        // Nothing left to remove: nothing said.
        let mut progress = Vec::new();
        remove_replaced(&current, &mut progress);
        assert!(progress.is_empty());
    }

    #[test]
    fn swap_areas_are_counted_from_proc_swaps() {
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert_eq!(swap_areas(header), 0);
        assert_eq!(swap_areas(&format!("{header}/swapfile  file  8388604  0  -2\n/dev/zram0  partition  4194300  12  100\n")), 2);
        assert_eq!(swap_areas(""), 0);
    }

    /// A server sizes the pool from its flags; the runtimes compiled once per machine must
    /// still load, so the compiled file's name must not depend on the pool.
    #[test]
    fn the_pool_size_does_not_change_what_is_compiled() {
        let small = WasmEngine::with_pool(4).expect("engine");
        let large = WasmEngine::with_pool(500).expect("engine");
        assert_eq!(small.compiled_name("abc"), large.compiled_name("abc"));
    }
}
