//! `cargo xtask`: build, run and test drainer, installing what that needs first.
//!
//! Every install step is idempotent and cached: a second run that finds everything in place
//! costs a few process spawns.
mod cmd;
mod python;
mod system;
mod toolchain;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::cmd::{cargo, run};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the eBPF toolchain (rust-src, bpf-linker) if missing.
    Setup,
    /// Build drainer (the eBPF object is built and embedded on the way).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run drainer as root with the given arguments.
    Run {
        #[arg(long)]
        release: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<OsString>,
    },
    /// Everything: formatting, lints, unit tests and the integration tests on this kernel.
    Test,
    /// Formatting and clippy.
    Lint,
    /// Benchmarks, side by side with the limit and the peers; writes bench/results/.
    Bench {
        /// Under a minute.
        #[arg(long)]
        quick: bool,
        /// Only these measurements (rate, throughput, release, activation, scale, idle).
        #[arg(long)]
        only: Option<String>,
    },
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Setup => toolchain::ensure_ebpf_toolchain(),
        Command::Build { release } => build(release).map(drop),
        Command::Run { release, args } => {
            let binary = build(release)?;
            system::exec_as_root(&binary, &args)
        }
        Command::Test => test(),
        Command::Lint => lint(),
        Command::Bench { quick, only } => bench(quick, only.as_deref()),
    }
}

/// Builds drainer; returns the path of the binary.
fn build(release: bool) -> Result<PathBuf> {
    toolchain::ensure_ebpf_toolchain()?;
    let mut build = cargo();
    build.args(["build", "--package", "drainer"]);
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    Ok(cmd::target_dir()?
        .join(if release { "release" } else { "debug" })
        .join("drainer"))
}

fn lint() -> Result<()> {
    toolchain::ensure_ebpf_toolchain()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "drainer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    toolchain::clippy_ebpf()
}

fn test() -> Result<()> {
    if !system::is_root() {
        bail!(
            "the integration tests load eBPF programs and create network namespaces: run `sudo ./x test` (or as root)"
        );
    }
    system::ensure_packages(&[("ip", "iproute2"), ("systemd-analyze", "systemd")])?;
    let python = python::ensure_venv()?;
    lint()?;
    let binary = build(false)?;
    run(cargo()
        .args([
            "test",
            "--workspace",
            "--exclude",
            "drainer-ebpf",
            "--no-fail-fast",
        ])
        .env("DRAINER_BIN", &binary)
        .env("DRAINER_TEST_PYTHON", &python))
}

fn bench(quick: bool, only: Option<&str>) -> Result<()> {
    if !system::is_root() {
        bail!(
            "the benchmarks load eBPF programs and create network namespaces: run `sudo ./x bench`"
        );
    }
    system::ensure_packages(&[("ip", "iproute2"), ("nft", "nftables")])?;
    let drainer = build(true)?;
    run(cargo().args(["build", "--release", "--package", "drainer-bench"]))?;
    let mut bench = std::process::Command::new(cmd::target_dir()?.join("release/drainer-bench"));
    bench
        .args(["run", "--out"])
        .arg(cmd::workspace_root().join("bench/results"));
    if quick {
        bench.arg("--quick");
    }
    if let Some(only) = only {
        bench.args(["--only", only]);
    }
    run(bench
        .env("DRAINER_BIN", drainer)
        .current_dir(cmd::workspace_root()))
}
