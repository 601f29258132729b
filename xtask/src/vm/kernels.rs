//! Which kernels Debian's archive offers (through apt-cache), and which of them a run boots: the
//! newest of each series, or the one asked for.
use std::{collections::BTreeMap, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{output, run};

/// A kernel Debian's archive offers as `linux-image-<version>-amd64-unsigned`.
#[derive(Clone, Debug)]
pub(super) struct Kernel {
    pub(super) version: String,
}

impl Kernel {
    pub(super) fn package(&self) -> String {
        format!("linux-image-{}-amd64-unsigned", self.version)
    }

    /// The upstream series: 6.1 for 6.1.0-57, 6.12 for 6.12.118+deb12.
    fn series(&self) -> String {
        self.version
            .splitn(3, '.')
            .take(2)
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The version's numbers in order (6.1.0-57 → 6, 1, 0, 57), which order the versions of
    /// one series.
    fn numbers(&self) -> Vec<u64> {
        numbers(&self.version)
    }
}

fn numbers(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Every kernel the archive offers, in no order.
pub(super) fn offered() -> Result<Vec<Kernel>> {
    let mut kernels = search_kernel_packages()?;
    if kernels.is_empty() {
        // A fresh machine may not have read its package lists yet.
        run(Command::new("apt-get").args(["update", "-q"]))?;
        kernels = search_kernel_packages()?;
    }
    if kernels.is_empty() {
        bail!(
            "apt-cache finds no linux-image-*-amd64-unsigned package: vm-test takes its kernels \
             from Debian's archive, which must be in the apt sources"
        );
    }
    Ok(kernels)
}

fn search_kernel_packages() -> Result<Vec<Kernel>> {
    let listing = output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        "^linux-image-.*-amd64-unsigned$",
    ]))
    .context("vm-test takes its kernels from Debian's archive, through apt-cache")?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            let name = line.split_whitespace().next()?;
            let version = name
                .strip_prefix("linux-image-")?
                .strip_suffix("-amd64-unsigned")?;
            // The other flavours (cloud, rt) end the version with their name.
            version
                .split('-')
                .all(|part| part.starts_with(|c: char| c.is_ascii_digit()))
                .then(|| Kernel {
                    version: version.to_owned(),
                })
        })
        .collect())
}

/// The newest of each series, oldest series first; or the one `wanted` names.
pub(super) fn choose(offered: &[Kernel], wanted: Option<&str>) -> Result<Vec<Kernel>> {
    let mut newest: BTreeMap<Vec<u64>, &Kernel> = BTreeMap::new();
    for kernel in offered {
        let series = numbers(&kernel.series());
        if newest
            .get(&series)
            .is_none_or(|known| known.numbers() < kernel.numbers())
        {
            newest.insert(series, kernel);
        }
    }
    let Some(wanted) = wanted else {
        return Ok(newest.into_values().cloned().collect());
    };
    if let Some(kernel) = offered.iter().find(|kernel| kernel.version == wanted) {
        return Ok(vec![kernel.clone()]);
    }
    if let Some(kernel) = newest.values().find(|kernel| kernel.series() == wanted) {
        return Ok(vec![(*kernel).clone()]);
    }
    let mut versions: Vec<&str> = offered.iter().map(|k| k.version.as_str()).collect();
    versions.sort_unstable();
    bail!(
        "Debian's archive offers no kernel {wanted}: pass a series ({}) or one of {}",
        newest
            .values()
            .map(|kernel| kernel.series())
            .collect::<Vec<_>>()
            .join(", "),
        versions.join(", ")
    )
}
