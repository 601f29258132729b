//! `drainer-bench`: drainer measured against the limit and its peers, in one run. Started by
//! `cargo xtask bench` (as root); also the servers, child and poll-based peer the runs start.
mod bed;
mod clock;
mod load;
mod measure;
mod replacement;
mod report;
mod roles;
mod stats;
mod verdict;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::{
    bed::Bed,
    measure::{Steering, Variant},
    replacement::Way,
    report::{Bar, Row},
    stats::MeanInterval,
    verdict::Verdict,
};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Run the benchmarks and write the results.
    Run {
        /// Fewer rounds and drains, the smallest scale point.
        #[arg(long)]
        quick: bool,
        /// Where latest.md and latest.svg (quick.md and quick.svg with --quick) go.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// Only these measurements (rate, throughput, release, activation, scale, idle, node,
        /// steering, replacement).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    #[command(hide = true)]
    ServeRequests { addr: SocketAddr, workers: usize },
    #[command(hide = true)]
    ServeSink { addr: SocketAddr },
    #[command(hide = true)]
    ServeHold { addr: SocketAddr, listeners: usize },
    #[command(hide = true)]
    HoldClients {
        addr: SocketAddr,
        count: usize,
        first_source: usize,
    },
    #[command(hide = true)]
    Child { addr: SocketAddr },
    #[command(hide = true)]
    PollRun {
        #[arg(long)]
        port: u16,
        #[arg(last = true)]
        command: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Role::Run { quick, out, only } => run(quick, &out, &only),
        Role::ServeRequests { addr, workers } => roles::serve_requests(addr, workers),
        Role::ServeSink { addr } => roles::serve_sink(addr),
        Role::ServeHold { addr, listeners } => roles::serve_hold(addr, listeners),
        Role::HoldClients {
            addr,
            count,
            first_source,
        } => roles::hold_clients(addr, count, first_source),
        Role::Child { addr } => roles::child(addr),
        Role::PollRun { port, command } => roles::poll_run(port, &command),
    }
}

/// The scale point the drain's first count has a goal at; smaller points report their time.
const TIMED_SCALE: usize = 1_000_000;

/// Serving drainers in other namespaces, the variants of measurement 7: none, some, many.
const NEIGHBOUR_DRAINERS: [usize; 3] = [0, 20, 100];

struct Plan {
    rounds: usize,
    duration: Duration,
    drains: usize,
    scale: &'static [usize],
    idle: Duration,
    /// Rounds of measurement 7, fewer than `rounds`: each round starts 120 daemons, at about
    /// 0.3 s of CPU each nearly 20 s on two cores.
    node_rounds: usize,
    /// Replacements of measurement 9 each way, and how long its live session lasts.
    replacements: usize,
    session: Duration,
}

