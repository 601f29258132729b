//! Capabilities by bit number: a command limited to a chosen set; the sets a process holds.
//!
//! The sets are read from /proc/PID/status. Which capability drainer needs for what is drainer's
//! to say (`drainer::system::capabilities`); the tests pass its bit numbers here.
use std::{fs, io, os::unix::process::CommandExt as _, process::Command};

/// The set holding exactly `bits`, as /proc/PID/status shows sets.
pub fn mask(bits: impl IntoIterator<Item = u32>) -> u64 {
    bits.into_iter().fold(0, |mask, bit| mask | 1 << bit)
}

/// The highest capability this kernel knows.
fn last_capability() -> u32 {
    fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .expect("reading /proc/sys/kernel/cap_last_cap")
        .trim()
        .parse()
        .expect("a number in /proc/sys/kernel/cap_last_cap")
}

/// Makes `command` (run as root) start with exactly the capabilities `keep`: everything else
/// leaves the bounding set before exec, and exec grants root what the bounding set holds.
pub fn only(command: &mut Command, keep: impl IntoIterator<Item = u32>) {
    let keep = mask(keep);
    let dropped: Vec<u32> = (0..=last_capability())
        .filter(|&bit| keep & 1 << bit == 0)
        .collect();
    // SAFETY: prctl only, between fork and exec; `dropped` was built before the fork.
    unsafe {
        command.pre_exec(move || {
            for &cap in &dropped {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// What /proc/PID/status says about a process's privileges.
#[derive(Debug)]
pub struct ProcessPrivileges {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
    /// Real, effective, saved and filesystem uids.
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    pub groups: Vec<u32>,
}

impl ProcessPrivileges {
    pub fn of(pid: i32) -> Self {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|err| panic!("reading /proc/{pid}/status: {err}"));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
                .trim()
                .to_string()
        };
        let set = |name: &str| u64::from_str_radix(&field(name), 16).expect("a hex set");
        let numbers = |name: &str| {
            field(name)
                .split_whitespace()
                .map(|n| n.parse().expect("a number"))
                .collect()
        };
        Self {
            inheritable: set("CapInh"),
            permitted: set("CapPrm"),
            effective: set("CapEff"),
            bounding: set("CapBnd"),
            ambient: set("CapAmb"),
            no_new_privs: field("NoNewPrivs") == "1",
            uids: numbers("Uid"),
            gids: numbers("Gid"),
            groups: numbers("Groups"),
        }
    }

    /// Every set, named, for assertions over all of them.
    pub fn sets(&self) -> [(&'static str, u64); 5] {
        [
            ("inheritable", self.inheritable),
            ("permitted", self.permitted),
            ("effective", self.effective),
            ("bounding", self.bounding),
            ("ambient", self.ambient),
        ]
    }
}
