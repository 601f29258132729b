//! The eight measurements. Each alternates its variants round by round, so machine noise falls on
//! all of them alike, and returns what it measured.
use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpStream},
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{ArrayOfMaps, Map, MapData, MapError, MapType};
use drainer_harness::{
    drainer::{drainer_command, live_field, status_json},
    process::{Process, monotonic_now},
};
use nix::sys::signal::Signal;

use crate::{
    bed::{Bed, ClientSide, Neighbours, PORT},
    clock::monotonic_ns,
    load,
    roles::raise_fd_limit,
    stats::{Latencies, MeanInterval, mean},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// No drainer: the limit.
    Bare,
    /// drainer serving (it attaches nothing before a drain).
    Drainer,
    /// An nftables REJECT rule in place while serving.
    Nftables,
}

/// Sets a variant up for the length of a closure.
fn with_variant<T>(bed: &Bed, variant: Variant, work: impl FnOnce() -> T) -> T {
    let measure = || {
        // A daemon's start, or the last variant's teardown, is not part of the measurement.
        wait_for_idle_host();
        work()
    };
    match variant {
        Variant::Bare => measure(),
        Variant::Drainer => {
            let daemon = bed.daemon();
            let result = measure();
            drop(daemon);
            result
        }
        Variant::Nftables => {
            bed.load_nft_reject();
            let result = measure();
            bed.unload_nft();
            result
        }
    }
}

/// Per-variant samples, in the order the variants were given.
pub struct Samples<V> {
    pub variants: Vec<(V, Vec<f64>)>,
}

impl<V: PartialEq> Samples<V> {
    /// (variant / first variant) of each round, both measured in the same round, as a mean and its
    /// 95% interval: pairing within a round cancels the drift of the host between rounds.
    pub fn ratio(&self, variant: V) -> MeanInterval {
        let base = &self.variants[0].1;
        let ratios: Vec<f64> = self
            .values(variant)
            .iter()
            .zip(base)
            .map(|(v, b)| v / b)
            .collect();
        MeanInterval::of(&ratios)
    }

    pub fn mean(&self, variant: V) -> f64 {
        mean(self.values(variant))
    }

    fn values(&self, variant: V) -> &[f64] {
        &self
            .variants
            .iter()
            .find(|(v, _)| *v == variant)
            .expect("variant")
            .1
    }
}

/// Measures every variant once a round, in orders that balance where each one runs: over a full
/// cycle of orders every variant comes first, last, and right after every other variant equally
/// often (a Williams design), so neither the position in a round nor what the variant before left
/// behind (a hundred daemons just stopped) falls on one variant more than on another.
fn alternate<V: Copy>(
    rounds: usize,
    variants: &[V],
    mut measure: impl FnMut(V) -> f64,
) -> Samples<V> {
    let mut samples: Vec<(V, Vec<f64>)> = variants.iter().map(|v| (*v, Vec::new())).collect();
    let orders = balanced_orders(variants.len());
    for round in 0..rounds {
        for &index in &orders[round % orders.len()] {
            let value = measure(variants[index]);
            samples[index].1.push(value);
        }
    }
    Samples { variants: samples }
}

/// The orders of a Williams design for `n` variants: row `r` is r, r+1, r−1, r+2, r−2, … (mod n);
/// for an odd `n` each row is followed by its reverse, as one square cannot balance predecessors.
fn balanced_orders(n: usize) -> Vec<Vec<usize>> {
    let mut orders = Vec::new();
    for row in 0..n {
        let order: Vec<usize> = (0..n)
            .map(|k| {
                let step = k.div_ceil(2);
                if k % 2 == 1 {
                    (row + step) % n
                } else {
                    (row + n - step) % n
                }
            })
            .collect();
        let reversed = (n % 2 == 1).then(|| order.iter().rev().copied().collect());
        orders.push(order);
        orders.extend(reversed);
    }
    orders
}

