//! The embedded eBPF object: loaded and verified at start-up, attached only while a drain runs — in
//! the order that leaves no connection uncounted, the connections that already exist seeded —
//! or a restart does, and its maps read or flipped.
//!
//! Every program hangs off a link owned by this process, so when drainer exits or dies the kernel
//! detaches it and the ports behave as if drainer had never run; all but steering, which is
//! pinned so that a restarted server listening off its public port keeps its new connections
//! (`kernel::pins`).
use std::{
    collections::HashSet,
    fs::File,
    io::{ErrorKind, Read as _},
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::FileExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{
        Array, ArrayOfMaps, HashMap, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf,
        SkStorage, SockMap,
    },
    programs::{
        BtfTracePoint, Iter, SkLookup,
        links::{FdLink, PinnedLink},
        sk_lookup::SkLookupLinkId,
        tp_btf::BtfTracePointLinkId,
    },
};
use aya_log::EbpfLogger;
use drainer_common::{
    MAX_PORTS, PortCounters, STEER_ENTRIES, SWITCH_RESTART, SWITCH_SEEDED, steer_entry,
};

use super::{
    Target,
    counts::{Counts, PortCount, recursion_misses},
    features::{SK_LOOKUP, TCP_ITER, TP_BTF},
    layout::KernelLayout,
    listeners::Listener,
    netns::Netns,
    pins::{self, SteeringPin},
    seeded_table::{self, SeededTable},
};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/drainer"));

/// How long after the sweep connections still count as found by it; see `start_tracking`.
const SEED_SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// The programs' log statements cost a ring-buffer write each; compile out (at load time) the
/// levels nobody will read. Values are aya-log's: 3 info, 4 debug, 5 trace.
fn ebpf_log_level() -> u8 {
    if tracing::enabled!(target: "drainer::refuse", tracing::Level::TRACE) {
        5
    } else if tracing::enabled!(target: "drainer::refuse", tracing::Level::DEBUG) {
        4
    } else {
        3
    }
}

/// Reads an iterator to its end. The kernel may answer a read with EAGAIN while it regrows its
/// batch of sockets (seen with a million sockets in one namespace); the walk resumes where it
/// stopped, so such reads are retried.
fn walk(mut iterator: File) -> std::io::Result<()> {
    const RETRIES: u32 = 1000;
    let mut buffer = [0u8; 4096];
    let mut retries = 0;
    loop {
        match iterator.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(_) => retries = 0,
            Err(err)
                if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
                    && retries < RETRIES =>
            {
                retries += 1;
                std::thread::yield_now();
            }
            Err(err) => return Err(err),
        }
    }
}

/// Parsing the kernel's BTF (twice: for aya's relocations and for [`KernelLayout`]) allocates a
/// few MiB of small blocks that are freed by now; hand them back to the system rather than keep
/// them in the daemon's resident set for its whole life.
fn release_freed_memory() {
    // SAFETY: malloc_trim(3) only releases free heap memory.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };
}

/// The guarded ports as the programs read them: the list in slot order, padded, and the filter
/// with bit `port % 64` set for each.
fn guarded_ports(ports: &[u16]) -> ([u16; MAX_PORTS as usize], u64) {
    let mut list = [0u16; MAX_PORTS as usize];
    let mut filter = 0u64;
    for (entry, &port) in list.iter_mut().zip(ports) {
        *entry = port;
        filter |= 1 << (port % 64);
    }
    (list, filter)
}

/// The whole of a small /proc file, read from offset 0 with pread: the kernel regenerates a
/// seq_file's text on a read at offset 0, so one open file gives the current text each time.
fn read_from_start(file: &File) -> std::io::Result<String> {
    let mut text = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = file.read_at(&mut chunk, text.len() as u64)?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(text).map_err(|err| std::io::Error::new(ErrorKind::InvalidData, err))
}

/// The steering link, held until steering ends. Pinned, it outlives drainer; see `kernel::pins`.
enum Steering {
    Pinned(PinnedLink),
    Unpinned(FdLink),
}

