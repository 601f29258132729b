//! The embedded eBPF object, loaded: its programs attached in the order that leaves no connection
//! uncounted, the connections that already exist seeded, and its maps read or flipped.
//!
//! Nothing is pinned: every program hangs off a link owned by this process, so when drainer exits
//! or dies the kernel detaches them and the ports behave as if drainer had never run.
use std::{
    fs::{self, File},
    io::{ErrorKind, Read as _},
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Iter, SkLookup},
};
use aya_log::EbpfLogger;
use drainer_common::{MAX_PORTS, PortCounters, SWITCH_DRAINING, SWITCH_REFUSING, SWITCH_SEEDED};

use super::{
    Target,
    counts::{Counts, PortCount, recursion_misses},
    features::{SK_LOOKUP, TCP_ITER, TP_BTF},
    layout::KernelLayout,
    netns::Netns,
    seeded_table,
};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/drainer"));

/// How long after the sweep connections still count as found by it; see `attach`.
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

/// The attached programs and their maps.
pub(super) struct Programs {
    ebpf: Ebpf,
    ports: Vec<u16>,
    /// /proc/self/fdinfo of the tracepoint program, where the kernel reports its missed runs.
    transitions_fdinfo: PathBuf,
}

impl Programs {
    /// Loads and attaches everything, then seeds the connections that were already established.
    /// On return every established connection to the ports is counted, and every later one will be.
    pub(super) fn attach(target: &Target<'_>) -> Result<Self> {
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
        let seeded_slots = target.netns.run_inside(seeded_table::slots)?;
        let seeded_slot_mask = u64::from(seeded_slots - 1);
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
            .override_global("SEEDED_SLOT_MASK", &seeded_slot_mask, true)
            .override_global("AYA_LOG_LEVEL", &ebpf_log_level, true)
            .map_max_entries("SEEDED", seeded_slots)
            .load(EBPF_OBJECT)
            .context("loading drainer's eBPF object into the kernel")?;
        let mut programs = Self {
            ebpf,
            ports: target.ports.to_vec(),
            transitions_fdinfo: PathBuf::new(),
        };

        // Order matters: state changes are followed before the existing connections are swept,
        // so no connection falls between the two; see drainer-ebpf/src/tracking.rs.
        programs.attach_transitions(&btf)?;
        programs.seed(&btf, target.netns)?;
        // A socket the sweep missed because it was closing — out of the hash table, or replaced
        // there by its TIME_WAIT mini-socket — can still be on its way to reporting its close;
        // give it time to report while such closes are not counted.
        std::thread::sleep(SEED_SETTLE);
        programs.set_switch(SWITCH_SEEDED, true)?;
        programs.attach_refuse(target.netns)?;
        release_freed_memory();
        Ok(programs)
    }

    fn attach_transitions(&mut self, btf: &Btf) -> Result<()> {
        let program: &mut BtfTracePoint = self.program_mut("follow_transitions")?.try_into()?;
        program
            .load("inet_sock_set_state", btf)
            .with_context(|| TP_BTF.missing())?;
        program
            .attach()
            .context("attaching the inet_sock_set_state tracepoint")?;
        self.transitions_fdinfo =
            Path::new("/proc/self/fdinfo").join(program.fd()?.as_fd().as_raw_fd().to_string());
        // Fails now, not mid-drain, on a kernel that does not report missed runs.
        self.missed_state_changes()?;
        Ok(())
    }

    /// How many times the kernel skipped the tracepoint program because it was already running
    /// on that CPU.
    fn missed_state_changes(&self) -> Result<u64> {
        let fdinfo = fs::read_to_string(&self.transitions_fdinfo)
            .with_context(|| format!("reading {}", self.transitions_fdinfo.display()))?;
        recursion_misses(&fdinfo).with_context(|| {
            format!(
                "{} reports no recursion_misses: drainer needs Linux >= 5.12 to know whether \
                 its tracepoint missed a connection",
                self.transitions_fdinfo.display()
            )
        })
    }

    fn seed(&mut self, btf: &Btf, netns: &Netns) -> Result<()> {
        let program: &mut Iter = self.program_mut("seed_established")?.try_into()?;
        program
            .load("tcp", btf)
            .with_context(|| TCP_ITER.missing())?;
        let link_id = program.attach().context("attaching the TCP iterator")?;
        let link = program.take_link(link_id)?;
        // The iterator walks the sockets of the namespace it is created in.
        netns.run_inside(move || {
            let iterator = link.into_file().context("creating the TCP iterator")?;
            walk(iterator).context("walking the TCP sockets")
        })
    }

    fn attach_refuse(&mut self, netns: &Netns) -> Result<()> {
        let program: &mut SkLookup = self.program_mut("refuse_while_draining")?.try_into()?;
        program.load().with_context(|| SK_LOOKUP.missing())?;
        program.attach(netns).with_context(|| {
            format!(
                "attaching sk_lookup to network namespace {}",
                netns.path().display()
            )
        })?;
        Ok(())
    }

    /// From now on count changes are announced through [`Programs::take_events`].
    pub(super) fn start_draining(&mut self) -> Result<()> {
        self.set_switch(SWITCH_DRAINING, true)
    }

    /// From now on every new connection to the ports is refused.
    pub(super) fn start_refusing(&mut self) -> Result<()> {
        self.set_switch(SWITCH_REFUSING, true)
    }

    /// New connections are accepted again, and count changes no longer announced.
    pub(super) fn resume(&mut self) -> Result<()> {
        self.set_switch(SWITCH_REFUSING, false)?;
        self.set_switch(SWITCH_DRAINING, false)
    }

    fn set_switch(&mut self, index: u32, on: bool) -> Result<()> {
        let mut switches: Array<_, u32> =
            Array::try_from(self.map_mut("SWITCHES")?).context("SWITCHES map")?;
        switches
            .set(index, &u32::from(on), 0)
            .with_context(|| format!("setting switch {index}"))?;
        Ok(())
    }

    /// Every port's counters, and the state changes the tracepoint missed.
    pub(super) fn counters(&self) -> Result<Counts> {
        // Counters first, missed runs after: a miss before the counters were read then always
        // shows, and one in between only makes the count inexact one read early.
        let ports = self.port_counts()?;
        Ok(Counts {
            ports,
            missed_state_changes: self.missed_state_changes()?,
            from_socket_table: false,
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
                let closed: u64 = read(slot as u32)?.iter().map(|c| c.closed).sum();
                let later = read(slot as u32)?;
                let opened: u64 = later.iter().map(|c| c.opened).sum();
                Ok(PortCount {
                    port,
                    live: opened.wrapping_sub(closed) as i64,
                    opened,
                    refused: later.iter().map(|c| c.refused).sum(),
                    untracked: later.iter().map(|c| c.untracked).sum(),
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
}