/// Measurement 1: New connections per second against a simple server.
pub fn connection_rate(bed: &Bed, rounds: usize, duration: Duration) -> Samples<Variant> {
    let _server = bed.role(
        &["serve-requests", &bed.server_addr().to_string(), "4"],
        "listening",
    );
    let to = bed.server_addr();
    alternate(
        rounds,
        &[Variant::Bare, Variant::Drainer, Variant::Nftables],
        |variant| {
            with_variant(bed, variant, || {
                bed.netns.run(|| load::connection_rate(to, 4, duration))
            })
        },
    )
}

/// Measurement 2: Bytes per second over established connections.
pub fn throughput(bed: &Bed, rounds: usize, duration: Duration) -> Samples<Variant> {
    let _server = bed.role(&["serve-sink", &bed.server_addr().to_string()], "listening");
    let to = bed.server_addr();
    alternate(rounds, &[Variant::Bare, Variant::Drainer], |variant| {
        let mut streams: Vec<TcpStream> = (0..4)
            .map(|_| bed.netns.connect(to).expect("connect"))
            .collect();
        with_variant(bed, variant, || {
            bed.netns.run(|| load::throughput(&mut streams, duration))
        })
    })
}

/// Measurement 3: Release latency: the supervised server closes its last connection, then receives its stop
/// signal. drainer against the poll-based peer, alternating, `drains` of each.
pub fn release_latency(bed: &Bed, drains: usize) -> (Latencies, Latencies) {
    let addr = bed.server_addr().to_string();
    let me = std::env::current_exe().expect("own path");
    let me = me.to_str().unwrap();
    let mut drainer = Vec::new();
    let mut peer = Vec::new();
    for round in 0..drains * 2 {
        let with_drainer = round % 2 == 0;
        let mut command = if with_drainer {
            drainer_command(
                &bed.netns,
                &["run", "--port", &PORT.to_string(), "--", me, "child", &addr],
            )
        } else {
            let mut command = bed.netns.command(me);
            command.args([
                "poll-run",
                "--port",
                &PORT.to_string(),
                "--",
                me,
                "child",
                &addr,
            ]);
            command
        };
        command.env_remove("NOTIFY_SOCKET");
        let mut supervisor = Process::spawn("supervisor", command);
        supervisor.wait_for("listening", Duration::from_secs(30));
        let client = bed
            .netns
            .connect(bed.server_addr())
            .expect("connect to the child");
        supervisor.signal(Signal::SIGTERM);
        supervisor.wait_for(
            if with_drainer {
                "draining: refusing"
            } else {
                "polling"
            },
            Duration::from_secs(10),
        );
        // Close at a random moment of the peer's polling period, as a real last connection would.
        thread::sleep(Duration::from_millis(20 + monotonic_ns() % 100));
        drop(client);
        supervisor.wait(Duration::from_secs(30));
        let number = |prefix: &str| -> u64 {
            let line = supervisor.wait_for(prefix, Duration::from_secs(1)).text;
            line.trim_start_matches(prefix)
                .trim()
                .parse()
                .expect("a time")
        };
        let latency = Duration::from_nanos(number("signalled").saturating_sub(number("closed")));
        if with_drainer {
            drainer.push(latency)
        } else {
            peer.push(latency)
        }
    }
    (Latencies::of(&drainer), Latencies::of(&peer))
}

