//! Small adapters to the system around drainer: its capabilities, its hardening at start,
//! processes held by pidfds, systemd's notify socket, its log output, and the files whose
//! contents it acts on.
pub mod capabilities;
pub mod hardening;
pub mod logging;
pub mod pidfd;
pub(crate) mod systemd;
pub mod trusted_file;
