//! Harness for integration tests that run drainer on the real kernel.
