//! The pre-initialized Python's objects made immortal, so a run does not write to them.
//!
//! CPython counts references in every object's header: using a function, a module's dict or a
//! constant writes to the page it lives on. In a fresh instance each such page is a
//! copy-on-write fault, and a pool slot keeps only so many dirtied regions resident for the
//! next instance (see `engine.rs`): a hello run wrote ~150 pages in ~100 separate regions of
//! the 100 MiB snapshot, a refcount here, a dict there. CPython skips counting for *immortal*
//! objects (on 32-bit platforms: a count of at least 2^30), as it does for `None`, small ints
//! and interned strings. This module makes every object the snapshot's set-up left alive
//! immortal, as CPython's own `_Py_SetImmortal` and Instagram's pre-fork servers do
//! (Cinder's `immortalize_heap`):
//!
//! 1. [`listing`] (Python, in the guest): collect garbage, list every object the collector
//!    tracks and those they hold directly (strings, numbers, code objects and their constants),
//!    hash each string (its hash is cached in the object, another write), keep the tracked ones
//!    alive in a list, and write each object's address and its type's address to a file;
//! 2. [`mark`] (the host, between two turns, so no guest code runs): check each object's type
//!    is where the listing says (the header is what this module expects and the object is
//!    still there) and set its count to CPython's immortal value;
//! 3. [`RELEASE`] (Python): drop the list and freeze the collector's generations, so a run's
//!    collections never walk the snapshot's objects either.
//!
//! What it changes for user code: `sys.getrefcount` of an object from the snapshot is a
//! large constant, and such an object is never freed (deleting a module's attribute leaks
//! what it held, for the rest of the run). Objects a run makes are counted as before.

/// CPython's `_Py_IMMORTAL_INITIAL_REFCNT` on 32-bit platforms (`5 << 28`): what
/// `_Py_SetImmortal` gives an object it makes immortal at run time.
const IMMORTAL_INITIAL: i32 = 5 << 28;

/// CPython's `_Py_IMMORTAL_MINIMUM_REFCNT` on 32-bit platforms: a count this high is immortal.
const IMMORTAL_MINIMUM: i32 = 1 << 30;

/// How deep [`listing`] follows objects the collector does not track (tuples of constants,
/// code objects in constants, ...) from a tracked one.
const DEPTH: usize = 6;

/// A turn for the end of the snapshot's set-up: lists the objects to make immortal into
/// `guest_path` (pairs of little-endian 32-bit addresses: the object, its type) and keeps the
/// tracked ones alive in `_reactor._wsbx_keep` until [`RELEASE`]. An object it lists is alive
/// until then: either tracked (so in that list) or held by one that is, and no code runs in
/// between to let go of it. Binds no name in `__main__`.
pub(crate) fn listing(guest_path: &str) -> String {
    format!(
        r#"
def _wsbx_immortal(path):
    import array, gc, sys
    if hasattr(sys, "getobjects"):
        raise RuntimeError("a Py_TRACE_REFS build: object headers are not as wsbx expects")
    gc.unfreeze()
    gc.collect()
    objects = gc.get_objects()
    sys.modules["_reactor"]._wsbx_keep = objects
    tracked, referents, code = gc.is_tracked, gc.get_referents, type(_wsbx_immortal.__code__)
    pairs, codes = array.array("I"), set()
    def emit(o, depth):
        pairs.append(id(o))
        pairs.append(id(type(o)))
        kind = type(o)
        if kind is str:
            hash(o)
        elif kind is code:
            if id(o) in codes or depth >= {DEPTH}:
                return
            codes.add(id(o))
            for part in (o.co_consts, o.co_names, o.co_linetable, o.co_exceptiontable, o.co_qualname, o.co_name, o.co_filename):
                emit(part, depth + 1)
        elif depth < {DEPTH}:
            for held in referents(o):
                if not tracked(held):
                    emit(held, depth + 1)
    with open(path, "wb") as out:
        for o in objects:
            emit(o, 0)
            if len(pairs) >= 1 << 16:
                out.write(pairs.tobytes())
                del pairs[:]
        out.write(pairs.tobytes())
_wsbx_immortal({guest_path:?})
del _wsbx_immortal
"#
    )
}

