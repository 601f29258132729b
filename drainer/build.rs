//! Builds drainer-ebpf for the BPF target and copies the object to `OUT_DIR/drainer`, where
//! src/kernel/programs.rs embeds it.
//!
//! A nested cargo compiles it into `<build dir>/bpf`, one target directory shared by every build
//! of drainer (dev, test, release, clippy): the first compiles the object, the rest find cargo's
//! fingerprints fresh and do nothing. It runs in drainer-ebpf/, so rustup picks the nightly that
//! drainer-ebpf/rust-toolchain.toml pins. Its output is shown only when it fails.
use std::{
    env,
    ffi::OsString,
    fs, io,
    path::{Path, PathBuf},
    process::{self, Command},
};

use anyhow::{Context as _, Result, bail};

/// The eBPF crate's binary, and so the object's file name.
const OBJECT: &str = "drainer";

/// What this build script's environment may hold (from cargo, rustup or the user) that would make
/// the nested cargo build with this build's toolchain, compiler wrappers (clippy's), flags or
/// target directory.
const NOT_INHERITED: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTUP_TOOLCHAIN",
    "RUSTUP_TOOLCHAIN_SOURCE",
];

fn main() {
    // The error alone, without the backtrace anyhow would add under RUST_BACKTRACE.
    if let Err(err) = build() {
        eprintln!("error: {err:#}");
        process::exit(1);
    }
}

fn build() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("drainer's manifest directory has no parent")?;
    let ebpf = root.join("drainer-ebpf");
    for input in [
        "drainer-ebpf/src",
        "drainer-ebpf/Cargo.toml",
        "drainer-ebpf/rust-toolchain.toml",
        "drainer-common/src",
        "drainer-common/Cargo.toml",
        // The eBPF profile and the dependencies' versions.
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo::rerun-if-changed={}", root.join(input).display());
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR is not set")?);
    let target_dir = shared_target_dir(&out_dir)?;
    let target = bpf_target()?;
    let mut cargo = Command::new("cargo");
    cargo
        .args(["build", "--package", "drainer-ebpf", "--release"])
        .args(["--target", &target, "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&ebpf);
    for var in NOT_INHERITED {
        cargo.env_remove(var);
    }
    cargo.env("CARGO_ENCODED_RUSTFLAGS", rustflags()?);
    // Cargo keeps a build script's stderr (target/*/build/drainer-*/stderr) and shows it only when
    // the script fails (or with -vv); stdout is for its instructions.
    let status = cargo
        .stdout(io::stderr())
        .status()
        .context("cannot start cargo to build drainer-ebpf (is rustup's cargo on PATH?)")?;
    if !status.success() {
        bail!(
            "building drainer-ebpf failed ({status}; its output is above): `cargo build` in {} \
             with the nightly its rust-toolchain.toml pins, which `./x` installs with bpf-linker",
            ebpf.display()
        );
    }

    let object = target_dir.join(&target).join("release").join(OBJECT);
    let copy = out_dir.join(OBJECT);
    fs::copy(&object, &copy)
        .with_context(|| format!("copying {} to {}", object.display(), copy.display()))?;
    Ok(())
}

/// `<build dir>/bpf`: OUT_DIR is `<build dir>/[<target>/]<profile>/build/drainer-<hash>/out`,
/// and the eBPF build is the same for every target and profile of drainer's.
fn shared_target_dir(out_dir: &Path) -> Result<PathBuf> {
    let unexpected = || {
        format!(
            "OUT_DIR {} is not under <build dir>/<profile>/build/",
            out_dir.display()
        )
    };
    let build = out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .with_context(unexpected)?;
    let mut dir = build
        .parent()
        .and_then(Path::parent)
        .with_context(unexpected)?;
    if dir.file_name() == env::var_os("TARGET").as_deref() {
        dir = dir.parent().with_context(unexpected)?;
    }
    Ok(dir.join("bpf"))
}

/// The BPF target of drainer's target's byte order.
fn bpf_target() -> Result<String> {
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN")?;
    Ok(match endian.as_str() {
        "little" => "bpfel-unknown-none".to_owned(),
        "big" => "bpfeb-unknown-none".to_owned(),
        _ => bail!("unknown byte order {endian}"),
    })
}

/// The flags aya-build passes: the architecture aya-ebpf's helpers read registers for (drainer's
/// target's), full debug information and BTF in the object, which the loader needs. xtask's
/// `clippy_ebpf` passes the same, to reuse what this build compiled.
fn rustflags() -> Result<OsString> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    // aya-ebpf names every 64-bit RISC-V riscv64.
    let arch = if arch.starts_with("riscv64") {
        "riscv64"
    } else {
        &arch
    };
    Ok([
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f")
    .into())
}
