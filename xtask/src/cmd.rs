//! Spawning commands, loudly: each is echoed, and a failure names the command.
use std::{
    env,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result, bail};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn cargo() -> Command {
    let mut cargo = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.current_dir(workspace_root());
    // bpf-linker is installed into $CARGO_HOME/bin; make sure the eBPF build sees it.
    if let Ok(path) = crate::toolchain::path_with_cargo_bin() {
        cargo.env("PATH", path);
    }
    cargo
}

pub fn target_dir() -> Result<PathBuf> {
    Ok(match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target"),
    })
}

pub fn run(command: &mut Command) -> Result<()> {
    eprintln!("xtask: {}", describe(command));
    let status = command
        .status()
        .with_context(|| format!("cannot start {}", describe(command)))?;
    succeeded(command, status)
}

fn succeeded(command: &Command, status: ExitStatus) -> Result<()> {
    if !status.success() {
        bail!("{} failed: {status}", describe(command));
    }
    Ok(())
}

/// Like [`run`], and shows `watch` each line the command writes to stderr, after passing it on.
pub fn run_watching_stderr(command: &mut Command, mut watch: impl FnMut(&str)) -> Result<()> {
    eprintln!("xtask: {}", describe(command));
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", describe(command)))?;
    let stderr = child
        .stderr
        .take()
        .context("the child's stderr was not piped")?;
    for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line);
        eprintln!("{line}");
        watch(&line);
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {}", describe(command)))?;
    succeeded(command, status)
}

pub fn output(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot start {}", describe(command)))?;
    if !output.status.success() {
        bail!(
            "{} failed: {}\n{}",
            describe(command),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