/// The loaded programs and their maps; attached only while a drain runs.
pub(super) struct Programs {
    ebpf: Ebpf,
    ports: Vec<u16>,
    netns: Netns,
    /// /proc/self/fdinfo of the tracepoint program, where the kernel reports its missed runs.
    /// Opened once and re-read from offset 0 (the kernel regenerates it on each such read): a
    /// count read must not need a new descriptor, which a full descriptor table would refuse.
    transitions_fdinfo: Option<(PathBuf, File)>,
    /// The tracepoint's missed runs before the current drain attached it: the count cares only
    /// about those since.
    missed_before: u64,
    transitions: Option<BtfTracePointLinkId>,
    refusal: Option<SkLookupLinkId>,
    /// While a restart waits for its next generation to listen.
    listen_watch: Option<BtfTracePointLinkId>,
    /// While the serving generation listens on a port other than the public one.
    steering: Option<Steering>,
    netns_cookie: u64,
    /// The tracking under way was started by a restart, to follow its generations.
    restart_tracking: bool,
    /// A drain has started (and not been resumed): the tracking is the drain's too.
    draining: bool,
    /// The table of the tracking under way, or of the last.
    seeded: Option<SeededTable>,
}

impl Programs {
    /// Loads the programs and maps into the kernel, where the verifier checks them, and attaches
    /// nothing: while serving, no program runs.
    pub(super) fn load(target: &Target<'_>) -> Result<Self> {
        if target.ports.is_empty() || target.ports.len() > MAX_PORTS as usize {
            bail!(
                "drainer guards between 1 and {MAX_PORTS} ports, not {}",
                target.ports.len()
            );
        }
        let btf = Btf::from_sys_fs().map_err(|err| {
            anyhow!(
                "this kernel exposes no BTF at /sys/kernel/btf/vmlinux ({err}); drainer needs \
                 CONFIG_DEBUG_INFO_BTF (Linux >= 5.5 built with BTF, as all major distributions do)"
            )
        })?;
        let layout = KernelLayout::of_running_kernel()?;
        let netns_cookie = target.netns.cookie()?;
        let (port_list, port_filter) = guarded_ports(target.ports);
        let port_count = target.ports.len() as u64;
        let ebpf_log_level = ebpf_log_level();
        let ebpf = EbpfLoader::new()
            .btf(&btf)
            .override_global("TARGET_NETNS_COOKIE", &netns_cookie, true)
            .override_global("SOCK_NET_OFFSET", &layout.sock_net, true)
            .override_global("NET_COOKIE_OFFSET", &layout.net_cookie, true)
            .override_global("INET_SPORT_OFFSET", &layout.inet_sport, true)
            .override_global("GUARDED_PORTS", &port_list, true)
            .override_global("GUARDED_PORT_COUNT", &port_count, true)
            .override_global("GUARDED_PORT_FILTER", &port_filter, true)
            .override_global("AYA_LOG_LEVEL", &ebpf_log_level, true)
            .load(EBPF_OBJECT)
            .context("loading drainer's eBPF object into the kernel")?;
        let mut programs = Self {
            ebpf,
            ports: target.ports.to_vec(),
            netns: target.netns.try_clone()?,
            transitions_fdinfo: None,
            missed_before: 0,
            transitions: None,
            refusal: None,
            listen_watch: None,
            steering: None,
            netns_cookie,
            restart_tracking: false,
            draining: false,
            seeded: None,
        };
        programs.load_transitions(&btf)?;
        if target.restarts {
            let watch: &mut BtfTracePoint =
                programs.program_mut("watch_for_listener")?.try_into()?;
            watch
                .load("inet_sock_set_state", &btf)
                .with_context(|| TP_BTF.missing())?;
            let steering: &mut SkLookup = programs
                .program_mut("steer_to_next_generation")?
                .try_into()?;
            steering.load().with_context(|| SK_LOOKUP.missing())?;
        }
        let iterator: &mut Iter = programs.program_mut("seed_established")?.try_into()?;
        iterator
            .load("tcp", &btf)
            .with_context(|| TCP_ITER.missing())?;
        let refusal: &mut SkLookup = programs.program_mut("refuse_while_draining")?.try_into()?;
        refusal.load().with_context(|| SK_LOOKUP.missing())?;
        drop(btf);
        release_freed_memory();
        Ok(programs)
    }

