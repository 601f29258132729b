//! Compiles drainer-ebpf for the BPF target with the nightly pinned in
//! drainer-ebpf/rust-toolchain.toml, so `include_bytes_aligned!` can embed the object in the
//! drainer binary.
use std::{fs, path::Path};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let ebpf_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../drainer-ebpf");
    let toolchain_file = ebpf_dir.join("rust-toolchain.toml");
    println!("cargo::rerun-if-changed={}", toolchain_file.display());
    let text = fs::read_to_string(&toolchain_file)
        .with_context(|| format!("reading {}", toolchain_file.display()))?;
    let channel = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("channel = "))
        .map(|value| value.trim_matches('"').to_owned())
        .ok_or_else(|| anyhow!("no `channel = ...` in {}", toolchain_file.display()))?;
    let root_dir = ebpf_dir.to_str().context("eBPF crate path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "drainer-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&channel),
    )
}
