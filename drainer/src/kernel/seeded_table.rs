//! The table of connections found at a drain's start (`SEEDED`): its size, from how many TCP
//! sockets the namespace holds (/proc/net/sockstat, an O(1) read made before the sweep that fills
//! it), and the cookies it holds, read in place through a read-only mapping of the map.
use std::{collections::HashSet, num::NonZeroUsize, os::fd::AsFd as _, ptr::NonNull};

use anyhow::{Context as _, Result};
use aya::maps::MapData;
use aya_obj::generated::{BPF_F_INNER_MAP, BPF_F_MMAPABLE, bpf_map_type};
use drainer_common::{SEEDED_EMPTY, SEEDED_REMOVED};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

/// A table the programs use, mapped for reading.
pub(super) struct SeededTable {
    slots: NonNull<u64>,
    len: usize,
    map: MapData,
}

impl SeededTable {
    /// A new, empty table of `slots` cookies, mapped.
    pub(super) fn create(slots: u32) -> Result<Self> {
        let definition = aya_obj::Map::new_from_params(
            bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
            size_of::<u32>() as u32,
            size_of::<u64>() as u32,
            slots,
            BPF_F_INNER_MAP | BPF_F_MMAPABLE,
        );
        let map = MapData::create(definition, "seeded", None)
            .with_context(|| format!("creating a table of {slots} seeded connections"))?;
        let len = slots as usize;
        let bytes = NonZeroUsize::new(len * size_of::<u64>()).context("an empty seeded table")?;
        // SAFETY: a fresh shared read-only mapping of the map's values; nothing else is mapped
        // over.
        let mapped = unsafe {
            mmap(
                None,
                bytes,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                map.fd().as_fd(),
                0,
            )
        }
        .context("mapping the table of seeded connections")?;
        Ok(Self {
            slots: mapped.cast(),
            len,
            map,
        })
    }

    /// The map, for the programs' array of maps.
    pub(super) fn map(&self) -> &MapData {
        &self.map
    }

    /// The cookies of the connections the table holds now.
    pub(super) fn cookies(&self) -> HashSet<u64> {
        (0..self.len)
            .filter_map(|i| {
                // SAFETY: `i` is within the mapping; the programs change slots with atomic
                // 8-byte writes, so a read sees one value or the other.
                let cookie = unsafe { self.slots.as_ptr().add(i).read_volatile() };
                (cookie != SEEDED_EMPTY && cookie != SEEDED_REMOVED).then_some(cookie)
            })
            .collect()
    }
}

impl Drop for SeededTable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        let _ = unsafe { munmap(self.slots.cast(), self.len * size_of::<u64>()) };
    }
}

/// Slots for the table: twice the namespace's TCP sockets and some room for those opening during
/// the sweep, so the table is at most about half full. Runs inside the guarded namespace.
pub(super) fn slots() -> Result<u32> {
    let sockets = tcp_sockets()?;
    u32::try_from(((sockets + 2048) * 2).next_power_of_two())
        .context("too many TCP sockets in the namespace to seed a table for")
}

/// TCP sockets of the calling thread's network namespace: hashed ones (listening, connecting,
/// established, closing), IPv4 and IPv6, plus TIME_WAIT sockets.
fn tcp_sockets() -> Result<u64> {
    // thread-self: the namespace of this thread, which may have entered another than the process.
    let read = |name: &str| {
        let path = format!("/proc/thread-self/net/{name}");
        std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
    };
    let v4 = read("sockstat")?;
    let v6 = read("sockstat6")?;
    Ok(field(&v4, "TCP:", "inuse") + field(&v4, "TCP:", "tw") + field(&v6, "TCP6:", "inuse"))
}

/// The number after `name` on the line starting with `line`, or 0.
fn field(text: &str, line: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|rest| {
            let mut words = rest.split_whitespace();
            words.find(|w| *w == name)?;
            words.next()?.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn reads_named_fields() {
        let text =
            "sockets: used 130\nTCP: inuse 5 orphan 0 tw 7 alloc 9 mem 1\nUDP: inuse 2 mem 0\n";
        assert_eq!(field(text, "TCP:", "inuse"), 5);
        assert_eq!(field(text, "TCP:", "tw"), 7);
        assert_eq!(field(text, "UDP:", "inuse"), 2);
        assert_eq!(field(text, "TCP6:", "inuse"), 0);
    }
}