    fn load_transitions(&mut self, btf: &Btf) -> Result<()> {
        let program: &mut BtfTracePoint = self.program_mut("follow_transitions")?.try_into()?;
        program
            .load("inet_sock_set_state", btf)
            .with_context(|| TP_BTF.missing())?;
        let path =
            Path::new("/proc/self/fdinfo").join(program.fd()?.as_fd().as_raw_fd().to_string());
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        self.transitions_fdinfo = Some((path, file));
        // Fails now, not mid-drain, on a kernel that does not report missed runs.
        self.missed_state_changes()?;
        Ok(())
    }

    /// Whether the programs follow connections (a drain has started and not been resumed).
    pub(super) fn tracking(&self) -> bool {
        self.transitions.is_some()
    }

    /// Starts following connections: fresh counters and tables, the tracepoint attached, then the
    /// connections that already exist swept. On return every established connection to the
    /// ports is counted, and every later one will be; count changes are announced through
    /// [`Programs::take_events`].
    ///
    /// A restart's drain (`restart`) follows only the generation being replaced: the connections
    /// that exist, and those its listeners, marked by [`Programs::mark_replaced`], hand over
    /// later.
    pub(super) fn start_tracking(&mut self, restart: bool) -> Result<()> {
        if self.tracking() {
            return Ok(());
        }
        // Nothing is attached: nothing else writes the maps.
        self.reset_counters()?;
        self.new_seeded_table()?;
        self.forget_outbound()?;
        self.set_switch(SWITCH_SEEDED, false)?;
        self.set_switch(SWITCH_RESTART, restart)?;
        self.restart_tracking = restart;

        // Order matters: state changes are followed before the existing connections are swept,
        // so no connection falls between the two; see drainer-ebpf/src/tracking.rs.
        self.missed_before = self.missed_state_changes()?;
        let program: &mut BtfTracePoint = self.program_mut("follow_transitions")?.try_into()?;
        self.transitions = Some(
            program
                .attach()
                .context("attaching the inet_sock_set_state tracepoint")?,
        );
        self.seed()?;
        // A socket the sweep missed because it was closing — out of the hash table, or replaced
        // there by its TIME_WAIT mini-socket — can still be on its way to reporting its close;
        // give it time to report while such closes are not counted.
        std::thread::sleep(SEED_SETTLE);
        self.set_switch(SWITCH_SEEDED, true)
    }

    /// Zeroes every port's counters but `refused`, which totals over drains.
    fn reset_counters(&mut self) -> Result<()> {
        let mut counters: PerCpuArray<_, PortCounters> =
            PerCpuArray::try_from(self.map_mut("PORT_COUNTERS")?).context("PORT_COUNTERS map")?;
        for slot in 0..MAX_PORTS {
            let per_cpu: Vec<PortCounters> = counters
                .get(&slot, 0)
                .context("reading PORT_COUNTERS")?
                .iter()
                .map(|c| PortCounters {
                    refused: c.refused,
                    ..PortCounters::default()
                })
                .collect();
            counters
                .set(slot, PerCpuValues::try_from(per_cpu)?, 0)
                .context("resetting PORT_COUNTERS")?;
        }
        Ok(())
    }

    /// A new, empty table for the connections the sweep finds, sized for the sockets the
    /// namespace holds now.
    fn new_seeded_table(&mut self) -> Result<()> {
        let slots = self.netns.run_inside(seeded_table::slots)?;
        let table = SeededTable::create(slots)?;
        let mut tables: ArrayOfMaps<_, MapData> =
            ArrayOfMaps::try_from(self.map_mut("SEEDED")?).context("SEEDED map")?;
        tables.set(0, table.map(), 0).context("installing SEEDED")?;
        self.seeded = Some(table);
        let mut mask: Array<_, u64> =
            Array::try_from(self.map_mut("SEEDED_SLOT_MASK")?).context("SEEDED_SLOT_MASK map")?;
        mask.set(0, &u64::from(slots - 1), 0)
            .context("setting SEEDED_SLOT_MASK")?;
        self.set_entries("SEEDED_ENTRIES", 0)
    }

