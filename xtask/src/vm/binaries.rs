//! The test executables the guest runs, built here by cargo, and the environment
//! `cargo xtask test` gives them, as seen from inside the VM.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use cargo_metadata::{Artifact, Message, TargetKind};

use super::utf8;
use crate::cmd::{cargo, output};

/// A test executable, and the directory cargo would run it in (its package's).
pub(super) struct TestBinary {
    /// The test target's name, or `<crate>-<kind>` for the unit tests of a library or binary.
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) executable: PathBuf,
    /// The tests it holds that the run's filter selects, so that the report can name those that
    /// never finished.
    pub(super) tests: Vec<String>,
}

/// Builds the tests of the crates that touch the kernel; returns their executables, each with
/// the tests in it that `filter` selects.
pub(super) fn build(filter: Option<&str>) -> Result<Vec<TestBinary>> {
    let messages = output(
        cargo()
            .args([
                "test",
                "--package",
                "drainer",
                "--package",
                "drainer-integration",
            ])
            .args(["--no-run", "--message-format=json-render-diagnostics"])
            .stderr(Stdio::inherit()),
    )?;
    let mut tests = Vec::new();
    for message in Message::parse_stream(messages.as_bytes()) {
        let Message::CompilerArtifact(Artifact {
            target,
            profile,
            executable: Some(executable),
            manifest_path,
            ..
        }) = message.context("reading cargo's messages")?
        else {
            continue;
        };
        if !profile.test {
            continue;
        }
        let name = match target.kind.first() {
            Some(TargetKind::Test) | None => target.name,
            Some(kind) => format!("{}-{kind}", target.name),
        };
        let executable = executable.into_std_path_buf();
        tests.push(TestBinary {
            name,
            dir: manifest_path
                .parent()
                .map_or_else(|| PathBuf::from("/"), |dir| dir.as_std_path().to_owned()),
            tests: list(&executable, filter)?,
            executable,
        });
    }
    if tests.is_empty() {
        bail!("cargo test --no-run built no test executable");
    }
    tests.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tests)
}

/// The names of the tests in `executable` that `filter` selects, as libtest lists them.
fn list(executable: &Path, filter: Option<&str>) -> Result<Vec<String>> {
    let mut command = Command::new(executable);
    command.args(["--list", "--format", "terse"]);
    command.args(filter);
    let listing = output(&mut command)?;
    Ok(listing
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

/// The environment `cargo xtask test` gives the test binaries, as seen from inside the VM.
pub(super) fn env(drainer: &Path, python: &Path) -> Result<Vec<(&'static str, String)>> {
    let var = |name| std::env::var(name).with_context(|| format!("{name} is not set"));
    Ok(vec![
        ("HOME", var("HOME")?),
        ("PATH", var("PATH")?),
        ("LANG", "C.UTF-8".to_owned()),
        ("RUST_BACKTRACE", "1".to_owned()),
        ("DRAINER_BIN", utf8(drainer)?.to_owned()),
        ("DRAINER_TEST_PYTHON", utf8(python)?.to_owned()),
    ])
}
