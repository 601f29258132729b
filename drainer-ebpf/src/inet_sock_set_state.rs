//! BTF tracepoint `inet_sock_set_state`, global.
//!
//! When: the kernel fires it on every TCP state change of every socket on the host, in every
//! namespace, including sockets that existed before drainer started, under the socket's lock as
//! the new state is stored. At TCP_CLOSE that is after the socket has left the hash tables and
//! released its local port number, so the port is read from `inet_sport`, which stays.
//! Sees: the `struct sock` and the old and new states.
//! drainer acts on three kinds of change, on a guarded port of the guarded namespace:
//! - SYN_RECV → a live state: a server-side connection completed its handshake (or, with TCP Fast
//!   Open, was closed by the server before the client's ACK) — one more live connection;
//! - into a live state from anything else (SYN_SENT, or a repaired socket), or SYN_SENT →
//!   SYN_RECV (simultaneous open): an outbound connection, remembered so it is never counted;
//! - → TCP_CLOSE: the connection is over for the server — reset, both FINs exchanged, or an
//!   orphaned socket handed over to TIME_WAIT — and never leaves that state.
//!
//! Cost: every state change pays two compares on the states; those three kinds also read the
//! socket's port (at TCP_CLOSE with one checked kernel read) and test one bit of a word. Only
//! sockets on a guarded port go further: two loads for the namespace, one per-CPU add.
//!
//! A second program on the same hook, `watch_for_listener`, is attached only while a restart
//! waits for its next generation: it announces a socket of the guarded namespace entering
//! TCP_LISTEN on the port that generation was given. The kernel fires it as `listen()` begins,
//! just before the socket joins the listening table. Cost: one compare per state change, a map
//! read and the namespace's two loads per listen.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use drainer_common::{TCP_CLOSE, TCP_LISTEN, TCP_SYN_RECV, TCP_SYN_SENT};

use crate::{
    generations, ports,
    sock::{Socket, bound_port, in_target, local_port},
    tracking::{closed, live, next_generation_listening, outbound, passive_established},
};

enum Change {
    PassiveEstablished,
    Outbound,
    Closed { was_live: bool },
}

fn classify(old: u8, new: u8) -> Option<Change> {
    if new == TCP_CLOSE {
        // A handshake that never completed was never counted; SYN_RECV can still hold an
        // outbound record (a failed simultaneous open).
        return (live(old) || old == TCP_SYN_RECV).then_some(Change::Closed {
            was_live: live(old),
        });
    }
    if live(new) && !live(old) {
        return Some(if old == TCP_SYN_RECV {
            Change::PassiveEstablished
        } else {
            Change::Outbound
        });
    }
    (old == TCP_SYN_SENT && new == TCP_SYN_RECV).then_some(Change::Outbound)
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn follow_transitions(ctx: BtfTracePointContext) -> u32 {
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let Some(change) = classify(old as u8, new as u8) else {
        return 0;
    };
    let sk: *const u8 = ctx.arg(0);
    let port = match change {
        Change::Closed { .. } => bound_port(sk),
        // SAFETY: `sk` is the tracepoint's BTF-typed socket argument.
        _ => unsafe { local_port(sk) },
    };
    let Some(slot) = ports::slot(port) else {
        return 0;
    };
    // SAFETY: as above.
    if !unsafe { in_target(sk) } {
        return 0;
    }
    // SAFETY: as above.
    let sk = unsafe { Socket::new(sk as *mut _) };
    match change {
        Change::PassiveEstablished => passive_established(sk, slot),
        Change::Outbound => outbound(sk, slot),
        Change::Closed { was_live } => closed(sk, slot, was_live),
    }
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn watch_for_listener(ctx: BtfTracePointContext) -> u32 {
    let new: i32 = ctx.arg(2);
    if new as u8 != TCP_LISTEN {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: `sk` is the tracepoint's BTF-typed socket argument; a listener's port was bound
    // before `listen()`.
    if !generations::watched_listen_port(unsafe { local_port(sk) }) {
        return 0;
    }
    // SAFETY: as above.
    if unsafe { in_target(sk) } {
        next_generation_listening();
    }
    0
}
