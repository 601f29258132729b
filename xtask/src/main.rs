//! `cargo xtask`: build, run and test drainer, installing what that needs first.
//!
//! Every install step is idempotent and cached: a second run that finds everything in place
//! costs a few process spawns.
mod cmd;
mod dist;
mod fuzz;
mod no_new_services;
mod python;
mod system;
mod toolchain;
mod vm;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{self, ExitCode},
};

use anyhow::Result;
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
    /// Install bpf-linker for the eBPF nightly if missing (`./x` installs the toolchains).
    Setup,
    /// Build drainer (the eBPF object is built and embedded on the way).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run drainer as root with the given arguments: `./x drainer run --port 8000 --
    /// SERVER...`.
    #[command(alias = "run")]
    Drainer {
        #[arg(long)]
        release: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<OsString>,
    },
    /// What a release ships, in target/dist/: a static (musl) drainer, a .deb, an OCI image
    /// archive of the binary alone, and SHA256SUMS; each is checked (root: installs buildah and
    /// skopeo, and starts the binary it built).
    Dist,
    /// Everything: formatting, lints, unit tests, the integration tests on this kernel, then a
    /// short fuzzing run.
    Test,
    /// Formatting and clippy.
    Lint,
    /// Install the Debian packages the tests run (`test` does this first), enabling and starting
    /// none of their services.
    Packages,
    /// The soak test at full size: 100 drains of 1,000 live WebSocket sessions each, with 500
    /// refused connections a second (about 15 minutes). `test` runs a quick pass of it.
    Soak,
    /// Benchmarks, side by side with the limit and the peers; writes bench/results/.
    Bench {
        /// Under a minute.
        #[arg(long)]
        quick: bool,
        /// Only these measurements (rate, throughput, release, activation, scale, idle, node,
        /// steering).
        #[arg(long)]
        only: Option<String>,
    },
    /// Fuzz the daemon's request parsers: control socket requests, HTTP heads (cargo-fuzz, with
    /// the eBPF nightly).
    Fuzz {
        /// How long to fuzz each parser.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// The unit and integration tests under the newest kernel of each series Debian's archive
    /// offers, each booted in qemu (software emulation; no KVM needed).
    VmTest {
        /// Only this kernel: a version the archive offers (6.1.0-57) or a series (6.1).
        #[arg(long)]
        kernel: Option<String>,
        /// Only the tests whose names contain this (passed to each test binary).
        #[arg(long)]
        filter: Option<String>,
        /// Only these test binaries (`exhaustion`, `drainer-lib`, …); all when absent.
        #[arg(long = "binary", value_name = "NAME")]
        binaries: Vec<String>,
        /// Minutes one VM may take to run the tests before it is stopped.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// The deployment examples for real: a VM booting Debian with systemd (qemu, software
    /// emulation) runs deploy/systemd's units and deploy/kubernetes's pod under podman, holds live
    /// sessions across each stop and checks what the documentation promises; and runs `packages`
    /// there, checking that it enables and starts no service.
    VmDeploy {
        /// Only this scenario (repeatable): packages, wrapper, reload, companion, pod, kube-play.
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
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
        Command::Drainer { release, args } => {
            let binary = build(release)?;
            system::exec_as_root(&binary, &args)
        }
        Command::Dist => dist::dist().map(drop),
        Command::Test => test(),
        Command::Lint => lint(),
        Command::Packages => test_packages(),
        Command::Soak => soak(),
        Command::Bench { quick, only } => bench(quick, only.as_deref()),
        Command::Fuzz { seconds } => fuzz::fuzz(seconds),
        Command::VmTest {
            kernel,
            filter,
            binaries,
            timeout,
        } => vm::vm_test(&vm::Options {
            kernel,
            filter,
            binaries,
            timeout: std::time::Duration::from_secs(timeout * 60),
        }),
        Command::VmDeploy { scenarios } => {
            vm::systemd::vm_deploy(&vm::systemd::Options { scenarios })
        }
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
    // The fuzz crate is a workspace of its own (it builds only with a nightly).
    run(cargo()
        .args(["fmt", "--check", "--manifest-path"])
        .arg(cmd::workspace_root().join("drainer/fuzz/Cargo.toml")))?;
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

/// The programs the integration tests run, each with the Debian package that has it.
const TEST_PACKAGES: &[(&str, &str)] = &[
    // Namespaces, addresses and routes of every test.
    ("ip", "iproute2"),
    // `systemd-analyze verify` of the example units (tests/tests/deployment.rs).
    ("systemd-analyze", "systemd"),
    // The balancers and the service VIP of tests/tests/load_balancers.rs and
    // endpoint_updates.rs.
    ("haproxy", "haproxy"),
    ("nginx", "nginx-light"),
    ("nft", "nftables"),
    // The BPF links and program run counts of tests/tests/serving_cost.rs.
    ("bpftool", "bpftool"),
];

fn test_packages() -> Result<()> {
    if !system::is_root() {
        anyhow::bail!("apt-get installs packages as root: run `sudo ./x packages`");
    }
    system::ensure_packages(TEST_PACKAGES)
}

/// Checks for root and installs what the integration tests run; returns the virtualenv's python.
fn integration_prerequisites(command: &str) -> Result<PathBuf> {
    system::require_root("the integration tests", command)?;
    system::ensure_packages(TEST_PACKAGES)?;
    python::ensure_venv()
}

/// `cargo test` with drainer built (dev) and named to the tests, with the virtualenv's python.
fn cargo_test(python: &Path) -> Result<process::Command> {
    let binary = build(false)?;
    let mut test = cargo();
    test.arg("test")
        .env("DRAINER_BIN", &binary)
        .env("DRAINER_TEST_PYTHON", python);
    Ok(test)
}

fn test() -> Result<()> {
    let python = integration_prerequisites("test")?;
    lint()?;
    run(cargo_test(&python)?.args(["--workspace", "--exclude", "drainer-ebpf", "--no-fail-fast"]))?;
    // Long enough for each parser to replay its corpus and catch a regression; `cargo xtask fuzz`
    // searches.
    fuzz::fuzz(30)
}

fn soak() -> Result<()> {
    let python = integration_prerequisites("soak")?;
    run(cargo_test(&python)?
        .args(["--package", "drainer-integration", "--test", "soak"])
        .args(["--", "--nocapture"])
        .env("DRAINER_SOAK", "full"))
}

fn bench(quick: bool, only: Option<&str>) -> Result<()> {
    system::require_root("the benchmarks", "bench")?;
    system::ensure_packages(&[("ip", "iproute2"), ("nft", "nftables")])?;
    let drainer = build(true)?;
    run(cargo().args(["build", "--release", "--package", "drainer-bench"]))?;
    let mut bench = process::Command::new(cmd::target_dir()?.join("release/drainer-bench"));
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
