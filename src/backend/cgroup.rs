//! A control group per shell job: what bounds the memory a job can pin (its processes, its
//! `/tmp` and `/dev/shm` pages, SysV shared memory) and the processes it can start, per job
//! rather than per user, and what measures its peak memory.
//!
//! Both cgroup versions are supported: v1 (separate `memory` and `pids` hierarchies, as on this
//! project's reference machines) and v2 (one unified hierarchy). Job groups are made below the
//! group wsbx itself runs in, so a limit on wsbx also bounds its jobs, and are named
//! `wsbx-<pid>-<n>`: a group whose wsbx process is gone is swept (its processes killed, the
//! group removed) by the next wsbx that sets up shell jobs. When neither version is writable
//! (not root, a read-only `/sys/fs/cgroup`), [`Cgroups::detect`] says why and shell jobs fall
//! back to rlimits (address space per process, processes per user).

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const ROOT: &str = "/sys/fs/cgroup";
const PREFIX: &str = "wsbx-";

/// Which cgroup hierarchy jobs are placed in.
#[derive(Debug, Clone)]
pub enum Cgroups {
    /// cgroup v1: the parent directories in the `memory` and `pids` hierarchies.
    V1 {
        /// Parent of job groups in the memory hierarchy.
        memory: PathBuf,
        /// Parent of job groups in the pids hierarchy.
        pids: PathBuf,
    },
    /// cgroup v2: the parent directory in the unified hierarchy.
    V2 {
        /// Parent of job groups.
        parent: PathBuf,
    },
}

/// One job's control group(s), removed (and emptied) on drop.
#[derive(Debug)]
pub struct JobCgroup {
    dirs: Vec<PathBuf>,
    version2: bool,
    /// `cgroup.procs` of each group, opened by wsbx, written by the job's child before exec.
    procs: Vec<OwnedFd>,
}

impl Cgroups {
    /// Finds a writable cgroup hierarchy with memory and pids controllers, sweeps groups of dead
    /// wsbx processes, or says why there is none.
    pub fn detect() -> Result<Cgroups, String> {
        let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
        let found = if Path::new(ROOT).join("cgroup.controllers").exists() {
            v2(&own)
        } else {
            v1(&own)
        }?;
        found.sweep();
        Ok(found)
    }

    /// A new group for one job, limited to `memory_bytes` (swap included where the host
    /// accounts it) and `max_processes` tasks.
    pub fn job(&self, memory_bytes: u64, max_processes: u64) -> io::Result<JobCgroup> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!("{PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut job = JobCgroup { dirs: Vec::new(), version2: matches!(self, Cgroups::V2 { .. }), procs: Vec::new() };
        match self {
            Cgroups::V1 { memory, pids } => {
                let mem = memory.join(&name);
                fs::create_dir(&mem)?;
                job.dirs.push(mem.clone());
                write(&mem.join("memory.limit_in_bytes"), memory_bytes)?;
                // Without swap accounting the file is absent: nothing to bound there.
                let memsw = mem.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, memory_bytes)?;
                }
                let pid = pids.join(&name);
                fs::create_dir(&pid)?;
                job.dirs.push(pid.clone());
                write(&pid.join("pids.max"), max_processes)?;
            }
            Cgroups::V2 { parent } => {
                let dir = parent.join(&name);
                fs::create_dir(&dir)?;
                job.dirs.push(dir.clone());
                write(&dir.join("memory.max"), memory_bytes)?;
                let _ = write(&dir.join("memory.swap.max"), 0);
                write(&dir.join("pids.max"), max_processes)?;
            }
        }
        for dir in &job.dirs {
            let file = fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"))?;
            job.procs.push(file.into());
        }
        Ok(job)
    }

    /// Removes job groups whose wsbx process is gone, killing what still runs in them: below
    /// this process's own group, and anywhere else in the hierarchy (a few levels deep), since
    /// the dead process may have run in another group (another service, another session).
    fn sweep(&self) {
        let roots: Vec<PathBuf> = match self {
            Cgroups::V1 { .. } => vec![Path::new(ROOT).join("memory"), Path::new(ROOT).join("pids")],
            Cgroups::V2 { .. } => vec![PathBuf::from(ROOT)],
        };
        for root in roots {
            sweep_below(&root, SWEEP_DEPTH);
        }
    }
}

/// How deep below a hierarchy's root the sweep looks for dead job groups.
const SWEEP_DEPTH: usize = 6;

/// Removes dead wsbx job groups at most `depth` levels below `dir`.
fn sweep_below(dir: &Path, depth: usize) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        let path = entry.path();
        match name.to_str().and_then(owner_pid) {
            Some(owner) if !process_alive(owner) => {
                kill_all(&path);
                let _ = fs::remove_dir(&path);
            }
            // A live process's job group holds no groups of its own.
            Some(_) => {}
            None if depth > 0 => sweep_below(&path, depth - 1),
            None => {}
        }
    }
}

