//! The wasm backend: interpreters compiled to WASI, run in wasmtime under fuel, epoch and
//! memory limits, one fresh instance per run.
//!
//! Every interpreter shares the machinery here: [`WasmEngine`] (config, pooling allocator,
//! epoch ticker, compiled-module cache), [`limits`] (store limits), [`wasi`] (what the guest is
//! granted, capped output, the deadline-bounded `poll_oneoff`). An interpreter module
//! ([`python`], [`javascript`]) only says how to start its guest and hand it the code.

pub mod engine;
mod immortal;
pub mod javascript;
pub mod limits;
pub mod preinit;
pub mod python;
mod seeds;
pub mod stacks;
pub mod wasi;

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Instance, InstancePre, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::I32Exit;

pub use engine::WasmEngine;

use crate::backend::pool::WarmPool;
use crate::backend::Outcome;
use crate::request::{ExecRequest, Limits, RunHandle};
use crate::result::Status;
use crate::scratch::{Quota, Scratch, ScratchSlot};
use limits::MemoryCap;
use wasi::{DeadlinePassed, GuestIo, Grants};

/// The data of one guest's store.
pub struct GuestState {
    wasi: WasiP1Ctx,
    memory: MemoryCap,
    /// When the guest's clock reads zero: the origin of its monotonic clock and of the
    /// replacement `poll_oneoff`'s arithmetic. Both restart with a guest's first run, not with a
    /// session's later turns.
    started: Instant,
    clock: wasi::RunClock,
    /// When its wall-clock deadline passes.
    deadline: Instant,
    /// The current run's kill switch, and where its fuel so far is published.
    handle: Option<RunHandle>,
    /// The current run's fuel budget: what the fuel left is counted down from.
    fuel: u64,
}

impl GuestState {
    /// The state of a store that runs `wasi` under `memory` until `deadline`, with no run yet.
    pub(crate) fn new(wasi: WasiP1Ctx, memory: MemoryCap, clock: wasi::RunClock, deadline: Instant) -> GuestState {
        GuestState { wasi, memory, started: Instant::now(), clock, deadline, handle: None, fuel: 0 }
    }
}

/// The trap of a guest whose run was killed ([`RunHandle::kill`]): it ends as `killed`.
#[derive(Debug, thiserror::Error)]
#[error("killed: {0}")]
pub struct Killed(pub String);

/// Whether the current run of `state` was killed: the trap to end it with, if so.
pub(crate) fn kill_trap(state: &GuestState) -> Option<wasmtime::Error> {
    let handle = state.handle.as_ref().filter(|h| h.is_killed())?;
    Some(wasmtime::Error::new(Killed(handle.killed().unwrap_or_default())))
}

/// What a store does at each epoch tick while its guest runs wasm code: end the run when it is
/// killed or past its deadline, and otherwise publish its fuel so far and go on to the next
/// tick. One tick is 10 ms: a kill or a deadline takes effect within one.
fn on_tick(mut store: wasmtime::StoreContextMut<'_, GuestState>) -> wasmtime::Result<wasmtime::UpdateDeadline> {
    if let Some(trap) = kill_trap(store.data()) {
        return Err(trap);
    }
    if Instant::now() >= store.data().deadline {
        return Err(wasmtime::Error::new(DeadlinePassed));
    }
    let left = store.get_fuel().unwrap_or(0);
    let state = store.data_mut();
    if let Some(handle) = &state.handle {
        handle.report_fuel(state.fuel.saturating_sub(left));
    }
    Ok(wasmtime::UpdateDeadline::Continue(1))
}

/// A guest ready to run: its store, its instance, the host's ends of its streams, and the
/// scratch directory granted to it as /scratch.
pub(crate) struct Guest {
    store: Store<GuestState>,
    instance: Instance,
    io: GuestIo,
    /// Whether a run of the request's code started in it (a session's later turns).
    ran: bool,
}

/// Makes a store for a guest with `grants`, armed with `limits`.
fn store(engine: &WasmEngine, grants: &Grants, io: &GuestIo, limits: &Limits) -> Result<Store<GuestState>, String> {
    let clock = wasi::RunClock::starting_now();
    let wasi = wasi::context(grants, io, &clock)?;
    let state = GuestState::new(wasi, MemoryCap::new(limits.memory_bytes()), clock, Instant::now());
    let mut store = Store::new(engine.engine(), state);
    store.limiter(|state| &mut state.memory);
    store.epoch_deadline_callback(on_tick);
    arm(&mut store, limits, None, true).map_err(|e| format!("arming the store: {e}"))?;
    Ok(store)
}

