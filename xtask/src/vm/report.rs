//! What each VM ran, read back from the files the guest wrote (a log and an exit status per test
//! binary), the summary printed, and the verdict: vm-test fails if any kernel's run did not pass.
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Result, bail};

use super::{binaries::TestBinary, image::Image};

/// How one VM's run ended.
pub(super) enum Outcome {
    /// The VM ran every test binary; each one's result.
    Ran(Vec<TestResult>),
    /// The VM did not boot, crashed or timed out; what had run until then.
    Broken {
        problem: String,
        results: Vec<TestResult>,
    },
}

impl Outcome {
    pub(super) fn passed(&self) -> bool {
        match self {
            Outcome::Ran(results) => results.iter().all(|result| result.status == Some(0)),
            Outcome::Broken { .. } => false,
        }
    }
}

/// One test binary's run, as the guest wrote it back.
pub(super) struct TestResult {
    name: String,
    /// None when the binary did not finish.
    status: Option<i32>,
    passed: usize,
    failed: Vec<String>,
}

/// Prints each kernel's report; fails, naming the kernels, if any run did not pass.
pub(super) fn summarize(reports: &[Report], logs: &Path) -> Result<()> {
    eprintln!("\nxtask: vm-test summary");
    for report in reports {
        eprint!("{report}");
    }
    let failed: Vec<&str> = reports
        .iter()
        .filter(|report| !report.outcome.passed())
        .map(|report| report.image.version.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "vm-test failed under {}; each kernel's console and test logs are in {}",
            failed.join(", "),
            logs.display()
        );
    }
    Ok(())
}

/// The result of each binary in `tests` that started, from the files the guest wrote to `results`.
pub(super) fn read_results(results: &Path, tests: &[TestBinary]) -> Vec<TestResult> {
    tests
        .iter()
        .filter_map(|test| read_result(results, &test.name))
        .collect()
}

/// The result of the test binary `name`, if it started.
fn read_result(results: &Path, name: &str) -> Option<TestResult> {
    let log = fs::read_to_string(results.join(format!("{name}.log"))).ok()?;
    let status = fs::read_to_string(results.join(format!("{name}.status")))
        .ok()
        .and_then(|status| status.trim().parse().ok());
    let mut passed = 0;
    let mut failed = Vec::new();
    for line in log.lines() {
        let Some(test) = line.strip_prefix("test ") else {
            continue;
        };
        if test.ends_with(" ... ok") {
            passed += 1;
        } else if let Some(test) = test.strip_suffix(" ... FAILED") {
            failed.push(test.to_owned());
        }
    }
    Some(TestResult {
        name: name.to_owned(),
        status,
        passed,
        failed,
    })
}

/// One kernel's run.
pub(super) struct Report<'a> {
    pub(super) image: &'a Image,
    pub(super) outcome: Outcome,
    pub(super) wall: Duration,
    /// Where its console and test logs are.
    pub(super) work: PathBuf,
}

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.outcome.passed() {
            "passed"
        } else {
            "FAILED"
        };
        writeln!(
            f,
            "  {} (Debian {}): {verdict} in {}m{:02}s; logs in {}",
            self.image.version,
            self.image.package_version,
            self.wall.as_secs() / 60,
            self.wall.as_secs() % 60,
            self.work.display()
        )?;
        let results = match &self.outcome {
            Outcome::Ran(results) => results,
            Outcome::Broken { results, .. } => results,
        };
        for result in results {
            let state = match result.status {
                Some(0) => "ok".to_owned(),
                Some(code) => format!("FAILED (exit {code})"),
                None => "did not finish".to_owned(),
            };
            write!(
                f,
                "    {:<24} {state}: {} passed",
                result.name, result.passed
            )?;
            if !result.failed.is_empty() {
                write!(
                    f,
                    ", {} failed: {}",
                    result.failed.len(),
                    result.failed.join(", ")
                )?;
            }
            writeln!(f)?;
        }
        if let Outcome::Broken { problem, .. } = &self.outcome {
            writeln!(f, "    {problem}")?;
        }
        Ok(())
    }
}
