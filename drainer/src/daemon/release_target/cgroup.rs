//! `--release-cgroup`: every process of a cgroup v2 directory and of all its descendants, read at
//! release so a server restarted since drainer started is found.
//!
//! Processes come and go while the tree is walked. One that exits between being listed and being
//! signalled is normal: it is counted as gone and the walk goes on. A pid read from cgroup.procs
//! is signalled through a pidfd opened between two reads that both list it: if that process is
//! still there to receive the signal, it held the pid at the second read, so it is the member
//! listed and not a process that took over a pid freed in between.
use std::{
    collections::HashSet,
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::{
    signal::Signal,
    statfs::{CGROUP2_SUPER_MAGIC, statfs},
};
use tracing::warn;

use super::Delivery;
use crate::system::pidfd::Process;

/// Rounds of reading one cgroup.procs for processes forked meanwhile before the walk moves on.
const MAX_ROUNDS: usize = 8;

/// Pidfds held at once: a cgroup of thousands must not run drainer out of descriptors.
const BATCH: usize = 256;

/// Fails unless `dir` is a directory on cgroup2.
pub fn check(dir: &Path) -> Result<()> {
    let shown = dir.display();
    let fs = statfs(dir).with_context(|| format!("reading the file system of {shown}"))?;
    if fs.filesystem_type() != CGROUP2_SUPER_MAGIC {
        bail!(
            "{shown} is not on a cgroup v2 file system: give a directory under the cgroup2 mount \
             (`findmnt -t cgroup2`; /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on \
             a hybrid one)"
        );
    }
    if !dir.is_dir() {
        bail!("{shown} is not a directory: give the cgroup's directory, not a file in it");
    }
    Ok(())
}

/// Signals every process of `dir` and of its descendants.
pub fn signal(dir: &Path, signal: Signal) -> Result<Delivery> {
    check(dir)?;
    let mut delivery = Delivery::default();
    let mut signalled = HashSet::new();
    // The target's own members first: if they cannot be read, nothing was signalled.
    signal_members(dir, signal, &mut signalled, &mut delivery)?;
    let mut parents = vec![dir.to_path_buf()];
    while let Some(parent) = parents.pop() {
        let children = match children(&parent) {
            Ok(children) => children,
            Err(err) => {
                skip(&parent, &err, &mut delivery);
                continue;
            }
        };
        for child in children {
            match signal_members(&child, signal, &mut signalled, &mut delivery) {
                Ok(()) => parents.push(child),
                Err(err) => skip(&child, &err, &mut delivery),
            }
        }
    }
    Ok(delivery)
}

/// A descendant that could not be read does not stop the walk.
fn skip(cgroup: &Path, err: &anyhow::Error, delivery: &mut Delivery) {
    // Removed since it was listed: its processes have left.
    if !vanished(err) {
        delivery.failed += 1;
        warn!("signalling the processes of {}: {err:#}", cgroup.display());
    }
}

fn signal_members(
    cgroup: &Path,
    signal: Signal,
    signalled: &mut HashSet<i32>,
    delivery: &mut Delivery,
) -> Result<()> {
    let procs = cgroup.join("cgroup.procs");
    let mut listed = read_pids(&procs)?;
    let mut seen = HashSet::new();
    for _ in 0..MAX_ROUNDS {
        let fresh: Vec<i32> = listed
            .into_iter()
            .filter(|pid| !signalled.contains(pid) && seen.insert(*pid))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let mut confirmed = HashSet::new();
        for batch in fresh.chunks(BATCH) {
            let opened = open(cgroup, batch, delivery);
            confirmed = read_pids(&procs)?;
            for process in opened {
                if !confirmed.contains(&process.pid()) {
                    // Exited, or moved to another cgroup: not a member any more either way.
                    if !process.alive().unwrap_or(false) {
                        delivery.gone += 1;
                    }
                    continue;
                }
                match process.signal(signal) {
                    Ok(true) => {
                        delivery.sent += 1;
                        signalled.insert(process.pid());
                    }
                    Ok(false) => delivery.gone += 1,
                    Err(err) => {
                        delivery.failed += 1;
                        warn!("{err}");
                    }
                }
            }
        }
        // Processes forked meanwhile are listed now.
        listed = confirmed;
    }
    Ok(())
}

/// Pidfds for `pids`, members of `cgroup` when it was read.
fn open(cgroup: &Path, pids: &[i32], delivery: &mut Delivery) -> Vec<Process> {
    let mut opened = Vec::with_capacity(pids.len());
    for &pid in pids {
        if pid <= 0 {
            // cgroup.procs lists a process of another pid namespace as 0.
            delivery.failed += 1;
            warn!(
                "{} holds a process outside drainer's pid namespace: it cannot be signalled from here",
                cgroup.display()
            );
            continue;
        }
        match Process::open(pid) {
            Ok(Some(process)) => opened.push(process),
            Ok(None) => delivery.gone += 1,
            Err(err) => {
                delivery.failed += 1;
                warn!("{err}");
            }
        }
    }
    opened
}

fn read_pids(procs: &Path) -> Result<HashSet<i32>> {
    match fs::read_to_string(procs) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()),
        // A threaded cgroup: its processes are listed by its threaded domain, an ancestor.
        Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(HashSet::new()),
        Err(err) => Err(anyhow!(err).context(format!("reading {}", procs.display()))),
    }
}

fn children(cgroup: &Path) -> Result<Vec<PathBuf>> {
    let mut children = Vec::new();
    for entry in fs::read_dir(cgroup).with_context(|| format!("listing {}", cgroup.display()))? {
        let entry = entry.with_context(|| format!("listing {}", cgroup.display()))?;
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            children.push(entry.path());
        }
    }
    Ok(children)
}

fn vanished(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            .is_some_and(|errno| errno == libc::ENOENT || errno == libc::ENODEV)
    })
}