/// Sets a store's limits for the run about to start: memory cap, fuel, deadline, and the
/// run's kill switch. `restart_clock`: the guest's monotonic clock reads zero from now (the
/// first run in a guest, so it does not tell how long a prepared guest waited); a session's
/// later turns keep it running, so that what one turn saved of it still counts forward.
fn arm(store: &mut Store<GuestState>, limits: &Limits, handle: Option<&RunHandle>, restart_clock: bool) -> wasmtime::Result<()> {
    let held = store.data().memory.peak();
    let state = store.data_mut();
    state.memory = MemoryCap::new(limits.memory_bytes()).holding(held);
    if restart_clock {
        state.started = state.clock.restart();
    }
    state.deadline = Instant::now() + limits.timeout();
    state.handle = handle.cloned();
    state.fuel = limits.fuel;
    limits::arm(store, limits.fuel)
}

/// Runs `f` with a native stack big enough for the wasm stack below it, on the calling thread
/// (a stack kept between runs, see [`stacks`]), so a guest can be run from any thread.
fn on_guest_stack<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    stacks::run(f)
}

/// Makes a fresh instance of an interpreter ready for its first run.
pub(crate) type Init = Arc<dyn Fn(&mut Store<GuestState>, &Instance) -> wasmtime::Result<()> + Send + Sync>;

/// A pre-initialized interpreter ([`preinit`]), linked, the memory it starts with, and which
/// environment variables a run can still set in it.
pub(crate) struct Preinit {
    pub(crate) pre: InstancePre<GuestState>,
    footprint: u64,
    settable: fn(&BTreeMap<String, String>) -> bool,
}

impl Preinit {
    /// `settable` says which environments a run can set in the snapshot before its code runs
    /// (the snapshot read its environment while it was built): a request whose environment
    /// it refuses starts from the plain interpreter.
    pub(crate) fn new(linker: &wasmtime::Linker<GuestState>, module: &wasmtime::Module, settable: fn(&BTreeMap<String, String>) -> bool) -> Result<Preinit, String> {
        let footprint = module.exports().find_map(|e| e.ty().memory().map(|m| m.minimum().saturating_mul(65_536))).unwrap_or(0);
        let pre = linker.instantiate_pre(module).map_err(|e| format!("linking the pre-initialized module: {e}"))?;
        Ok(Preinit { pre, footprint, settable })
    }

    /// Whether `request` can start here: not when it sets an environment the snapshot cannot
    /// take, or caps memory below the snapshot's own.
    pub(crate) fn fits(&self, request: &ExecRequest) -> bool {
        (request.env.is_empty() || (self.settable)(&request.env)) && self.footprint <= request.limits.memory_bytes()
    }
}

/// Fuel a guest may spend setting its interpreter up (CPython's first turn and prelude take
/// about 4 million, QuickJS's runtime and globals about 4 million). Set-up is wsbx's code, not
/// the request's: it is metered separately so that `fuel` and `fuel_consumed` count only the
/// request's code, whether its guest was prepared ahead or made for it.
const SETUP_FUEL: u64 = 10_000_000_000;

/// Where a guest may start: an interpreter and what makes a fresh instance of it ready, or why
/// it cannot be had.
pub(crate) type Start<'a> = Result<(&'a InstancePre<GuestState>, Init), Outcome>;

/// Runs one guest from scratch, on a thread whose native stack fits the wasm stack: prepares a
/// fresh instance from the first of `starts` that can start ([`Guest::prepare_first`], under
/// the request's memory cap and deadline and the set-up fuel), then runs the request's code
/// with `enter` exactly as a prepared guest would. `enter` returns the exit code; a trap or
/// error it returns is classified into the status.
pub(crate) fn run_guest<'a, F>(
    engine: &WasmEngine,
    starts: impl IntoIterator<Item = Start<'a>>,
    request: &ExecRequest,
    grants: &Grants,
    enter: F,
) -> Outcome
where
    F: FnOnce(&mut Store<GuestState>, &Instance) -> wasmtime::Result<i32>,
{
    let ran = on_guest_stack(|| {
        let busy = Busy::new();
        let setup = Limits { fuel: SETUP_FUEL, ..request.limits };
        match Guest::prepare_first(engine, starts, grants, &setup) {
            Ok(guest) => guest.run_here(busy, request, enter),
            Err(failed) => failed,
        }
    });
    ran.unwrap_or_else(internal_error)
}