    /// Forgets the outbound connections a previous drain recorded: any of them may have closed
    /// while nothing followed them.
    fn forget_outbound(&mut self) -> Result<()> {
        let mut outbound: HashMap<_, u64, u8> =
            HashMap::try_from(self.map_mut("OUTBOUND")?).context("OUTBOUND map")?;
        let cookies: Vec<u64> = outbound.keys().collect::<Result<_, _>>()?;
        for cookie in cookies {
            outbound.remove(&cookie).context("clearing OUTBOUND")?;
        }
        self.set_entries("OUTBOUND_ENTRIES", 0)
    }

    fn set_entries(&mut self, name: &str, value: i64) -> Result<()> {
        let mut entries: Array<_, i64> =
            Array::try_from(self.map_mut(name)?).with_context(|| format!("{name} map"))?;
        entries
            .set(0, &value, 0)
            .with_context(|| format!("resetting {name}"))
    }

    /// How many times the kernel skipped the tracepoint program because it was already running
    /// on that CPU, since the program was loaded.
    fn missed_state_changes(&self) -> Result<u64> {
        let (path, file) = self
            .transitions_fdinfo
            .as_ref()
            .context("the tracepoint program is not loaded")?;
        let fdinfo =
            read_from_start(file).with_context(|| format!("reading {}", path.display()))?;
        recursion_misses(&fdinfo).with_context(|| {
            format!(
                "{} reports no recursion_misses: drainer needs Linux >= 5.12 to know whether \
                 its tracepoint missed a connection",
                path.display()
            )
        })
    }

    fn seed(&mut self) -> Result<()> {
        let program: &mut Iter = self.program_mut("seed_established")?.try_into()?;
        let link_id = program.attach().context("attaching the TCP iterator")?;
        let link = program.take_link(link_id)?;
        // The iterator walks the sockets of the namespace it is created in.
        self.netns.run_inside(move || {
            let iterator = link.into_file().context("creating the TCP iterator")?;
            walk(iterator).context("walking the TCP sockets")
        })
    }

    /// From now on every new connection to the ports is refused.
    pub(super) fn start_refusing(&mut self) -> Result<()> {
        if self.refusal.is_some() {
            return Ok(());
        }
        self.attach_refusal()?;
        // A socket one sk_lookup program selects wins over another's drop: steering, if
        // attached, must select nothing from now on.
        if self.steering.is_some() {
            self.clear_steering()?;
        }
        Ok(())
    }

    fn attach_refusal(&mut self) -> Result<()> {
        let netns = &self.netns;
        let description = netns.path().display().to_string();
        let program: &mut SkLookup = self
            .ebpf
            .program_mut("refuse_while_draining")
            .context("the eBPF object has no program refuse_while_draining")?
            .try_into()?;
        self.refusal =
            Some(program.attach(netns).with_context(|| {
                format!("attaching sk_lookup to network namespace {description}")
            })?);
        Ok(())
    }

    /// While a restart's tracking runs, the cookies of the replaced generation's live
    /// connections: during a restart the seeded table holds exactly those.
    pub(super) fn replaced_connections(&self) -> Option<HashSet<u64>> {
        self.seeded
            .as_ref()
            .filter(|_| self.restart_tracking && self.tracking())
            .map(SeededTable::cookies)
    }

    /// A drain starts: the tracking it finds under way (a restart's) is its own from now on.
    pub(super) fn draining(&mut self) {
        self.draining = true;
    }

    /// Stops following a restart's generations: the tracepoint detached, unless a drain counts on
    /// it too.
    pub(super) fn stop_restart_tracking(&mut self) -> Result<()> {
        if !self.restart_tracking || self.draining {
            return Ok(());
        }
        self.restart_tracking = false;
        if let Some(link) = self.transitions.take() {
            let program: &mut BtfTracePoint = self.program_mut("follow_transitions")?.try_into()?;
            program.detach(link).context("detaching the tracepoint")?;
        }
        Ok(())
    }

