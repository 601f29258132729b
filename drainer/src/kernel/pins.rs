//! Steering that outlives drainer. While a restarted server's serving generation listens off the
//! public port, only steering brings it new connections: if it detached with drainer, a drainer
//! that died would leave the public port refusing everyone while the server still ran. So the
//! steering link is pinned on the BPF file system, named after the namespace and ports it serves,
//! and stays attached when drainer dies; the socket map does not keep a listener alive, so once
//! that server is gone too, the usual lookup decides again, as if drainer had never run. drainer
//! unpins it itself when steering ends, and a drainer that starts for the same namespace and
//! ports detaches one a dead drainer left.
//!
//! Without a BPF file system at [`BPF_FS`] (systemd mounts one at boot) steering is not pinned,
//! and drainer says what that leaves uncovered.
use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::programs::links::{FdLink, PinnedLink};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};
use tracing::warn;

/// Where the BPF file system is mounted.
const BPF_FS: &str = "/sys/fs/bpf";
/// drainer's directory on it.
const DIRECTORY: &str = "drainer";

/// Where steering for `ports` of the namespace with `netns_cookie` is pinned.
pub(super) struct SteeringPin {
    path: PathBuf,
}

impl SteeringPin {
    /// The pin's place, if a BPF file system is mounted at [`BPF_FS`]; its directory is created.
    pub(super) fn place(netns_cookie: u64, ports: &[u16]) -> Result<Option<Self>> {
        let Some(directory) = directory()? else {
            return Ok(None);
        };
        std::fs::create_dir_all(&directory)
            .with_context(|| format!("creating {}", directory.display()))?;
        Ok(Some(Self {
            path: directory.join(name(netns_cookie, ports)),
        }))
    }

    /// Pins `link` here: it stays attached until unpinned.
    pub(super) fn pin(&self, link: FdLink) -> Result<PinnedLink> {
        link.pin(&self.path)
            .with_context(|| format!("pinning sk_lookup steering at {}", self.path.display()))
    }
}

/// Detaches steering a drainer that died left for any of `ports` of the namespace with
/// `netns_cookie`: it would hand their new connections to a server no drainer guards, and win
/// over a drain's refusal. Returns what it detached.
pub(super) fn detach_left_behind(netns_cookie: u64, ports: &[u16]) -> Result<Vec<PathBuf>> {
    let Some(directory) = directory()? else {
        return Ok(Vec::new());
    };
    let entries = match std::fs::read_dir(&directory) {
        Ok(entries) => entries,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", directory.display())),
    };
    let mut detached = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", directory.display()))?
            .path();
        let pinned_ports = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| ports_of(name, netns_cookie));
        if pinned_ports.is_some_and(|pinned| pinned.iter().any(|p| ports.contains(p))) {
            unpin(&path)?;
            detached.push(path);
        }
    }
    Ok(detached)
}

/// Removes the pin at `path` and closes the link: once no descriptor refers to it, the link
/// detaches, before this returns.
fn unpin(path: &Path) -> Result<()> {
    let link = PinnedLink::from_pin(path)
        .with_context(|| format!("opening pinned steering {}", path.display()))?;
    let link = link
        .unpin()
        .with_context(|| format!("unpinning {}", path.display()))?;
    drop(link);
    Ok(())
}

/// drainer's directory on the BPF file system, if one is mounted.
fn directory() -> Result<Option<PathBuf>> {
    match statfs(BPF_FS) {
        Ok(fs) if fs.filesystem_type() == BPF_FS_MAGIC => {
            Ok(Some(Path::new(BPF_FS).join(DIRECTORY)))
        }
        Ok(_) | Err(nix::Error::ENOENT) => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading the file system of {BPF_FS}")),
    }
}

/// Says, once a restart steers, what an unpinned steering leaves uncovered.
pub(super) fn warn_unpinned(public: u16) {
    warn!(
        "no BPF file system at {BPF_FS}, so steering cannot outlive drainer: were drainer to \
         die while the server listens off port {public}, new connections to port {public} would \
         be refused (mount one: mount -t bpf bpf {BPF_FS}, as systemd does at boot)"
    );
}

fn name(netns_cookie: u64, ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!("steering-{netns_cookie}-{}", ports.join("-"))
}

/// The ports a pin's name holds, if it is steering for the namespace with `netns_cookie`.
fn ports_of(name: &str, netns_cookie: u64) -> Option<Vec<u16>> {
    let rest = name.strip_prefix(&format!("steering-{netns_cookie}-"))?;
    rest.split('-').map(|port| port.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pins_name_gives_back_its_ports_for_its_namespace_only() {
        let pinned = name(4096, &[8000, 8443]);
        assert_eq!(pinned, "steering-4096-8000-8443");
        assert_eq!(ports_of(&pinned, 4096), Some(vec![8000, 8443]));
        assert_eq!(ports_of(&pinned, 409), None);
        assert_eq!(ports_of("steering-4096-x", 4096), None);
    }
}