impl Guest {
    /// Instantiates a guest from `pre` with `grants` and runs `init` in it under `limits`, so
    /// that [`Guest::run`] only has to run the request's own code. A guest that cannot start
    /// within `limits` (its memory cap is below the interpreter's footprint, say) gives the
    /// outcome that says so.
    pub(crate) fn prepare(
        engine: &WasmEngine,
        pre: &InstancePre<GuestState>,
        grants: &Grants,
        limits: &Limits,
        init: impl FnOnce(&mut Store<GuestState>, &Instance) -> wasmtime::Result<()>,
    ) -> Result<Guest, Outcome> {
        let io = GuestIo::new(limits.max_output_bytes);
        let mut store = store(engine, grants, &io, limits).map_err(internal_error)?;
        let prepared = pre.instantiate(&mut store).and_then(|instance| init(&mut store, &instance).map(|()| instance));
        match prepared {
            // A set-up refused memory may have gone on without what it could not make (the C
            // library's copy of the environment, an entry of JavaScript's `process.env`: both
            // were seen missing from runs that ended `ok`), and it leaves the code no room:
            // the guest did not start.
            Ok(_) if store.data().memory.refused() => {
                let detail = format!("the interpreter could not start: the guest needs more than its memory cap of {} MiB", limits.memory_mb);
                Err(Outcome::failed(Status::MemoryLimit, detail))
            }
            Ok(instance) => Ok(Guest { store, instance, io, ran: false }),
            Err(error) => {
                let memory = &store.data().memory;
                let (status, exit_code, detail) = classify(Err(error), memory, limits);
                // The set-up is wsbx's code, not the request's: when it exits early (wasi-libc
                // does when it cannot copy a large environment), the request did nothing wrong.
                // Refused memory on the way, the cap is why.
                let (status, detail) = match status {
                    Status::Error if memory.refused() => {
                        let needs = || format!("the guest needs more than its memory cap of {} MiB", limits.memory_mb);
                        (Status::MemoryLimit, detail.unwrap_or_else(needs))
                    }
                    Status::Error => (Status::InternalError, detail.unwrap_or_else(|| format!("its set-up ended with exit code {exit_code:?}"))),
                    _ => (status, detail.unwrap_or_default()),
                };
                Err(Outcome::failed(status, format!("the interpreter could not start: {detail}")))
            }
        }
    }

