//! The guest's view of the world, granted piece by piece: argv, an environment, stdin from
//! memory, capped stdout/stderr, a clock, and preopened directories. Nothing else: no sockets, no
//! host environment, no ambient file system.
//!
//! It also replaces WASI's `poll_oneoff` so that a guest's sleep never outlives its deadline.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::request::{OutputListener, Stream};
use wasmtime::{Caller, Linker};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, WasiCtxBuilder};

use super::GuestState;

/// One output stream of the guest, keeping its first `cap` bytes.
///
/// Writes past the cap succeed from the guest's point of view (so a chatty program is not
/// killed by `EPIPE`) but are dropped, and the stream is marked truncated. Memory is bounded
/// by the cap, whatever the guest writes.
#[derive(Clone, Debug)]
pub struct CappedPipe(Arc<Mutex<Captured>>);

#[derive(Debug)]
struct Captured {
    bytes: Vec<u8>,
    cap: usize,
    truncated: bool,
    /// Which stream this is, and who hears what is kept as it is written.
    stream: Stream,
    listener: Option<OutputListener>,
}

impl CappedPipe {
    /// A pipe for `stream` that keeps at most `cap` bytes.
    pub fn new(cap: u64, stream: Stream) -> CappedPipe {
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        CappedPipe(Arc::new(Mutex::new(Captured { bytes: Vec::new(), cap, truncated: false, stream, listener: None })))
    }

    fn lock(&self) -> MutexGuard<'_, Captured> {
        // A panic while holding this lock cannot leave the buffer inconsistent: take it anyway.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends what fits under the cap; returns how many bytes the guest wrote (all of them).
    fn append(&self, data: &[u8]) -> usize {
        let mut captured = self.lock();
        let room = captured.cap.saturating_sub(captured.bytes.len());
        let kept = room.min(data.len());
        captured.bytes.extend_from_slice(&data[..kept]);
        if kept < data.len() {
            captured.truncated = true;
        }
        if let Some(listener) = &captured.listener {
            listener.send(captured.stream, &data[..kept]);
        }
        data.len()
    }

    /// Empties the pipe and sets its cap and listener, for the run about to start (a guest is
    /// made before its request is known, and a session's serves many).
    pub fn reset(&self, cap: u64, listener: Option<OutputListener>) {
        let mut captured = self.lock();
        captured.bytes.clear();
        captured.truncated = false;
        captured.cap = usize::try_from(cap).unwrap_or(usize::MAX);
        captured.listener = listener;
    }

    /// Forgets the listener: the run it belonged to is over.
    pub fn reset_listener(&self) {
        self.lock().listener = None;
    }

    /// The bytes kept so far and whether anything was dropped.
    pub fn take(&self) -> (Vec<u8>, bool) {
        let mut captured = self.lock();
        (std::mem::take(&mut captured.bytes), captured.truncated)
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    // The default adapter spawns a task per stream; this pipe never blocks, so hand WASI the
    // pipe itself.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(1 << 20)
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(self.append(buf)))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The guest's standard input: bytes in memory, then end of file. Its content can be set after
/// the guest was made (a warm instance learns its stdin only when its request comes).
#[derive(Clone, Debug, Default)]
pub struct InputPipe(Arc<Mutex<Bytes>>);

impl InputPipe {
    /// Replaces what the guest will read.
    pub fn set(&self, bytes: Vec<u8>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Bytes::from(bytes);
    }

    fn read_up_to(&self, size: usize) -> Bytes {
        let mut buffer = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let size = size.min(buffer.len());
        buffer.split_to(size)
    }
}

impl IsTerminal for InputPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdinStream for InputPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncRead + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::InputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for InputPipe {
    async fn ready(&mut self) {}
}

impl wasmtime_wasi::p2::InputStream for InputPipe {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        let data = self.read_up_to(size);
        if data.is_empty() && size > 0 {
            return Err(wasmtime_wasi::p2::StreamError::Closed);
        }
        Ok(data)
    }
}

impl tokio::io::AsyncRead for InputPipe {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let data = self.read_up_to(buf.remaining());
        buf.put_slice(&data);
        Poll::Ready(Ok(()))
    }
}

