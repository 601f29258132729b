//! Which ports are guarded, asked on every TCP state change on the host that could open or close
//! a connection.
//!
//! Almost every socket asking is on a port that is not guarded — a client's ephemeral port above
//! all — so that answer must cost no cache miss: one bit of a single word, indexed by the port's
//! low six bits, rules out all but one port in 64 (while one port is guarded). Only the rest are
//! compared with the list of guarded ports, whose index is the port's slot in the counters.
use drainer_common::MAX_PORTS;

use crate::globals;

/// The guarded ports (host byte order) in slot order; set by the loader.
#[unsafe(no_mangle)]
static GUARDED_PORTS: [u16; MAX_PORTS as usize] = [0; MAX_PORTS as usize];
/// How many entries of [`GUARDED_PORTS`] are in use; set by the loader.
#[unsafe(no_mangle)]
static GUARDED_PORT_COUNT: u64 = 0;
/// Bit `port % 64` set for every guarded port; set by the loader.
#[unsafe(no_mangle)]
static GUARDED_PORT_FILTER: u64 = 0;

/// The slot of `port` if it is guarded.
pub fn slot(port: u16) -> Option<u32> {
    if globals::read(&GUARDED_PORT_FILTER) & (1 << (port & 63)) == 0 {
        return None;
    }
    let count = globals::read(&GUARDED_PORT_COUNT);
    for index in 0..MAX_PORTS {
        if u64::from(index) >= count {
            break;
        }
        // SAFETY: `index` < MAX_PORTS, the length of the array.
        if globals::read(unsafe { GUARDED_PORTS.get_unchecked(index as usize) }) == port {
            return Some(index);
        }
    }
    None
}
