//! The wasm backend: interpreters compiled to WASI, run in wasmtime under fuel, epoch and
//! memory limits, one fresh instance per run.
//!
//! Every interpreter shares the machinery here: [`WasmEngine`] (config, pooling allocator,
//! epoch ticker, compiled-module cache), [`limits`] (store limits), [`wasi`] (what the guest is
//! granted, capped output, the deadline-bounded `poll_oneoff`). An interpreter module
//! ([`python`], [`javascript`]) only says how to start its guest and hand it the code.

pub mod engine;
pub mod javascript;
pub mod limits;
pub mod python;
pub mod wasi;

use std::time::Instant;

use wasmtime::{Instance, InstancePre, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::I32Exit;

pub use engine::WasmEngine;

use crate::backend::Outcome;
use crate::request::ExecRequest;
use crate::result::Status;
use limits::MemoryCap;
use wasi::{CappedPipe, DeadlinePassed, Grants};

/// The data of one run's store.
pub struct GuestState {
    wasi: WasiP1Ctx,
    memory: MemoryCap,
    /// When the guest started: the origin of its monotonic clock.
    started: Instant,
    /// When its wall-clock deadline passes.
    deadline: Instant,
}

/// Runs one guest: a fresh store and instance from `pre`, armed with the request's limits, then
/// `enter` to hand it the code and run it. Runs on a thread of its own whose native stack is big
/// enough for the wasm stack, so it is safe to call from any thread.
///
/// `enter` returns the guest's exit code; a trap or error it returns is classified into the
/// outcome's status.
pub(crate) fn run_guest<F>(
    engine: &WasmEngine,
    pre: &InstancePre<GuestState>,
    request: &ExecRequest,
    grants: &Grants<'_>,
    enter: F,
) -> Outcome
where
    F: FnOnce(&mut Store<GuestState>, &Instance) -> wasmtime::Result<i32> + Send,
{
    let spawned = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("wsbx-guest".into())
            .stack_size(engine::HOST_THREAD_STACK)
            .spawn_scoped(scope, || run_on_this_thread(engine, pre, request, grants, enter))
            .map(|handle| handle.join())
    });
    match spawned {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => internal_error("the guest thread panicked".into()),
        Err(e) => internal_error(format!("could not start a guest thread: {e}")),
    }
}

fn run_on_this_thread<F>(
    engine: &WasmEngine,
    pre: &InstancePre<GuestState>,
    request: &ExecRequest,
    grants: &Grants<'_>,
    enter: F,
) -> Outcome
where
    F: FnOnce(&mut Store<GuestState>, &Instance) -> wasmtime::Result<i32>,
{
    let limits = &request.limits;
    let stdout = CappedPipe::new(limits.max_output_bytes);
    let stderr = CappedPipe::new(limits.max_output_bytes);
    let started = Instant::now();
    let wasi = match wasi::context(grants, &request.stdin, &stdout, &stderr, started) {
        Ok(wasi) => wasi,
        Err(e) => return internal_error(e),
    };
    let state = GuestState {
        wasi,
        memory: MemoryCap::new(limits.memory_bytes()),
        started,
        deadline: started + limits.timeout(),
    };
    let mut store = Store::new(engine.engine(), state);
    store.limiter(|state| &mut state.memory);
    if let Err(e) = limits::arm(&mut store, limits.fuel, limits.timeout()) {
        return internal_error(format!("arming the store: {e}"));
    }

    let result = pre.instantiate(&mut store).and_then(|instance| enter(&mut store, &instance));
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;

    let fuel_consumed = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
    let memory = &store.data().memory;
    let (status, exit_code, detail) = classify(result, memory, limits);
    let peak_memory_bytes = memory.peak();
    drop(store);
    let (stdout, stdout_truncated) = stdout.take();
    let (stderr, stderr_truncated) = stderr.take();
    Outcome {
        status,
        exit_code,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        fuel_consumed: Some(fuel_consumed),
        wall_ms,
        peak_memory_bytes,
        detail,
    }
}

/// Maps how the guest call ended to a status, an exit code and a detail line.
fn classify(
    result: wasmtime::Result<i32>,
    memory: &MemoryCap,
    limits: &crate::Limits,
) -> (Status, Option<i32>, Option<String>) {
    let error = match result {
        Ok(code) => return (Outcome::status_for_exit(code), Some(code), None),
        Err(error) => error,
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return (Outcome::status_for_exit(exit.0), Some(exit.0), None);
    }
    let timeout = || {
        let detail = format!("the deadline of {} ms passed", limits.timeout_ms);
        (Status::Timeout, None, Some(detail))
    };
    if error.downcast_ref::<DeadlinePassed>().is_some() {
        return timeout();
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
        None if memory.refused() => {
            let detail = format!("the guest needs more than its memory cap of {} MiB", limits.memory_mb);
            (Status::MemoryLimit, None, Some(detail))
        }
        None => (Status::InternalError, None, Some(format!("{error:#}"))),
    }
}

fn internal_error(detail: String) -> Outcome {
    Outcome {
        status: Status::InternalError,
        exit_code: None,
        stdout: Vec::new(),
        stderr: Vec::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        fuel_consumed: None,
        wall_ms: 0.0,
        peak_memory_bytes: 0,
        detail: Some(detail),
    }
}
