//! Checking, before touching the kernel, that drainer holds the capabilities it needs, so a missing
//! one is named instead of surfacing as a bare EPERM from bpf(2).
use std::fs;

use anyhow::{Context as _, Result, bail};

/// A Linux capability drainer may need, with the reason it needs it.
#[derive(Clone, Copy, Debug)]
pub struct Capability {
    pub name: &'static str,
    pub bit: u32,
    pub why: &'static str,
}

pub const CAP_NET_ADMIN: Capability = Capability {
    name: "CAP_NET_ADMIN",
    bit: 12,
    why: "sock_ops and sk_lookup programs",
};
pub const CAP_SYS_ADMIN: Capability = Capability {
    name: "CAP_SYS_ADMIN",
    bit: 21,
    why: "entering another network namespace",
};
pub const CAP_PERFMON: Capability = Capability {
    name: "CAP_PERFMON",
    bit: 38,
    why: "the tracepoint and iterator programs",
};
pub const CAP_BPF: Capability = Capability {
    name: "CAP_BPF",
    bit: 39,
    why: "loading BPF programs and maps",
};

/// Fails with the names of the capabilities in `needed` that the process does not hold.
pub fn require(needed: &[Capability]) -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = effective_set(&status).context("no CapEff line in /proc/self/status")?;
    let missing: Vec<String> = needed
        .iter()
        .filter(|cap| effective & (1u64 << cap.bit) == 0)
        .map(|cap| format!("{} ({})", cap.name, cap.why))
        .collect();
    if !missing.is_empty() {
        bail!(
            "drainer lacks {}: run it as root, or grant these capabilities",
            missing.join(", ")
        );
    }
    Ok(())
}

fn effective_set(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::effective_set;

    #[test]
    fn parses_cap_eff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_set(status), Some(0x1ff_ffff_ffff));
    }
}
