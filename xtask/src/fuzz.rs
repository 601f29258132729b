//! `cargo xtask fuzz`: the daemon's request parsers (the control socket's requests, the HTTP
//! listener's heads) under libFuzzer, through cargo-fuzz, each for a bounded time.
//!
//! libFuzzer's instrumentation needs a nightly rustc; the eBPF nightly serves, so no third
//! toolchain is pinned. The fuzz crate depends on drainer-common's protocol alone: no eBPF object,
//! so no bpf-linker. The build and the corpus the fuzzer grows live under the target directory,
//! failing inputs where cargo-fuzz puts them (drainer/fuzz/artifacts/, ignored by git); only the
//! seeds (drainer/fuzz/seeds/) are part of the repository.
use std::{fs, process::Command};

use anyhow::{Context as _, Result, bail};
use drainer_common::{http::MAX_HEAD, protocol::MAX_REQUEST};

use crate::{
    cmd::{cargo, output, run, run_watching_stderr, target_dir, workspace_root},
    toolchain,
};

const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The fuzz targets (drainer/fuzz/fuzz_targets/), each with the longest input it is given: past
/// the daemon's own limit for what it parses, since the parser sees no limit of its own, so
/// inputs the daemon would refuse as too long are fuzzed too.
const TARGETS: [(&str, usize); 2] = [
    ("control_request", MAX_REQUEST + 512),
    ("http_head", MAX_HEAD + 512),
];

/// Fuzzes each target for `seconds`.
pub fn fuzz(seconds: u64) -> Result<()> {
    if seconds == 0 {
        bail!("--seconds 0 would fuzz without end: give a positive number of seconds");
    }
    ensure_cargo_fuzz()?;
    for (target, max_len) in TARGETS {
        fuzz_target(target, max_len, seconds)?;
    }
    Ok(())
}

fn fuzz_target(target: &str, max_len: usize, seconds: u64) -> Result<()> {
    let root = workspace_root();
    let fuzz_dir = root.join("drainer/fuzz");
    let build_dir = target_dir()?.join("fuzz");
    let corpus = build_dir.join("corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = fuzz_dir.join("seeds").join(target);

    let cargo_fuzz = |subcommand: &str| -> Result<Command> {
        let mut command = toolchain::ebpf_toolchain("cargo")?;
        command
            .args(["fuzz", subcommand, "--fuzz-dir"])
            .arg(&fuzz_dir)
            .arg("--target-dir")
            .arg(&build_dir)
            .arg(target);
        Ok(command)
    };
    // Built on its own first, so that a compile error is not taken for a finding.
    run(&mut cargo_fuzz("build")?)?;

    let mut fuzz = cargo_fuzz("run")?;
    // libFuzzer adds what it finds to the first corpus directory only: the seeds stay as they are.
    fuzz.arg(&corpus).arg(&seeds).arg("--").args([
        format!("-max_total_time={seconds}"),
        format!("-max_len={max_len}"),
        format!(
            "-dict={}",
            fuzz_dir.join(format!("{target}.dict")).display()
        ),
        "-print_final_stats=1".to_owned(),
    ]);
    let mut stats = Stats::default();
    if let Err(err) = run_watching_stderr(&mut fuzz, |line| stats.read(line)) {
        let Some(input) = stats.failing_input else {
            return Err(err);
        };
        bail!(
            "the fuzzer found an input that {target} fails on (shown above), saved as {input}; \
             reproduce with `cd {} && cargo fuzz run --fuzz-dir {} --target-dir {} {target} \
             {input}` (the eBPF crate's directory, for its nightly), then fix the parser (or the \
             property, if it is wrong)",
            root.join("drainer-ebpf").display(),
            fuzz_dir.display(),
            build_dir.display()
        );
    }
    stats.report(target, seconds, &corpus)
}

/// Installs cargo-fuzz into $CARGO_HOME/bin unless this version is there already.
fn ensure_cargo_fuzz() -> Result<()> {
    let installed = output(cargo().args(["install", "--list"]))?;
    let wanted = format!("cargo-fuzz v{CARGO_FUZZ_VERSION}:");
    // cargo's list of installs outlives a binary deleted by hand: both must be there.
    let binary = toolchain::cargo_home()?.join("bin/cargo-fuzz");
    if installed.lines().any(|line| line.starts_with(&wanted)) && binary.exists() {
        return Ok(());
    }
    run(cargo().args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
        "--force",
    ]))
}

/// What libFuzzer reports: its last status line, with -print_final_stats the totals, and the file
/// it saved a failing input to.
#[derive(Default)]
struct Stats {
    status: Option<String>,
    executions: Option<u64>,
    per_second: Option<u64>,
    failing_input: Option<String>,
}

impl Stats {
    fn read(&mut self, line: &str) {
        if let Some((_, path)) = line.split_once("Test unit written to ") {
            self.failing_input = Some(path.trim().to_owned());
        } else if line.starts_with('#') && line.contains(" cov: ") {
            self.status = Some(line.to_owned());
        } else if let Some(value) = line.strip_prefix("stat::number_of_executed_units:") {
            self.executions = value.trim().parse().ok();
        } else if let Some(value) = line.strip_prefix("stat::average_exec_per_sec:") {
            self.per_second = value.trim().parse().ok();
        }
    }

    fn report(&self, target: &str, seconds: u64, corpus: &std::path::Path) -> Result<()> {
        let (Some(executions), Some(per_second)) = (self.executions, self.per_second) else {
            bail!("libFuzzer printed no final statistics: was -print_final_stats=1 dropped?");
        };
        if executions == 0 {
            bail!("libFuzzer ran {target} on no input at all: the fuzzing run proves nothing");
        }
        let field = |name: &str| {
            self.status
                .as_deref()
                .and_then(|line| {
                    let mut words = line.split_whitespace();
                    words.find(|word| *word == name)?;
                    words.next()
                })
                .unwrap_or("?")
                .to_owned()
        };
        eprintln!(
            "xtask: fuzzed {target} for {seconds} s, no failure: {executions} executions, \
             {per_second}/s; coverage {} edges, {} features; corpus {} ({})",
            field("cov:"),
            field("ft:"),
            field("corp:"),
            corpus.display()
        );
        Ok(())
    }
}
