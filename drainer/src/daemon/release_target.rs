//! What `drainer daemon` signals at release, besides unblocking its waiters.
use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

#[derive(Clone, Debug)]
pub enum ReleaseTarget {
    Pid(i32),
    /// Read at release time, so a server restarted since drainer started is still found.
    PidFile(PathBuf),
    /// Every process in this cgroup v2 directory.
    Cgroup(PathBuf),
}

impl ReleaseTarget {
    /// Sends `signal`; returns how many processes received it.
    pub fn signal(&self, signal: Signal) -> Result<usize> {
        let pids = match self {
            Self::Pid(pid) => vec![*pid],
            Self::PidFile(path) => {
                let text = fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                vec![
                    text.trim()
                        .parse()
                        .with_context(|| format!("{} holds no pid", path.display()))?,
                ]
            }
            Self::Cgroup(dir) => {
                let procs = dir.join("cgroup.procs");
                fs::read_to_string(&procs)
                    .with_context(|| format!("reading {}", procs.display()))?
                    .lines()
                    .filter_map(|line| line.trim().parse().ok())
                    .collect()
            }
        };
        for &pid in &pids {
            kill(Pid::from_raw(pid), signal)
                .with_context(|| format!("sending {signal} to process {pid}"))?;
        }
        Ok(pids.len())
    }
}
