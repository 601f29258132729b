//! Spawning commands, loudly: each is echoed, and a failure names the command.
use std::{
    env,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::OnceLock,
};

use anyhow::{Context as _, Result, bail};

pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
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

/// `cargo metadata` of the workspace, run by the cargo that runs xtask.
pub fn metadata() -> cargo_metadata::MetadataCommand {
    let mut metadata = cargo_metadata::MetadataCommand::new();
    metadata
        .cargo_path(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(workspace_root());
    metadata
}

/// The target directory and the build directory, as cargo reports them (so CARGO_TARGET_DIR,
/// `build.target-dir` and `build.build-dir` are honoured).
fn cargo_dirs() -> Result<&'static (PathBuf, PathBuf)> {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    if let Some(dirs) = DIRS.get() {
        return Ok(dirs);
    }
    let metadata = metadata()
        .no_deps()
        .exec()
        .context("asking cargo for the target directory")?;
    let target = metadata.target_directory.into_std_path_buf();
    let build = metadata
        .build_directory
        .map_or_else(|| target.clone(), |dir| dir.into_std_path_buf());
    Ok(DIRS.get_or_init(|| (target, build)))
}

pub fn target_dir() -> Result<PathBuf> {
    Ok(cargo_dirs()?.0.clone())
}

/// Where drainer/build.rs builds the eBPF object: `<build dir>/bpf`.
pub fn ebpf_target_dir() -> Result<PathBuf> {
    Ok(cargo_dirs()?.1.join("bpf"))
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
