//! drainer's kernel side, as one handle: the port claims, the loaded programs and their maps, the
//! socket table, and the live count read from them.
//!
//! | module | owns |
//! |---|---|
//! | `programs` | loading the eBPF object, attaching its programs in order, seeding, the maps |
//! | `counts` | the live count: counters, exactness, the socket-table fallback |
//! | `socket_table` | NETLINK_SOCK_DIAG: naming live connections, counting when the counters cannot |
//! | `netns` | opening a network namespace, running work inside it |
//! | `claim` | one drainer per port and namespace |
//! | `layout` | struct offsets from the running kernel's BTF |
//! | `seeded_table` | sizing the table of connections found at start-up |
//! | `features` | the kernel features the programs need, and since when |
//! | `idleness` | which live connections are idle, for drains that release on idleness |
mod claim;
mod counts;
mod features;
mod idleness;
mod layout;
mod netns;
mod programs;
mod seeded_table;
mod socket_table;

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use aya_log::EbpfLogger;
use tracing::info;

use self::{claim::PortClaims, counts::Counter, programs::Programs};
pub use self::{
    counts::{Count, Counts},
    idleness::Idleness,
    netns::Netns,
    socket_table::{SocketTable, TableSocket},
};

/// What to guard: ports in one network namespace.
pub struct Target<'a> {
    pub ports: &'a [u16],
    pub netns: &'a Netns,
}

/// The attached programs, with everything that reads them. Dropping it detaches everything.
pub struct Kernel {
    programs: Programs,
    counter: Counter,
    /// Held until drainer exits: no other drainer can guard these ports meanwhile.
    _claims: PortClaims,
}

impl Kernel {
    /// Claims the ports, loads and attaches the programs, then seeds the connections that were
    /// already established. On return every established connection to the ports is counted,
    /// and every later one will be.
    pub fn attach(target: &Target<'_>) -> Result<Self> {
        let claims = claim::claim(target.ports, target.netns)?;
        let programs = Programs::attach(target)?;
        // Opened inside the guarded namespace: the socket table lists that namespace's sockets.
        let table = target.netns.run_inside(SocketTable::open)?;
        let kernel = Self {
            programs,
            counter: Counter::new(table),
            _claims: claims,
        };
        let count = kernel.counts()?.total();
        info!(
            live = count.live,
            "guarding port(s) {} in {}: {} connections already established",
            target
                .ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            target.netns.describe(),
            count.live
        );
        Ok(kernel)
    }

    pub fn ports(&self) -> &[u16] {
        self.programs.ports()
    }

    /// The counts now: from the counters, or from the socket table once they cannot be trusted.
    pub fn counts(&self) -> Result<Counts> {
        self.counter.read(&self.programs)
    }

    /// When the count must be re-read with no change announced (the socket table counts).
    pub fn recheck_at(&self) -> Option<std::time::Instant> {
        self.counter.recheck_at()
    }

    /// The `limit` live connections on the ports idle the longest, most idle first.
    pub fn most_idle(&self, limit: usize) -> Result<Vec<TableSocket>> {
        self.counter.table().most_idle(self.ports(), limit)
    }

    /// The live connections on the ports measured against `idle_for`, as of `now`.
    pub fn idleness(
        &self,
        idle_for: std::time::Duration,
        now: std::time::Instant,
    ) -> Result<Idleness> {
        let mut idleness = Idleness::new(idle_for);
        self.counter
            .table()
            .for_each(self.ports(), |socket| idleness.add(socket, now))?;
        Ok(idleness)
    }

    /// From now on count changes are announced through the ring buffer [`Kernel::take_events`]
    /// returns.
    pub fn start_draining(&mut self) -> Result<()> {
        self.programs.start_draining()
    }

    /// From now on every new connection to the ports is refused.
    pub fn start_refusing(&mut self) -> Result<()> {
        self.programs.start_refusing()
    }

    /// New connections are accepted again, and count changes no longer announced.
    pub fn resume(&mut self) -> Result<()> {
        self.programs.resume()
    }

    /// The ring buffer that carries count changes while draining.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        self.programs.take_events()
    }

    /// The reader of the programs' aya-log records.
    pub fn take_logger(&mut self) -> Result<EbpfLogger<&'static dyn log::Log>> {
        self.programs.take_logger()
    }
}
