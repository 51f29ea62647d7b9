//! The place a run's scratch directory goes: made when the backend asks for it, or filled by
//! one the backend prepared ahead, never both.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Quota, Scratch};
use crate::request::InputFile;
use crate::result::Status;

/// A run's scratch directory, not made yet.
///
/// A backend that runs in a directory made for the run calls [`ScratchSlot::fresh`]; one that
/// has a directory prepared ahead (with its guest or sandbox already looking at it) hands it
/// over with [`ScratchSlot::adopt`]. Either way the directory ends with the request's quota and
/// input files, and the caller collects files from it and removes it after the run.
#[derive(Debug)]
pub struct ScratchSlot<'a> {
    root: &'a Path,
    quota: Quota,
    inputs: &'a [InputFile],
    scratch: Option<Scratch>,
    spent: Duration,
    adopted: bool,
    /// Whether the slot holds a directory kept from earlier runs (a session's): backends run
    /// in it as it is and never swap it for one of their own.
    kept: bool,
}

/// Why a run's scratch directory could not be made ready, with the status the run gets.
#[derive(Debug)]
pub struct SlotError {
    /// `rejected` for what the request asked (inputs over the quota, a bad path),
    /// `internal_error` for what the host could not do.
    pub status: Status,
    /// What went wrong, naming the directory or the inputs.
    pub detail: String,
}

impl<'a> ScratchSlot<'a> {
    /// A slot for a directory under `root` holding at most `quota`, with `inputs` written in.
    pub fn new(root: &'a Path, quota: Quota, inputs: &'a [InputFile]) -> ScratchSlot<'a> {
        ScratchSlot { root, quota, inputs, scratch: None, spent: Duration::ZERO, adopted: false, kept: false }
    }

    /// A slot holding `kept`, a directory that outlives the run (a session's, between its
    /// turns): it gets `quota` and `inputs` now, replacing files of the same name. Whatever
    /// happens, the directory is in the slot for [`ScratchSlot::into_scratch`] to give back.
    pub fn keep(root: &'a Path, quota: Quota, inputs: &'a [InputFile], mut kept: Scratch) -> (ScratchSlot<'a>, Result<(), SlotError>) {
        let started = Instant::now();
        // An earlier run may have taken the owner's rights away (`chmod 000 /scratch`): the
        // root is the run's again, as when made. (Its path is the host's: a guest cannot swap
        // the directory itself.)
        let _ = std::fs::set_permissions(kept.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let ready = kept
            .set_quota(quota)
            .map_err(|_| SlotError {
                status: Status::Rejected,
                // The kernel refuses to shrink a tmpfs below what it holds.
                detail: format!(
                    "the scratch directory holds {} bytes: more than this run's disk_mb = {} or max_files allows; remove files or raise them",
                    kept.disk_bytes(),
                    quota.bytes >> 20
                ),
            })
            .and_then(|()| kept.write_inputs(inputs).map_err(inputs_error));
        let slot = ScratchSlot { root, quota, inputs, scratch: Some(kept), spent: started.elapsed(), adopted: false, kept: true };
        (slot, ready)
    }

    /// Whether a backend may hand the run a directory it prepared ahead ([`ScratchSlot::adopt`]):
    /// not when the slot holds one kept from earlier runs.
    pub fn can_adopt(&self) -> bool {
        !self.kept
    }

    /// The run's directory, made now (fresh, private, with the inputs) if it is not there yet.
    pub fn fresh(&mut self) -> Result<&mut Scratch, SlotError> {
        let scratch = match self.scratch.take() {
            Some(scratch) => scratch,
            None => {
                let started = Instant::now();
                let made = self.make();
                self.spent += started.elapsed();
                made?
            }
        };
        Ok(self.scratch.insert(scratch))
    }

    fn make(&self) -> Result<Scratch, SlotError> {
        let scratch = Scratch::create(self.root, self.quota).map_err(|e| SlotError {
            status: Status::InternalError,
            detail: format!("creating a scratch directory in {}: {e}", self.root.display()),
        })?;
        scratch.write_inputs(self.inputs).map_err(inputs_error)?;
        Ok(scratch)
    }

    /// Makes `prepared` (an empty directory made ahead under the same rules) the run's
    /// directory: it gets the request's quota and inputs. A directory already in the slot is
    /// removed.
    pub fn adopt(&mut self, mut prepared: Scratch) -> Result<&mut Scratch, SlotError> {
        if self.kept {
            // A session's files must never be thrown away for a prepared directory.
            return Err(SlotError { status: Status::InternalError, detail: "a kept scratch directory cannot be replaced".into() });
        }
        let started = Instant::now();
        prepared.touch();
        let ready = prepared
            .set_quota(self.quota)
            .map_err(|e| SlotError { status: Status::InternalError, detail: format!("setting the scratch directory's quota: {e}") })
            .and_then(|()| prepared.write_inputs(self.inputs).map_err(inputs_error));
        self.spent += started.elapsed();
        // Whatever happened, the prepared directory belongs to this run now and goes with it.
        self.adopted = true;
        let slot = self.scratch.insert(prepared);
        ready.map(|()| slot)
    }

    /// The directory, if one was made or adopted.
    pub fn into_scratch(self) -> Option<Scratch> {
        self.scratch
    }

    /// The directory, if one was made or adopted.
    pub fn get(&self) -> Option<&Scratch> {
        self.scratch.as_ref()
    }

    /// Whether the directory was prepared ahead (with a guest or sandbox prepared ahead).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Time spent making the directory ready (creating it, its quota, writing the inputs).
    pub fn spent(&self) -> Duration {
        self.spent
    }
}

fn inputs_error(e: io::Error) -> SlotError {
    let status = match e.kind() {
        io::ErrorKind::InvalidInput
        | io::ErrorKind::StorageFull
        | io::ErrorKind::AlreadyExists
        | io::ErrorKind::NotADirectory => Status::Rejected,
        // A link where an input's directory should be (openat2's RESOLVE_NO_SYMLINKS).
        _ if e.raw_os_error() == Some(libc::ELOOP) => Status::Rejected,
        _ => Status::InternalError,
    };
    SlotError { status, detail: format!("writing input files: {e}") }
}
