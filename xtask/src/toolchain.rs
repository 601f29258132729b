//! The eBPF toolchain: the nightly drainer-ebpf/rust-toolchain.toml pins (which `./x` installs),
//! reached by running cargo and rustc in that directory, and bpf-linker built against that
//! nightly's own libLLVM (so no system LLVM is needed, and the LLVM versions cannot disagree).
use std::{env, fs, os::unix::fs::symlink, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::cmd::{cargo, ebpf_target_dir, output, run, workspace_root};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// `program` (cargo, rustc) run in drainer-ebpf/, where rustup picks the nightly its
/// rust-toolchain.toml pins, once the variables naming this process's toolchain are gone.
pub fn ebpf_toolchain(program: &str) -> Result<Command> {
    let mut command = Command::new(program);
    command
        .current_dir(workspace_root().join("drainer-ebpf"))
        .env("PATH", path_with_cargo_bin()?);
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTUP_TOOLCHAIN_SOURCE",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        command.env_remove(var);
    }
    Ok(command)
}

/// `$CARGO_HOME`, where cargo installs bpf-linker and cargo-fuzz.
pub fn cargo_home() -> Result<PathBuf> {
    home::cargo_home().context("neither CARGO_HOME nor HOME is set")
}

/// PATH with $CARGO_HOME/bin first: rustup's proxies, bpf-linker, cargo-fuzz.
pub fn path_with_cargo_bin() -> Result<std::ffi::OsString> {
    let mut dirs = vec![cargo_home()?.join("bin")];
    dirs.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    Ok(env::join_paths(dirs)?)
}

/// What building the eBPF object needs beyond the toolchains `./x` installs: bpf-linker.
pub fn ensure_ebpf_toolchain() -> Result<()> {
    ensure_bpf_linker(&Nightly::find()?)
}

/// The eBPF nightly as bpf-linker's build needs it.
struct Nightly {
    /// rustup's name for it without the host: nightly-2026-10-30.
    name: String,
    llvm_major: String,
    sysroot: PathBuf,
}

impl Nightly {
    fn find() -> Result<Self> {
        let version = output(ebpf_toolchain("rustc")?.arg("-vV"))
            .context("the eBPF nightly is not installed: run through `./x`, which installs it")?;
        let field = |name: &str| {
            version
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .with_context(|| format!("rustc -vV printed no {name:?} line"))
        };
        let llvm = field("LLVM version: ")?;
        let host = field("host: ")?;
        let sysroot =
            PathBuf::from(output(ebpf_toolchain("rustc")?.args(["--print", "sysroot"]))?.trim());
        // rustup keeps each toolchain in a directory named <name>-<host>.
        let dir = sysroot
            .file_name()
            .and_then(|name| name.to_str())
            .with_context(|| format!("cannot name the toolchain in {}", sysroot.display()))?;
        Ok(Self {
            name: dir
                .strip_suffix(&format!("-{host}"))
                .unwrap_or(dir)
                .to_owned(),
            llvm_major: llvm.split('.').next().unwrap_or(llvm).to_owned(),
            sysroot,
        })
    }
}

/// Installs bpf-linker into $CARGO_HOME/bin unless the one there was built by this function for
/// this nightly's LLVM.
fn ensure_bpf_linker(nightly: &Nightly) -> Result<()> {
    let Nightly {
        name,
        llvm_major,
        sysroot,
    } = nightly;
    let stamp_text = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{llvm_major} {name}\n");

    let home = cargo_home()?;
    let linker = home.join("bin/bpf-linker");
    let prefix = home.join("drainer-llvm").join(name);
    let stamp = prefix.join("bpf-linker.stamp");
    if linker.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_text.as_str()) {
        return Ok(());
    }

    // bpf-linker's build finds LLVM through LLVM_PREFIX/lib/libLLVM.so; point that at the
    // nightly's own library. The installed binary keeps a RUNPATH to this directory.
    let sysroot_lib = sysroot.join("lib");
    let libllvm = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("reading {}", sysroot_lib.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", sysroot_lib.display()))?;
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    for link in ["libLLVM.so", &libllvm] {
        let path = lib.join(link);
        let _ = fs::remove_file(&path);
        symlink(sysroot_lib.join(&libllvm), &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    run(cargo()
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--locked", "--force", "--no-default-features", "--features"])
        .arg(format!("llvm-{llvm_major}"))
        .env("LLVM_PREFIX", &prefix))?;
    fs::write(&stamp, stamp_text)?;
    Ok(())
}

/// Clippy on the eBPF crate, for the BPF target, with its nightly, in the target directory and with
/// the flags drainer/build.rs builds the object with: clippy then finds the dependencies (core,
/// aya-ebpf) built, where other flags would compile them again.
pub fn clippy_ebpf() -> Result<()> {
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{}\"", env::consts::ARCH),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ];
    run(ebpf_toolchain("cargo")?
        .args(["clippy", "--package", "drainer-ebpf", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(ebpf_target_dir()?)
        .args(["--", "-D", "warnings"])
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f")))
}
