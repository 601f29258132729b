//! Counts kept in map values. Programs on other CPUs, or this one from an interrupt, can change the
//! same count mid-way, so every change is an atomic add.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::maps::Array;

/// Adds `delta` to the count at `counter`.
///
/// # Safety
/// `counter` must point into a map value, which stays valid for the program's run.
pub unsafe fn add<T: Copy>(counter: *mut T, delta: T) {
    // SAFETY: the caller's promise. The old value is not used: a fetching add needs BPF CPU v3.
    unsafe { atomic_xadd::<T, T, { AtomicOrdering::Relaxed }>(counter, delta) };
}

/// Changes a table's entry count, the single element of `entries`, which lets the usual case — an
/// empty table — skip the table's lookups.
pub fn add_entries(entries: &Array<i64>, delta: i64) {
    if let Some(count) = entries.get_ptr_mut(0) {
        // SAFETY: `count` points into a map value.
        unsafe { add(count, delta) };
    }
}

/// Whether the table that `entries` counts holds any entry.
pub fn any_entries(entries: &Array<i64>) -> bool {
    entries.get(0).is_some_and(|n| *n != 0)
}
