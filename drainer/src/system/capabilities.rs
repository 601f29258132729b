//! Checking, before touching the kernel, that drainer holds the capabilities it needs, so a missing
//! one is named instead of surfacing as a bare EPERM from bpf(2).
use std::{fs, io};

use anyhow::{Context as _, Result, bail};
use nix::errno::Errno;

/// A Linux capability drainer may need, or keeps from the server, with the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub bit: u32,
    pub why: &'static str,
}

pub const CAP_DAC_READ_SEARCH: Capability = Capability {
    name: "CAP_DAC_READ_SEARCH",
    bit: 2,
    why: "reading which sockets a restarted server's processes hold (/proc/PID/fd)",
};
pub const CAP_KILL: Capability = Capability {
    name: "CAP_KILL",
    bit: 5,
    why: "signalling a server that runs as another user",
};
pub const CAP_SETGID: Capability = Capability {
    name: "CAP_SETGID",
    bit: 6,
    why: "starting the server as --group",
};
pub const CAP_SETUID: Capability = Capability {
    name: "CAP_SETUID",
    bit: 7,
    why: "starting the server as --user",
};
pub const CAP_SETPCAP: Capability = Capability {
    name: "CAP_SETPCAP",
    bit: 8,
    why: "keeping drainer's own capabilities from the server",
};
pub const CAP_NET_ADMIN: Capability = Capability {
    name: "CAP_NET_ADMIN",
    bit: 12,
    why: "the sk_lookup program",
};
pub const CAP_SYS_MODULE: Capability = Capability {
    name: "CAP_SYS_MODULE",
    bit: 16,
    why: "kept from the server: it could load a kernel module",
};
pub const CAP_SYS_RAWIO: Capability = Capability {
    name: "CAP_SYS_RAWIO",
    bit: 17,
    why: "kept from the server: it could write kernel memory through /dev/mem",
};
pub const CAP_SYS_PTRACE: Capability = Capability {
    name: "CAP_SYS_PTRACE",
    bit: 19,
    why: "copying a restarted server's listening sockets (pidfd_getfd); kept from the server, \
          which could copy drainer's",
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

/// The highest capability number the running kernel knows.
pub fn last_capability() -> Result<u32> {
    let text = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .context("reading /proc/sys/kernel/cap_last_cap")?;
    text.trim()
        .parse()
        .with_context(|| format!("/proc/sys/kernel/cap_last_cap holds {text:?}"))
}

/// Removes `cap` from the bounding set, so no exec can bring it back; needs CAP_SETPCAP. Makes
/// no allocation: usable between fork and exec.
pub fn drop_from_bounding_set(cap: u32) -> nix::Result<()> {
    // libc: nix has no PR_CAPBSET_DROP wrapper.
    // SAFETY: prctl with integer arguments.
    Errno::result(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) })
        .map(drop)
}

/// The effective, permitted and inheritable sets, as capget(2) and capset(2) exchange them.
// Not the `caps` crate: this runs between fork and exec, where its HashSets would allocate.
pub struct CapabilitySets {
    data: [CapData; 2],
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

impl CapabilitySets {
    pub fn current() -> io::Result<Self> {
        let mut header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        // SAFETY: capget with a version-3 header and room for its two data words.
        Errno::result(unsafe {
            libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr())
        })?;
        Ok(Self { data })
    }

    pub fn effective(&self, cap: u32) -> bool {
        self.data
            .get((cap / 32) as usize)
            .is_some_and(|word| word.effective & (1 << (cap % 32)) != 0)
    }

    /// Removes `cap` from the effective, permitted and inheritable sets; an ambient capability
    /// leaves with it.
    pub fn remove(&mut self, cap: u32) {
        let Some(word) = self.data.get_mut((cap / 32) as usize) else {
            return;
        };
        let bit = !(1u32 << (cap % 32));
        word.effective &= bit;
        word.permitted &= bit;
        word.inheritable &= bit;
    }

    /// Adds or removes `cap` in the effective set; adding needs it in the permitted set.
    pub fn set_effective(&mut self, cap: u32, on: bool) {
        let Some(word) = self.data.get_mut((cap / 32) as usize) else {
            return;
        };
        if on {
            word.effective |= 1 << (cap % 32);
        } else {
            word.effective &= !(1 << (cap % 32));
        }
    }

    pub fn install(&self) -> io::Result<()> {
        let mut header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        // SAFETY: capset with a version-3 header and its two data words.
        Errno::result(unsafe {
            libc::syscall(libc::SYS_capset, &raw mut header, self.data.as_ptr())
        })?;
        Ok(())
    }
}

/// Drops every capability but `kept` from all of drainer's own sets, bounding included: what
/// start-up needed is done, and an exploited drainer should not hold it any more.
pub fn keep_only(kept: &[Capability]) -> Result<()> {
    keep(kept, &[])
}

/// Leaves `effective` effective and `held` only permitted — out of use until [`raise`]d — and
/// drops every other capability from all of drainer's own sets, bounding included.
pub fn keep(effective: &[Capability], held: &[Capability]) -> Result<()> {
    keep_sets(effective, held, true)
}

/// As [`keep`], but the bounding set stays whole: only exec consults it, and a server started
/// later (a restart's next generation) must get from it what the first one got.
pub fn keep_for_later_children(effective: &[Capability], held: &[Capability]) -> Result<()> {
    keep_sets(effective, held, false)
}

fn keep_sets(effective: &[Capability], held: &[Capability], trim_bounding: bool) -> Result<()> {
    let named = |list: &[Capability], cap: u32| list.iter().any(|k| k.bit == cap);
    let last = last_capability()?;
    let mut sets = CapabilitySets::current().context("capget")?;
    // Only exec consults the bounding set, and drainer execs nothing after start-up unless it
    // restarts the server: trimming it is thoroughness, done when drainer holds CAP_SETPCAP (as
    // root does) and skipped otherwise.
    if trim_bounding && sets.effective(CAP_SETPCAP.bit) {
        for cap in (0..=last).filter(|&cap| !named(effective, cap)) {
            drop_from_bounding_set(cap)
                .with_context(|| format!("dropping capability {cap} from the bounding set"))?;
        }
    }
    for cap in 0..=last {
        if named(effective, cap) {
            continue;
        }
        if named(held, cap) {
            sets.set_effective(cap, false);
        } else {
            sets.remove(cap);
        }
    }
    sets.install().context("capset")
}

/// Makes `caps` effective — each must be permitted — until the guard is dropped.
pub fn raise(caps: &[Capability]) -> Result<Raised> {
    let mut sets = CapabilitySets::current().context("capget")?;
    for cap in caps {
        sets.set_effective(cap.bit, true);
    }
    sets.install().with_context(|| {
        format!(
            "raising {} again: drainer no longer holds them",
            caps.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
        )
    })?;
    Ok(Raised(caps.to_vec()))
}

/// Capabilities [`raise`]d for a moment; lowered again when dropped.
pub struct Raised(Vec<Capability>);

impl Drop for Raised {
    fn drop(&mut self) {
        let lowered = CapabilitySets::current().and_then(|mut sets| {
            for cap in &self.0 {
                sets.set_effective(cap.bit, false);
            }
            sets.install()
        });
        if let Err(err) = lowered {
            tracing::warn!("could not lower capabilities after attaching: {err}");
        }
    }
}

/// Removes `caps` from every set for good.
pub fn give_up(caps: &[Capability]) -> Result<()> {
    let mut sets = CapabilitySets::current().context("capget")?;
    for cap in caps {
        sets.remove(cap.bit);
    }
    sets.install().context("capset")
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