    /// Marks the listeners of the generation a restart replaces: every connection they create
    /// from now on carries the mark.
    pub(super) fn mark_replaced(&mut self, listeners: &[Listener]) -> Result<()> {
        let mut tags: SkStorage<_, u32> =
            SkStorage::try_from(self.map_mut("LISTENER_TAGS")?).context("LISTENER_TAGS map")?;
        for listener in listeners {
            tags.insert(&listener.fd, &1, 0)
                .context("marking a listener of the replaced generation")?;
        }
        Ok(())
    }

    /// Takes the mark off listeners a restart no longer replaces: the connections they create
    /// carry nothing again.
    pub(super) fn unmark_replaced(&mut self, listeners: &[Listener]) -> Result<()> {
        let mut tags: SkStorage<_, u32> =
            SkStorage::try_from(self.map_mut("LISTENER_TAGS")?).context("LISTENER_TAGS map")?;
        for listener in listeners {
            match tags.remove(&listener.fd) {
                Err(MapError::SyscallError(failed))
                    if failed.io_error.kind() != ErrorKind::NotFound =>
                {
                    return Err(MapError::SyscallError(failed))
                        .context("unmarking a listener of the serving generation");
                }
                // Not marked: nothing to take off.
                _ => {}
            }
        }
        Ok(())
    }

    /// Announces each socket of the namespace that begins listening on one of `ports`, until
    /// [`Programs::stop_watching_listeners`].
    pub(super) fn watch_listeners(&mut self, ports: &[u16]) -> Result<()> {
        let mut watch: Array<_, u32> =
            Array::try_from(self.map_mut("LISTEN_WATCH")?).context("LISTEN_WATCH map")?;
        for (slot, port) in ports.iter().enumerate() {
            watch
                .set(slot as u32, &u32::from(*port), 0)
                .context("setting LISTEN_WATCH")?;
        }
        if self.listen_watch.is_none() {
            let program: &mut BtfTracePoint = self.program_mut("watch_for_listener")?.try_into()?;
            self.listen_watch = Some(
                program
                    .attach()
                    .context("attaching the listener watch to inet_sock_set_state")?,
            );
        }
        Ok(())
    }

    pub(super) fn stop_watching_listeners(&mut self) -> Result<()> {
        if let Some(link) = self.listen_watch.take() {
            let program: &mut BtfTracePoint = self.program_mut("watch_for_listener")?.try_into()?;
            program
                .detach(link)
                .context("detaching the listener watch")?;
        }
        let slots = self.ports.len() as u32;
        let mut watch: Array<_, u32> =
            Array::try_from(self.map_mut("LISTEN_WATCH")?).context("LISTEN_WATCH map")?;
        for slot in 0..slots {
            watch.set(slot, &0, 0).context("clearing LISTEN_WATCH")?;
        }
        Ok(())
    }

    /// From now on every new connection for each guarded port goes to the listeners given for it:
    /// IPv4 ones to an IPv4 listener or else a dual-stack one, IPv6 ones to an IPv6 listener. A
    /// port given none finds its listener the usual way. Steering is attached while any port is
    /// steered, and detached once none is.
    pub(super) fn steer(&mut self, targets: &[(u16, Option<&[Listener]>)]) -> Result<()> {
        let guarded = self.ports.clone();
        let mut steer_to: SockMap<_> =
            SockMap::try_from(self.map_mut("STEER_TO")?).context("STEER_TO map")?;
        for &(port, listeners) in targets {
            let slot = guarded
                .iter()
                .position(|&p| p == port)
                .with_context(|| format!("port {port} is not guarded"))?
                as u32;
            let listeners = listeners.unwrap_or_default();
            let ipv4 = listeners
                .iter()
                .find(|l| !l.ipv6)
                .or_else(|| listeners.iter().find(|l| l.dual_stack));
            let ipv6 = listeners.iter().find(|l| l.ipv6);
            for (ipv6_entry, listener) in [(false, ipv4), (true, ipv6)] {
                let entry = steer_entry(slot, ipv6_entry);
                match listener {
                    Some(listener) => steer_to
                        .set(entry, &listener.fd, 0)
                        .context("handing new connections to the serving generation's listener")?,
                    None => {
                        let _ = steer_to.clear_index(&entry);
                    }
                }
            }
        }
        let steered = targets.iter().find(|(_, listeners)| listeners.is_some());
        match steered {
            Some(&(port, _)) if self.steering.is_none() => {
                self.steering = Some(self.attach_steering(port)?);
            }
            None => self.stop_steering()?,
            Some(_) => {}
        }
        Ok(())
    }

