//! drainer's kernel side, as one handle: the port claims, the loaded programs and their maps, the
//! socket table, and the live count read from them.
//!
//! What runs when: at start-up the programs are loaded and verified and nothing is attached, so a
//! serving drainer costs nothing per packet or connection anywhere on the host, and the count
//! comes from the socket table when asked. A drain attaches the refusal hook (at once, or when
//! its accept window ends), then the tracepoint, then sweeps the connections that exist; from
//! then on the counters are the count. Resuming detaches everything again.
//!
//! A restart of a server (`drainer run --restart-signal`) begins before the next generation
//! starts: the serving generation's listeners are marked, the tracepoint follows that
//! generation's connections alone, and a listener watch waits for the next generation. Once it
//! listens, new connections are steered to its listener when it is not on the public port — the
//! switch is that one step. The watch and the tracepoint go once the replaced generation is
//! released, or the restart is given up; steering stays while it is needed.
//!
//! | module | owns |
//! |---|---|
//! | `programs` | loading the eBPF object, attaching its programs in order at a drain's start, seeding, the maps |
//! | `counts` | the live count: counters, exactness, the socket-table fallback |
//! | `sock_diag` | NETLINK_SOCK_DIAG: one dump, its replies parsed in place |
//! | `socket_table` | the TCP sockets: naming live connections, counting when the counters cannot |
//! | `netns` | opening a network namespace, running work inside it |
//! | `claim` | one drainer per port and namespace |
//! | `unix_sockets` | the unix sockets: the abstract names in a namespace and their owners, for `claim` |
//! | `layout` | struct offsets from the running kernel's BTF |
//! | `listeners` | the listening sockets a generation of a restarted server holds, as descriptors |
//! | `pins` | steering that outlives drainer: its pin on the BPF file system, and those a dead drainer left |
//! | `seeded_table` | sizing the table of connections found at a drain's start |
//! | `features` | the kernel features the programs need, and since when |
//! | `idleness` | which live connections are idle, for drains that release on idleness |
mod claim;
mod counts;
mod features;
mod idleness;
mod layout;
mod listeners;
mod netns;
mod pins;
mod programs;
mod seeded_table;
mod sock_diag;
mod socket_table;
mod unix_sockets;

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use aya_log::EbpfLogger;
use tracing::{info, warn};

use self::{claim::PortClaims, counts::Counter, programs::Programs};
pub use self::{
    counts::{Count, Counts},
    idleness::Idleness,
    listeners::Listener,
    netns::Netns,
    socket_table::{SocketTable, TableSocket},
};
use crate::system::capabilities::{self, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, Capability};

/// Which generation of a restarted server a report is about. Both have the public port as their
/// connections' local port, so only the kernel side's records tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whose {
    /// The generation new connections go to: outside a restart, every connection.
    Serving,
    /// The generation a restart under way replaces.
    Replaced,
}

/// What to guard: ports in one network namespace.
pub struct Target<'a> {
    pub ports: &'a [u16],
    pub netns: &'a Netns,
    /// What attaching the programs at a drain's start needs; held, not effective, until then.
    pub privileges: &'a [Capability],
    /// The server will be restarted: the programs that watch for its next generation and steer
    /// connections to it are loaded too.
    pub restarts: bool,
}

/// The loaded programs, with everything that attaches and reads them. Dropping it detaches
/// everything.
pub struct Kernel {
    programs: Programs,
    counter: Counter,
    privileges: Vec<Capability>,
    /// Held until drainer exits: no other drainer can guard these ports meanwhile.
    _claims: PortClaims,
}

