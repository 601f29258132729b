//! The six measurements. Each alternates its variants round by round, so machine noise falls on
//! all of them alike, and returns what it measured.
use std::{
    io::ErrorKind,
    net::TcpStream,
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use drainer_harness::{
    drainer::{drainer_command, status_json},
    process::{Process, monotonic_now},
};
use nix::sys::signal::Signal;

use crate::{
    bed::{Bed, PORT},
    clock::monotonic_ns,
    load,
    roles::raise_fd_limit,
    stats::{Latencies, median, quantile, sorted},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Nothing attached: the limit.
    Bare,
    /// drainer attached and serving.
    Drainer,
    /// An nftables REJECT rule in place while serving.
    Nftables,
}

/// Sets a variant up for the length of a closure.
fn with_variant<T>(bed: &Bed, variant: Variant, work: impl FnOnce() -> T) -> T {
    match variant {
        Variant::Bare => work(),
        Variant::Drainer => {
            let daemon = bed.daemon();
            let result = work();
            drop(daemon);
            result
        }
        Variant::Nftables => {
            bed.load_nft_reject();
            let result = work();
            bed.unload_nft();
            result
        }
    }
}

/// Per-variant samples, in the order the variants were given.
pub struct Samples {
    pub variants: Vec<(Variant, Vec<f64>)>,
}

impl Samples {
    /// Median over rounds of (variant / first variant), measured in the same round.
    pub fn ratio(&self, variant: Variant) -> f64 {
        median(&self.ratios(variant))
    }

    /// The first and third quartiles of the per-round ratios: how far one round's figure can be
    /// trusted on this machine.
    pub fn ratio_spread(&self, variant: Variant) -> (f64, f64) {
        let ratios = sorted(self.ratios(variant));
        (quantile(&ratios, 0.25), quantile(&ratios, 0.75))
    }

    fn ratios(&self, variant: Variant) -> Vec<f64> {
        let base = &self.variants[0].1;
        let values = &self
            .variants
            .iter()
            .find(|(v, _)| *v == variant)
            .expect("variant")
            .1;
        values.iter().zip(base).map(|(v, b)| v / b).collect()
    }

    pub fn median(&self, variant: Variant) -> f64 {
        median(
            &self
                .variants
                .iter()
                .find(|(v, _)| *v == variant)
                .expect("variant")
                .1,
        )
    }
}

fn alternate(
    rounds: usize,
    variants: &[Variant],
    mut measure: impl FnMut(Variant) -> f64,
) -> Samples {
    let mut samples: Vec<(Variant, Vec<f64>)> = variants.iter().map(|v| (*v, Vec::new())).collect();
    for round in 0..rounds {
        for k in 0..variants.len() {
            let index = (round + k) % variants.len();
            let value = measure(variants[index]);
            samples[index].1.push(value);
        }
    }
    Samples { variants: samples }
}

/// Measurement 1: New connections per second against a simple server.
pub fn connection_rate(bed: &Bed, rounds: usize, duration: Duration) -> Samples {
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
pub fn throughput(bed: &Bed, rounds: usize, duration: Duration) -> Samples {
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

/// Measurement 5: One scale point.
#[derive(Debug)]
pub struct Scale {
    pub counted: i64,
    pub ss: usize,
    pub attach_and_seed: Duration,
    /// Kernel memory of all the daemon's maps, total and per connection above an idle daemon's.
    pub map_bytes: u64,
    pub map_bytes_per_connection: f64,
    pub daemon_rss_bytes: u64,
}

pub fn scale(bed: &Bed, connections: usize) -> Scale {
    // Clients in processes of at most `per_process` descriptors each; servers that never accept.
    let per_process = (raise_fd_limit() as usize).saturating_sub(100).min(40_000);
    let addr = bed.server_addr().to_string();
    let listeners = (connections / 30_000 + 1).to_string();
    let server = bed.role(&["serve-hold", &addr, &listeners], "listening");
    let empty = bed.daemon();
    let empty_map = map_memlock(empty.pid().as_raw());
    drop(empty);

    let mut clients = Vec::new();
    let mut opened = 0;
    while opened < connections {
        let count = per_process.min(connections - opened);
        // Source addresses: 50,000 connections each, fresh ones per process.
        let first_source = (opened / per_process) * (per_process / 50_000 + 1);
        let mut command = bed
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

    let started = monotonic_now();
    let daemon = bed.daemon();
    let attached = daemon.wait_for("control socket", Duration::from_secs(1)).at;
    let status = status_json(&bed.dir.path().join("drainer.sock"));
    let map_bytes = map_memlock(daemon.pid().as_raw());
    let result = Scale {
        counted: status["live"].as_i64().unwrap_or(-1),
        ss: bed.ss_count(),
        attach_and_seed: Duration::from_secs_f64(attached - started),
        map_bytes,
        map_bytes_per_connection: (map_bytes.saturating_sub(empty_map)) as f64 / connections as f64,
        daemon_rss_bytes: rss(daemon.pid().as_raw()),
    };
    drop(daemon);
    drop(clients);
    drop(server);
    result
}

/// `memlock:` of all the daemon's BPF maps together, from fdinfo.
fn map_memlock(pid: i32) -> u64 {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).expect("fdinfo").flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        if field("map_type:").is_some() {
            total += field("memlock:")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
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
