//! The table of connections the drain-start sweep recorded: an open-addressing hash set of socket
//! cookies in one array map, 8 bytes a slot. Userspace creates a new one at each drain start,
//! sized for the sockets the namespace holds then (at most half full), and puts it in [`SEEDED`],
//! a one-slot array of maps: the programs are loaded long before anyone knows how large the table
//! must be.
//!
//! Entries are added only until the sweep has finished, and then only removed, so a removed slot
//! never needs reusing and a probe can stop at the first empty one. Adding and removing the same
//! cookie never race (both happen under the socket's lock); different cookies racing for one slot
//! are settled by compare-and-exchange.
//!
//! Every close looks here first, and a lookup touches a cold cache line of a table that can be
//! megabytes large; [`SEEDED_ENTRIES`] lets closes skip it once the connections found by the sweep
//! are all gone.
use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::{
    bindings::{BPF_F_INNER_MAP, BPF_F_MMAPABLE},
    btf_maps::{Array as InnerArray, ArrayOfMaps},
    macros::{btf_map, map},
    maps::Array,
};
use drainer_common::{SEEDED_EMPTY, SEEDED_REMOVED};

use crate::counter;

/// The table in use. `BPF_F_INNER_MAP`: each drain's table has its own size (a power of two), so
/// its size is not part of the template. `BPF_F_MMAPABLE`: during a restart the table holds the
/// replaced generation's connections, and userspace reads them in place to tell that
/// generation's connections from the serving one's.
type Table = InnerArray<u64, 1, { (BPF_F_INNER_MAP | BPF_F_MMAPABLE) as usize }>;

#[btf_map]
pub static SEEDED: ArrayOfMaps<Table, 1> = ArrayOfMaps::new();

/// The table's size minus one, element 0; written by userspace with the table.
#[map]
pub static SEEDED_SLOT_MASK: Array<u64> = Array::with_max_entries(1, 0);

/// How many cookies the table holds. An entry is counted after it is added and before it is
/// removed, both under the socket's lock, so a socket that has an entry always sees a non-zero
/// count.
#[map]
pub static SEEDED_ENTRIES: Array<i64> = Array::with_max_entries(1, 0);

const EMPTY: u64 = SEEDED_EMPTY;
const REMOVED: u64 = SEEDED_REMOVED;
/// Probes before giving up; at half load a linear probe almost never needs more than a few.
const PROBES: u64 = 64;

pub enum Insert {
    Added,
    Present,
    Full,
}

/// Fibonacci hashing: cookies are sequential, and the multiply spreads them over the table.
fn first_slot(cookie: u64) -> u64 {
    cookie.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
}

/// The table and its slot mask, once userspace has put one in place.
fn table() -> Option<(&'static Table, u64)> {
    let mask = *SEEDED_SLOT_MASK.get(0)?;
    Some((SEEDED.get(0)?, mask))
}

fn slot(table: &Table, mask: u64, index: u64) -> Option<*mut u64> {
    table.get_ptr_mut((index & mask) as u32)
}

fn compare_exchange(slot: *mut u64, current: u64, new: u64) -> u64 {
    // SAFETY: `slot` points into a map value, valid for the program's run.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            slot, current, new,
        )
        .0
    }
}

/// Whether the table holds any cookie.
pub fn any() -> bool {
    counter::any_entries(&SEEDED_ENTRIES)
}

/// Adds `cookie` unless present.
pub fn insert(cookie: u64) -> Insert {
    let Some((table, mask)) = table() else {
        return Insert::Full;
    };
    let start = first_slot(cookie);
    for probe in 0..PROBES {
        let Some(slot) = slot(table, mask, start.wrapping_add(probe)) else {
            return Insert::Full;
        };
        // SAFETY: as in `compare_exchange`.
        let mut current = unsafe { core::ptr::read_volatile(slot) };
        if current == EMPTY {
            current = compare_exchange(slot, EMPTY, cookie);
            if current == EMPTY {
                counter::add_entries(&SEEDED_ENTRIES, 1);
                return Insert::Added;
            }
        }
        if current == cookie {
            return Insert::Present;
        }
    }
    Insert::Full
}

/// Removes `cookie`; whether it was present.
pub fn remove(cookie: u64) -> bool {
    if !any() {
        return false;
    }
    let Some((table, mask)) = table() else {
        return false;
    };
    let start = first_slot(cookie);
    for probe in 0..PROBES {
        let Some(slot) = slot(table, mask, start.wrapping_add(probe)) else {
            return false;
        };
        // SAFETY: as in `compare_exchange`.
        let current = unsafe { core::ptr::read_volatile(slot) };
        if current == EMPTY {
            return false;
        }
        if current == cookie {
            let removed = compare_exchange(slot, cookie, REMOVED) == cookie;
            if removed {
                counter::add_entries(&SEEDED_ENTRIES, -1);
            }
            return removed;
        }
    }
    false
}