/// Measurement 4: Refusal activation: drain signal → the first refused connect.
pub fn refusal_activation(bed: &Bed, drains: usize) -> Latencies {
    let _server = bed.role(
        &["serve-requests", &bed.server_addr().to_string(), "2"],
        "listening",
    );
    let to = bed.server_addr();
    let mut samples = Vec::new();
    for _ in 0..drains {
        let mut daemon = bed.daemon();
        let refused_at = AtomicU64::new(0);
        bed.netns.run(|| {
            thread::scope(|scope| {
                let spinner = scope.spawn(|| {
                    let give_up = Instant::now() + Duration::from_secs(5);
                    let mut other = Vec::new();
                    // A probe every ~100 µs, each bounded: a SYN the busy server's full backlog
                    // drops must not stall the probe past the drain.
                    while Instant::now() < give_up {
                        match TcpStream::connect_timeout(&to, Duration::from_millis(20)) {
                            Err(err) if err.kind() == ErrorKind::ConnectionRefused => {
                                refused_at.store(monotonic_ns(), Ordering::SeqCst);
                                return other;
                            }
                            Err(err) if !other.contains(&err.kind()) => other.push(err.kind()),
                            Err(_) | Ok(_) => {}
                        }
                        thread::sleep(Duration::from_micros(100));
                    }
                    refused_at.store(u64::MAX, Ordering::SeqCst);
                    other
                });
                thread::sleep(Duration::from_millis(20));
                let signalled = monotonic_ns();
                daemon.signal(Signal::SIGTERM);
                let other = spinner.join().expect("spinner");
                let refused = refused_at.load(Ordering::SeqCst);
                assert!(
                    refused != u64::MAX,
                    "no connection was refused within 5 s of SIGTERM; other errors: {other:?}"
                );
                samples.push(Duration::from_nanos(refused - signalled));
            });
        });
        daemon.wait(Duration::from_secs(10));
    }
    Latencies::of(&samples)
}

/// Measurement 5: One scale point: a serving daemon with the connections already there, then
/// drained.
#[derive(Debug)]
pub struct Scale {
    /// The status's count while serving (from sock_diag).
    pub serving: i64,
    /// The drain's first exact count, and `ss`'s after it.
    pub counted: i64,
    pub ss: usize,
    /// SIGTERM → the log line with the drain's first exact count.
    pub first_count: Duration,
    /// Kernel memory of all the daemon's maps once draining, total and per connection above an
    /// idle serving daemon's.
    pub map_bytes: u64,
    pub map_bytes_per_connection: f64,
    /// The daemon's resident memory once draining.
    pub daemon_rss_bytes: u64,
}

pub fn scale(bed: &Bed, connections: usize) -> Scale {
    // Clients in processes of at most `per_process` descriptors each; servers that never accept.
    let per_process = (raise_fd_limit() as usize).saturating_sub(100).min(40_000);
    let processes = connections.div_ceil(per_process);
    let sources_per_process = per_process / 50_000 + 1;
    let client_side = ClientSide::create(bed, processes * sources_per_process);
    let addr = SocketAddr::new(client_side.server, PORT).to_string();
    let listeners = (connections / 30_000 + 1).to_string();
    let server = bed.role(&["serve-hold", &addr, &listeners], "listening");
    let idle = bed.daemon();
    let idle_map = map_memlock(idle.pid().as_raw());
    drop(idle);

    let mut clients = Vec::new();
    let mut opened = 0;
    while opened < connections {
        let count = per_process.min(connections - opened);
        // Source addresses: 50,000 connections each, fresh ones per process.
        let first_source = (opened / per_process) * sources_per_process;
        let mut command = client_side
            .netns
            .command(std::env::current_exe().expect("own path"));
        command.args([
            "hold-clients",
            &addr,
            &count.to_string(),
            &first_source.to_string(),
        ]);
        clients.push(Process::spawn("hold-clients", command));
        opened += count;
    }
    for client in &clients {
        client.wait_for("held", Duration::from_secs(600));
    }

    let daemon = bed.daemon();
    let status = status_json(&bed.dir.path().join("drainer.sock"));
    let signalled = monotonic_now();
    daemon.signal(Signal::SIGTERM);
    let first_count = daemon.wait_for("draining:", Duration::from_secs(60));
    // Read once draining: the table of the connections found by the sweep exists only then.
    let map_bytes = map_memlock(daemon.pid().as_raw());
    let result = Scale {
        serving: status["live"].as_i64().unwrap_or(-1),
        counted: live_field(&first_count.text),
        ss: bed.ss_count(),
        first_count: Duration::from_secs_f64(first_count.at - signalled),
        map_bytes,
        map_bytes_per_connection: (map_bytes.saturating_sub(idle_map)) as f64 / connections as f64,
        daemon_rss_bytes: rss(daemon.pid().as_raw()),
    };
    // Killed while still draining: the connections stay until the clients go.
    drop(daemon);
    drop(clients);
    drop(server);
    result
}