    /// Attaches steering, pinned when it can be: see `kernel::pins`.
    fn attach_steering(&mut self, port: u16) -> Result<Steering> {
        let pin = SteeringPin::place(self.netns_cookie, &self.ports)?;
        let description = self.netns.path().display().to_string();
        let program: &mut SkLookup = self
            .ebpf
            .program_mut("steer_to_next_generation")
            .context("the eBPF object has no program steer_to_next_generation")?
            .try_into()?;
        let link_id = program.attach(&self.netns).with_context(|| {
            format!("attaching sk_lookup steering to network namespace {description}")
        })?;
        let link = FdLink::from(program.take_link(link_id)?);
        match pin {
            Some(pin) => Ok(Steering::Pinned(pin.pin(link)?)),
            None => {
                pins::warn_unpinned(port);
                Ok(Steering::Unpinned(link))
            }
        }
    }

    /// New connections find their listener the usual way again: steering is detached, and its
    /// pin removed, before this returns.
    pub(super) fn stop_steering(&mut self) -> Result<()> {
        match self.steering.take() {
            Some(Steering::Pinned(link)) => {
                let link = link.unpin().context("unpinning sk_lookup steering")?;
                drop(link);
            }
            Some(Steering::Unpinned(link)) => drop(link),
            None => {}
        }
        self.clear_steering()
    }

    fn clear_steering(&mut self) -> Result<()> {
        let mut steer_to: SockMap<_> =
            SockMap::try_from(self.map_mut("STEER_TO")?).context("STEER_TO map")?;
        for entry in 0..STEER_ENTRIES {
            let _ = steer_to.clear_index(&entry);
        }
        Ok(())
    }

    /// Back to serving: new connections accepted, and every program detached.
    pub(super) fn resume(&mut self) -> Result<()> {
        self.draining = false;
        if let Some(link) = self.refusal.take() {
            let program: &mut SkLookup = self.program_mut("refuse_while_draining")?.try_into()?;
            program.detach(link).context("detaching sk_lookup")?;
        }
        if let Some(link) = self.transitions.take() {
            let program: &mut BtfTracePoint = self.program_mut("follow_transitions")?.try_into()?;
            program.detach(link).context("detaching the tracepoint")?;
        }
        Ok(())
    }

    fn set_switch(&mut self, index: u32, on: bool) -> Result<()> {
        let mut switches: Array<_, u32> =
            Array::try_from(self.map_mut("SWITCHES")?).context("SWITCHES map")?;
        switches
            .set(index, &u32::from(on), 0)
            .with_context(|| format!("setting switch {index}"))?;
        Ok(())
    }

    /// Every port's counters, and the state changes the tracepoint missed since the drain
    /// attached it. Between drains only `refused`, a total over drains, means anything.
    pub(super) fn counters(&self) -> Result<Counts> {
        // Counters first, missed runs after: a miss before the counters were read then always
        // shows, and one in between only makes the count inexact one read early.
        let mut ports = self.port_counts()?;
        if !self.tracking() {
            for count in &mut ports {
                *count = PortCount {
                    port: count.port,
                    live: 0,
                    opened: 0,
                    refused: count.refused,
                    untracked: 0,
                    replaced_live: 0,
                };
            }
            return Ok(Counts {
                ports,
                missed_state_changes: 0,
                outbound_unrecorded: 0,
                from_socket_table: false,
            });
        }
        let outbound_unrecorded = self.outbound_unrecorded()?;
        Ok(Counts {
            ports,
            missed_state_changes: self.missed_state_changes()? - self.missed_before,
            outbound_unrecorded,
            from_socket_table: false,
        })
    }