    /// Prepares a guest ([`Guest::prepare`]) from the first of `starts`, going on to the next
    /// only when one cannot set up within the memory cap. A snapshot's set-up can need more
    /// than the plain interpreter's start (setting thousands of environment variables in it
    /// does), so a cap just above the snapshot's footprint is not a reason to fail a run the
    /// plain interpreter can take. A start is only made (loaded, linked) when it is reached.
    pub(crate) fn prepare_first<'a>(
        engine: &WasmEngine,
        starts: impl IntoIterator<Item = Start<'a>>,
        grants: &Grants,
        limits: &Limits,
    ) -> Result<Guest, Outcome> {
        let mut failed = None;
        for start in starts {
            let (pre, init) = start?;
            match Guest::prepare(engine, pre, grants, limits, &*init) {
                Err(outcome) if outcome.status == Status::MemoryLimit => failed = Some(outcome),
                prepared => return prepared,
            }
        }
        Err(failed.unwrap_or_else(|| Outcome::failed(Status::InternalError, "no interpreter to start")))
    }

    /// Linear memory the guest holds now, in bytes.
    pub(crate) fn memory_bytes(&self) -> u64 {
        self.store.data().memory.peak()
    }

    /// Runs `request` in this prepared guest on a guest stack, then tears it down off the
    /// caller's path; see [`Guest::run_here`].
    pub(crate) fn run<F>(self, request: &ExecRequest, enter: F) -> Outcome
    where
        F: FnOnce(&mut Store<GuestState>, &Instance) -> wasmtime::Result<i32>,
    {
        let busy = Busy::new();
        on_guest_stack(move || self.run_here(busy, request, enter)).unwrap_or_else(internal_error)
    }

    /// Runs `request` in this guest on the current thread and retires the guest.
    fn run_here<F>(mut self, busy: Busy, request: &ExecRequest, enter: F) -> Outcome
    where
        F: FnOnce(&mut Store<GuestState>, &Instance) -> wasmtime::Result<i32>,
    {
        let (outcome, _) = self.run_again(request, enter);
        retire(self.store, busy);
        outcome
    }

    /// Runs `request` in this guest on the current thread, re-armed with the request's limits
    /// (fuel, time and output count from here), and keeps the guest: the one run path of
    /// one-shot runs and of a session's turns. Also says whether the guest may run again: not
    /// after a trap, a limit or an exit, which leave its state half-way.
    fn run_again<F>(&mut self, request: &ExecRequest, enter: F) -> (Outcome, bool)
    where
        F: FnOnce(&mut Store<GuestState>, &Instance) -> wasmtime::Result<i32>,
    {
        self.io.stdin.set(request.stdin.clone());
        self.io.stdout.reset(request.limits.max_output_bytes, request.on_output.clone());
        self.io.stderr.reset(request.limits.max_output_bytes, request.on_output.clone());
        if let Err(e) = arm(&mut self.store, &request.limits, request.handle.as_ref(), !self.ran) {
            return (internal_error(format!("arming the store: {e}")), false);
        }
        self.ran = true;
        let started = Instant::now();
        let result = enter(&mut self.store, &self.instance);
        // The listener belongs to this run: a kept guest's next run (or its teardown) must not
        // call it.
        self.io.stdout.reset_listener();
        self.io.stderr.reset_listener();
        let returned = result.is_ok();
        (measure(&self.store, &self.io, request, started, result), returned)
    }
}

/// Measures and classifies a finished guest run, and collects its output.
fn measure(
    store: &Store<GuestState>,
    io: &GuestIo,
    request: &ExecRequest,
    started: Instant,
    result: wasmtime::Result<i32>,
) -> Outcome {
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    let limits = &request.limits;
    let fuel_consumed = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
    let memory = &store.data().memory;
    let (status, exit_code, detail) = classify(result, memory, limits);
    let peak_memory_bytes = memory.peak();
    let (stdout, stdout_truncated) = io.stdout.take();
    let (stderr, stderr_truncated) = io.stderr.take();
    Outcome {
        status,
        exit_code,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        fuel_consumed: Some(fuel_consumed),
        cpu_ms: None,
        wall_ms,
        peak_memory_bytes,
        detail,
    }
}

/// A guest kept alive between runs: a session's interpreter ([`crate::backend::LiveGuest`]).
pub(crate) struct LiveWasm {
    guest: Option<Guest>,
    /// Hands a run's code to the interpreter and returns its exit status.
    enter: fn(&mut Store<GuestState>, &Instance, &str) -> wasmtime::Result<i32>,
    ended: Option<String>,
}

impl LiveWasm {
    pub(crate) fn new(guest: Guest, enter: fn(&mut Store<GuestState>, &Instance, &str) -> wasmtime::Result<i32>) -> LiveWasm {
        LiveWasm { guest: Some(guest), enter, ended: None }
    }
}

impl crate::backend::LiveGuest for LiveWasm {
    fn run(&mut self, request: &ExecRequest) -> Outcome {
        let enter = self.enter;
        let Some(guest) = self.guest.as_mut() else {
            return Outcome::failed(Status::Rejected, self.ended.clone().unwrap_or_default());
        };
        let _busy = Busy::new();
        let ran = on_guest_stack(|| guest.run_again(request, |store, instance| enter(store, instance, &request.code)));
        let (outcome, alive) = ran.unwrap_or_else(|e| (internal_error(e), false));
        if !alive {
            let how = outcome.detail.clone().unwrap_or_else(|| match outcome.exit_code {
                Some(code) => format!("the guest exited with code {code}"),
                None => outcome.status.to_string(),
            });
            self.ended = Some(format!("a run ended the guest ({}: {how})", outcome.status));
            if let Some(guest) = self.guest.take() {
                retire(guest.store, Busy::new());
            }
        }
        outcome
    }

    fn ended(&self) -> Option<&str> {
        self.ended.as_deref()
    }

    fn memory_bytes(&self) -> u64 {
        self.guest.as_ref().map_or(0, Guest::memory_bytes)
    }
}