/// The turn after [`mark`]: lets go of the listing's list (its objects are immortal now, so
/// nothing else is freed), moves every tracked object into the collector's permanent
/// generation, and leaves the turn counter and `__main__` as the set-up did.
pub(crate) const RELEASE: &str = "del __import__('_reactor')._wsbx_keep
__import__('_reactor')._turns = 0
__import__('_reactor')._clean_main()
__import__('gc').freeze()
";

/// What [`mark`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Marked {
    /// Objects made immortal.
    pub(crate) marked: usize,
    /// Objects that were immortal already (`None`, small ints, interned strings, static types).
    pub(crate) already: usize,
}

/// Makes every object `listing` names (what [`listing`]'s turn wrote) immortal in `memory`, the
/// guest's linear memory. Refuses, writing nothing, if any object's header is not as listed:
/// outside memory, another type there, or a count no live object has.
pub(crate) fn mark(memory: &mut [u8], listing: &[u8]) -> Result<Marked, String> {
    if listing.len() % 8 != 0 {
        return Err(format!("the object listing is {} bytes, not whole pairs of addresses", listing.len()));
    }
    let word = |bytes: &[u8]| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let mut objects: Vec<(u32, u32)> = listing.chunks_exact(8).map(|pair| (word(&pair[..4]), word(&pair[4..]))).collect();
    objects.sort_unstable();
    objects.dedup();
    let mut to_mark = Vec::with_capacity(objects.len());
    let mut done = Marked::default();
    for &(object, kind) in &objects {
        let at = object as usize;
        let header = at.checked_add(8).and_then(|end| memory.get(at..end)).ok_or_else(|| format!("object {at:#x} is outside the guest's memory"))?;
        let (count, found) = (word(&header[..4]) as i32, word(&header[4..]));
        if found != kind {
            return Err(format!("object {at:#x} has type {found:#x} where the listing says {kind:#x}"));
        }
        match count {
            c if c >= IMMORTAL_MINIMUM => done.already += 1,
            c if c <= 0 => return Err(format!("object {at:#x} has reference count {c}")),
            _ => to_mark.push(at),
        }
    }
    for at in to_mark {
        memory[at..at + 4].copy_from_slice(&IMMORTAL_INITIAL.to_le_bytes());
        done.marked += 1;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(memory: &mut [u8], at: usize, count: i32, kind: u32) {
        memory[at..at + 4].copy_from_slice(&count.to_le_bytes());
        memory[at + 4..at + 8].copy_from_slice(&kind.to_le_bytes());
    }

    fn listed(objects: &[(u32, u32)]) -> Vec<u8> {
        objects.iter().flat_map(|(object, kind)| object.to_le_bytes().into_iter().chain(kind.to_le_bytes())).collect()
    }

    #[test]
    fn listed_objects_become_immortal_once() {
        let mut memory = vec![0u8; 4096];
        object(&mut memory, 64, 3, 900);
        object(&mut memory, 128, IMMORTAL_INITIAL + 7, 900);
        object(&mut memory, 256, 1, 904);
        let before = memory.clone();
        let done = mark(&mut memory, &listed(&[(64, 900), (128, 900), (64, 900), (256, 904)])).unwrap();
        assert_eq!(done, Marked { marked: 2, already: 1 });
        // Only the two mortal counts are written: an immortal one, the types and everything
        // else are left as they were.
        let mut expected = before;
        for at in [64, 256] {
            expected[at..at + 4].copy_from_slice(&IMMORTAL_INITIAL.to_le_bytes());
        }
        assert_eq!(memory, expected);
    }

    #[test]
    fn a_listing_that_does_not_match_memory_writes_nothing() {
        let mut memory = vec![0u8; 4096];
        object(&mut memory, 64, 3, 900);
        object(&mut memory, 128, 0, 900);
        let before = memory.clone();
        for (bad, says) in [
            (listed(&[(64, 900), (72, 900)]), "has type"),
            (listed(&[(64, 900), (128, 900)]), "reference count 0"),
            (listed(&[(64, 900), (4092, 900)]), "outside"),
            (listed(&[(64, 900), (u32::MAX, 900)]), "outside"),
            (listed(&[(64, 900), (64, 901)]), "has type"),
            (listed(&[(64, 900), (64, 900)])[..12].to_vec(), "whole pairs"),
        ] {
            let error = mark(&mut memory, &bad).unwrap_err();
            assert!(error.contains(says), "{error}");
            assert_eq!(memory, before, "written before refusing: {error}");
        }
    }
}