fn run(quick: bool, out: &std::path::Path, only: &[String]) -> Result<()> {
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let plan = if quick {
        Plan {
            rounds: 3,
            duration: Duration::from_millis(700),
            drains: 20,
            scale: &[10_000],
            idle: Duration::from_secs(3),
            node_rounds: 3,
            replacements: 1,
            session: Duration::from_secs(2),
        }
    } else {
        Plan {
            rounds: 21,
            duration: Duration::from_secs(1),
            drains: 200,
            scale: &[10_000, 100_000, 1_000_000],
            idle: Duration::from_secs(10),
            node_rounds: 9,
            replacements: 5,
            session: Duration::from_secs(3),
        }
    };
    let date = String::from_utf8_lossy(
        &std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output()?
            .stdout,
    )
    .trim()
    .to_owned();
    let mut rows = Vec::new();

    if wanted("rate") {
        const GOAL: f64 = 0.99;
        eprintln!("bench: 1/9 new-connection rate");
        let rate = measure::connection_rate(&Bed::create("rate"), plan.rounds, plan.duration);
        let drainer = rate.ratio(Variant::Drainer);
        let nftables = rate.ratio(Variant::Nftables);
        rows.push(Row {
            measurement: "1. new connections/s (connect, 16 B request, close)".into(),
            result: format!(
                "drainer **{:.3}** × limit per round (mean of {}; {}), {:.0}/s against {:.0}/s; \
                 nftables REJECT rule {:.3} × limit ({})",
                drainer.mean,
                drainer.rounds,
                interval(&drainer),
                rate.mean(Variant::Drainer),
                rate.mean(Variant::Bare),
                nftables.mean,
                interval(&nftables),
            ),
            goal: format!("≥ {GOAL} × limit"),
            verdict: Verdict::at_least(GOAL, &drainer),
            bar: Some(Bar {
                label: "1. connection rate".into(),
                ratio: drainer,
                goal: GOAL,
            }),
        });
    }
    if wanted("throughput") {
        const GOAL: f64 = 0.995;
        eprintln!("bench: 2/9 established throughput");
        let flow = measure::throughput(&Bed::create("throughput"), plan.rounds, plan.duration);
        let drainer = flow.ratio(Variant::Drainer);
        rows.push(Row {
            measurement: "2. established-flow throughput (4 streams)".into(),
            result: format!(
                "drainer **{:.3}** × without per round (mean of {}; {}), {:.2} GB/s against {:.2} GB/s",
                drainer.mean,
                drainer.rounds,
                interval(&drainer),
                flow.mean(Variant::Drainer) / 1e9,
                flow.mean(Variant::Bare) / 1e9
            ),
            goal: format!("≥ {GOAL}"),
            verdict: Verdict::at_least(GOAL, &drainer),
            bar: Some(Bar {
                label: "2. throughput".into(),
                ratio: drainer,
                goal: GOAL,
            }),
        });
    }
    if wanted("release") {
        eprintln!("bench: 3/9 release latency ({} drains each)", plan.drains);
        let (ours, peer) = measure::release_latency(&Bed::create("release"), plan.drains);
        rows.push(Row {
        measurement: format!("3. release latency, last close → child signalled ({} drains each)", ours.count),
        result: format!(
            "drainer p50 {:.3} / p99 {:.3} / max {:.3} ms; 100 ms sock_diag poller p50 {:.1} / p99 {:.1} / max {:.1} ms",
            ours.p50, ours.p99, ours.max, peer.p50, peer.p99, peer.max
        ),
        goal: "p99 ≤ 1 ms".into(),
        verdict: Verdict::of(ours.p99 <= 1.0),
        bar: None,
    });
    }
    if wanted("activation") {
        eprintln!("bench: 4/9 refusal activation ({} drains)", plan.drains);
        let activation = measure::refusal_activation(&Bed::create("activation"), plan.drains);
        rows.push(Row {
            measurement: format!(
                "4. refusal activation, SIGTERM → first refused connect ({} drains)",
                activation.count
            ),
            result: format!(
                "p50 {:.3} / p99 {:.3} / max {:.3} ms",
                activation.p50, activation.p99, activation.max
            ),
            goal: "p99 ≤ 1 ms".into(),
            verdict: Verdict::of(activation.p99 <= 1.0),
            bar: None,
        });
    }
    for &connections in plan.scale.iter().filter(|_| wanted("scale")) {
        let timed = connections >= TIMED_SCALE;
        let goal = if timed {
            "exact; first exact count ≤ 1.5 s at 1M; ≤ 64 B/connection; RSS ≤ 16 MiB"
        } else {
            "exact; ≤ 64 B/connection; RSS ≤ 16 MiB"
        };
        // Each connection is two sockets of a few KiB each, client and server side.
        let needed = connections as u64 * 8 * 1024;
        if available_memory() < needed {
            rows.push(Row {
                measurement: format!("5. {connections} concurrent connections"),
                result: format!("skipped: needs about {} GiB of free memory", needed >> 30),
                goal: goal.into(),
                verdict: Verdict::NotMet,
                bar: None,
            });
            continue;
        }
        eprintln!("bench: 5/9 scale, {connections} connections");
        let point = measure::scale(&Bed::create("scale"), connections);
        let expected = connections as i64;
        let exact =
            point.serving == expected && point.counted == expected && point.ss == connections;
        rows.push(Row {
            measurement: format!("5. {connections} concurrent connections"),
            result: format!(
                "status while serving {}; counted {} (ss {}) at the drain's first count, {:.0} ms after SIGTERM; BPF maps once draining {:.1} MiB = {:.0} B/connection above an idle daemon's; daemon RSS {:.1} MiB",
                point.serving,
                point.counted,
                point.ss,
                point.first_count.as_secs_f64() * 1e3,
                point.map_bytes as f64 / 1048576.0,
                point.map_bytes_per_connection,
                point.daemon_rss_bytes as f64 / 1048576.0,
            ),
            goal: goal.into(),
            verdict: Verdict::of(
                exact
                    && (!timed || point.first_count <= Duration::from_millis(1500))
                    && point.map_bytes_per_connection <= 64.0
                    && point.daemon_rss_bytes <= 16 << 20,
            ),
            bar: None,
        });
    }

    if wanted("idle") {
        eprintln!("bench: 6/9 idle cost");
        let idle = measure::idle(&Bed::create("idle"), plan.idle);
        rows.push(Row {
            measurement: format!("6. idle daemon over {:.0} s", idle.window.as_secs_f64()),
            result: format!(
                "{:.2} wakeups/s, {:.3} s CPU",
                idle.wakeups_per_second, idle.cpu_seconds
            ),
            goal: "0 wakeups/s".into(),
            verdict: Verdict::of(idle.wakeups_per_second == 0.0),
            bar: None,
        });
    }

    if wanted("node") {
        const GOAL: f64 = 0.99;
        let [none, some, many] = NEIGHBOUR_DRAINERS;
        eprintln!("bench: 7/9 drainers on one node ({none}, {some}, {many})");
        let node = measure::drainers_on_one_node(
            &Bed::create("node"),
            &NEIGHBOUR_DRAINERS,
            plan.node_rounds,
            plan.duration,
        );
        let beside_some = node.ratio(some);
        let beside_many = node.ratio(many);
        rows.push(Row {
            measurement: "7. new connections/s in a namespace without drainer, beside serving drainers in other namespaces".into(),
            result: format!(
                "{none} drainers {:.0}/s (mean of {} rounds); per round, {some} drainers {:.3} × that ({}); \
                 {many} drainers **{:.3}** × ({})",
                node.mean(none),
                beside_many.rounds,
                beside_some.mean,
                interval(&beside_some),
                beside_many.mean,
                interval(&beside_many),
            ),
            goal: format!("≥ {GOAL} × the {none}-drainer rate with {many} drainers"),
            verdict: Verdict::at_least(GOAL, &beside_many),
            bar: Some(Bar {
                label: format!("7. beside {many} drainers"),
                ratio: beside_many,
                goal: GOAL,
            }),
        });
    }

    if wanted("steering") {
        const GOAL: f64 = 0.99;
        eprintln!("bench: 8/9 new connections steered to a restarted server's generation");
        let steering = measure::steered_rate(&Bed::create("steering"), plan.rounds, plan.duration);
        let steered = steering.ratio(Steering::Steered);
        rows.push(Row {
            measurement: "8. new connections/s to a restarted server's port, each steered by sk_lookup to its generation listening on another port".into(),
            result: format!(
                "steered **{:.3}** × the server on the port itself per round (mean of {}; {}), \
                 {:.0}/s against {:.0}/s",
                steered.mean,
                steered.rounds,
                interval(&steered),
                steering.mean(Steering::Steered),
                steering.mean(Steering::Direct),
            ),
            goal: format!("≥ {GOAL} × the server on the port itself"),
            verdict: Verdict::at_least(GOAL, &steered),
            bar: Some(Bar {
                label: "8. steered connections".into(),
                ratio: steered,
                goal: GOAL,
            }),
        });
    }

    if wanted("replacement") {
        eprintln!(
            "bench: 9/9 a server replaced three ways, {} new connections/s offered throughout",
            replacement::RATE
        );
        let runs =
            replacement::replacements(&Bed::create("replacement"), plan.replacements, plan.session);
        let of = |way: Way| runs.iter().filter(move |r| r.way == way);
        let summary = |way: Way| {
            let offered: usize = of(way).map(|r| r.offered).sum();
            let failed: usize = of(way).map(|r| r.failed).sum();
            let kept = of(way).filter(|r| r.session_kept).count();
            let failing = stats::mean(
                &of(way)
                    .map(|r| r.failing_for.as_secs_f64() * 1e3)
                    .collect::<Vec<_>>(),
            );
            let failing = if failed == 0 {
                String::new()
            } else {
                format!(", failing for {failing:.0} ms a time")
            };
            format!(
                "{failed} of {offered} failed{failing}, session kept {kept} of {} times",
                of(way).count()
            )
        };
        let steered = stats::sorted(
            of(Way::Restart)
                .filter_map(|r| r.listen_to_first)
                .map(|d| d.as_secs_f64() * 1e3)
                .collect(),
        );
        let restart_clean = of(Way::Restart).all(|r| r.failed == 0 && r.session_kept);
        rows.push(Row {
            measurement: format!(
                "9. a server replaced on one host, {} new connections/s offered throughout and \
                 a live session held across it for {:.0} s ({} times each way)",
                replacement::RATE,
                plan.session.as_secs_f64(),
                plan.replacements
            ),
            result: format!(
                "drainer's restart: **{}**; the new generation's first connection {} after it \
                 listened. Stop-and-start: {}. Drain, then start: {}",
                summary(Way::Restart),
                match steered.as_slice() {
                    [] => "never seen".to_owned(),
                    [only] => format!("{only:.1} ms"),
                    _ => format!(
                        "median {:.1} ms, max {:.1} ms",
                        stats::quantile(&steered, 0.5),
                        steered[steered.len() - 1]
                    ),
                },
                summary(Way::StopAndStart),
                summary(Way::DrainThenStart),
            ),
            goal: "drainer's restart: 0 failed, every session kept".into(),
            verdict: Verdict::of(restart_clean),
            bar: None,
        });
    }

    let machine = report::machine();
    let markdown = report::markdown(&date, &machine, if quick { " --quick" } else { "" }, &rows);
    // A quick run does not replace the published full one.
    let name = if quick { "quick" } else { "latest" };
    report::write(out, name, &markdown, &report::svg(&date, &rows))?;
    println!("{markdown}");
    Ok(())
}

/// MemAvailable, in bytes.
fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// A mean's 95% interval as the rows print it.
fn interval(ratio: &MeanInterval) -> String {
    if ratio.rounds < 2 {
        return "one round: no interval".into();
    }
    format!("95% interval {:.3}–{:.3}", ratio.low(), ratio.high())
}
