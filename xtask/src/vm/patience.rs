//! How much longer the tests may wait in the guest than on this machine: the factor
//! (`DRAINER_TEST_PATIENCE`) the test harness stretches every timeout by.
//!
//! The factor is measured, not assumed: emulation speed depends on the host (machines of one kind
//! differ by 2× and more) and on the kernel booted. The reference is the start every end-to-end
//! test makes many times, the virtualenv's Python importing the servers' and clients' packages;
//! it is timed here and, by init.sh, in the guest, each the best of three runs. The factor is
//! twice the ratio: one workload stands for all, and emulation slows some work (system calls,
//! the kernel's own) more than others. A factor too large only makes a failing test slower to
//! fail.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{run, workspace_root};

/// What the reference imports: the packages of tests/python/requirements.txt the servers and
/// clients use, and the standard library they pull in.
pub(super) const REFERENCE_IMPORTS: &str =
    "import asyncio, fastapi, prometheus_client, uvicorn, websockets, yaml";

/// How long one test binary may run on this machine before it is taken as hung; in the guest,
/// stretched by the factor. The slowest binary takes about 25 s here.
pub(super) const BINARY_BUDGET: Duration = Duration::from_secs(40);

/// The reference, timed on this machine.
pub(super) struct Reference {
    pub(super) python: PathBuf,
    pub(super) host: Duration,
    /// The factor `DRAINER_TEST_PATIENCE` gives instead, to rerun a test with shorter (or longer)
    /// waits than measured: a hung test then fails with its own message within the binary's
    /// time limit.
    pub(super) given: Option<u32>,
}

/// Compiles the virtualenv's and the test scripts' bytecode, so that the guest, whose view of
/// this machine's root is read-only, never compiles a module on import; then times the reference.
pub(super) fn measure(python: &Path) -> Result<Reference> {
    let venv = python
        .parent()
        .and_then(Path::parent)
        .context("the virtualenv's python is not in <venv>/bin")?;
    run(Command::new(python)
        .args(["-m", "compileall", "-q", "-j", "0"])
        .arg(venv.join("lib"))
        .arg(workspace_root().join("tests/python")))?;
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let status = Command::new(python)
            .args(["-c", REFERENCE_IMPORTS])
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("starting {}", python.display()))?;
        if !status.success() {
            bail!(
                "{} -c {REFERENCE_IMPORTS:?} failed ({status}): the test virtualenv is broken; \
                 remove it and run again",
                python.display()
            );
        }
        best = best.min(started.elapsed());
    }
    let given = match std::env::var("DRAINER_TEST_PATIENCE") {
        Err(_) => None,
        Ok(text) => Some(
            text.parse::<u32>()
                .ok()
                .filter(|&factor| factor >= 1)
                .with_context(|| {
                    format!("DRAINER_TEST_PATIENCE={text:?}: give a whole number of at least 1")
                })?,
        ),
    };
    Ok(Reference {
        python: python.to_owned(),
        host: best,
        given,
    })
}
