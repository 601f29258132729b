//! While xtask installs Debian packages, their services neither start nor get enabled: the tests
//! start their own nginx and HAProxy in namespaces of their own, and the machine must go on
//! serving what it served before.
//!
//! Debian's maintainer scripts do both on a package's first installation, in two ways:
//! - enabling: deb-systemd-helper runs `systemctl preset` for a unit installed for the first
//!   time. A runtime preset that disables every unit makes that a no-op; a unit installed before
//!   keeps its state, as presets apply only to a first installation.
//! - starting: deb-systemd-invoke starts only enabled units, but some packages call
//!   `invoke-rc.d NAME start` themselves (nginx does), which starts a disabled unit. Both ask
//!   `/usr/sbin/policy-rc.d` first; exit 101 denies the action, and invoke-rc.d then reports
//!   success, so the package still configures.
//!
//! Both are removed when the guard drops. What an interrupted run leaves behind ends by itself:
//! the preset lives in /run (until the next boot), and the policy denies only while this xtask
//! process lives.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// Where systemd reads presets that last until the next boot.
const RUNTIME_PRESETS: &str = "/run/systemd/system-preset";
/// Sorted before the distribution's own presets: the first file that names a unit decides.
const PRESET_FILE: &str = "00-drainer-xtask.preset";
/// The one path invoke-rc.d and deb-systemd-invoke ask.
const POLICY: &str = "/usr/sbin/policy-rc.d";

pub struct NoNewServices {
    preset: PathBuf,
    /// The directories made for the preset, deepest first, removed with it.
    created: Vec<PathBuf>,
    /// The policy, when this guard wrote it (a policy already there is the machine's own).
    policy: Option<PathBuf>,
}

impl NoNewServices {
    pub fn hold() -> Result<Self> {
        let dir = Path::new(RUNTIME_PRESETS);
        let created: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|ancestor| !ancestor.exists())
            .map(Path::to_path_buf)
            .collect();
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let preset = dir.join(PRESET_FILE);
        write(
            &preset,
            "# cargo xtask: units installed while it installs packages are not enabled.\n\
             disable *\n",
            0o644,
        )?;
        let mut guard = Self {
            preset,
            created,
            policy: None,
        };

        let policy = Path::new(POLICY);
        if policy.symlink_metadata().is_ok() {
            eprintln!(
                "xtask: {POLICY} is the machine's own: it decides which services the packages start"
            );
            return Ok(guard);
        }
        let pid = std::process::id();
        // Checked at each ask, so a policy left by a killed xtask allows everything again.
        let script = format!(
            "#!/bin/sh\n\
             # cargo xtask (pid {pid}) installs packages: no service starts until it is done.\n\
             [ \"$(cat /proc/{pid}/comm 2>/dev/null)\" = xtask ] && exit 101\n\
             exit 0\n"
        );
        let staged = policy.with_file_name(".policy-rc.d.xtask");
        write(&staged, &script, 0o755)?;
        fs::rename(&staged, policy).with_context(|| format!("installing {POLICY}"))?;
        guard.policy = Some(policy.to_path_buf());
        Ok(guard)
    }
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

impl Drop for NoNewServices {
    fn drop(&mut self) {
        if let Some(policy) = &self.policy {
            let _ = fs::remove_file(policy);
        }
        let _ = fs::remove_file(&self.preset);
        for dir in &self.created {
            let _ = fs::remove_dir(dir);
        }
    }
}
