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
            Outcome::Ran(results) => results
                .iter()
                .all(|result| result.status == Some(0) && result.unfinished.is_empty()),
            Outcome::Broken { .. } => false,
        }
    }
}

/// One test binary's run, as the guest wrote it back.
pub(super) struct TestResult {
    name: String,
    /// None when the binary did not finish.
    status: Option<i32>,
    /// Each test that finished, with the seconds since the binary started, in finishing order.
    finished: Vec<Finished>,
    /// The tests listed for the run that never reported a result: those running when the binary
    /// hung, crashed or was stopped.
    unfinished: Vec<String>,
    /// The binary's last output, in seconds since it started.
    seconds: f64,
}

struct Finished {
    test: String,
    passed: bool,
    at: f64,
}

impl TestResult {
    fn passed(&self) -> usize {
        self.finished.iter().filter(|test| test.passed).count()
    }

    fn failed(&self) -> Vec<&str> {
        let failed = self.finished.iter().filter(|test| !test.passed);
        failed.map(|test| test.test.as_str()).collect()
    }
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
        .filter_map(|test| read_result(results, test))
        .collect()
}

/// The result of `binary`, if it started. Each line of its log is stamped `+SECONDS `.
fn read_result(results: &Path, binary: &TestBinary) -> Option<TestResult> {
    let log = fs::read_to_string(results.join(format!("{}.log", binary.name))).ok()?;
    let status = fs::read_to_string(results.join(format!("{}.status", binary.name)))
        .ok()
        .and_then(|status| status.trim().parse().ok());
    let mut finished = Vec::new();
    let mut seconds = 0.0;
    for line in log.lines() {
        let Some((at, text)) = line
            .strip_prefix('+')
            .and_then(|line| line.split_once(' '))
            .and_then(|(at, text)| Some((at.parse::<f64>().ok()?, text)))
        else {
            continue;
        };
        seconds = at;
        let Some(test) = text.strip_prefix("test ") else {
            continue;
        };
        let (test, passed) = if let Some(test) = test.strip_suffix(" ... ok") {
            (test, true)
        } else if let Some(test) = test.strip_suffix(" ... FAILED") {
            (test, false)
        } else {
            continue;
        };
        finished.push(Finished {
            test: test.to_owned(),
            passed,
            at,
        });
    }
    let unfinished = binary
        .tests
        .iter()
        .filter(|test| !finished.iter().any(|done| &done.test == *test))
        .cloned()
        .collect();
    Some(TestResult {
        name: binary.name.clone(),
        status,
        finished,
        unfinished,
        seconds,
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
        // Written by init.sh: the reference's best time there and here, in hundredths, and the
        // factor the tests' waits were stretched by.
        let patience = fs::read_to_string(self.work.join("results/patience")).unwrap_or_default();
        if let [guest, host, factor] = patience.split_whitespace().collect::<Vec<_>>()[..] {
            writeln!(
                f,
                "    waits stretched {factor}×: the reference Python start took {guest}0 ms there, \
                 {host}0 ms here"
            )?;
        }
        let results = match &self.outcome {
            Outcome::Ran(results) => results,
            Outcome::Broken { results, .. } => results,
        };
        // A binary the filter left nothing to run in is not worth a line.
        let ran = results
            .iter()
            .filter(|result| !(result.status == Some(0) && result.finished.is_empty()));
        for result in ran {
            let state = match result.status {
                Some(0) => "ok".to_owned(),
                // coreutils' timeout, with SIGKILL: the guest's limit for one binary.
                Some(124 | 137) => "KILLED at its time limit".to_owned(),
                Some(code) => format!("FAILED (exit {code})"),
                None => "did not finish".to_owned(),
            };
            write!(
                f,
                "    {:<24} {state} in {:.0} s: {} passed",
                result.name,
                result.seconds,
                result.passed()
            )?;
            let failed = result.failed();
            if !failed.is_empty() {
                write!(f, ", {} failed: {}", failed.len(), failed.join(", "))?;
            }
            writeln!(f)?;
            if !result.unfinished.is_empty() {
                writeln!(f, "      never finished: {}", result.unfinished.join(", "))?;
            }
            if let Some(last) = result.finished.last() {
                writeln!(f, "      last to finish: {} at {:.0} s", last.test, last.at)?;
            }
        }
        if let Outcome::Broken { problem, .. } = &self.outcome {
            writeln!(f, "    {problem}")?;
        }
        Ok(())
    }
}
