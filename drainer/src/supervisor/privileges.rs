//! What the supervised server is allowed: never the powers drainer holds for the kernel side, nor
//! a way to take them from drainer.
//!
//! drainer runs with the capabilities to load and attach BPF programs. A server that inherited
//! them could, once compromised, detach drainer's programs or load its own. So between fork and
//! exec the child removes from every capability set — the bounding set first, because exec hands
//! a root program everything in it — CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_PERFMON
//! (drainer's own powers), CAP_SYS_PTRACE (with it a root server could copy drainer's BPF
//! descriptors through pidfd_getfd(2) or rewrite its memory: drainer is non-dumpable, see
//! `system::hardening`, and only CAP_SYS_PTRACE overrides that), and CAP_SYS_MODULE and
//! CAP_SYS_RAWIO (a kernel module or raw kernel memory reaches everything). It sets no_new_privs,
//! so no setuid or file-capability program can bring them back.
//!
//! The rest of root's capabilities stay, so a root-started server keeps what it legitimately uses
//! (CAP_NET_BIND_SERVICE for port 80, CAP_SETUID to switch to its own user, …) and what else
//! root can do: signal drainer (CAP_KILL; a killed drainer detaches everything, so the port fails
//! open), read and write any file (CAP_DAC_OVERRIDE). For a root server this is damage control,
//! not a boundary. `--user` is the isolation: the server runs as that user with no capability at
//! all, every set and the bounding set empty, and cannot signal or trace drainer.
//!
//! The work between fork and exec is system calls only (nix's thin wrappers among them): the
//! parent may have other threads, so the child must not allocate or take locks.
use std::{ffi::CString, io};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::prctl::set_no_new_privs,
    unistd::{Gid, Group, Uid, User, getgrouplist, setgroups, setresgid, setresuid},
};

use crate::system::capabilities::{
    CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SETGID, CAP_SETPCAP, CAP_SETUID, CAP_SYS_ADMIN,
    CAP_SYS_MODULE, CAP_SYS_PTRACE, CAP_SYS_RAWIO, Capability, CapabilitySets,
    drop_from_bounding_set, last_capability,
};

/// The capabilities the server never holds.
pub const WITHHELD: [Capability; 7] = [
    CAP_BPF,
    CAP_SYS_ADMIN,
    CAP_NET_ADMIN,
    CAP_PERFMON,
    CAP_SYS_PTRACE,
    CAP_SYS_MODULE,
    CAP_SYS_RAWIO,
];

/// The user, group and supplementary groups to run the server as, looked up before the fork.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups, ready for setgroups(2).
    pub groups: Vec<Gid>,
}

impl Identity {
    /// `user` and `group` are names or numbers; the group defaults to the user's own.
    pub fn resolve(user: &str, group: Option<&str>) -> Result<Self> {
        let numeric = user.parse::<u32>().ok();
        let entry = match numeric {
            Some(uid) => User::from_uid(Uid::from_raw(uid)),
            None => User::from_name(user),
        }
        .with_context(|| format!("looking up user {user:?}"))?;
        let uid = match (&entry, numeric) {
            (Some(entry), _) => entry.uid,
            (None, Some(uid)) => Uid::from_raw(uid),
            (None, None) => bail!(
                "no user {user:?} on this system: give a name from /etc/passwd or a numeric uid"
            ),
        };
        if uid.is_root() {
            bail!("--user {user} would give the server every capability back: leave --user out");
        }
        let gid = match (group, &entry) {
            (Some(group), _) => lookup_group(group)?,
            (None, Some(entry)) => entry.gid,
            (None, None) => {
                bail!("uid {user} has no /etc/passwd entry: name its group with --group")
            }
        };
        let groups = match &entry {
            Some(entry) => {
                let name = CString::new(entry.name.as_str())
                    .with_context(|| format!("user name {:?}", entry.name))?;
                getgrouplist(&name, gid)
                    .with_context(|| format!("listing the groups of {}", entry.name))?
            }
            None => vec![gid],
        };
        Ok(Self { uid, gid, groups })
    }
}

fn lookup_group(group: &str) -> Result<Gid> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    Group::from_name(group)
        .with_context(|| format!("looking up group {group:?}"))?
        .map(|entry| entry.gid)
        .with_context(|| format!("no group {group:?} on this system"))
}

/// What the child applies to itself before exec.
#[derive(Clone, Debug)]
pub struct ChildPrivileges {
    identity: Option<Identity>,
    /// The bounding-set bits to drop: the withheld ones, or every capability the kernel knows.
    drop: Vec<u32>,
}

impl ChildPrivileges {
    pub fn new(identity: Option<Identity>) -> Result<Self> {
        let drop = if identity.is_some() {
            (0..=last_capability()?).collect()
        } else {
            WITHHELD.iter().map(|cap| cap.bit).collect()
        };
        Ok(Self { identity, drop })
    }

    /// What a process needs effective to start a child with these restrictions: dropping
    /// bounding-set bits, and switching users.
    pub fn needed(&self) -> Vec<Capability> {
        let mut needed = vec![CAP_SETPCAP];
        if self.identity.is_some() {
            needed.extend([CAP_SETUID, CAP_SETGID]);
        }
        needed
    }

    /// Applies the restrictions to the calling process. Runs between fork and exec: system calls
    /// only, no allocation.
    pub fn apply(&self) -> io::Result<()> {
        for &cap in &self.drop {
            drop_from_bounding_set(cap)?;
        }
        if let Some(Identity { uid, gid, groups }) = &self.identity {
            setgroups(groups)?;
            setresgid(*gid, *gid, *gid)?;
            // Leaving uid 0 clears the permitted, effective and ambient sets.
            setresuid(*uid, *uid, *uid)?;
        }
        let mut sets = CapabilitySets::current()?;
        for &cap in &self.drop {
            sets.remove(cap);
        }
        sets.install()?;
        Ok(set_no_new_privs()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_users_by_name_or_number_and_refuses_root() {
        let nobody = User::from_name("nobody").unwrap().expect("a nobody user");
        let by_name = Identity::resolve("nobody", None).unwrap();
        assert_eq!((by_name.uid, by_name.gid), (nobody.uid, nobody.gid));
        let by_number = Identity::resolve(&nobody.uid.to_string(), Some("0")).unwrap();
        assert_eq!(by_number.gid, Gid::from_raw(0));
        assert!(Identity::resolve("root", None).is_err());
        assert!(Identity::resolve("0", Some("0")).is_err());
        let unknown = Identity::resolve("no-such-user-here", None).unwrap_err();
        assert!(unknown.to_string().contains("no user"), "{unknown}");
        // A uid without a passwd entry needs its group named.
        assert!(Identity::resolve("4000000", None).is_err());
        assert_eq!(
            Identity::resolve("4000000", Some("4000000"))
                .unwrap()
                .groups,
            [Gid::from_raw(4_000_000)]
        );
    }
}
