//! Guest threads: host threads whose native stack fits the wasm stack, kept between runs.
//!
//! A guest must run on a thread with [`HOST_THREAD_STACK`] of native stack. Spawning one per
//! run costs a 12 MiB mapping, a clone, and the page faults of a cold stack on every run; a
//! parked thread costs none of that. Reuse changes nothing a guest can observe: the native
//! stack is not addressable from wasm, and every run still gets a fresh instance and store.
//!
//! At most [`MAX_IDLE`] threads wait between runs; a thread idle for [`IDLE_EXIT`] ends, so a
//! burst of concurrent runs does not leave its threads behind for good.
//!
//! A caller whose own thread has room for a guest's stack (the server's blocking threads are
//! made with [`HOST_THREAD_STACK`]) runs the guest itself: no hand-off at all.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::cell::Cell;
use std::sync::Mutex;
use std::time::Duration;

use super::engine::{HOST_THREAD_STACK, MAX_WASM_STACK};

/// Native stack wasmtime's and WASI's own frames may need beside the wasm stack.
const HOST_FRAMES: usize = 2 << 20;

/// Threads kept waiting for the next run.
pub const MAX_IDLE: usize = 8;

/// How long an idle thread waits for work before it ends.
pub const IDLE_EXIT: Duration = Duration::from_secs(30);

/// A run handed to a guest thread: the work (which stores its result where the caller reads
/// it), and where to say it is done.
struct Job {
    work: Box<dyn FnOnce() + Send + 'static>,
    done: mpsc::SyncSender<()>,
}

/// An idle thread: its number (to find itself in the list) and where to send it a job.
struct Idle {
    id: u64,
    jobs: Sender<Job>,
}

struct Pool {
    idle: Vec<Idle>,
    next_id: u64,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { idle: Vec::new(), next_id: 0 });

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` on a guest thread and returns what it returns; `Err` when no thread could be
/// started or `f` panicked.
///
/// ```ignore
/// let answer = threads::run(|| 6 * 7)?;
/// ```
pub fn run<'a, R: Send + 'a>(f: impl FnOnce() -> R + Send + 'a) -> Result<R, String> {
    if room_here() {
        return catch_unwind(AssertUnwindSafe(f)).map_err(|_| "the guest panicked".to_owned());
    }
    let result: Mutex<Option<std::thread::Result<R>>> = Mutex::new(None);
    let slot = &result;
    let work: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
        let value = catch_unwind(AssertUnwindSafe(f));
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
    });
    // SAFETY: the work borrows from this frame ('a: `f`'s captures and `result`). This
    // function does not return before `done` yields, which happens only after the work has
    // run to its end and been dropped (a panic in `f` is caught inside it), or after the job
    // was dropped without running (then `done`'s sender is gone too). A thread always runs a
    // job it was handed: it leaves its loop only once its channel is empty and disconnected. A
    // job that cannot be handed over comes back in the send error and is dropped right here.
    let work = unsafe { erase(work) };
    let (done, finished) = mpsc::sync_channel::<()>(1);
    let mut job = Job { work, done };
    loop {
        let idle = pool().idle.pop();
        match idle {
            Some(thread) => match thread.jobs.send(job) {
                Ok(()) => break,
                // That thread ended after all: try the next one.
                Err(mpsc::SendError(back)) => job = back,
            },
            None => {
                spawn(job)?;
                break;
            }
        }
    }
    let _ = finished.recv();
    let value = result.lock().unwrap_or_else(|p| p.into_inner()).take();
    match value {
        Some(Ok(value)) => Ok(value),
        Some(Err(_)) => Err("the guest thread panicked".to_owned()),
        None => Err("the guest thread ended before the run did".to_owned()),
    }
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

/// Forgets the lifetime of a job's work; see the safety comment in [`run`].
unsafe fn erase<'b>(work: Box<dyn FnOnce() + Send + 'b>) -> Box<dyn FnOnce() + Send + 'static> {
    // SAFETY: the same layout (a boxed trait object); only the lifetime bound differs, and the
    // caller guarantees the work is done with before anything it borrows goes away.
    unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + 'b>, Box<dyn FnOnce() + Send + 'static>>(work) }
}

