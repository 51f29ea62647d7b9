//! Fresh random numbers in every run of the pre-initialized Python, written by the host.
//!
//! A snapshot freezes the state of `random`'s and numpy's global generators: without a refresh
//! every run would draw the same numbers. Both are Mersenne Twisters (MT19937), whose whole
//! state is 624 32-bit words held inside one object each. The snapshot's set-up leaves each
//! state holding a fixed pattern (a *marker*) and reports the objects' addresses; the host finds
//! the markers near them once, records where they are beside the snapshot, and at the start of
//! every run overwrites both states with words from its own entropy, before the guest runs.
//!
//! That replaced reseeding from Python (`random.seed`, `numpy.random.seed` in a first turn),
//! which was about 0.7 ms of a 2 ms hello: the interpreter's call, the seeding algorithms and
//! the pages they dirtied. A written state also holds more entropy than any seed: 19,937 bits.
//! A slot that does not hold its marker when a run starts fails the run: a run never draws
//! from a state the snapshot froze.

/// Words in a Mersenne Twister state.
const WORDS: usize = 624;

/// Bytes in a Mersenne Twister state (little-endian words in wasm memory).
const STATE_BYTES: usize = WORDS * 4;

/// Distinguishes `random`'s marker from numpy's.
const RANDOM_SALT: u32 = 0x7773_6278;
const NUMPY_SALT: u32 = 0x6e70_7279;

/// How far past its object's address a state may start: CPython's `random.Random` holds it
/// after an 8-byte header and an index; numpy's `MT19937` after its `BitGenerator` fields.
const SEARCH_BYTES: usize = 8 << 10;

/// Where the two generators' states live in the snapshot's linear memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SeedSlots {
    random: usize,
    numpy: usize,
}

/// The pattern a generator holds in the snapshot: word `i` is `0x9E3779B9 * (i + 1) ^ salt`.
/// [`set_up`] builds the same words in Python.
fn marker(salt: u32) -> [u8; STATE_BYTES] {
    let mut bytes = [0; STATE_BYTES];
    for (i, word) in bytes.chunks_exact_mut(4).enumerate() {
        word.copy_from_slice(&(0x9E37_79B9u32.wrapping_mul(i as u32 + 1) ^ salt).to_le_bytes());
    }
    bytes
}

/// Python for the end of the snapshot's set-up (with `random` and `numpy` imported): leaves
/// both global generators holding their markers, positioned to twist before their first draw
/// (so every number drawn depends on the whole state), and prints the addresses of the two
/// objects holding the states, for [`SeedSlots::locate`]. Seeding numpy first drops the
/// `SeedSequence` its generator was made with and keeps for `spawn()`: left in the snapshot,
/// it would spawn the same streams in every run (as after `numpy.random.seed`, `spawn()` then
/// refuses).
pub(crate) fn set_up() -> String {
    format!(
        r#"
def _wsbx_marker(salt):
    return [(0x9E3779B9 * (i + 1) ^ salt) & 0xFFFFFFFF for i in range({WORDS})]
random.setstate((3, tuple(_wsbx_marker({RANDOM_SALT})) + ({WORDS},), None))
numpy.random.seed(0)
numpy.random.set_state(("MT19937", _wsbx_marker({NUMPY_SALT}), {WORDS}, 0, 0.0))
print(id(random._inst), id(numpy.random.mtrand._rand._bit_generator))
del _wsbx_marker
"#
    )
}

impl SeedSlots {
    /// Finds the markers in `memory` within reach of the objects whose addresses `printed`
    /// holds (what [`set_up`]'s code printed).
    pub(crate) fn locate(memory: &[u8], printed: &str) -> Result<SeedSlots, String> {
        let mut addresses = printed.split_whitespace().map(str::parse::<usize>);
        let (Some(Ok(random)), Some(Ok(numpy)), None) = (addresses.next(), addresses.next(), addresses.next()) else {
            return Err(format!("the set-up printed {printed:?}, not two addresses"));
        };
        let find = |object: usize, salt: u32, what: &str| {
            let window = memory.get(object..memory.len().min(object.saturating_add(SEARCH_BYTES + STATE_BYTES))).unwrap_or(&[]);
            let marker = marker(salt);
            window
                .windows(STATE_BYTES)
                .position(|candidate| candidate == marker)
                .map(|at| object + at)
                .ok_or_else(|| format!("{what}'s state is not within {SEARCH_BYTES} bytes of its object at {object}"))
        };
        Ok(SeedSlots { random: find(random, RANDOM_SALT, "random")?, numpy: find(numpy, NUMPY_SALT, "numpy")? })
    }

