//! The Python virtualenv with the real servers and clients the end-to-end tests drive.
use std::{
    fs,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::PathBuf,
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{
    cmd::{run, workspace_root},
    system,
};

/// Creates (once per requirements file) the virtualenv; returns its python.
pub fn ensure_venv() -> Result<PathBuf> {
    let requirements = workspace_root().join("tests/python/requirements.txt");
    let text = fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    let venv = system::cache_dir()?.join(format!("venv-{:016x}", hasher.finish()));
    let python = venv.join("bin/python");
    let done = venv.join(".installed");
    if done.exists() {
        return Ok(python);
    }
    let _ = fs::remove_dir_all(&venv);
    if Command::new("python3")
        .args(["-m", "venv", "--help"])
        .output()
        .map_or(true, |o| !o.status.success())
        || Command::new("python3")
            .args(["-c", "import ensurepip"])
            .output()
            .map_or(true, |o| !o.status.success())
    {
        system::install_debian_packages(&["python3", "python3-venv"])?;
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements))?;
    fs::write(&done, "")?;
    Ok(python)
}