/// `memlock:` of all the daemon's BPF maps together, from fdinfo, with the maps its arrays of maps
/// hold: the daemon keeps no descriptor of those (SEEDED's table is reachable only through SEEDED).
fn map_memlock(pid: i32) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("fdinfo")
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let Some(map_type) = fdinfo_field(&info, "map_type:") else {
            continue;
        };
        total += fdinfo_field(&info, "memlock:").unwrap_or(0);
        if map_type == MapType::ArrayOfMaps as u64 {
            let id = fdinfo_field(&info, "map_id:").expect("map_id in a map's fdinfo");
            total += held_maps_memlock(id as u32);
        }
    }
    total
}

/// `memlock:` of the maps the array of maps `id` holds, through descriptors of our own.
fn held_maps_memlock(id: u32) -> u64 {
    let outer = MapData::from_id(id).expect("open an array of maps by id");
    let outer: ArrayOfMaps<MapData, MapData> = Map::from_map_data(outer)
        .and_then(ArrayOfMaps::try_from)
        .expect("an array of maps");
    (0..outer.len())
        .filter_map(|index| match outer.get(&index, 0) {
            Ok(inner) => Some(inner),
            Err(MapError::KeyNotFound) => None,
            Err(err) => panic!("reading slot {index} of map {id}: {err}"),
        })
        .map(|inner| {
            let info = std::fs::read_to_string(format!(
                "/proc/self/fdinfo/{}",
                inner.fd().as_fd().as_raw_fd()
            ))
            .expect("a held map's fdinfo");
            fdinfo_field(&info, "memlock:").unwrap_or(0)
        })
        .sum()
}

/// A numeric field of an fdinfo file.
fn fdinfo_field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Measurement 6: Idle cost over `window`: wakeups per second (context switches of all threads) and CPU.
#[derive(Debug)]
pub struct Idle {
    pub wakeups_per_second: f64,
    pub cpu_seconds: f64,
    pub window: Duration,
}

pub fn idle(bed: &Bed, window: Duration) -> Idle {
    let _server = bed.role(
        &["serve-requests", &bed.server_addr().to_string(), "1"],
        "listening",
    );
    let daemon = bed.daemon();
    let pid = daemon.pid().as_raw();
    thread::sleep(Duration::from_millis(500));
    let (switches0, cpu0) = (context_switches(pid), cpu_seconds(pid));
    thread::sleep(window);
    let (switches1, cpu1) = (context_switches(pid), cpu_seconds(pid));
    Idle {
        wakeups_per_second: (switches1 - switches0) as f64 / window.as_secs_f64(),
        cpu_seconds: cpu1 - cpu0,
        window,
    }
}

fn context_switches(pid: i32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| {
                l.starts_with("voluntary_ctxt_switches:")
                    || l.starts_with("nonvoluntary_ctxt_switches:")
            })
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Measurement 7: New connections per second in a namespace without drainer, while other
/// namespaces of the host each have a serving drainer; the variants are how many (`counts`, the
/// first the reference).
pub fn drainers_on_one_node(
    bed: &Bed,
    counts: &[usize],
    rounds: usize,
    duration: Duration,
) -> Samples<usize> {
    let neighbours = Neighbours::create(counts.iter().copied().max().unwrap_or(0));
    let _server = bed.role(
        &["serve-requests", &bed.server_addr().to_string(), "4"],
        "listening",
    );
    let to = bed.server_addr();
    alternate(rounds, counts, |count| {
        let daemons = neighbours.daemons(count);
        // Starting a hundred daemons, or killing them, leaves the kernel work to finish (freed
        // programs and maps, RCU callbacks): every variant is measured on a host that is idle
        // again, so none pays for the one before.
        wait_for_idle_host();
        let rate = bed.netns.run(|| load::connection_rate(to, 4, duration));
        drop(daemons);
        eprintln!("bench: beside {count} drainers: {rate:.0}/s");
        rate
    })
}

