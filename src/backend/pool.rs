//! Things prepared ahead of their runs by a background thread, each used for exactly one run:
//! wasm guests (instantiated and set up) and Firejail sandboxes (started and isolated).
//!
//! Preparing is most of the cost of a short run; with a pool it happens between runs instead
//! of during them. A run that finds the pool empty prepares its own, so a pool only ever
//! makes runs faster, never makes them wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// At most `target` prepared items, refilled by a thread of its own, which stops (dropping
/// every item still ready) when the pool is dropped.
pub(crate) struct WarmPool<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    refill: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Shared<T> {
    ready: Mutex<Vec<T>>,
    wanted: Condvar,
    stop: AtomicBool,
}

impl<T> Shared<T> {
    fn ready(&self) -> MutexGuard<'_, Vec<T>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T: Send + 'static> WarmPool<T> {
    /// Starts a thread named `name` (with `stack` bytes of stack, when given) that keeps
    /// `target` items made by `make` ready. Before topping up a pool that is not empty it calls
    /// `pace`, which may wait for a moment when preparing disturbs runs least; a pool that ran
    /// dry refills at once.
    pub(crate) fn start<M>(target: usize, name: &str, stack: Option<usize>, pace: fn(), make: M) -> WarmPool<T>
    where
        M: Fn() -> Result<T, String> + Send + 'static,
    {
        let shared = Arc::new(Shared { ready: Mutex::new(Vec::new()), wanted: Condvar::new(), stop: AtomicBool::new(false) });
        let pool = shared.clone();
        let mut builder = std::thread::Builder::new().name(name.to_owned());
        if let Some(stack) = stack {
            builder = builder.stack_size(stack);
        }
        let what = name.to_owned();
        let spawned = builder.spawn(move || {
            let mut failures = 0u32;
            loop {
                {
                    let mut ready = pool.ready();
                    while ready.len() >= target && !pool.stop.load(Ordering::Relaxed) {
                        ready = pool.wanted.wait(ready).unwrap_or_else(|p| p.into_inner());
                    }
                }
                if pool.stop.load(Ordering::Relaxed) {
                    break;
                }
                if !pool.ready().is_empty() {
                    pace();
                }
                match make() {
                    Ok(item) => {
                        failures = 0;
                        if !pool.stop.load(Ordering::Relaxed) {
                            pool.ready().push(item);
                        }
                    }
                    // Stopping may take what was being prepared away (its directory).
                    Err(_) if pool.stop.load(Ordering::Relaxed) => break,
                    Err(e) => {
                        // Runs still work without the pool (they prepare their own); back off
                        // so a broken set-up does not spin.
                        failures += 1;
                        tracing::warn!(pool = %what, error = %e, "could not prepare ahead");
                        std::thread::sleep(Duration::from_millis(100) * failures.min(50));
                    }
                }
            }
        });
        let refill = match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(pool = name, error = %e, "could not start the thread that prepares ahead; every run prepares its own");
                None
            }
        };
        WarmPool { shared, refill: Mutex::new(refill) }
    }

    /// Stops the refill thread (waiting for the item it may be preparing) and drops every
    /// prepared item, so whatever they hold (scratch directories, processes) is gone when this
    /// returns. Later [`WarmPool::take`]s find nothing.
    pub(crate) fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wanted.notify_all();
        let refill = self.refill.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(refill) = refill {
            let _ = refill.join();
        }
        self.shared.ready().clear();
    }

    /// A prepared item, if one is ready.
    pub(crate) fn take(&self) -> Option<T> {
        let item = self.shared.ready().pop();
        self.shared.wanted.notify_one();
        item
    }
}

impl<T: Send + 'static> Drop for WarmPool<T> {
    /// [`WarmPool::stop`].
    fn drop(&mut self) {
        self.stop();
    }
}

impl<T: Send + 'static> std::fmt::Debug for WarmPool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool").field("ready", &self.shared.ready().len()).finish()
    }
}

/// Drops `value` on a background thread: teardown the caller need not wait for (a wasm
/// instance's memory reset, an emptied control group's removal, each about a millisecond).
/// The queue is short, so a backlog slows callers down rather than piling things up.
pub(crate) fn drop_later<T: Send + 'static>(value: T) {
    type Retired = Box<dyn Send>;
    static REAPER: OnceLock<Option<Mutex<mpsc::SyncSender<Retired>>>> = OnceLock::new();
    let reaper = REAPER.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<Retired>(8);
        std::thread::Builder::new()
            .name("wsbx-reaper".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| Mutex::new(tx))
    });
    let tx = reaper.as_ref().map(|tx| tx.lock().unwrap_or_else(|p| p.into_inner()).clone());
    if let Some(tx) = tx {
        // On failure the value comes back in the error and is dropped right here.
        let _ = tx.send(Box::new(value));
    }
}
