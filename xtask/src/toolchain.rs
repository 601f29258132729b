//! The eBPF toolchain: the pinned nightly's rust-src, and bpf-linker built against that nightly's
//! own libLLVM (so no system LLVM is needed, and the LLVM versions cannot disagree).
use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{output, run, workspace_root};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// The nightly named in drainer-ebpf/rust-toolchain.toml.
pub fn ebpf_nightly() -> Result<String> {
    let file = workspace_root().join("drainer-ebpf/rust-toolchain.toml");
    let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .find_map(|line| line.trim().strip_prefix("channel = "))
        .map(|value| value.trim_matches('"').to_owned())
        .with_context(|| format!("no `channel = ...` in {}", file.display()))
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(home.into());
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(Path::new(&home).join(".cargo"))
}

/// PATH with $CARGO_HOME/bin first.
pub fn path_with_cargo_bin() -> Result<std::ffi::OsString> {
    let mut dirs = vec![cargo_home()?.join("bin")];
    dirs.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    Ok(env::join_paths(dirs)?)
}

pub fn ensure_ebpf_toolchain() -> Result<()> {
    let nightly = ebpf_nightly()?;
    let installed = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !installed
        .lines()
        .any(|line| line.starts_with(&format!("{nightly}-")))
    {
        bail!("toolchain {nightly} is not installed: run through `./x`, which installs it");
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        &nightly,
    ]))?;
    if !components.lines().any(|line| line.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            &nightly,
        ]))?;
    }
    ensure_bpf_linker(&nightly)
}

/// Installs bpf-linker into $CARGO_HOME/bin unless the one there was built by this function for
/// this nightly's LLVM.
fn ensure_bpf_linker(nightly: &str) -> Result<()> {
    let version = output(Command::new("rustc").arg(format!("+{nightly}")).arg("-vV"))?;
    let llvm = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .context("rustc -vV printed no LLVM version")?;
    let llvm_major = llvm.split('.').next().unwrap_or(llvm);
    let stamp_text = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{llvm_major} {nightly}\n");

    let home = cargo_home()?;
    let linker = home.join("bin/bpf-linker");
    let prefix = home.join("drainer-llvm").join(nightly);
    let stamp = prefix.join("bpf-linker.stamp");
    if linker.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_text.as_str()) {
        return Ok(());
    }

    // bpf-linker's build finds LLVM through LLVM_PREFIX/lib/libLLVM.so; point that at the
    // nightly's own library. The installed binary keeps a RUNPATH to this directory.
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{nightly}"))
            .args(["--print", "sysroot"]),
    )?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("reading {}", sysroot_lib.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", sysroot_lib.display()))?;
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    for link in ["libLLVM.so".to_owned(), libllvm.clone()] {
        let path = lib.join(&link);
        let _ = fs::remove_file(&path);
        symlink(sysroot_lib.join(&libllvm), &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ])
        .env("LLVM_PREFIX", &prefix))?;
    fs::write(&stamp, stamp_text)?;
    Ok(())
}

/// Clippy on the eBPF crate, for the BPF target, with its nightly.
pub fn clippy_ebpf() -> Result<()> {
    let nightly = ebpf_nightly()?;
    run(Command::new("rustup")
        .args([
            "run",
            &nightly,
            "cargo",
            "clippy",
            "--package",
            "drainer-ebpf",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--release", "--", "-D", "warnings"])
        .current_dir(workspace_root())
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env("PATH", path_with_cargo_bin()?))
}
