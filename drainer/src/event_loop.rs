//! The one event loop both modes run, on tokio-uring. It sleeps until a stop signal, a count
//! change the kernel announces, the engine's next timer, or the mode's own source (the child's
//! pidfd for `run`, the request channel for `daemon`), and yields it as one [`Input`]. The eBPF
//! programs' log records are written out on the way. It never polls.
use std::{future::Future, os::fd::AsRawFd};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use aya_log::EbpfLogger;
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
    /// The mode's own source.
    Mode(M),
}

pub struct EventLoop {
    terminate: unix::Signal,
    interrupt: unix::Signal,
    events: AsyncFd<RingBuf<MapData>>,
    ebpf_logs: AsyncFd<EbpfLogger<&'static dyn log::Log>>,
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
        })
    }

    /// Waits for the next input: `mode` is the mode's own source (cancel-safe: it is dropped
    /// when something else comes first), `wakeup` the engine's next timer.
    pub async fn next<M>(
        &mut self,
        wakeup: Option<std::time::Instant>,
        mode: impl Future<Output = Result<M>>,
    ) -> Result<Input<M>> {
        let wakeup = wakeup.map(Instant::from_std);
        tokio::pin!(mode);
        loop {
            let input = tokio::select! {
                _ = self.terminate.recv() => EngineInput::StopSignal(Signal::SIGTERM),
                _ = self.interrupt.recv() => EngineInput::StopSignal(Signal::SIGINT),
                ready = self.events.readable_mut() => {
                    drain_ring(ready?);
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

/// Consumes every pending event: they only wake the loop, the counters hold the truth.
fn drain_ring(mut ready: AsyncFdReadyMutGuard<'_, RingBuf<MapData>>) {
    while ready.get_inner_mut().next().is_some() {}
    ready.clear_ready();
}

/// Writes the eBPF programs' pending log records to the log.
fn flush_logs(mut ready: AsyncFdReadyMutGuard<'_, EbpfLogger<&'static dyn log::Log>>) {
    ready.get_inner_mut().flush();
    ready.clear_ready();
}