/// The guest's monotonic clock: nanoseconds since its run started. It restarts at zero when a
/// guest prepared ahead begins its run ([`RunClock::restart`]): otherwise its reading would
/// tell the run how long the guest waited, which is when the previous run (someone else's)
/// took the one before it. The replacement `poll_oneoff` reads the same origin (the store's
/// `started`), so absolute sleeps (`clock_nanosleep(TIMER_ABSTIME)`, which CPython's
/// `time.sleep` uses) are measured against the clock the guest sees.
#[derive(Clone, Debug)]
pub struct RunClock {
    /// The origin, in nanoseconds after [`base`].
    origin: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A fixed instant every [`RunClock`] counts from.
fn base() -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

impl RunClock {
    /// A clock that reads zero now.
    pub fn starting_now() -> RunClock {
        let clock = RunClock { origin: Default::default() };
        clock.restart();
        clock
    }

    /// Makes the clock read zero from now on, and returns that instant.
    pub fn restart(&self) -> Instant {
        let now = Instant::now();
        let since_base = u64::try_from(now.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX);
        self.origin.store(since_base, std::sync::atomic::Ordering::Relaxed);
        now
    }
}

impl HostMonotonicClock for RunClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        let since_base = u64::try_from(base().elapsed().as_nanos()).unwrap_or(u64::MAX);
        since_base.saturating_sub(self.origin.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// What a guest is given, besides stdin/stdout/stderr.
pub struct Grants {
    /// argv, including argv[0].
    pub args: Vec<String>,
    /// The whole environment.
    pub env: Vec<(String, String)>,
    /// Directories: host path, guest path, writable.
    pub dirs: Vec<(std::path::PathBuf, &'static str, bool)>,
}

/// The host's ends of a guest's three standard streams.
#[derive(Clone, Debug)]
pub struct GuestIo {
    /// What the guest reads.
    pub stdin: InputPipe,
    /// What it writes to stdout.
    pub stdout: CappedPipe,
    /// What it writes to stderr.
    pub stderr: CappedPipe,
}

impl GuestIo {
    /// Empty streams with output capped at `cap` bytes each.
    pub fn new(cap: u64) -> GuestIo {
        GuestIo { stdin: InputPipe::default(), stdout: CappedPipe::new(cap, Stream::Stdout), stderr: CappedPipe::new(cap, Stream::Stderr) }
    }
}

/// Builds the WASI context of one guest: only what `grants` names, the three streams of `io`,
/// and `clock` as its monotonic clock.
pub fn context(grants: &Grants, io: &GuestIo, clock: &RunClock) -> Result<WasiP1Ctx, String> {
    let mut builder = WasiCtxBuilder::new();
    // File operations run on the guest's own thread instead of hopping to a blocking pool: the
    // guest is synchronous anyway, and the hop costs more than the operation.
    builder.allow_blocking_current_thread(true);
    builder
        .args(&grants.args)
        .envs(&grants.env)
        .stdin(io.stdin.clone())
        .stdout(io.stdout.clone())
        .stderr(io.stderr.clone())
        .monotonic_clock(clock.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for (host, guest, writable) in &grants.dirs {
        let perms = if *writable {
            wasmtime_wasi::FsPerms::ReadWrite
        } else {
            wasmtime_wasi::FsPerms::ReadOnly
        };
        builder
            .preopened_dir(host, guest, perms)
            .map_err(|e| format!("granting {} as {guest}: {e}", host.display()))?;
    }
    let mut ctx = builder.build_p1();
    wasmtime_wasi::WasiView::ctx(&mut ctx).table.set_max_capacity(MAX_OPEN_FILES);
    Ok(ctx)
}

/// The trap a sleeping guest gets when its deadline comes first.
#[derive(Debug, thiserror::Error)]
#[error("the wall-clock deadline passed while the guest was sleeping")]
pub struct DeadlinePassed;

// WASI preview 1 ABI: `subscription` is 48 bytes, `event` 32 bytes.
const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;
const EVENTTYPE_CLOCK: u8 = 0;
const CLOCK_REALTIME: u32 = 0;
const SUBSCRIPTION_CLOCK_ABSTIME: u16 = 1;
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;

/// Links WASI preview 1 for a guest: wasmtime-wasi's implementation, with `poll_oneoff` and
/// `proc_exit` replaced by ours and its file status calls wrapped ([`replace_filestat`]).
pub fn link(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_sync(linker, |s: &mut GuestState| &mut s.wasi)?;
    replace_filestat(linker)?;
    replace_poll_oneoff(linker)?;
    replace_proc_exit(linker)
}

// WASI preview 1 ABI: `filestat` is 64 bytes, `mtim` at 48, `ctim` at 56.
const FILESTAT_SIZE: usize = 64;
const FILESTAT_MTIM: usize = 48;
const FILESTAT_CTIM: usize = 56;

/// Wraps `fd_filestat_get` and `path_filestat_get`: a file's change time is reported as its
/// modification time. wasmtime-wasi reports the file's *birth* time there, which no one can
/// set: a scratch directory made ahead of its run (a prepared guest's, or a tmpfs kept from
/// an earlier run that wrote nothing) would show when an earlier run ended or started, to the
/// nanosecond. Its access and modification times are set to the run's start when it is handed
/// to the run, so the directory shows nothing older than the run itself.
pub fn replace_filestat(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p1::wasi_snapshot_preview1 as p1;
    linker.allow_shadowing(true);
    linker.func_wrap("wasi_snapshot_preview1", "fd_filestat_get", |mut caller: Caller<'_, GuestState>, fd: i32, buf: i32| {
        with_memory(&mut caller, buf, |wasi, memory| {
            wasmtime_wasi::runtime::in_tokio(p1::fd_filestat_get(wasi, memory, fd, buf))
        })
    })?;
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "path_filestat_get",
        |mut caller: Caller<'_, GuestState>, fd: i32, flags: i32, path: i32, len: i32, buf: i32| {
            with_memory(&mut caller, buf, |wasi, memory| {
                wasmtime_wasi::runtime::in_tokio(p1::path_filestat_get(wasi, memory, fd, flags, path, len, buf))
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Calls `stat` with the guest's WASI context and memory, as wasmtime-wasi's own binding does
/// (`wiggle`'s `wasmtime_integration`);
/// when it succeeds (it wrote a `filestat` at `buf`), that `filestat`'s `ctim` := `mtim`.
fn with_memory(
    caller: &mut Caller<'_, GuestState>,
    buf: i32,
    stat: impl FnOnce(&mut WasiP1Ctx, &mut wiggle::GuestMemory<'_>) -> wasmtime::Result<i32>,
) -> wasmtime::Result<i32> {
    use wasmtime::AsContextMut;
    use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1;
    let Some(wasmtime::Extern::Memory(memory)) = caller.get_export("memory") else {
        return Err(wasmtime::format_err!("missing required memory export"));
    };
    // What a call may copy from the guest (its bound on a path's length, say).
    let fuel = caller.as_context_mut().hostcall_fuel();
    let (data, state) = memory.data_and_store_mut(&mut *caller);
    state.wasi.set_hostcall_fuel(fuel);
    let errno = stat(&mut state.wasi, &mut wiggle::GuestMemory::Unshared(data))?;
    if errno == ERRNO_SUCCESS {
        let at = buf as u32 as usize;
        if let Some(filestat) = data.get_mut(at..at.saturating_add(FILESTAT_SIZE)) {
            filestat.copy_within(FILESTAT_MTIM..FILESTAT_MTIM + 8, FILESTAT_CTIM);
        }
    }
    Ok(errno)
}

/// Files one guest may hold open at once (counted as entries of its WASI resource table, which
/// also holds its three streams and preopens). Each open file is a descriptor of the host
/// process: without a cap, one guest reopening a file in a loop takes all of a server's
/// descriptors. A guest that goes past it is stopped (status `error`, see
/// [`is_too_many_open_files`]); its descriptors close with its store.
pub const MAX_OPEN_FILES: usize = 1024;

/// Whether `error` is a guest's attempt to hold more than [`MAX_OPEN_FILES`] open.
pub fn is_too_many_open_files(error: &wasmtime::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<wasmtime::component::ResourceTableError>()
            .is_some_and(|e| matches!(e, wasmtime::component::ResourceTableError::Full))
    })
}

/// Replaces `wasi_snapshot_preview1::proc_exit`: every status a guest can pass ends the run as
/// an exit with that status. wasmtime-wasi's own version refuses statuses of 126 and above
/// with an error (so `process.exit(126)`, `process.exit(-1)` or `os._exit(200)` looked like
/// a failure of wsbx); the run's exit code is the status's low byte, as on POSIX.
pub fn replace_proc_exit(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap("wasi_snapshot_preview1", "proc_exit", |status: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(wasmtime_wasi::I32Exit(status)))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Replaces `wasi_snapshot_preview1::poll_oneoff` in `linker`.
///
/// The guest's file descriptors are all in memory (stdin, capped pipes) or regular files, so
/// they are always ready: a subscription on one is reported at once. A guest that only waits on
/// clocks sleeps until the earliest of them, but never past the run's deadline: at the deadline
/// the call traps with [`DeadlinePassed`] and the run ends as `timeout`. A kill wakes it within
/// a tick and ends the run as `killed`. wasmtime-wasi's own
/// version would sleep the full time, since epochs only interrupt running wasm code.
pub fn replace_poll_oneoff(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "poll_oneoff",
        |mut caller: Caller<'_, GuestState>, subs: u32, events: u32, n: u32, nevents: u32| {
            poll_oneoff(&mut caller, subs, events, n, nevents)
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

struct Subscription {
    userdata: u64,
    tag: u8,
    /// For clocks, when it fires, measured on the guest's monotonic clock.
    fires_at: Duration,
}

fn poll_oneoff(
    caller: &mut Caller<'_, GuestState>,
    subs_ptr: u32,
    events_ptr: u32,
    n: u32,
    nevents_ptr: u32,
) -> wasmtime::Result<i32> {
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return Ok(ERRNO_FAULT);
    };
    if n == 0 {
        return Ok(ERRNO_INVAL);
    }
    // `n` comes from the guest: nothing is allocated for it before it is known to describe
    // subscriptions and events that fit in the guest's own memory.
    let n = n as usize;
    let size = memory.data_size(&*caller);
    let fits = |ptr: u32, each: usize| n.checked_mul(each).and_then(|len| len.checked_add(ptr as usize)).is_some_and(|end| end <= size);
    if !fits(subs_ptr, SUBSCRIPTION_SIZE) || !fits(events_ptr, EVENT_SIZE) {
        return Ok(ERRNO_FAULT);
    }
    let mut raw = vec![0u8; n * SUBSCRIPTION_SIZE];
    if memory.read(&*caller, subs_ptr as usize, &mut raw).is_err() {
        return Ok(ERRNO_FAULT);
    }
    let origin = caller.data().started;
    let now = origin.elapsed();
    let mut subs = Vec::with_capacity(n);
    for chunk in raw.chunks_exact(SUBSCRIPTION_SIZE) {
        let u64_at = |at: usize| u64::from_le_bytes(chunk[at..at + 8].try_into().unwrap_or_default());
        let userdata = u64_at(0);
        let tag = chunk[8];
        let fires_at = if tag == EVENTTYPE_CLOCK {
            let clock = u32::from_le_bytes(chunk[16..20].try_into().unwrap_or_default());
            let timeout = Duration::from_nanos(u64_at(24));
            let flags = u16::from_le_bytes(chunk[40..42].try_into().unwrap_or_default());
            if flags & SUBSCRIPTION_CLOCK_ABSTIME == 0 {
                now.saturating_add(timeout)
            } else if clock == CLOCK_REALTIME {
                let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                now.saturating_add(timeout.saturating_sub(wall))
            } else {
                // The monotonic and CPU-time clocks all read the run's clock.
                timeout
            }
        } else {
            // fd_read / fd_write: every descriptor a guest has is ready.
            Duration::ZERO
        };
        subs.push(Subscription { userdata, tag, fires_at });
    }

    let earliest = subs.iter().map(|s| s.fires_at).min().unwrap_or_default();
    let deadline = caller.data().deadline.saturating_duration_since(origin);
    if earliest > now {
        let wake = earliest.min(deadline);
        // In slices of one epoch tick, so that a kill wakes the guest as promptly as it
        // interrupts a running one.
        loop {
            if let Some(trap) = super::kill_trap(caller.data()) {
                return Err(trap);
            }
            let left = wake.saturating_sub(origin.elapsed());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(super::engine::EPOCH_TICK));
        }
        if earliest > deadline {
            return Err(wasmtime::Error::new(DeadlinePassed));
        }
    }

    let now = origin.elapsed();
    let mut out = Vec::with_capacity(n * EVENT_SIZE);
    let mut count = 0u32;
    for sub in subs.iter().filter(|s| s.fires_at <= now) {
        let mut event = [0u8; EVENT_SIZE];
        event[0..8].copy_from_slice(&sub.userdata.to_le_bytes());
        event[10] = sub.tag;
        out.extend_from_slice(&event);
        count += 1;
    }
    if memory.write(&mut *caller, events_ptr as usize, &out).is_err()
        || memory.write(&mut *caller, nevents_ptr as usize, &count.to_le_bytes()).is_err()
    {
        return Ok(ERRNO_FAULT);
    }
    Ok(ERRNO_SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A store running `guests/wat/poll_oneoff.wat` against the replacement `poll_oneoff`, with
    /// a deadline `deadline` from now.
    fn poll_guest(deadline: Duration) -> (wasmtime::Store<GuestState>, wasmtime::Instance) {
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, include_str!("../../../guests/wat/poll_oneoff.wat")).unwrap();
        let state = GuestState::new(
            WasiCtxBuilder::new().build_p1(),
            super::super::limits::MemoryCap::new(1 << 20),
            RunClock::starting_now(),
            Instant::now() + deadline,
        );
        let mut store = wasmtime::Store::new(&engine, state);
        let mut linker = Linker::new(&engine);
        replace_poll_oneoff(&mut linker).unwrap();
        let instance = linker.instantiate(&mut store, &module).unwrap();
        (store, instance)
    }

    fn call(store: &mut wasmtime::Store<GuestState>, instance: &wasmtime::Instance, name: &str) -> wasmtime::Result<i32> {
        instance.get_typed_func::<(), i32>(&mut *store, name).unwrap().call(&mut *store, ())
    }

    #[test]
    fn poll_oneoff_refuses_a_guest_that_claims_billions_of_subscriptions() {
        let (mut store, instance) = poll_guest(Duration::from_secs(10));
        assert_eq!(call(&mut store, &instance, "huge").unwrap(), ERRNO_FAULT);
    }

    #[test]
    fn poll_oneoff_never_sleeps_past_the_deadline() {
        let (mut store, instance) = poll_guest(Duration::from_millis(200));
        let started = Instant::now();
        let error = call(&mut store, &instance, "sleep_a_minute").unwrap_err();
        assert!(error.downcast_ref::<DeadlinePassed>().is_some(), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(30), "slept {:?}", started.elapsed());
    }

    #[test]
    fn poll_oneoff_short_sleep_returns_its_event() {
        let (mut store, instance) = poll_guest(Duration::from_secs(10));
        assert_eq!(call(&mut store, &instance, "sleep_a_millisecond").unwrap(), ERRNO_SUCCESS);
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        let mut count = [0u8; 4];
        memory.read(&store, 1024, &mut count).unwrap();
        assert_eq!(u32::from_le_bytes(count), 1);
    }

    #[test]
    fn capped_pipe_keeps_the_first_bytes_and_flags_the_rest() {
        let pipe = CappedPipe::new(5, Stream::Stdout);
        assert_eq!(pipe.append(b"hel"), 3);
        assert_eq!(pipe.append(b"lo world"), 8);
        assert_eq!(pipe.take(), (b"hello".to_vec(), true));
    }
}
