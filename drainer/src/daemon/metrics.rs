//! /metrics in the Prometheus text exposition format, rendered from a [`Status`].
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use drainer_common::protocol::{State, Status};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabel {
    port: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

pub fn render(status: &Status) -> String {
    let mut registry = Registry::with_prefix("drainer");

    let live = Family::<PortLabel, Gauge>::default();
    let refused = Family::<PortLabel, Counter>::default();
    let untracked = Family::<PortLabel, Counter>::default();
    for port in &status.ports {
        live.get_or_create(&PortLabel { port: port.port })
            .set(port.live);
        refused
            .get_or_create(&PortLabel { port: port.port })
            .inc_by(port.refused);
        untracked
            .get_or_create(&PortLabel { port: port.port })
            .inc_by(port.untracked);
    }
    registry.register(
        "live_connections",
        "Established connections to the guarded port not yet closed",
        live,
    );
    registry.register(
        "refused_connections",
        "Connections refused while draining",
        refused,
    );

    let state = Family::<StateLabel, Gauge>::default();
    for each in [State::Serving, State::Draining, State::Released] {
        state
            .get_or_create(&StateLabel {
                state: each.as_str(),
            })
            .set(i64::from(each == status.state));
    }
    registry.register("state", "1 for the current drain state", state);

    let duration = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    duration.set(status.drain_elapsed_seconds.unwrap_or(0.0));
    registry.register(
        "drain_duration_seconds",
        "Time since the drain started, or its length once released",
        duration,
    );

    let deadline_hits = Counter::<u64>::default();
    deadline_hits.inc_by(status.deadline_hits);
    registry.register(
        "deadline_hits",
        "Drains cut by their deadline",
        deadline_hits,
    );

    registry.register(
        "untracked_connections",
        "Connections that could not be recorded (a full map); any makes the count unknown",
        untracked,
    );
    let missed = Counter::<u64>::default();
    missed.inc_by(status.missed_state_changes);
    registry.register(
        "missed_state_changes",
        "TCP state changes the kernel skipped the tracepoint for; after any, the socket table counts",
        missed,
    );

    if let Some(idle) = status.idle_live {
        let gauge = Gauge::<i64>::default();
        gauge.set(idle);
        registry.register(
            "idle_connections",
            "Live connections idle for the drain's release-when-idle duration (while such a drain refuses)",
            gauge,
        );
    }

    let exact = Gauge::<i64>::default();
    exact.set(i64::from(status.count_exact));
    registry.register(
        "count_exact",
        "0 once the live count is unknown (a connection could not be recorded)",
        exact,
    );

    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}