/// How new connections reach the server in measurement 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steering {
    /// The server listens on the port itself, no drainer: the limit.
    Direct,
    /// The server runs under `drainer run --restart-signal`, restarted once: its serving
    /// generation listens on another port, and sk_lookup hands it every connection for this one.
    Steered,
}

/// Measurement 8: New connections per second to the port of a restarted server whose serving
/// generation listens elsewhere, every one steered by drainer's `sk_lookup` program, against the
/// same server listening on the port itself without drainer.
pub fn steered_rate(bed: &Bed, rounds: usize, duration: Duration) -> Samples<Steering> {
    let to = bed.server_addr();
    let me = std::env::current_exe().expect("own path");
    alternate(rounds, &[Steering::Direct, Steering::Steered], |variant| {
        let mut server = match variant {
            Steering::Direct => bed.role(&["serve-requests", &to.to_string(), "4"], "listening"),
            Steering::Steered => {
                let mut command = drainer_command(
                    &bed.netns,
                    &[
                        "run",
                        "--port",
                        &PORT.to_string(),
                        "--restart-signal",
                        "SIGHUP",
                        "--",
                    ],
                );
                command
                    .arg(&me)
                    .args(["serve-requests", "127.0.0.1:{port}", "4"]);
                let drainer = Process::spawn("drainer", command);
                drainer.wait_for("listening", Duration::from_secs(30));
                drainer.signal(Signal::SIGHUP);
                // The first generation held no connection: released at once.
                drainer.wait_for("restart done, generation 2 serves", Duration::from_secs(30));
                drainer
            }
        };
        wait_for_idle_host();
        let rate = bed.netns.run(|| load::connection_rate(to, 4, duration));
        if variant == Steering::Steered {
            // Stopped its way: the server it runs is released, not left behind.
            server.signal(Signal::SIGTERM);
            server.wait(Duration::from_secs(30));
        }
        drop(server);
        eprintln!("bench: {variant:?}: {rate:.0}/s");
        rate
    })
}

/// Returns once the host's CPUs have been at least 90% idle over a 200 ms window, or after 30 s.
fn wait_for_idle_host() {
    const WINDOW: Duration = Duration::from_millis(200);
    let give_up = Instant::now() + Duration::from_secs(30);
    let mut before = cpu_times();
    while Instant::now() < give_up {
        thread::sleep(WINDOW);
        let after = cpu_times();
        let (idle, total) = (after.0 - before.0, after.1 - before.1);
        if total > 0 && idle * 10 >= total * 9 {
            return;
        }
        before = after;
    }
}

/// (idle, total) jiffies of all CPUs, from /proc/stat.
fn cpu_times() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .expect("a cpu line in /proc/stat")
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: idle and iowait are idle.
    let idle = fields.get(3).unwrap_or(&0) + fields.get(4).unwrap_or(&0);
    (idle, fields.iter().take(8).sum())
}

#[cfg(test)]
mod tests {
    use super::balanced_orders;

    #[test]
    fn every_variant_follows_every_other_and_holds_every_place_equally_often() {
        for n in 1..=6 {
            let orders = balanced_orders(n);
            let mut follows = vec![vec![0; n]; n];
            let mut places = vec![vec![0; n]; n];
            for order in &orders {
                let mut sorted = order.clone();
                sorted.sort();
                assert_eq!(
                    sorted,
                    (0..n).collect::<Vec<_>>(),
                    "{order:?} is not an order"
                );
                for (place, &variant) in order.iter().enumerate() {
                    places[variant][place] += 1;
                }
                for pair in order.windows(2) {
                    follows[pair[0]][pair[1]] += 1;
                }
            }
            let each = orders.len() / n;
            assert!(
                places.iter().flatten().all(|&c| c == each),
                "n={n}: {places:?}"
            );
            for (a, row) in follows.iter().enumerate() {
                for (b, &count) in row.iter().enumerate() {
                    let expected = if a == b { 0 } else { orders.len() / n };
                    assert_eq!(count, expected, "n={n}: {a} before {b} in {orders:?}");
                }
            }
        }
    }
}
