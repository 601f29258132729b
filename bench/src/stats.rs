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

pub fn mean(samples: &[f64]) -> f64 {
    samples.iter().sum::<f64>() / samples.len() as f64
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

/// The mean of per-round figures and its 95% confidence interval (Student's t): where the mean of
/// many more rounds would lie, judged from how much these rounds differ.
#[derive(Clone, Copy, Debug)]
pub struct MeanInterval {
    pub mean: f64,
    /// The sample standard deviation of the rounds (n − 1 in the denominator); NaN for one round.
    pub deviation: f64,
    pub rounds: usize,
}

impl MeanInterval {
    pub fn of(rounds: &[f64]) -> Self {
        let mean = mean(rounds);
        let squares: f64 = rounds.iter().map(|r| (r - mean).powi(2)).sum();
        Self {
            mean,
            deviation: (squares / (rounds.len() as f64 - 1.0)).sqrt(),
            rounds: rounds.len(),
        }
    }

    /// Half the interval's width at `rounds` rounds with this deviation; infinite below two
    /// rounds, which have no spread to judge by.
    pub fn half_width_at(&self, rounds: usize) -> f64 {
        if rounds < 2 {
            return f64::INFINITY;
        }
        student_t_975(rounds - 1) * self.deviation / (rounds as f64).sqrt()
    }

    pub fn half_width(&self) -> f64 {
        self.half_width_at(self.rounds)
    }

    pub fn low(&self) -> f64 {
        self.mean - self.half_width()
    }

    pub fn high(&self) -> f64 {
        self.mean + self.half_width()
    }
}

/// t(0.975, df), the quantile of Student's t that bounds a two-sided 95% interval.
pub fn student_t_975(degrees_of_freedom: usize) -> f64 {
    // Exact to six digits up to 30 degrees of freedom, where the expansion below is still off by
    // up to 1.4 at df 1 and 0.03 at df 2.
    const TABLE: [f64; 30] = [
        12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
        2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
        2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
        2.048407, 2.045230, 2.042272,
    ];
    assert!(degrees_of_freedom > 0, "no degrees of freedom");
    if let Some(&t) = TABLE.get(degrees_of_freedom - 1) {
        return t;
    }
    // Beyond the table, the Cornish–Fisher expansion around the normal quantile (Abramowitz and
    // Stegun 26.7.5): within 1e-6 from 31 degrees of freedom on.
    let z: f64 = 1.959_963_984_540_054;
    let v = degrees_of_freedom as f64;
    let g1 = (z.powi(3) + z) / 4.0;
    let g2 = (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / 96.0;
    let g3 = (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / 384.0;
    let g4 = (79.0 * z.powi(9) + 776.0 * z.powi(7) + 1482.0 * z.powi(5)
        - 1920.0 * z.powi(3)
        - 945.0 * z)
        / 92160.0;
    z + g1 / v + g2 / v.powi(2) + g3 / v.powi(3) + g4 / v.powi(4)
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
    }

    #[test]
    fn student_t_matches_published_quantiles() {
        // t(0.975, df) from the usual tables, and the normal quantile it tends to.
        for (df, expected) in [
            (1, 12.706),
            (2, 4.303),
            (8, 2.306),
            (20, 2.086),
            (30, 2.042),
            (31, 2.040),
            (40, 2.021),
            (60, 2.000),
            (120, 1.980),
            (1_000_000, 1.960),
        ] {
            let t = student_t_975(df);
            assert!(
                (t - expected).abs() < 1e-3,
                "df {df}: {t} against {expected}"
            );
        }
    }

    #[test]
    fn student_t_falls_towards_the_normal_quantile_without_a_step_after_the_table() {
        let ts: Vec<f64> = (1..=200).map(student_t_975).collect();
        assert!(ts.windows(2).all(|pair| pair[0] > pair[1]), "{ts:?}");
        assert!(ts.iter().all(|&t| t > 1.959_963));
    }

    #[test]
    fn interval_of_a_mean() {
        // The interval is mean ± t(0.975, 3) · s / √4.
        let rounds = MeanInterval::of(&[0.9, 1.0, 1.1, 1.0]);
        let deviation = (0.02f64 / 3.0).sqrt();
        assert!((rounds.mean - 1.0).abs() < 1e-12);
        assert!((rounds.deviation - deviation).abs() < 1e-12);
        let half = 3.182446 * deviation / 2.0;
        assert!((rounds.low() - (1.0 - half)).abs() < 1e-9);
        assert!((rounds.high() - (1.0 + half)).abs() < 1e-9);
    }

    #[test]
    fn one_round_has_no_interval() {
        let round = MeanInterval::of(&[0.97]);
        assert_eq!(round.mean, 0.97);
        assert_eq!(round.low(), f64::NEG_INFINITY);
        assert_eq!(round.high(), f64::INFINITY);
    }
}
