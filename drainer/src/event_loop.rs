//! The one event loop both modes run, on tokio-uring. It sleeps until a stop signal, a count
//! change the kernel announces, the engine's next timer, or the mode's own source (the child's
//! pidfd for `run`, the request channel for `daemon`), and yields it as one [`Input`]; a restart
//! also wakes it when the kernel announces a new listener. The eBPF programs' log records are
//! written out on the way. It never polls.
use std::{future::Future, os::fd::AsRawFd};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use aya_log::EbpfLogger;
use drainer_common::{Event, EventKind};
use nix::sys::signal::Signal;
use tokio::{
    io::{
        Interest,
        unix::{AsyncFd, AsyncFdReadyMutGuard},
    },
    signal::unix::{self, SignalKind},
    time::{Instant, sleep_until},
};

use crate::{engine::EngineInput, kernel::Kernel};

/// What woke the loop.
pub enum Input<M> {
    Engine(EngineInput),
    /// A socket began listening on the port a restart watches.
    Listening,
    /// The mode's own source.
    Mode(M),
}

pub struct EventLoop {
    terminate: unix::Signal,
    interrupt: unix::Signal,
    events: AsyncFd<RingBuf<MapData>>,
    ebpf_logs: AsyncFd<EbpfLogger<&'static dyn log::Log>>,
    /// Read from the ring with a listener's announcement, and yielded after it.
    counts_changed: bool,
}

impl EventLoop {
    /// Listens for the stop signals and the kernel's ring buffers; call inside the tokio-uring
    /// runtime, before the server can be told to stop, so no signal is lost.
    pub fn new(kernel: &mut Kernel) -> Result<Self> {
        Ok(Self {
            terminate: unix::signal(SignalKind::terminate())?,
            interrupt: unix::signal(SignalKind::interrupt())?,
            events: watch(kernel.take_events()?).context("watching the event ring buffer")?,
            ebpf_logs: watch(kernel.take_logger()?).context("watching the eBPF logs")?,
            counts_changed: false,
        })
    }

    /// Waits for the next input: `mode` is the mode's own source (cancel-safe: it is dropped
    /// when something else comes first), `wakeup` the engine's next timer.
    pub async fn next<M>(
        &mut self,
        wakeup: Option<std::time::Instant>,
        mode: impl Future<Output = Result<M>>,
    ) -> Result<Input<M>> {
        if std::mem::take(&mut self.counts_changed) {
            return Ok(Input::Engine(EngineInput::CountsChanged));
        }
        let wakeup = wakeup.map(Instant::from_std);
        tokio::pin!(mode);
        loop {
            let input = tokio::select! {
                _ = self.terminate.recv() => EngineInput::StopSignal(Signal::SIGTERM),
                _ = self.interrupt.recv() => EngineInput::StopSignal(Signal::SIGINT),
                ready = self.events.readable_mut() => {
                    let read = drain_ring(ready?);
                    if read.listening {
                        self.counts_changed = read.counts_changed;
                        return Ok(Input::Listening);
                    }
                    if !read.counts_changed {
                        continue;
                    }
                    EngineInput::CountsChanged
                }
                ready = self.ebpf_logs.readable_mut() => {
                    flush_logs(ready?);
                    continue;
                }
                input = &mut mode => return Ok(Input::Mode(input?)),
                () = sleep_until(wakeup.unwrap_or_else(Instant::now)), if wakeup.is_some() => {
                    EngineInput::Timer
                }
            };
            return Ok(Input::Engine(input));
        }
    }
}

/// Registers a descriptor-owning value with the event loop, for readability.
pub fn watch<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its descriptor, and AsyncFd owns `inner` until it deregisters it.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(Into::into)
}

/// What a read of the ring held.
#[derive(Default)]
struct Read {
    counts_changed: bool,
    listening: bool,
}

/// Consumes every pending event: count changes only wake the loop (the counters hold the truth),
/// a listener's announcement is passed on.
fn drain_ring(mut ready: AsyncFdReadyMutGuard<'_, RingBuf<MapData>>) -> Read {
    let mut read = Read::default();
    while let Some(item) = ready.get_inner_mut().next() {
        let listening = item.len() >= size_of::<Event>()
            // SAFETY: the ring carries `Event`s, read unaligned from the item's bytes.
            && unsafe { item.as_ptr().cast::<Event>().read_unaligned() }.kind
                == EventKind::Listening as u32;
        if listening {
            read.listening = true;
        } else {
            read.counts_changed = true;
        }
    }
    ready.clear_ready();
    read
}

/// Writes the eBPF programs' pending log records to the log.
fn flush_logs(mut ready: AsyncFdReadyMutGuard<'_, EbpfLogger<&'static dyn log::Log>>) {
    ready.get_inner_mut().flush();
    ready.clear_ready();
}