impl Kernel {
    /// Claims the ports and loads the programs, attaching none.
    pub fn load(target: &Target<'_>) -> Result<Self> {
        let claims = claim::claim(target.ports, target.netns)?;
        // Claimed: no drainer alive guards these ports, so any steering pinned for them was left
        // by one that died.
        for path in pins::detach_left_behind(target.netns.cookie()?, target.ports)? {
            warn!(
                "detached the steering a drainer that died left at {}: new connections to the \
                 port(s) find their listener the usual way",
                path.display()
            );
        }
        let programs = Programs::load(target)?;
        // Opened inside the guarded namespace: the socket table lists that namespace's sockets.
        let table = target.netns.run_inside(SocketTable::open)?;
        let kernel = Self {
            programs,
            counter: Counter::new(table),
            privileges: target.privileges.to_vec(),
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

    /// The counts now: from the counters while a drain runs, from the socket table while serving
    /// or once the counters cannot be trusted.
    pub fn counts(&self) -> Result<Counts> {
        self.counter.read(&self.programs)
    }

    /// When the count must be re-read with no change announced (the socket table counts).
    pub fn recheck_at(&self) -> Option<std::time::Instant> {
        self.counter.recheck_at()
    }

    /// `whose` `limit` live connections on the ports idle the longest, most idle first.
    pub fn most_idle(&self, limit: usize, whose: Whose) -> Result<Vec<TableSocket>> {
        let belongs = self.belongs(whose);
        self.counter.table().most_idle(self.ports(), limit, belongs)
    }

    /// `whose` live connections on the ports measured against `idle_for`, as of `now`.
    pub fn idleness(
        &self,
        idle_for: std::time::Duration,
        now: std::time::Instant,
        whose: Whose,
    ) -> Result<Idleness> {
        let belongs = self.belongs(whose);
        let mut idleness = Idleness::new(idle_for);
        self.counter
            .table()
            .for_each(self.ports(), |cookie, socket| {
                if belongs(cookie) {
                    idleness.add(socket, now);
                }
            })?;
        Ok(idleness)
    }

    /// Whether the connection with a given cookie is `whose`. During a restart the programs know
    /// the replaced generation's connections by cookie; outside one, all are the serving one's.
    fn belongs(&self, whose: Whose) -> impl Fn(u64) -> bool {
        let replaced = self.programs.replaced_connections();
        move |cookie| match (&replaced, whose) {
            (None, Whose::Serving) => true,
            (None, Whose::Replaced) => false,
            (Some(replaced), Whose::Replaced) => replaced.contains(&cookie),
            (Some(replaced), Whose::Serving) => !replaced.contains(&cookie),
        }
    }

    /// Attaches the programs: the refusal hook first when `refuse` (new connections refused from
    /// this instant), then the tracepoint, then the sweep of the connections that exist. On return
    /// the counters hold the exact count, and count changes are announced through the ring
    /// buffer [`Kernel::take_events`] returns.
    pub fn start_draining(&mut self, refuse: bool) -> Result<()> {
        let _raised = capabilities::raise(&self.privileges)?;
        if refuse {
            self.programs.start_refusing()?;
        }
        self.programs.draining();
        if self.programs.tracking() {
            // A restart's: it already counts the serving generation's connections apart.
            return Ok(());
        }
        self.counter.restart();
        self.programs.start_tracking(false)
    }

    /// For each of `ports`, whether a socket of the namespace listens on it: one look at the
    /// socket table for all.
    pub fn listening(&self, ports: &[u16]) -> Result<Vec<bool>> {
        let listeners = self.counter.table().listener_inodes(ports)?;
        Ok(ports
            .iter()
            .map(|port| listeners.iter().any(|(_, p)| p == port))
            .collect())
    }

    /// What [`Kernel::listeners`] needs permitted: reading another user's /proc/PID/fd, and
    /// copying a descriptor from a process drainer may ptrace.
    pub const LISTENER_PRIVILEGES: [Capability; 2] = [CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE];

    /// The sockets listening on each of `ports` that the processes of `process_group` hold, in
    /// the order of `ports`.
    pub fn listeners(&self, process_group: i32, ports: &[u16]) -> Result<Vec<Vec<Listener>>> {
        let _raised = capabilities::raise(&Self::LISTENER_PRIVILEGES)?;
        listeners::of_process_group(self.counter.table(), process_group, ports)
    }

    /// A restart begins, before its next generation starts: the serving generation's listeners
    /// (`replaced`) are marked, and from now on its connections — those that exist, those its
    /// listeners hand over later — are counted apart ([`Counts::replaced`]); the next
    /// generation's listeners on the `watched` ports will be announced through the ring buffer.
    /// Done before the next generation runs, so its `listen()` is followed at once by the switch.
    pub fn begin_restart(&mut self, replaced: &[Listener], watched: &[u16]) -> Result<()> {
        let _raised = capabilities::raise(&self.privileges)?;
        self.programs.mark_replaced(replaced)?;
        self.counter.restart();
        self.programs.start_tracking(true)?;
        self.programs.watch_listeners(watched)
    }

    /// The restart's switch: new connections for each guarded port handed to the next
    /// generation's listeners given for it, or left to the usual lookup for a port given none
    /// (the next generation listens on it itself).
    pub fn switch_generations(&mut self, targets: &[(u16, Option<&[Listener]>)]) -> Result<()> {
        let _raised = capabilities::raise(&self.privileges)?;
        self.programs.stop_watching_listeners()?;
        self.programs.steer(targets)
    }

    /// New connections find their listener the usual way again: the serving generation that
    /// steering brought them to has exited.
    pub fn stop_steering(&mut self) -> Result<()> {
        self.programs.stop_steering()
    }

    /// A restart given up before its switch: the serving generation's listeners (`replaced`)
    /// lose their mark, so its connections cost nothing again, and nothing is followed.
    pub fn abandon_restart(&mut self, replaced: &[Listener]) -> Result<()> {
        self.programs.unmark_replaced(replaced)?;
        self.end_restart()
    }

    /// The replaced generation is gone: nothing is followed any more, unless a drain counts the
    /// serving generation's connections meanwhile. Steering, if any, stays.
    pub fn end_restart(&mut self) -> Result<()> {
        self.programs.stop_watching_listeners()?;
        self.programs.stop_restart_tracking()
    }

    /// From now on every new connection to the ports is refused.
    pub fn start_refusing(&mut self) -> Result<()> {
        let _raised = capabilities::raise(&self.privileges)?;
        self.programs.start_refusing()
    }

    /// New connections are accepted again, and every program is detached.
    pub fn resume(&mut self) -> Result<()> {
        self.programs.resume()
    }

    /// The programs stay attached until drainer exits: the privileges to attach them are given
    /// up for good.
    pub fn stay_attached(&mut self) -> Result<()> {
        capabilities::give_up(&std::mem::take(&mut self.privileges))
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
