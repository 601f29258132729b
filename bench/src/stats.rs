//! Summaries of repeated measurements.
use std::time::Duration;

/// The value below which `q` (0..=1) of the sorted samples fall (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "no samples");
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn sorted(mut samples: Vec<f64>) -> Vec<f64> {
    samples.sort_by(f64::total_cmp);
    samples
}

pub fn median(samples: &[f64]) -> f64 {
    quantile(&sorted(samples.to_vec()), 0.5)
}

/// p50, p99 and max of latencies, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Latencies {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub count: usize,
}

impl Latencies {
    pub fn of(samples: &[Duration]) -> Self {
        let ms = sorted(samples.iter().map(|d| d.as_secs_f64() * 1e3).collect());
        Self {
            p50: quantile(&ms, 0.5),
            p99: quantile(&ms, 0.99),
            max: *ms.last().unwrap(),
            count: ms.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let values = sorted((1..=100).map(f64::from).collect());
        assert_eq!(quantile(&values, 0.5), 50.0);
        assert_eq!(quantile(&values, 0.99), 99.0);
        assert_eq!(quantile(&values, 1.0), 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }
}
