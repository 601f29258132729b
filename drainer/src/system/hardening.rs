//! What a privileged drainer does to itself before it creates anything worth stealing.
//!
//! Non-dumpable: drainer's BPF programs, maps and links are descriptors, and a process that may
//! ptrace drainer may also copy them with pidfd_getfd(2), read its memory through /proc/PID/mem, or
//! attach a debugger. A dumpable process is open to every process of the same uid; a non-dumpable
//! one only to holders of CAP_SYS_PTRACE, which the supervised server never gets
//! (`supervisor::privileges`). Its own /proc/self files stay readable to drainer: a thread group
//! may always read its own.
//!
//! The open-files limit: drainer holds a descriptor per control and HTTP connection, and running
//! out of them in the middle of a drain must not be what a low default soft limit does. The soft
//! limit is raised to the hard one; the server started by `drainer run` gets the soft limit drainer
//! was given back, as programs that still use select(2) need descriptors below 1024.
use std::{fs, sync::OnceLock};

use anyhow::{Context as _, Result};
use nix::sys::{
    prctl,
    resource::{Resource, getrlimit, rlim_t, setrlimit},
};
use tracing::debug;

/// The soft and hard open-files limits drainer started with.
static INHERITED_OPEN_FILES: OnceLock<(rlim_t, rlim_t)> = OnceLock::new();

/// Makes drainer non-dumpable and raises its open-files limit. Call first thing in every mode that
/// holds privileges.
pub fn harden() -> Result<()> {
    prctl::set_dumpable(false).context("prctl(PR_SET_DUMPABLE, 0)")?;
    raise_open_files_limit()
}

fn raise_open_files_limit() -> Result<()> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    // The hard limit itself may be set above what the kernel lets one process open (fs.nr_open,
    // or infinity); setrlimit refuses a soft limit above that.
    let ceiling = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<rlim_t>().ok())
        .map_or(hard, |nr_open| hard.min(nr_open));
    let raised = soft.max(ceiling);
    if raised != soft {
        setrlimit(Resource::RLIMIT_NOFILE, raised, hard).with_context(|| {
            format!("raising the open-files limit (RLIMIT_NOFILE) from {soft} to {raised}")
        })?;
    }
    // Set once: harden runs once, at start.
    let _ = INHERITED_OPEN_FILES.set((soft, hard));
    debug!("open-files limit (RLIMIT_NOFILE): {raised} (was {soft}, hard limit {hard})");
    Ok(())
}

/// The soft and hard open-files limits drainer was started with, to hand to the server as they
/// were; `None` if [`harden`] did not run.
pub fn inherited_open_files_limit() -> Option<(rlim_t, rlim_t)> {
    INHERITED_OPEN_FILES.get().copied()
}
