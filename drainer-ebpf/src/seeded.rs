//! The table of connections the start-up sweep recorded: an open-addressing hash set of socket
//! cookies in one array map, 8 bytes a slot, sized by the loader for the sockets the namespace
//! held at start (at most half full).
//!
//! Entries are added only until the sweep has finished, and then only removed, so a removed slot
//! never needs reusing and a probe can stop at the first empty one. Adding and removing the same
//! cookie never race (both happen under the socket's lock); different cookies racing for one slot
//! are settled by compare-and-exchange.
use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::{macros::map, maps::Array};

/// Slots; the loader sets the real size (a power of two).
#[map]
pub static SEEDED: Array<u64> = Array::with_max_entries(1, 0);

/// The table's size minus one; set by the loader.
#[unsafe(no_mangle)]
static SEEDED_SLOT_MASK: u64 = 0;

const EMPTY: u64 = 0;
const REMOVED: u64 = u64::MAX;
/// Marks the cookie of a socket the sweep found already closing (handed over to a TIME_WAIT
/// socket): its close is still to be seen, and must not be counted. Cookies never reach bit 63.
pub const NOT_COUNTED: u64 = 1 << 63;
/// Probes before giving up; at half load a linear probe almost never needs more than a few.
const PROBES: u64 = 64;

pub enum Insert {
    Added,
    Present,
    Full,
}

fn mask() -> u64 {
    // SAFETY: read-only data the loader filled in.
    unsafe { core::ptr::read_volatile(&raw const SEEDED_SLOT_MASK) }
}

/// Fibonacci hashing: cookies are sequential, and the multiply spreads them over the table.
fn first_slot(cookie: u64) -> u64 {
    cookie.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
}

fn slot(index: u64) -> Option<*mut u64> {
    SEEDED.get_ptr_mut((index & mask()) as u32)
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

/// Adds `entry` (a cookie, possibly marked [`NOT_COUNTED`]) unless its cookie is present.
pub fn insert(entry: u64) -> Insert {
    let cookie = entry & !NOT_COUNTED;
    let start = first_slot(cookie);
    for probe in 0..PROBES {
        let Some(slot) = slot(start.wrapping_add(probe)) else {
            return Insert::Full;
        };
        // SAFETY: as in `compare_exchange`.
        let mut current = unsafe { core::ptr::read_volatile(slot) };
        if current == EMPTY {
            current = compare_exchange(slot, EMPTY, entry);
            if current == EMPTY {
                return Insert::Added;
            }
        }
        if current != REMOVED && current & !NOT_COUNTED == cookie {
            return Insert::Present;
        }
    }
    Insert::Full
}

/// Removes `cookie` if present; `Some(counted)` says whether it was counted when added.
pub fn remove(cookie: u64) -> Option<bool> {
    let start = first_slot(cookie);
    for probe in 0..PROBES {
        let slot = slot(start.wrapping_add(probe))?;
        // SAFETY: as in `compare_exchange`.
        let current = unsafe { core::ptr::read_volatile(slot) };
        if current == EMPTY {
            return None;
        }
        if current != REMOVED && current & !NOT_COUNTED == cookie {
            return (compare_exchange(slot, current, REMOVED) == current)
                .then_some(current & NOT_COUNTED == 0);
        }
    }
    None
}
