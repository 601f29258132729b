//! The generations of a restarted server, as the kernel side tells them apart.
//!
//! After a restart both generations' connections have the public port as their local port (a
//! connection handed to a listener bound elsewhere keeps the address the client dialled), so the
//! port cannot tell whose a connection is. The listener it came through can: userspace marks the
//! listeners of the generation being replaced in [`LISTENER_TAGS`], and the kernel copies a
//! listener's mark to every connection it creates from then on (`BPF_F_CLONE`). Connections
//! established before the mark are found by the restart's sweep instead.
//!
//! Only the replaced generation's listeners are marked, so the new generation's connections
//! cost no storage, and the old one's only while its listeners still complete handshakes.
//!
//! The same restart watches for the new generation's `listen()`: [`LISTEN_WATCH`] names the ports
//! it was given, and the tracepoint announces a socket of the guarded namespace entering
//! TCP_LISTEN on it, so userspace learns at once that the new generation is ready.
use aya_ebpf::{
    bindings::{BPF_F_CLONE, BPF_F_NO_PREALLOC, bpf_map_type::BPF_MAP_TYPE_SK_STORAGE},
    helpers::generated::bpf_sk_storage_get,
    macros::{btf_map, map},
    maps::Array,
};
use drainer_common::MAX_PORTS;

use crate::sock::Socket;

/// A socket-local storage map whose entries are copied to the connections a listener creates. The
/// layout is the one the loader reads from BTF: each field's pointee encodes a parameter.
#[repr(C)]
pub struct ListenerTags {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const u32,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; (BPF_F_NO_PREALLOC | BPF_F_CLONE) as usize],
}

// SAFETY: the fields are placeholders the loader reads from BTF; nothing dereferences them.
unsafe impl Sync for ListenerTags {}

/// The mark of the generation a restart replaces: on its listeners (set by userspace through
/// their descriptors), and on each connection they create afterwards.
#[btf_map]
pub static LISTENER_TAGS: ListenerTags = ListenerTags {
    r#type: core::ptr::null(),
    key: core::ptr::null(),
    value: core::ptr::null(),
    max_entries: core::ptr::null(),
    map_flags: core::ptr::null(),
};

/// The ports the next generation was told to listen on, one per guarded port's slot, in slot
/// order; all 0 when no restart waits for one. Written by userspace.
#[map]
pub static LISTEN_WATCH: Array<u32> = Array::with_max_entries(MAX_PORTS, 0);

/// Whether the connection came through a listener of the generation being replaced, since its
/// listeners were marked.
pub fn from_replaced_listener(sk: Socket) -> bool {
    // SAFETY: the map is a socket storage map and `sk` a BTF-typed socket the kernel passed to
    // the program; with no flags the helper only looks up.
    let tag = unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&LISTENER_TAGS).cast_mut().cast(),
            sk.as_ptr(),
            core::ptr::null_mut(),
            0,
        )
    };
    !tag.is_null()
}

/// Whether `port` is one the next generation of a restart was told to listen on. Asked only when
/// a socket begins listening, so the walk costs nothing per connection.
pub fn watched_listen_port(port: u16) -> bool {
    for slot in 0..MAX_PORTS {
        match LISTEN_WATCH.get(slot) {
            Some(&watched) if watched == u32::from(port) && watched != 0 => return true,
            Some(&watched) if watched != 0 => {}
            _ => return false,
        }
    }
    false
}
