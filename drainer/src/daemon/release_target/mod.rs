//! What `drainer daemon` signals at release, besides unblocking its waiters.
//!
//! drainer keeps CAP_KILL for this: it can signal any process, so whatever names the target is
//! checked as if it were the signal itself. A pid is never 0 or negative (process groups, every
//! process) nor 1 (init); a pid is held by a pidfd, so a pid reused by another process
//! is never hit; `pidfile` trusts a file only as far as who can write it; `cgroup` walks a
//! cgroup v2 subtree.
mod cgroup;
mod pidfile;

use std::{fmt, path::PathBuf};

use anyhow::{Context as _, Result, anyhow};
use nix::sys::signal::Signal;
use tracing::info;

use crate::system::pidfd::{Process, check_pid};

pub enum ReleaseTarget {
    /// Opened when drainer starts: if it exits, the release signals nobody.
    Pid(Process),
    /// Read at release time, so a server restarted since drainer started is still found.
    PidFile(PathBuf),
    /// Every process in this cgroup v2 directory and its descendants, listed at release time.
    Cgroup(PathBuf),
}

/// What one release did.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Processes that received the signal.
    pub sent: usize,
    /// Processes that exited before they could receive it.
    pub gone: usize,
    /// Processes or cgroups that could not be signalled (each logged).
    pub failed: usize,
}

impl Delivery {
    fn sent() -> Self {
        Self {
            sent: 1,
            ..Self::default()
        }
    }

    fn gone() -> Self {
        Self {
            gone: 1,
            ..Self::default()
        }
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} process(es) signalled", self.sent)?;
        if self.gone > 0 {
            write!(f, ", {} had exited", self.gone)?;
        }
        if self.failed > 0 {
            write!(f, ", {} could not be signalled", self.failed)?;
        }
        Ok(())
    }
}

impl ReleaseTarget {
    /// The target the command line names, checked now so that a mistake fails at start rather
    /// than at release.
    pub fn choose(
        pid: Option<i32>,
        pidfile: Option<PathBuf>,
        cgroup: Option<PathBuf>,
    ) -> Result<Option<Self>> {
        if let Some(pid) = pid {
            let pid =
                check_pid(pid).map_err(|problem| anyhow!("--release-pid {pid}: {problem}"))?;
            let process = Process::open(pid)
                .with_context(|| format!("--release-pid {pid}"))?
                .with_context(|| {
                    format!("--release-pid {pid}: there is no process {pid}: give the server's pid")
                })?;
            info!("release target: process {pid}, held by a pidfd until release");
            return Ok(Some(Self::Pid(process)));
        }
        if let Some(path) = pidfile {
            if path.symlink_metadata().is_ok() {
                let named = pidfile::read(&path)?;
                info!(
                    "release target: the process {} names (now {}), read again at release",
                    path.display(),
                    named.pid
                );
            } else {
                info!(
                    "release target: the process {} will name, read at release (it does not exist yet)",
                    path.display()
                );
            }
            return Ok(Some(Self::PidFile(path)));
        }
        if let Some(dir) = cgroup {
            cgroup::check(&dir).context("--release-cgroup")?;
            info!(
                "release target: every process of cgroup {} and its descendants",
                dir.display()
            );
            return Ok(Some(Self::Cgroup(dir)));
        }
        Ok(None)
    }

    /// Sends `signal` to the target; an error means nothing was signalled.
    pub fn signal(&self, signal: Signal) -> Result<Delivery> {
        match self {
            Self::Pid(process) => Ok(if process.signal(signal)? {
                Delivery::sent()
            } else {
                Delivery::gone()
            }),
            Self::PidFile(path) => pidfile::signal(path, signal),
            Self::Cgroup(dir) => cgroup::signal(dir, signal),
        }
    }
}

impl fmt::Display for ReleaseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pid(process) => write!(f, "--release-pid {}", process.pid()),
            Self::PidFile(path) => write!(f, "--release-pidfile {}", path.display()),
            Self::Cgroup(dir) => write!(f, "--release-cgroup {}", dir.display()),
        }
    }
}