/// Starts a new guest thread with `first` as its first job.
fn spawn(first: Job) -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<Job>();
    let id = {
        let mut pool = pool();
        pool.next_id += 1;
        pool.next_id
    };
    // The job goes in before the thread exists: if spawning fails it is dropped right here,
    // with the channel.
    tx.send(first).map_err(|_| "could not hand a guest thread its job".to_owned())?;
    std::thread::Builder::new()
        .name("wsbx-guest".into())
        .stack_size(HOST_THREAD_STACK)
        .spawn(move || serve(id, tx, rx))
        .map(drop)
        .map_err(|e| format!("could not start a guest thread: {e}"))
}

/// A guest thread's loop: run a job, offer itself for the next, end when idle too long or when
/// enough others wait.
fn serve(id: u64, tx: Sender<Job>, rx: Receiver<Job>) {
    let mut tx = Some(tx);
    loop {
        match rx.recv_timeout(IDLE_EXIT) {
            Ok(Job { work, done }) => {
                work();
                // Offer this thread again before the caller learns it is done, so a caller
                // that runs again at once finds it idle instead of starting another.
                if let Some(jobs) = tx.take() {
                    let mut pool = pool();
                    if pool.idle.len() < MAX_IDLE {
                        pool.idle.push(Idle { id, jobs: jobs.clone() });
                        tx = Some(jobs);
                    }
                }
                let _ = done.send(());
                if tx.is_none() {
                    // Not offered (enough threads wait): nobody can send it more; end.
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let mut pool = pool();
                match pool.idle.iter().position(|t| t.id == id) {
                    Some(i) => {
                        pool.idle.swap_remove(i);
                        drop(pool);
                        drop(tx.take());
                        // A job sent between the timeout and the removal is still run.
                        while let Ok(Job { work, done }) = rx.try_recv() {
                            work();
                            let _ = done.send(());
                        }
                        return;
                    }
                    // Someone took this thread and is about to send it a job.
                    None => continue,
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Threads waiting for a run now.
pub fn idle_count() -> usize {
    pool().idle.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_with_room_runs_the_guest_itself_and_others_hand_it_over() {
        let small = std::thread::Builder::new().stack_size(1 << 20).spawn(|| {
            let me = std::thread::current().id();
            run(move || std::thread::current().id() != me).unwrap()
        });
        assert!(small.unwrap().join().unwrap(), "a 1 MiB thread handed the guest over");
        let big = std::thread::Builder::new().stack_size(HOST_THREAD_STACK + (1 << 20)).spawn(|| {
            let me = std::thread::current().id();
            run(move || std::thread::current().id() == me).unwrap()
        });
        assert!(big.unwrap().join().unwrap(), "a thread with room ran the guest itself");
    }

    #[test]
    fn runs_borrowing_closures_and_reuses_threads() {
        let mut data = vec![1, 2, 3];
        let sum = run(|| {
            data.push(4);
            data.iter().sum::<i32>()
        })
        .unwrap();
        assert_eq!((sum, data.len()), (10, 4));
        let name = run(|| std::thread::current().name().map(str::to_owned)).unwrap();
        assert_eq!(name.as_deref(), Some("wsbx-guest"));
    }

    #[test]
    fn a_short_run_never_queues_behind_a_long_one() {
        let long = std::thread::spawn(|| run(|| std::thread::sleep(Duration::from_millis(800))).unwrap());
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(20));
            let started = std::time::Instant::now();
            run(|| ()).unwrap();
            assert!(started.elapsed() < Duration::from_millis(400), "queued behind the long run");
        }
        long.join().unwrap();
    }

    #[test]
    fn a_panic_is_an_error_and_the_pool_goes_on() {
        let r: Result<(), String> = run(|| panic!("boom"));
        assert_eq!(r.unwrap_err(), "the guest thread panicked");
        assert_eq!(run(|| 1).unwrap(), 1);
    }

    #[test]
    fn concurrent_runs_leave_at_most_max_idle_threads() {
        let handles: Vec<_> = (0..32).map(|i| std::thread::spawn(move || run(move || {
            std::thread::sleep(Duration::from_millis(5));
            i
        }).unwrap())).collect();
        let total: i32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, (0..32).sum::<i32>());
        assert!(idle_count() <= MAX_IDLE);
    }
}
