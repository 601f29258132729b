//! Small adapters to the system around drainer: its capabilities, its hardening at start,
//! systemd's notify socket, and its log output.
pub mod capabilities;
pub mod hardening;
pub mod logging;
pub(crate) mod systemd;