impl JobCgroup {
    /// Descriptors the child writes `0` to before exec, moving itself into the group(s).
    pub fn procs_fds(&self) -> Vec<i32> {
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// The most memory the job's processes and files in memory held, in bytes.
    pub fn peak_memory(&self) -> Option<u64> {
        let dir = self.dirs.first()?;
        let file = if self.version2 { "memory.peak" } else { "memory.max_usage_in_bytes" };
        fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
    }

    /// Changes the job's memory limit (a sandbox started ahead of its job gets the job's
    /// limit), and starts measuring its peak from here. Fails when the group already holds
    /// more than `memory_bytes`.
    pub fn set_memory_limit(&self, memory_bytes: u64) -> io::Result<()> {
        let Some(dir) = self.dirs.first() else { return Ok(()) };
        if self.version2 {
            write(&dir.join("memory.max"), memory_bytes)?;
            // Kernels before 6.12 cannot reset the peak: it then includes the sandbox's start.
            let _ = write(&dir.join("memory.peak"), 0);
        } else {
            // With swap accounting, memory+swap must never be below memory: order the writes.
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            let current: u64 = fs::read_to_string(dir.join("memory.limit_in_bytes"))?.trim().parse().unwrap_or(u64::MAX);
            if memsw.exists() && memory_bytes > current {
                write(&memsw, memory_bytes)?;
                write(&dir.join("memory.limit_in_bytes"), memory_bytes)?;
            } else {
                write(&dir.join("memory.limit_in_bytes"), memory_bytes)?;
                if memsw.exists() {
                    write(&memsw, memory_bytes)?;
                }
            }
            write(&dir.join("memory.max_usage_in_bytes"), 0)?;
        }
        Ok(())
    }

    /// Whether the kernel killed a process of the job for reaching its memory limit.
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = self.dirs.first() else { return false };
        let (file, key) = if self.version2 { ("memory.events", "oom_kill") } else { ("memory.oom_control", "oom_kill") };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<u64>().ok()))
            })
            .is_some_and(|n| n > 0)
    }

    /// Kills every process still in the job's group(s).
    pub fn kill_all(&self) {
        for dir in &self.dirs {
            kill_all(dir);
        }
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        self.procs.clear();
        for dir in &self.dirs {
            // The job's last processes may still be exiting: kill and retry briefly.
            for attempt in 0..50 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                kill_all(dir);
                std::thread::sleep(std::time::Duration::from_millis(attempt.min(10)));
            }
        }
    }
}

/// The pid in a job group's name `wsbx-<pid>-<n>`.
fn owner_pid(name: &str) -> Option<i32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Whether `pid` names a live process (that is not this one's leftover of an earlier life).
pub(crate) fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let exists = pid > 0 && (unsafe { libc::kill(pid, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM));
    // A process killed outright stays a zombie until its parent reaps it: dead all the same.
    exists && !is_zombie(pid)
}

/// Whether `pid` has exited and waits to be reaped (state `Z` in `/proc/<pid>/stat`).
fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name, which is in parentheses and may hold anything.
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
}

fn kill_all(dir: &Path) {
    if dir.join("cgroup.kill").exists() && write(&dir.join("cgroup.kill"), 1).is_ok() {
        return;
    }
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: killing processes that sit in a group wsbx made for a job.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn write(path: &Path, value: u64) -> io::Result<()> {
    let mut file = fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(value.to_string().as_bytes())
}

/// This process's group in the v1 hierarchy of `controller`, from `/proc/self/cgroup`.
fn own_group(own: &str, controller: &str) -> Option<String> {
    own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == controller).then(|| path.to_owned())
    })
}

fn writable_dir(path: PathBuf) -> Result<PathBuf, String> {
    let probe = path.join(format!("{PREFIX}probe-{}", std::process::id()));
    match fs::create_dir(&probe).and_then(|()| fs::remove_dir(&probe)) {
        Ok(()) => Ok(path),
        Err(e) => Err(format!("cannot make control groups in {}: {e}", path.display())),
    }
}

fn v1(own: &str) -> Result<Cgroups, String> {
    let mut dirs = Vec::new();
    for controller in ["memory", "pids"] {
        let mount = Path::new(ROOT).join(controller);
        if !mount.join("cgroup.procs").exists() {
            return Err(format!("no cgroup v1 {controller} controller at {}", mount.display()));
        }
        let group = own_group(own, controller).unwrap_or_else(|| "/".into());
        dirs.push(writable_dir(mount.join(group.trim_start_matches('/')))?);
    }
    let pids = dirs.pop().unwrap_or_default();
    let memory = dirs.pop().unwrap_or_default();
    Ok(Cgroups::V1 { memory, pids })
}

/// cgroup v2: jobs go in `<own group>/wsbx-jobs/`. A group with processes cannot hand
/// controllers to children, so the controllers are enabled on `wsbx-jobs`, which holds none.
fn v2(own: &str) -> Result<Cgroups, String> {
    let group = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/");
    let mine = Path::new(ROOT).join(group.trim_start_matches('/'));
    let available = fs::read_to_string(mine.join("cgroup.controllers")).unwrap_or_default();
    if !["memory", "pids"].iter().all(|c| available.split_whitespace().any(|a| a == *c)) {
        return Err(format!("the cgroup v2 group {} offers no memory and pids controllers", mine.display()));
    }
    let parent = mine.join("wsbx-jobs");
    match fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot make {}: {e}", parent.display())),
    }
    fs::write(parent.join("cgroup.subtree_control"), "+memory +pids")
        .map_err(|e| format!("enabling memory and pids controllers in {}: {e}", parent.display()))?;
    Ok(Cgroups::V2 { parent })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pids_come_from_job_group_names() {
        assert_eq!(owner_pid("wsbx-123-4"), Some(123));
        assert_eq!(owner_pid("wsbx-jobs"), None);
        assert_eq!(owner_pid("other"), None);
    }
}