impl Drop for LiveWasm {
    fn drop(&mut self) {
        if let Some(guest) = self.guest.take() {
            retire(guest.store, Busy::new());
        }
    }
}

/// Starts a live guest for `request` (a session's): one prepared ahead from `pool` when one
/// fits, or one prepared now from `pre` with `init` in the directory `scratch` makes; each run
/// hands its code to `enter`.
pub(crate) fn start_live<'a>(
    engine: &WasmEngine,
    pool: Option<&WarmPool<(Guest, Scratch)>>,
    starts: impl IntoIterator<Item = Start<'a>>,
    grants: impl FnOnce(&std::path::Path) -> Grants,
    request: &ExecRequest,
    scratch: &mut ScratchSlot<'_>,
    enter: fn(&mut Store<GuestState>, &Instance, &str) -> wasmtime::Result<i32>,
) -> Result<Box<dyn crate::backend::LiveGuest>, Outcome> {
    if let Some(guest) = take_warm(pool, request, scratch) {
        return Ok(Box::new(LiveWasm::new(guest?, enter)));
    }
    let scratch = scratch.fresh()?;
    let grants = grants(scratch.path());
    let setup = Limits { fuel: SETUP_FUEL, ..request.limits };
    let guest = on_guest_stack(|| Guest::prepare_first(engine, starts, &grants, &setup)).unwrap_or_else(|e| Err(internal_error(e)))?;
    Ok(Box::new(LiveWasm::new(guest, enter)))
}

/// Drops a finished guest's store on a background thread: tearing an instance down (its memory
/// is reset for the next one in the pool) takes about a millisecond that the caller need not
/// wait for. The store is dropped before its `Busy` (tuple fields drop in order).
fn retire(store: Store<GuestState>, busy: Busy) {
    crate::backend::pool::drop_later((store, busy));
}

/// Guests running or being torn down, process-wide, and the signal that their number fell to
/// zero.
static BUSY: Mutex<usize> = Mutex::new(0);
static QUIET: Condvar = Condvar::new();

fn busy() -> std::sync::MutexGuard<'static, usize> {
    BUSY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts a guest in [`BUSY`] from the start of its run until its store is dropped.
struct Busy;

impl Busy {
    fn new() -> Busy {
        *busy() += 1;
        Busy
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut busy = busy();
        *busy -= 1;
        if *busy == 0 {
            QUIET.notify_all();
        }
    }
}

/// Waits (at most 20 ms) until no guest runs or is being torn down. Preparing a guest beside
/// one that runs or is torn down slows both: every copy-on-write fault and memory reset of one
/// interrupts the other core to flush its TLB. Measured on 2 cores, a prepared Python hello
/// took ~2.3 ms p50 when the replacement was prepared beside it and ~1 ms when after it.
///
/// Woken the moment the last guest is torn down, instead of polling (which woke the refill
/// thread 5,000 times a second under load). Either way, one client sending runs back to back
/// finds the pool empty for about a quarter of them (benches/README, 2026-12-02).
fn wait_for_quiet() {
    let _ = QUIET.wait_timeout_while(busy(), Duration::from_millis(20), |busy| *busy > 0);
}

/// Keeps `target` guests of one interpreter prepared: each gets a fresh scratch directory under
/// `scratch_root`, the grants `grants` makes for it, and `init` run in it.
pub(crate) fn warm_pool(
    target: usize,
    engine: Arc<WasmEngine>,
    pre: InstancePre<GuestState>,
    scratch_root: &std::path::Path,
    grants: impl Fn(&std::path::Path) -> Grants + Send + 'static,
    init: Init,
) -> Option<WarmPool<(Guest, Scratch)>> {
    if target == 0 {
        return None;
    }
    let root = scratch_root.to_owned();
    Some(WarmPool::start(target, "wsbx-warm", Some(engine::HOST_THREAD_STACK), wait_for_quiet, move || {
        let scratch = Scratch::create(&root, Quota::of(&WARM_LIMITS)).map_err(|e| format!("creating a scratch directory: {e}"))?;
        let guest = Guest::prepare(&engine, &pre, &grants(scratch.path()), &WARM_LIMITS, &*init)
            .map_err(|failed| failed.detail.unwrap_or_default())?;
        Ok((guest, scratch))
    }))
}

