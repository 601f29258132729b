//! How many connections each listener (control socket, HTTP) serves at once, and what an accept
//! that fails does. Every connection holds a descriptor: clients that connect and idle, from a
//! user drainer refuses or from anywhere on the network, must not fill drainer's descriptor
//! table, or the count read and the release that follow would find none left.
//!
//! At its cap a listener stops accepting until one of its connections finishes. Later clients
//! wait in the kernel's listen backlog, which costs drainer no descriptor, and are served in
//! turn. Accepting only to close at once would spend, for each of them, the very descriptor the
//! cap keeps free, and keep the loop busy accepting and closing for as long as a flood lasts.
use std::{
    fs,
    sync::Arc,
    time::{Duration, Instant},
};

use nix::sys::resource::{Resource, getrlimit};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

/// The most connections one listener serves at once: `drain --wait` waiters, status requests,
/// probes.
const MAX_PER_LISTENER: usize = 256;
/// Descriptors kept free for drainer's own work after start-up: the links and the table a
/// drain's start creates, the sweep's iterator, the release target's files.
const RESERVE: u64 = 32;
/// Below this a listener is too small to be useful: the start-up log says to raise the limit.
const FEW: usize = 16;

/// The connections one listener may hold open.
#[derive(Clone)]
pub struct Slots(Arc<Semaphore>);

impl Slots {
    pub fn new(size: usize) -> Self {
        Self(Arc::new(Semaphore::new(size)))
    }

    /// Waits for a free slot; the connection holds it until dropped.
    pub async fn take(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.0)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}

/// The slots each of `listeners` gets: [`MAX_PER_LISTENER`], or fewer when the descriptors left
/// under RLIMIT_NOFILE (after those open now and [`RESERVE`]) cannot hold that many.
pub fn per_listener(listeners: usize) -> usize {
    let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(u64::MAX, |(soft, _)| soft);
    let open = fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64);
    let left = limit.saturating_sub(open + RESERVE);
    let slots = usize::try_from(left / listeners.max(1) as u64)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_PER_LISTENER);
    if slots < FEW {
        warn!(
            "RLIMIT_NOFILE {limit} leaves room for only {slots} connection(s) per listener: raise \
             it (LimitNOFILE= in the unit, ulimit -n)"
        );
    }
    slots
}

/// Waits before the next accept once one has failed: a descriptor table or memory that is full
/// now (EMFILE, ENFILE, ENOMEM, ENOBUFS) frees up as connections finish, so the listener tries
/// again, ever less often, rather than give up or spin.
pub struct Backoff {
    what: &'static str,
    delay: Duration,
    failed_since: Option<Instant>,
}

const FIRST_DELAY: Duration = Duration::from_millis(50);
const MAX_DELAY: Duration = Duration::from_secs(1);

impl Backoff {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            delay: FIRST_DELAY,
            failed_since: None,
        }
    }

    pub async fn failed(&mut self, err: &std::io::Error) {
        let since = *self.failed_since.get_or_insert_with(Instant::now);
        warn!(
            "{} accept failed ({err}), for {:.1}s now: trying again in {:?}",
            self.what,
            since.elapsed().as_secs_f64(),
            self.delay
        );
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(MAX_DELAY);
    }

    pub fn succeeded(&mut self) {
        self.delay = FIRST_DELAY;
        self.failed_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_listener_gets_at_most_the_cap_and_always_one() {
        let slots = per_listener(2);
        assert!((1..=MAX_PER_LISTENER).contains(&slots), "{slots}");
        assert!(per_listener(1) >= slots);
    }
}
