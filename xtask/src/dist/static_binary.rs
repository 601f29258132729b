//! The static (musl) drainer binary, built from a copy of the workspace in which one dependency
//! is patched.
//!
//! tokio-uring 0.5.0, the latest release, assigns a `usize` to `msghdr.msg_controllen`, which
//! musl's libc declares `u32`, so it does not compile for musl (fixed upstream in
//! tokio-rs/tokio-uring#334, not yet released). The build takes the released crate from cargo's
//! own download (checked against crates.io's checksum), casts those two assignments, and builds
//! with it patched in. It does so in a copy of the workspace, with a target directory of its own,
//! because a patch rewrites the lock file: the workspace itself, and every other build, keep the
//! crate as released.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use cargo_metadata::{Artifact, Message};

use crate::{
    cmd::{self, cargo, output, run, workspace_root},
    toolchain,
};

/// The Rust target of the shipped binary.
pub(crate) const TARGET: &str = "x86_64-unknown-linux-musl";

/// The release the fix is written for, and the fix: in each file, each assignment as released
/// and as patched.
const TOKIO_URING: &str = "0.5.0";
const FIXES: &[(&str, &[(&str, &str)])] = &[
    ("src/io/sendmsg.rs", MSG_CONTROLLEN),
    ("src/io/sendmsg_zc.rs", MSG_CONTROLLEN),
];
const MSG_CONTROLLEN: &[(&str, &str)] = &[
    (
        "msghdr.msg_controllen = _msg_control.bytes_init();",
        "msghdr.msg_controllen = _msg_control.bytes_init() as _;",
    ),
    (
        "msghdr.msg_controllen = 0_usize;",
        "msghdr.msg_controllen = 0;",
    ),
];

/// Builds drainer for musl, release, stripped, in `work`, and copies it to `dest`.
pub(super) fn build(work: &Path, dest: &Path) -> Result<()> {
    toolchain::ensure_ebpf_toolchain()?;
    ensure_rust_target()?;
    let tokio_uring = patched_tokio_uring(&work.join(format!("tokio-uring-{TOKIO_URING}")))?;
    let workspace = copy_workspace(&work.join("workspace"))?;
    // `cargo rustc` hands the strip flag to drainer's own link only.
    let mut build = cargo();
    build
        .current_dir(&workspace)
        .env("CARGO_TARGET_DIR", work.join("target"))
        .args(["rustc", "--release", "--package", "drainer"])
        .args(["--bin", "drainer", "--target", TARGET])
        .arg("--config")
        .arg(format!(
            "patch.crates-io.tokio-uring.path={}",
            toml_string(&tokio_uring)?
        ))
        .args(["--message-format=json-render-diagnostics"])
        .args(["--", "-C", "strip=symbols"])
        .stderr(Stdio::inherit());
    let messages = output(&mut build)?;
    let mut built = None;
    for message in Message::parse_stream(messages.as_bytes()) {
        if let Message::CompilerArtifact(Artifact {
            executable: Some(executable),
            ..
        }) = message.context("reading cargo's messages")?
        {
            built = Some(executable.into_std_path_buf());
        }
    }
    let built = built.context("cargo rustc --bin drainer reported no executable")?;
    fs::copy(&built, dest)
        .with_context(|| format!("copying {} to {}", built.display(), dest.display()))?;
    Ok(())
}

/// Adds the standard library for musl to the toolchain cargo builds with (rust-toolchain.toml
/// pins it) unless it is there.
pub(crate) fn ensure_rust_target() -> Result<()> {
    let rustup = || {
        let mut rustup = Command::new("rustup");
        rustup.current_dir(workspace_root());
        rustup
    };
    let installed = output(rustup().args(["target", "list", "--installed"]))
        .context("rustup adds the musl target: install rustup (https://rustup.rs)")?;
    if installed.lines().any(|line| line.trim() == TARGET) {
        return Ok(());
    }
    run(rustup().args(["target", "add", TARGET]))
}

/// tokio-uring as cargo downloaded it for the workspace, copied to `dir` with [`FIXES`] applied;
/// fails, saying what to check, if the workspace moved to another release or a fix no longer
/// applies.
fn patched_tokio_uring(dir: &Path) -> Result<PathBuf> {
    let metadata = cmd::metadata()
        .exec()
        .context("asking cargo where tokio-uring's sources are")?;
    let package = metadata
        .packages
        .iter()
        .find(|package| package.name.as_str() == "tokio-uring")
        .context("the workspace no longer depends on tokio-uring: drop its musl fix from xtask")?;
    if package.version.to_string() != TOKIO_URING {
        bail!(
            "the workspace now uses tokio-uring {}, not {TOKIO_URING}: check whether it builds for \
             musl as released, and drop or update the fix in {}",
            package.version,
            file!()
        );
    }
    let source = package
        .manifest_path
        .parent()
        .context("tokio-uring's manifest has no directory")?;
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir)?;
    // -a keeps the times, so cargo rebuilds the copy only when it changes.
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{source}/."))
        .arg(dir))?;
    for (file, fixes) in FIXES {
        let path = dir.join(file);
        let mut text =
            fs::read_to_string(&path).with_context(|| format!("reading tokio-uring's {file}"))?;
        for (released, patched) in *fixes {
            if text.matches(released).count() != 1 {
                bail!(
                    "tokio-uring {TOKIO_URING}'s {file} does not hold `{released}` once: the musl \
                     fix in {} no longer applies",
                    file!()
                );
            }
            text = text.replace(released, patched);
        }
        fs::write(&path, text)?;
    }
    Ok(dir.to_owned())
}

/// The workspace's tracked files (as they are in the working tree), copied to `dir` with their
/// times, so that an unchanged file does not rebuild.
fn copy_workspace(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir)?;
    let root = workspace_root();
    let files = output(Command::new("git").arg("-C").arg(root).args([
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
    ]))?;
    let tar = format!(
        "tar --null --no-recursion -T - -cf - | tar -xpf - -C {}",
        shell_word(dir)?
    );
    let mut copy = Command::new("sh")
        .args(["-c", &tar])
        .current_dir(root)
        .stdin(Stdio::piped())
        .spawn()
        .context("starting tar to copy the workspace")?;
    {
        use std::io::Write as _;
        let mut stdin = copy.stdin.take().context("tar's stdin")?;
        // A tracked file deleted in the working tree is not copied.
        for file in files.split('\0').filter(|file| !file.is_empty()) {
            if root.join(file).exists() {
                stdin.write_all(file.as_bytes())?;
                stdin.write_all(b"\0")?;
            }
        }
    }
    let status = copy.wait()?;
    if !status.success() {
        bail!(
            "copying the workspace to {} failed: {status}",
            dir.display()
        );
    }
    Ok(dir.to_owned())
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// `path` as a TOML string, for `--config`.
fn toml_string(path: &Path) -> Result<String> {
    Ok(format!(
        "\"{}\"",
        utf8(path)?.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// `path` as one shell word.
fn shell_word(path: &Path) -> Result<String> {
    Ok(format!("'{}'", utf8(path)?.replace('\'', r"'\''")))
}
