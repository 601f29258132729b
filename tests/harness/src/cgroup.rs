//! A throwaway cgroup v2 directory per test, for `--release-cgroup`.
use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use nix::unistd::Pid;

pub struct TestCgroup(PathBuf);

impl TestCgroup {
    /// Creates `drainer-<name>-<pid>` under the cgroup v2 mount.
    pub fn create(name: &str) -> Self {
        let path = cgroup2_root().join(format!("drainer-{name}-{}", std::process::id()));
        // Left behind by an earlier run that was killed.
        let _ = fs::remove_dir(&path);
        fs::create_dir(&path)
            .unwrap_or_else(|err| panic!("create the cgroup {}: {err}", path.display()));
        Self(path)
    }

    /// A child cgroup; drop it before its parent.
    pub fn child(&self, name: &str) -> Self {
        let path = self.0.join(name);
        fs::create_dir(&path)
            .unwrap_or_else(|err| panic!("create the cgroup {}: {err}", path.display()));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Moves process `pid` into this cgroup.
    pub fn add(&self, pid: Pid) {
        fs::write(self.0.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|err| panic!("move {pid} into {}: {err}", self.0.display()));
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Whatever is left in it is the test's: kill it, then remove the directory once the
        // processes have left (a killed process leaves when its parent reaps it).
        let _ = fs::write(self.0.join("cgroup.kill"), "1");
        let deadline = Instant::now() + crate::patience(Duration::from_secs(10));
        while fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted (pure v2, or the hybrid layout's `unified`).
pub fn cgroup2_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .expect("a cgroup v2 hierarchy must be mounted for this test")
}
