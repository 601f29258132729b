//! Small adapters to the system around drainer: its capabilities, its hardening at start,
//! processes held by pidfds, systemd's notify socket, and its log output.
pub mod capabilities;
pub mod hardening;
pub mod logging;
pub mod pidfd;
pub(crate) mod systemd;
