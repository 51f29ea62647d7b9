//! Guest stacks: native stacks big enough for a guest's wasm stack, kept between runs.
//!
//! A guest must run with [`HOST_THREAD_STACK`] of native stack below it. A caller whose own
//! thread has that much room (the server's blocking threads are made with it) runs the guest
//! right there. Any other caller runs it on a guest stack, switched to on the *same* thread
//! ([`corosensei::on_stack`]) and switched back from when the run ends: a few nanoseconds.
//! Handing the run to a thread of the right size instead cost two cross-thread wake-ups per
//! run, 0.25 ms of a 0.5 ms JavaScript run on a 2-core VM (an idle vCPU is slow to wake).
//!
//! Stacks are kept between runs, at most [`MAX_IDLE`] of them, so a run pays neither the
//! 12 MiB mapping nor the page faults of a cold stack. Reuse changes nothing a guest can
//! observe: the native stack is not addressable from wasm, and every run still gets a fresh
//! instance and store. A kept stack gives back what a deep run touched below its top
//! [`KEEP_TOUCHED`] bytes, so idle stacks hold little memory.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use corosensei::stack::{DefaultStack, Stack};

use super::engine::{HOST_THREAD_STACK, MAX_WASM_STACK};

/// Native stack wasmtime's and WASI's own frames may need beside the wasm stack.
const HOST_FRAMES: usize = 2 << 20;

/// Guest stacks kept for the next runs.
pub const MAX_IDLE: usize = 8;

/// What a kept stack keeps of the pages a run touched, from its top: enough for every
/// ordinary run, so only an unusually deep one faults its pages in again next time.
const KEEP_TOUCHED: usize = 1 << 20;

static IDLE: Mutex<Vec<DefaultStack>> = Mutex::new(Vec::new());

fn idle() -> std::sync::MutexGuard<'static, Vec<DefaultStack>> {
    IDLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` with a guest's native stack below it, on the calling thread, and returns what it
/// returns; `Err` when no stack could be mapped or `f` panicked.
///
/// ```ignore
/// let answer = stacks::run(|| 6 * 7)?;
/// ```
pub fn run<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    // A panic is caught on the stack it happened on, so no unwinding crosses the switch.
    let caught = |f: Box<dyn FnOnce() -> R + '_>| catch_unwind(AssertUnwindSafe(f)).map_err(|_| "the guest panicked".to_owned());
    if room_here() {
        return caught(Box::new(f));
    }
    let taken = idle().pop();
    let mut stack = match taken {
        Some(stack) => stack,
        None => DefaultStack::new(HOST_THREAD_STACK).map_err(|e| format!("could not map a guest stack: {e}"))?,
    };
    let result = corosensei::on_stack(&mut stack, || caught(Box::new(f)));
    give_back(stack);
    result
}

/// Keeps `stack` for the next run (its deep pages released) or unmaps it.
fn give_back(stack: DefaultStack) {
    let mut idle = idle();
    if idle.len() >= MAX_IDLE {
        return;
    }
    // The stack grows down from `base`; `limit` is the bottom of its mapping (guard page
    // included, which holds nothing to release).
    let (top, bottom) = (stack.base().get(), stack.limit().get());
    let keep_from = top.saturating_sub(KEEP_TOUCHED).max(bottom);
    // SAFETY: [bottom, keep_from) lies inside the stack's own mapping, which nothing runs on
    // now; MADV_DONTNEED only drops its pages (they read as zeros when touched again).
    unsafe {
        libc::madvise(bottom as *mut libc::c_void, keep_from - bottom, libc::MADV_DONTNEED);
    }
    idle.push(stack);
}

/// Whether the current thread has room below this frame for a guest's wasm stack and the
/// host's frames around it.
fn room_here() -> bool {
    thread_local! {
        static LOWEST: Cell<Option<usize>> = const { Cell::new(None) };
    }
    let lowest = LOWEST.with(|cell| match cell.get() {
        Some(lowest) => lowest,
        None => {
            let lowest = stack_lowest_address().unwrap_or(usize::MAX);
            cell.set(Some(lowest));
            lowest
        }
    });
    let here = &lowest as *const usize as usize;
    here.saturating_sub(lowest) >= MAX_WASM_STACK + HOST_FRAMES
}

/// The lowest usable address of the current thread's stack, from the thread's attributes.
fn stack_lowest_address() -> Option<usize> {
    // SAFETY: pthread_getattr_np fills `attr` for the calling thread (destroyed below);
    // pthread_attr_getstack reads it into two locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut address: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let got = libc::pthread_attr_getstack(&attr, &mut address, &mut size);
        let mut guard: libc::size_t = 0;
        libc::pthread_attr_getguardsize(&attr, &mut guard);
        libc::pthread_attr_destroy(&mut attr);
        // The guard page(s) may be counted in the reported stack: never count on them.
        (got == 0).then(|| address as usize + guard)
    }
}

/// Guest stacks kept for the next runs now.
pub fn idle_count() -> usize {
    idle().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uses about `depth` KiB of native stack, then says how deep below its caller it got.
    #[inline(never)]
    fn deep(depth: usize) -> usize {
        let mut frame = [0u8; 1024];
        std::hint::black_box(&mut frame);
        let below = if depth > 1 { deep(depth - 1) } else { frame.as_ptr() as usize };
        std::hint::black_box(below)
    }

    #[test]
    fn a_small_thread_runs_a_guest_sized_job_itself_on_a_switched_stack() {
        let small = std::thread::Builder::new().stack_size(1 << 20).spawn(|| {
            let me = std::thread::current().id();
            let outer = &me as *const _ as usize;
            // 9 MiB of frames: far past this thread's own 1 MiB.
            let (same_thread, bottom) = run(move || (std::thread::current().id() == me, deep(9 * 1024))).unwrap();
            (same_thread, outer.abs_diff(bottom) > (8 << 20))
        });
        assert_eq!(small.unwrap().join().unwrap(), (true, true));
        let big = std::thread::Builder::new().stack_size(HOST_THREAD_STACK + (1 << 20)).spawn(|| {
            let here = 0u8;
            let outer = &here as *const u8 as usize;
            // With room of its own the thread's stack is used: the job runs just below.
            run(move || outer.abs_diff(&here as *const u8 as usize) < (1 << 20)).unwrap()
        });
        assert!(big.unwrap().join().unwrap(), "a thread with room ran the guest on its own stack");
    }

    #[test]
    fn runs_borrowing_closures() {
        let mut data = vec![1, 2, 3];
        let sum = run(|| {
            data.push(4);
            data.iter().sum::<i32>()
        })
        .unwrap();
        assert_eq!((sum, data.len()), (10, 4));
    }

    #[test]
    fn a_panic_is_an_error_and_the_stacks_go_on() {
        let small = std::thread::Builder::new().stack_size(1 << 20).spawn(|| {
            let r: Result<(), String> = run(|| panic!("boom"));
            (r.unwrap_err(), run(|| deep(2048) != 0).unwrap())
        });
        assert_eq!(small.unwrap().join().unwrap(), ("the guest panicked".to_owned(), true));
    }

    #[test]
    fn concurrent_runs_keep_at_most_max_idle_stacks() {
        let handles: Vec<_> = (0..32)
            .map(|i| {
                std::thread::Builder::new()
                    .stack_size(1 << 20)
                    .spawn(move || {
                        run(move || {
                            std::thread::sleep(std::time::Duration::from_millis(5));
                            i
                        })
                        .unwrap()
                    })
                    .unwrap()
            })
            .collect();
        let total: i32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, (0..32).sum::<i32>());
        assert!(idle_count() <= MAX_IDLE);
    }
}