    /// The record kept beside the snapshot: `random=<offset> numpy=<offset>`.
    pub(crate) fn record(&self) -> String {
        format!("random={} numpy={}\n", self.random, self.numpy)
    }

    /// Reads a [`SeedSlots::record`]; `None` if it is not one.
    pub(crate) fn parse(record: &str) -> Option<SeedSlots> {
        let mut fields = record.split_whitespace();
        let mut field = |name: &str| fields.next()?.strip_prefix(name)?.strip_prefix('=')?.parse().ok();
        let slots = SeedSlots { random: field("random")?, numpy: field("numpy")? };
        fields.next().is_none().then_some(slots)
    }

    /// Overwrites both states in `memory`, a fresh instance of the snapshot, with words from
    /// the host's entropy. The first word's top bit is set, as MT19937's own seeding does, so
    /// that the state is never all zeros (only that bit of the first word is ever used).
    pub(crate) fn refresh(&self, memory: &mut [u8]) -> Result<(), String> {
        for (offset, salt, what) in [(self.random, RANDOM_SALT, "random"), (self.numpy, NUMPY_SALT, "numpy")] {
            let state = offset
                .checked_add(STATE_BYTES)
                .and_then(|end| memory.get_mut(offset..end))
                .filter(|state| **state == marker(salt))
                .ok_or_else(|| format!("{what}'s generator is not where the snapshot's record says; delete the snapshot to rebuild it"))?;
            getrandom::fill(state).map_err(|e| format!("reading the host's entropy: {e}"))?;
            state[..4].copy_from_slice(&0x8000_0000u32.to_le_bytes());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_located_refreshed_once_and_recorded() {
        let mut memory = vec![0u8; 64 << 10];
        let (random, numpy) = (4096, 20_000);
        memory[random + 12..random + 12 + STATE_BYTES].copy_from_slice(&marker(RANDOM_SALT));
        memory[numpy + 100..numpy + 100 + STATE_BYTES].copy_from_slice(&marker(NUMPY_SALT));
        let slots = SeedSlots::locate(&memory, &format!("{random} {numpy}\n")).unwrap();
        assert_eq!(slots, SeedSlots { random: random + 12, numpy: numpy + 100 });
        assert_eq!(SeedSlots::parse(&slots.record()), Some(slots));

        let before = memory.clone();
        slots.refresh(&mut memory).unwrap();
        let state = &memory[slots.random..slots.random + STATE_BYTES];
        assert_eq!(state[..4], 0x8000_0000u32.to_le_bytes());
        assert_ne!(state[4..], before[slots.random + 4..slots.random + STATE_BYTES]);
        assert_eq!(memory[..slots.random], before[..slots.random], "nothing else written");
        // Refreshed state is no marker: a second refresh of the same memory is refused.
        assert!(slots.refresh(&mut memory).unwrap_err().contains("random's generator"));
    }

    #[test]
    fn bad_records_and_missing_markers_are_errors() {
        let memory = vec![0u8; 16 << 10];
        assert!(SeedSlots::locate(&memory, "1 2").unwrap_err().contains("random's state"));
        assert!(SeedSlots::locate(&memory, "1").is_err());
        assert!(SeedSlots::locate(&memory, "x y").is_err());
        assert!(SeedSlots::locate(&memory, &format!("{} 0", usize::MAX)).is_err());
        for bad in ["", "random=1", "random=1 numpy=x", "numpy=1 random=2", "random=1 numpy=2 more=3"] {
            assert_eq!(SeedSlots::parse(bad), None, "{bad}");
        }
        let far = SeedSlots { random: usize::MAX - 10, numpy: 0 };
        assert!(far.refresh(&mut [0u8; 16]).is_err());
    }
}
