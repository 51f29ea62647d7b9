//! How a run's [`Limits`](crate::Limits) become wasmtime store settings: fuel, the epoch
//! tick that checks the deadline, and a memory limiter that also records the peak.

use wasmtime::{ResourceLimiter, Store};

/// Table elements a guest may grow to. Tables hold function references; CPython starts with
/// 47,157 and the engine's pool has room for 65,536.
const MAX_TABLE_ELEMENTS: usize = 65_536;

/// How close to its cap a guest's memory must have grown for [`MemoryCap::reached`]: a quarter
/// of the cap, and at least 8 MiB. The last request a filled guest is refused can be large (a
/// list's array doubling, a 30 MiB chunk, CPython's allocator asking in 4 MiB segments);
/// one far past the cap from a guest that holds little is not the cap reached.
fn near_cap(cap: usize) -> usize {
    (cap / 4).max(8 << 20)
}

/// The memory cap of one store. Growth beyond the cap is refused (the guest's `memory.grow`
/// returns -1, which CPython turns into `MemoryError`), never a host error.
#[derive(Debug)]
pub struct MemoryCap {
    cap: usize,
    peak: usize,
    refused: bool,
}

impl MemoryCap {
    /// A cap of `bytes`.
    pub fn new(bytes: u64) -> MemoryCap {
        MemoryCap { cap: usize::try_from(bytes).unwrap_or(usize::MAX), peak: 0, refused: false }
    }

    /// The same cap for a guest that already holds `bytes` of memory.
    pub fn holding(mut self, bytes: u64) -> MemoryCap {
        self.peak = usize::try_from(bytes).unwrap_or(usize::MAX);
        self
    }

    /// The most linear memory the guest held, in bytes.
    pub fn peak(&self) -> u64 {
        self.peak as u64
    }

    /// Whether the guest asked for more than the cap at least once.
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// Whether the guest was refused memory once it held nearly all of its cap: what a
    /// failure after it most likely comes from. A single request far past the cap (a 1 GiB
    /// buffer, caught, in a guest holding 8 MiB) is refused without reaching it.
    pub fn reached(&self) -> bool {
        self.refused && self.peak.saturating_add(near_cap(self.cap)) >= self.cap
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.refused = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Arms a store with its fuel budget, and its epoch deadline at the next tick: each tick
/// calls the store's epoch callback, which checks the run's deadline and kill switch. Call
/// before instantiating: a store that meters fuel and has none traps at once.
pub fn arm<T>(store: &mut Store<T>, fuel: u64) -> wasmtime::Result<()> {
    store.set_fuel(fuel)?;
    store.set_epoch_deadline(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_past_the_cap_is_refused_and_recorded() {
        let mut cap = MemoryCap::new(1 << 20);
        assert!(cap.memory_growing(0, 65536, None).unwrap());
        assert!(!cap.memory_growing(65536, 2 << 20, None).unwrap());
        assert!(cap.refused());
        assert_eq!(cap.peak(), 65536);
    }

    #[test]
    fn a_cap_is_reached_only_by_a_guest_holding_nearly_all_of_it() {
        let mut far = MemoryCap::new(64 << 20);
        assert!(far.memory_growing(0, 8 << 20, None).unwrap());
        assert!(!far.memory_growing(8 << 20, 1 << 30, None).unwrap());
        assert!(far.refused() && !far.reached());
        let mut near = MemoryCap::new(64 << 20);
        assert!(near.memory_growing(0, 60 << 20, None).unwrap());
        assert!(!near.reached());
        assert!(!near.memory_growing(60 << 20, 68 << 20, None).unwrap());
        assert!(near.reached());
        // A filled 160 MiB guest refused a list's doubled array 12 MiB short of its cap.
        let mut doubling = MemoryCap::new(160 << 20);
        assert!(doubling.memory_growing(0, 148 << 20, None).unwrap());
        assert!(!doubling.memory_growing(148 << 20, 172 << 20, None).unwrap());
        assert!(doubling.reached());
    }
}
