//! Globals the loader sets: `static`s that userspace finds by name (hence `#[no_mangle]`) and
//! writes into the object before loading it. They live in read-only data, so the verifier knows
//! their values and prunes what they rule out.
//!
//! Each is declared next to its use; this module only reads them.

/// The value the loader gave `global`.
pub fn read<T: Copy>(global: &'static T) -> T {
    // SAFETY: a reference is valid for reads. Volatile, or the compiler would fold in the zero the
    // object was built with.
    unsafe { core::ptr::read_volatile(global) }
}
