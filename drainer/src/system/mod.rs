//! Small adapters to the system around drainer: its capabilities, systemd's notify socket, and
//! its log output.
pub mod capabilities;
pub mod logging;
pub(crate) mod systemd;