/// Limits a warm guest is prepared under; each run re-arms it with its own.
const WARM_LIMITS: Limits = Limits { timeout_ms: 30_000, memory_mb: 256, ..Limits::DEFAULT };

/// Takes a guest from `pool` when one is ready and fits `request`, its prepared scratch
/// directory becoming the run's (with the request's quota and input files); `None` when the
/// run must prepare its own guest.
fn take_warm(pool: Option<&WarmPool<(Guest, Scratch)>>, request: &ExecRequest, scratch: &mut ScratchSlot<'_>) -> Option<Result<Guest, Outcome>> {
    // A warm guest read its environment while being prepared: only requests that add nothing
    // to it can use one. A run in a directory kept from earlier runs keeps it.
    if !request.env.is_empty() || !scratch.can_adopt() {
        return None;
    }
    let Some((guest, warm_scratch)) = pool?.take() else {
        tracing::debug!("no guest prepared ahead is ready; the run prepares its own");
        return None;
    };
    if guest.memory_bytes() > request.limits.memory_bytes() {
        // The cold path reports a cap below the interpreter's own footprint properly.
        return None;
    }
    Some(match scratch.adopt(warm_scratch) {
        Ok(_) => Ok(guest),
        Err(e) => Err(e.into()),
    })
}

/// Runs `request` in a guest from `pool` when one is ready and fits the request; `None` when
/// the run must prepare its own guest.
pub(crate) fn run_warm<F>(pool: Option<&WarmPool<(Guest, Scratch)>>, request: &ExecRequest, scratch: &mut ScratchSlot<'_>, enter: F) -> Option<Outcome>
where
    F: FnOnce(&mut Store<GuestState>, &Instance) -> wasmtime::Result<i32>,
{
    Some(match take_warm(pool, request, scratch)? {
        Ok(guest) => guest.run(request, enter),
        Err(failed) => failed,
    })
}

/// Maps how the guest call ended to a status, an exit code and a detail line.
fn classify(
    result: wasmtime::Result<i32>,
    memory: &MemoryCap,
    limits: &crate::Limits,
) -> (Status, Option<i32>, Option<String>) {
    // A failure after the guest ran out of memory at its cap most likely comes from that
    // (Python's `MemoryError`, JavaScript's "out of memory"): the detail says so, since the
    // status cannot.
    let exited = |code: i32| {
        let status = Outcome::status_for_exit(code);
        let detail = (status == Status::Error && memory.reached())
            .then(|| format!("the guest reached its memory cap of {} MiB", limits.memory_mb));
        (status, Some(code), detail)
    };
    let error = match result {
        Ok(code) => return exited(code),
        Err(error) => error,
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        // As on POSIX, the status's low byte is the exit code (`exit(-1)` is 255).
        return exited(exit.0 & 0xff);
    }
    let timeout = || {
        let detail = format!("the deadline of {} ms passed", limits.timeout_ms);
        (Status::Timeout, None, Some(detail))
    };
    if error.downcast_ref::<DeadlinePassed>().is_some() {
        return timeout();
    }
    if let Some(Killed(why)) = error.downcast_ref::<Killed>() {
        return (Status::Killed, None, Some(why.clone()));
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => timeout(),
        Some(Trap::OutOfFuel) => {
            (Status::OutOfFuel, None, Some(format!("the fuel budget of {} ran out", limits.fuel)))
        }
        Some(Trap::StackOverflow) => (Status::Error, None, Some("the guest overflowed its stack".into())),
        Some(trap) if memory.refused() => {
            let detail = format!("the guest stopped ({trap}) after reaching its memory cap of {} MiB", limits.memory_mb);
            (Status::MemoryLimit, None, Some(detail))
        }
        Some(trap) => (Status::Error, None, Some(format!("the guest crashed: {trap}"))),
        None if wasi::is_too_many_open_files(&error) => {
            let detail = format!("the guest tried to hold more than {} files open", wasi::MAX_OPEN_FILES);
            (Status::Error, None, Some(detail))
        }
        None if memory.refused() => {
            let detail = format!("the guest needs more than its memory cap of {} MiB", limits.memory_mb);
            (Status::MemoryLimit, None, Some(detail))
        }
        None => (Status::InternalError, None, Some(format!("{error:#}"))),
    }
}

fn internal_error(detail: String) -> Outcome {
    Outcome::failed(Status::InternalError, detail)
}
