//! How long a wait may last here. Every timeout in the tests is an upper bound set for a host of
//! this kind, with room to spare; a slower environment (an emulated VM runs the same code many
//! times slower) stretches them all by one factor, `DRAINER_TEST_PATIENCE`, which whoever runs
//! the tests there sets. A larger factor only lengthens how long a failing test takes to fail:
//! a test that passes returns as soon as what it waits for happens.
use std::{env, sync::OnceLock, time::Duration};

/// `wait`, stretched by the environment's factor (1 unless `DRAINER_TEST_PATIENCE` says more).
pub fn patience(wait: Duration) -> Duration {
    wait.mul_f64(factor())
}

fn factor() -> f64 {
    static FACTOR: OnceLock<f64> = OnceLock::new();
    *FACTOR.get_or_init(|| match env::var("DRAINER_TEST_PATIENCE") {
        Err(_) => 1.0,
        Ok(text) => match text.parse::<f64>() {
            Ok(factor) if factor.is_finite() && factor >= 1.0 => factor,
            _ => panic!(
                "DRAINER_TEST_PATIENCE={text:?}: give a number of at least 1, the factor every \
                 wait of the tests is stretched by"
            ),
        },
    })
}
