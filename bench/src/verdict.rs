//! Whether a figure meets its goal. A figure measured over rounds is judged by its 95% interval,
//! so that a few noisy rounds read as "cannot tell" rather than as a miss or a pass by luck.
use std::fmt;

use crate::stats::MeanInterval;

/// Where the search for the rounds that would tell gives up: a run that long is no longer a
/// benchmark one would start, and the mean is then as good as on the goal.
pub const MOST_ROUNDS: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    NotMet,
    /// The 95% interval of the mean over `rounds` spans the goal.
    CannotTell {
        rounds: usize,
        needed: RoundsNeeded,
    },
}

/// The rounds that would put the interval on one side of the goal, if the mean and the spread of
/// the rounds stay as measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundsNeeded {
    About(usize),
    /// More than [`MOST_ROUNDS`]: the mean is too close to the goal for its spread.
    MoreThan(usize),
    /// One round shows no spread to estimate from.
    Unknown,
}

impl Verdict {
    /// For a figure that is not a mean over rounds (a percentile of many drains, a count), compared
    /// with its goal as it stands.
    pub fn of(met: bool) -> Self {
        if met { Self::Met } else { Self::NotMet }
    }

    /// For a mean over rounds that must be at least `goal`: met if its whole 95% interval is,
    /// not met if none of it is.
    pub fn at_least(goal: f64, rounds: &MeanInterval) -> Self {
        if rounds.low() >= goal {
            Self::Met
        } else if rounds.high() < goal {
            Self::NotMet
        } else {
            Self::CannotTell {
                rounds: rounds.rounds,
                needed: rounds_needed(goal, rounds),
            }
        }
    }
}

/// The fewest rounds whose interval, as wide as this deviation makes it, would be narrower than the
/// mean's distance to the goal.
fn rounds_needed(goal: f64, rounds: &MeanInterval) -> RoundsNeeded {
    let gap = (rounds.mean - goal).abs();
    if !rounds.deviation.is_finite() || !gap.is_finite() {
        return RoundsNeeded::Unknown;
    }
    (rounds.rounds + 1..=MOST_ROUNDS)
        .find(|&n| rounds.half_width_at(n) < gap)
        .map_or(RoundsNeeded::MoreThan(MOST_ROUNDS), RoundsNeeded::About)
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Met => write!(f, "yes"),
            Self::NotMet => write!(f, "no"),
            Self::CannotTell { rounds, needed } => {
                let plural = if *rounds == 1 { "" } else { "s" };
                write!(f, "cannot tell at {rounds} round{plural}")?;
                match needed {
                    RoundsNeeded::About(n) => write!(f, " (about {n} would)"),
                    RoundsNeeded::MoreThan(n) => write!(f, " (more than {n} would)"),
                    RoundsNeeded::Unknown => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(goal: f64, rounds: &[f64]) -> Verdict {
        Verdict::at_least(goal, &MeanInterval::of(rounds))
    }

    #[test]
    fn rounds_clearly_above_the_goal_meet_it() {
        assert_eq!(verdict(0.99, &[1.04, 1.06, 1.05]), Verdict::Met);
    }

    #[test]
    fn rounds_clearly_below_the_goal_do_not_meet_it() {
        assert_eq!(verdict(0.99, &[0.89, 0.91, 0.90]), Verdict::NotMet);
    }

    #[test]
    fn identical_rounds_tell_at_once() {
        assert_eq!(verdict(0.99, &[0.995, 0.995]), Verdict::Met);
        assert_eq!(verdict(0.99, &[0.985, 0.985]), Verdict::NotMet);
    }

    #[test]
    fn rounds_spanning_the_goal_cannot_tell_and_need_more_the_closer_the_mean() {
        // Three rounds 0.05 either side of their mean, as noisy as a quick run on a busy host.
        let mut before = 3;
        for mean in [0.95, 0.97, 0.98, 0.985, 0.989] {
            let rounds = MeanInterval::of(&[mean - 0.05, mean, mean + 0.05]);
            let Verdict::CannotTell {
                rounds: 3,
                needed: RoundsNeeded::About(needed),
            } = Verdict::at_least(0.99, &rounds)
            else {
                panic!("mean {mean}: {:?}", Verdict::at_least(0.99, &rounds));
            };
            // The fewest that would tell: one round fewer would not.
            let gap = 0.99 - mean;
            assert!(rounds.half_width_at(needed) < gap, "mean {mean}");
            assert!(rounds.half_width_at(needed - 1) >= gap, "mean {mean}");
            assert!(needed > before, "mean {mean}: {needed} after {before}");
            before = needed;
        }
    }

    #[test]
    fn a_quick_run_whose_median_missed_the_goal_cannot_tell() {
        // Row 1 of a three-round run: median 0.945, which the median rule printed as a miss.
        assert_eq!(
            verdict(0.99, &[0.936, 0.945, 1.073]).to_string(),
            "cannot tell at 3 rounds (about 796 would)"
        );
    }

    #[test]
    fn a_mean_on_the_goal_needs_more_rounds_than_the_search_allows() {
        assert_eq!(
            verdict(1.0, &[0.95, 1.0, 1.05]),
            Verdict::CannotTell {
                rounds: 3,
                needed: RoundsNeeded::MoreThan(MOST_ROUNDS)
            }
        );
    }

    #[test]
    fn one_round_cannot_tell_however_far_from_the_goal() {
        for round in [0.5, 2.0] {
            assert_eq!(
                verdict(0.99, &[round]),
                Verdict::CannotTell {
                    rounds: 1,
                    needed: RoundsNeeded::Unknown
                }
            );
        }
    }

    #[test]
    fn verdicts_read_as_the_table_prints_them() {
        assert_eq!(Verdict::of(true).to_string(), "yes");
        assert_eq!(Verdict::of(false).to_string(), "no");
        let cannot_tell = |rounds, needed| Verdict::CannotTell { rounds, needed }.to_string();
        assert_eq!(
            cannot_tell(3, RoundsNeeded::About(40)),
            "cannot tell at 3 rounds (about 40 would)"
        );
        assert_eq!(
            cannot_tell(3, RoundsNeeded::MoreThan(MOST_ROUNDS)),
            "cannot tell at 3 rounds (more than 10000 would)"
        );
        assert_eq!(
            cannot_tell(1, RoundsNeeded::Unknown),
            "cannot tell at 1 round"
        );
    }
}