    fn outbound_unrecorded(&self) -> Result<u64> {
        let counters: PerCpuArray<_, PortCounters> =
            PerCpuArray::try_from(self.map("PORT_COUNTERS")?).context("PORT_COUNTERS map")?;
        (0..self.ports.len() as u32).try_fold(0, |sum, slot| {
            let per_cpu = counters.get(&slot, 0).context("reading PORT_COUNTERS")?;
            Ok(sum + per_cpu.iter().map(|c| c.outbound_unrecorded).sum::<u64>())
        })
    }

    fn port_counts(&self) -> Result<Vec<PortCount>> {
        let counters: PerCpuArray<_, PortCounters> =
            PerCpuArray::try_from(self.map("PORT_COUNTERS")?).context("PORT_COUNTERS map")?;
        let read = |slot: u32| {
            counters
                .get(&slot, 0)
                .context("reading PORT_COUNTERS")
                .map(|per_cpu| per_cpu.iter().copied().collect::<Vec<_>>())
        };
        self.ports
            .iter()
            .enumerate()
            .map(|(slot, &port)| {
                // Closes before opens: see `PortCounters`.
                let earlier = read(slot as u32)?;
                let closed: u64 = earlier.iter().map(|c| c.closed).sum();
                let replaced_closed: u64 = earlier.iter().map(|c| c.replaced_closed).sum();
                let later = read(slot as u32)?;
                let opened: u64 = later.iter().map(|c| c.opened).sum();
                let replaced_opened: u64 = later.iter().map(|c| c.replaced_opened).sum();
                Ok(PortCount {
                    port,
                    live: opened.wrapping_sub(closed) as i64,
                    opened,
                    refused: later.iter().map(|c| c.refused).sum(),
                    untracked: later.iter().map(|c| c.untracked).sum(),
                    replaced_live: replaced_opened.wrapping_sub(replaced_closed) as i64,
                })
            })
            .collect()
    }

    pub(super) fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The ring buffer that carries count changes while draining.
    pub(super) fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .context("EVENTS map already taken")?;
        RingBuf::try_from(map).context("EVENTS map")
    }

    /// The reader of the programs' aya-log records.
    pub(super) fn take_logger(&mut self) -> Result<EbpfLogger<&'static dyn log::Log>> {
        EbpfLogger::init(&mut self.ebpf).context("reading the eBPF programs' logs")
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("the eBPF object has no map {name}"))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("the eBPF object has no map {name}"))
    }

    fn program_mut(&mut self, name: &str) -> Result<&mut aya::programs::Program> {
        self.ebpf
            .program_mut(name)
            .with_context(|| format!("the eBPF object has no program {name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarded_ports_keep_slot_order_and_set_one_filter_bit_each() {
        let (list, filter) = guarded_ports(&[8000, 443, 8064]);
        assert_eq!(&list[..4], &[8000, 443, 8064, 0]);
        // 8000 and 8064 share a bit (both ≡ 0 mod 64); 443 ≡ 59.
        assert_eq!(filter, 1 | 1 << 59);
    }

    #[test]
    fn an_open_fdinfo_read_from_the_start_shows_the_current_text() {
        let mut watched = File::open("/proc/self/exe").unwrap();
        let fdinfo = File::open(format!("/proc/self/fdinfo/{}", watched.as_raw_fd())).unwrap();
        assert!(read_from_start(&fdinfo).unwrap().starts_with("pos:\t0\n"));
        std::io::Seek::seek(&mut watched, std::io::SeekFrom::Start(4096)).unwrap();
        assert!(
            read_from_start(&fdinfo)
                .unwrap()
                .starts_with("pos:\t4096\n")
        );
    }
}
