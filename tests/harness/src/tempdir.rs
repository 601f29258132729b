//! A private directory under /tmp per test, for control sockets, token files and the like, and
//! for what a test runs as another user.
use std::{
    env, fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{drainer_bin, script};

/// The interpreter of the scripts a test runs as an unprivileged user: the test virtualenv's may
/// live where only root can enter (under `/root`), the system's is on every user's path.
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// A directory under /tmp for one test's sockets and files; removed on drop. Every user may enter
/// it, so the unprivileged users some tests run as can reach what the test puts in it.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn create(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = env::temp_dir().join(format!("drainer-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create a temp dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A copy of the drainer binary under test, for a test that runs it as another user: the
    /// build lives in the clone, which may sit in a directory only its owner can enter.
    pub fn drainer_copy(&self) -> PathBuf {
        self.copy(&drainer_bin(), "drainer", 0o755)
    }

    /// A copy of the helper script `name` (tests/python), for the same reason.
    pub fn script_copy(&self, name: &str) -> PathBuf {
        self.copy(&script(name), name, 0o644)
    }

    fn copy(&self, from: &Path, name: &str, mode: u32) -> PathBuf {
        let to = self.0.join(name);
        fs::copy(from, &to).unwrap_or_else(|err| {
            panic!(
                "copying {} into {}: {err}",
                from.display(),
                self.0.display()
            )
        });
        fs::set_permissions(&to, fs::Permissions::from_mode(mode)).unwrap();
        to
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
