//! Finding the cgroup v2 hierarchy that the connection tracker attaches to.
use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result, bail};

/// The mount point of the cgroup v2 hierarchy, as the calling process sees it. Attaching there
/// covers every socket created by a process in that hierarchy: on a host, all of them.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    cgroup2_mount_point(&mountinfo).map(PathBuf::from).map_or_else(
        || {
            bail!(
                "no cgroup v2 hierarchy is mounted: mount one (`mount -t cgroup2 none /sys/fs/cgroup`) \
                 or name one with --cgroup"
            )
        },
        Ok,
    )
}

/// The first cgroup2 mount point in a /proc/PID/mountinfo text.
fn cgroup2_mount_point(mountinfo: &str) -> Option<&str> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let fstype = fs.split_whitespace().next()?;
        (fstype == "cgroup2")
            .then(|| mount.split_whitespace().nth(4))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::cgroup2_mount_point;

    #[test]
    fn finds_the_hybrid_unified_mount() {
        let text = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu
";
        assert_eq!(cgroup2_mount_point(text), Some("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn none_when_only_cgroup_v1() {
        let text = "27 25 0:24 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_mount_point(text), None);
    }
}
