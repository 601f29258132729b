//! Small helpers the event loops share for the descriptors they wait on.
use std::os::fd::AsRawFd;

use aya::maps::{MapData, RingBuf};
use aya_log::EbpfLogger;
use tokio::io::{
    Interest,
    unix::{AsyncFd, AsyncFdReadyMutGuard},
};

/// Registers a descriptor-owning value with the event loop, for readability.
pub fn watch<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its descriptor, and AsyncFd owns `inner` until it deregisters it.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(Into::into)
}

/// Consumes every pending event: they only wake the loop, the counters hold the truth.
pub fn drain_ring(mut ready: AsyncFdReadyMutGuard<'_, RingBuf<MapData>>) {
    while ready.get_inner_mut().next().is_some() {}
    ready.clear_ready();
}

/// Writes the eBPF programs' pending log records to the log.
pub fn flush_logs(mut ready: AsyncFdReadyMutGuard<'_, EbpfLogger<&'static dyn log::Log>>) {
    ready.get_inner_mut().flush();
    ready.clear_ready();
}
