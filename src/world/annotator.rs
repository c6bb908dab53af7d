//! The simulated annotator: turns true rewards into the kinds of feedback people give
//! (pairwise preferences, rankings, 1-5 scores, behaviour flags) with controlled noise.
//!
//! Each function is small and pure apart from an explicit random number generator, and
//! each draws a fixed number of random values whatever its inputs, so that changing one
//! parameter (a temperature, a miss rate) does not shift the random stream of later labels.
//! The noise models are the ones the reward models assume: Bradley-Terry for pairs,
//! Plackett-Luce for rankings, ordered probit for scores.

use rand::Rng;
use rand_distr::{Distribution, Gumbel, StandardNormal};

/// Cut points for `ordered_probit` on the oracle's reward scale [-2.5, 2]: midway between the
/// typical rewards -2, -1, 0, 1 and 2, so that without noise each maps to its own score.
pub const DEFAULT_PROBIT_THRESHOLDS: [f64; 4] = [-1.5, -0.5, 0.5, 1.5];

/// The logistic function, computed without overflow for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let exp_x = x.exp();
        exp_x / (1.0 + exp_x)
    }
}

/// The Bradley-Terry probability that an annotator prefers A to B:
/// `sigmoid((r_a - r_b) / temperature)`. Temperature 0 is a perfect annotator: 1 or 0, and
/// 0.5 for a tie.
pub fn bt_prob(r_a: f64, r_b: f64, temperature: f64) -> f64 {
    debug_assert!(temperature >= 0.0, "temperature must be non-negative");
    if temperature == 0.0 {
        return match r_a.partial_cmp(&r_b) {
            Some(std::cmp::Ordering::Greater) => 1.0,
            Some(std::cmp::Ordering::Less) => 0.0,
            _ => 0.5,
        };
    }
    sigmoid((r_a - r_b) / temperature)
}

/// Whether the annotator prefers A to B, drawn with probability `bt_prob`. At temperature 0
/// the better response always wins and a tie is a fair coin. Draws one uniform number.
pub fn prefer_first(rng: &mut impl Rng, r_a: f64, r_b: f64, temperature: f64) -> bool {
    let uniform: f64 = rng.random();
    uniform < bt_prob(r_a, r_b, temperature)
}

/// A ranking of `rewards` under the Plackett-Luce model with scores `rewards / temperature`,
/// best first, as indices into `rewards`. Sampled exactly by the Gumbel-max trick: sorting
/// `r / T + Gumbel noise` gives a Plackett-Luce permutation. At temperature 0 the ranking is
/// by reward, ties broken at random. Draws one Gumbel number per reward.
pub fn plackett_luce(rng: &mut impl Rng, rewards: &[f64], temperature: f64) -> Vec<usize> {
    debug_assert!(temperature >= 0.0, "temperature must be non-negative");
    let standard_gumbel = Gumbel::new(0.0, 1.0).expect("valid parameters");
    let keyed: Vec<(f64, f64, usize)> = rewards
        .iter()
        .enumerate()
        .map(|(reward_idx, &reward)| {
            let noise: f64 = standard_gumbel.sample(rng);
            if temperature == 0.0 {
                (reward, noise, reward_idx)
            } else {
                (reward / temperature + noise, 0.0, reward_idx)
            }
        })
        .collect();
    let mut ranked = keyed;
    ranked.sort_by(|left, right| {
        right
            .0
            .total_cmp(&left.0)
            .then(right.1.total_cmp(&left.1))
            .then(left.2.cmp(&right.2))
    });
    ranked
        .into_iter()
        .map(|(_, _, reward_idx)| reward_idx)
        .collect()
}

/// A 1-5 score under the ordered probit model: the latent quality `reward + N(0, noise_sd²)`
/// is cut by four increasing `thresholds`; the score is 1 plus the number of cut points the
/// latent exceeds (a latent exactly on a cut point gets the lower score). Draws one normal
/// number, even when `noise_sd` is 0.
///
/// # Panics
///
/// When `thresholds` is not four strictly increasing finite numbers or `noise_sd` is
/// negative; check spec values with `check_probit_parameters` first.
pub fn ordered_probit(rng: &mut impl Rng, reward: f64, thresholds: &[f64], noise_sd: f64) -> u8 {
    if let Err(message) = check_probit_parameters(thresholds, noise_sd) {
        panic!("{message}");
    }
    let standard_normal: f64 = StandardNormal.sample(rng);
    let latent = reward + noise_sd * standard_normal;
    1 + thresholds
        .iter()
        .filter(|&&cut_point| latent > cut_point)
        .count() as u8
}

/// Checks the parameters of `ordered_probit`, with a message a person can act on.
pub fn check_probit_parameters(thresholds: &[f64], noise_sd: f64) -> Result<(), String> {
    if thresholds.len() != 4 {
        return Err(format!(
            "`thresholds` needs 4 cut points for scores 1 to 5, got {}",
            thresholds.len()
        ));
    }
    if thresholds.iter().any(|cut_point| !cut_point.is_finite())
        || thresholds.windows(2).any(|pair| pair[0] >= pair[1])
    {
        return Err(format!(
            "`thresholds` must be finite and strictly increasing, got {thresholds:?}"
        ));
    }
    if !(noise_sd >= 0.0 && noise_sd.is_finite()) {
        return Err(format!(
            "`noise_sd` must be a non-negative number, got {noise_sd}"
        ));
    }
    Ok(())
}

/// Whether the annotator raises a flag (hallucination, bias, unsafe) given whether the
/// behaviour is truly there: a true behaviour is missed with probability `miss_rate`, an
/// absent one flagged with probability `false_alarm_rate`. Draws one uniform number.
pub fn flag(rng: &mut impl Rng, truth: bool, miss_rate: f64, false_alarm_rate: f64) -> bool {
    let uniform: f64 = rng.random();
    if truth {
        uniform >= miss_rate
    } else {
        uniform < false_alarm_rate
    }
}

/// The standard normal CDF, to within 1.2e-7 (Numerical Recipes' Chebyshev fit of erfc).
/// Gives the probabilities of `ordered_probit`'s scores:
/// P(score = k) = Φ((c_k - r) / sd) - Φ((c_{k-1} - r) / sd).
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let polynomial = -1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806
                        + t * (0.27886807
                            + t * (-1.13520398
                                + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let tail = t * (-z * z + polynomial).exp();
    if x >= 0.0 { tail } else { 2.0 - tail }
}

#[cfg(test)]
mod tests {
    //! The statistical tests draw many labels with fixed seeds and compare frequencies with
    //! the model's exact probabilities. Each allows 4 standard errors of the frequency
    //! (sqrt(p (1 - p) / n)): with fixed seeds the tests are deterministic, and 4 rather
    //! than 3 keeps them passing if the random stream changes (a seed, a rand release),
    //! since a 4-sigma miss happens for about 1 check in 16,000 while a wrong formula misses
    //! by many more standard errors at these sample sizes.

    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const N_DRAWS: usize = 20_000;
    const N_STANDARD_ERRORS: f64 = 4.0;

    fn assert_close_in_standard_errors(
        label: &str,
        observed: f64,
        expected: f64,
        standard_error: f64,
    ) {
        let z_score = (observed - expected) / standard_error;
        eprintln!("{label}: observed {observed:.4}, expected {expected:.4}, z = {z_score:+.2}");
        assert!(
            z_score.abs() <= N_STANDARD_ERRORS,
            "{label}: observed {observed}, expected {expected}, z = {z_score}"
        );
    }

    fn assert_frequency(label: &str, n_hits: usize, n_draws: usize, probability: f64) {
        if probability == 0.0 || probability == 1.0 {
            // No spread to measure: a certain event must always (or never) happen.
            assert_eq!(n_hits as f64 / n_draws as f64, probability, "{label}");
            return;
        }
        let standard_error = (probability * (1.0 - probability) / n_draws as f64).sqrt();
        assert_close_in_standard_errors(
            label,
            n_hits as f64 / n_draws as f64,
            probability,
            standard_error,
        );
    }

    #[test]
    fn bt_prob_hand_computed() {
        // sigmoid(1) = 1 / (1 + e^-1) = 0.7310585786300049
        assert!((bt_prob(1.0, 0.0, 1.0) - 0.7310585786300049).abs() < 1e-15);
        // sigmoid((0.5 - 1.0) / 0.5) = sigmoid(-1) = 0.2689414213699951
        assert!((bt_prob(0.5, 1.0, 0.5) - 0.2689414213699951).abs() < 1e-15);
        // sigmoid((2 - -2) / 2) = sigmoid(2) = 0.8807970779778823
        assert!((bt_prob(2.0, -2.0, 2.0) - 0.8807970779778823).abs() < 1e-15);
        assert_eq!(bt_prob(0.3, 0.3, 0.7), 0.5);
        assert_eq!(bt_prob(1.0, 0.0, 0.0), 1.0);
        assert_eq!(bt_prob(0.0, 1.0, 0.0), 0.0);
        assert_eq!(bt_prob(1.0, 1.0, 0.0), 0.5);
        // No overflow far in the tails.
        assert_eq!(bt_prob(-2.0, 2.0, 1e-3), 0.0);
        assert_eq!(bt_prob(2.0, -2.0, 1e-3), 1.0);
    }

    #[test]
    fn prefer_first_at_temperature_zero_is_deterministic_and_ties_are_fair() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert!((0..1000).all(|_| prefer_first(&mut rng, 0.1, 0.0, 0.0)));
        assert!((0..1000).all(|_| !prefer_first(&mut rng, 0.0, 0.1, 0.0)));
        let n_first = (0..N_DRAWS)
            .filter(|_| prefer_first(&mut rng, 1.0, 1.0, 0.0))
            .count();
        assert_frequency("tie coin", n_first, N_DRAWS, 0.5);
    }

    /// Over random pairs of rewards in [-2, 2], the fraction of labels that agree with the
    /// oracle's ordering is E[sigmoid(|Δ| / T)], with variance Σ p (1 - p) / n².
    #[test]
    fn prefer_first_agrees_with_the_oracle_as_bradley_terry_predicts() {
        for (temperature, seed) in [(0.1, 11), (0.5, 12), (2.0, 13)] {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut n_agree = 0;
            let mut expected_agreement_sum = 0.0;
            let mut variance_sum = 0.0;
            for _ in 0..N_DRAWS {
                let r_a = rng.random_range(-2.0..2.0);
                let r_b = rng.random_range(-2.0..2.0);
                let agree_probability = sigmoid(f64::abs(r_a - r_b) / temperature);
                expected_agreement_sum += agree_probability;
                variance_sum += agree_probability * (1.0 - agree_probability);
                if prefer_first(&mut rng, r_a, r_b, temperature) == (r_a > r_b) {
                    n_agree += 1;
                }
            }
            let n_draws = N_DRAWS as f64;
            assert_close_in_standard_errors(
                &format!("agreement T={temperature}"),
                n_agree as f64 / n_draws,
                expected_agreement_sum / n_draws,
                variance_sum.sqrt() / n_draws,
            );
        }
    }

    /// Plackett-Luce puts item i first with probability softmax(r / T)_i, and item j second
    /// after i with probability p_i p_j / (1 - p_i).
    #[test]
    fn plackett_luce_matches_softmax() {
        let rewards = [1.0, 0.5, 0.0, -1.0];
        for (temperature, seed) in [(0.5, 21), (2.0, 22)] {
            let weights: Vec<f64> = rewards
                .iter()
                .map(|reward| f64::exp(reward / temperature))
                .collect();
            let total_weight: f64 = weights.iter().sum();
            let softmax: Vec<f64> = weights.iter().map(|weight| weight / total_weight).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut n_first = [0usize; 4];
            let mut n_first_0_then_1 = 0;
            for _ in 0..N_DRAWS {
                let ranking = plackett_luce(&mut rng, &rewards, temperature);
                let mut sorted_ranking = ranking.clone();
                sorted_ranking.sort_unstable();
                assert_eq!(sorted_ranking, vec![0, 1, 2, 3]);
                n_first[ranking[0]] += 1;
                if ranking[..2] == [0, 1] {
                    n_first_0_then_1 += 1;
                }
            }
            for (reward_idx, &probability) in softmax.iter().enumerate() {
                assert_frequency(
                    &format!("PL top-1 T={temperature} item {reward_idx}"),
                    n_first[reward_idx],
                    N_DRAWS,
                    probability,
                );
            }
            let pair_probability = softmax[0] * softmax[1] / (1.0 - softmax[0]);
            assert_frequency(
                &format!("PL prefix [0, 1] T={temperature}"),
                n_first_0_then_1,
                N_DRAWS,
                pair_probability,
            );
        }
    }

    #[test]
    fn plackett_luce_at_temperature_zero_sorts_and_breaks_ties_at_random() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        assert_eq!(
            plackett_luce(&mut rng, &[0.0, 2.0, -1.0, 1.0], 0.0),
            vec![1, 3, 0, 2]
        );
        let n_zero_first = (0..N_DRAWS)
            .filter(|_| plackett_luce(&mut rng, &[1.0, 1.0, 0.0], 0.0)[0] == 0)
            .count();
        assert_frequency("PL tie at T=0", n_zero_first, N_DRAWS, 0.5);
        assert_eq!(plackett_luce(&mut rng, &[], 1.0), Vec::<usize>::new());
    }

    #[test]
    fn normal_cdf_hand_computed() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        // Φ(-1) = 0.15865525393145707, Φ(1.959963984540054) = 0.975
        assert!((normal_cdf(-1.0) - 0.15865525393145707).abs() < 2e-7);
        assert!((normal_cdf(1.959963984540054) - 0.975).abs() < 2e-7);
        assert!((normal_cdf(3.0) - 0.9986501019683699).abs() < 2e-7);
    }

    #[test]
    fn ordered_probit_without_noise_cuts_at_thresholds() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let thresholds = DEFAULT_PROBIT_THRESHOLDS;
        let scores: Vec<u8> = [-2.0, -1.0, 0.0, 1.0, 2.0, -1.5, 1.5]
            .iter()
            .map(|&reward| ordered_probit(&mut rng, reward, &thresholds, 0.0))
            .collect();
        assert_eq!(scores, vec![1, 2, 3, 4, 5, 1, 4]);
    }

    #[test]
    fn ordered_probit_matches_normal_cdf_bins() {
        let thresholds = DEFAULT_PROBIT_THRESHOLDS;
        for (reward, noise_sd, seed) in [(0.3, 0.8, 31), (-1.2, 0.5, 32), (1.9, 1.5, 33)] {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut n_by_score = [0usize; 5];
            for _ in 0..N_DRAWS {
                let probit_score = ordered_probit(&mut rng, reward, &thresholds, noise_sd);
                n_by_score[usize::from(probit_score) - 1] += 1;
            }
            let cdf_at = |cut_idx: usize| match cut_idx {
                0 => 0.0,
                5 => 1.0,
                _ => normal_cdf((thresholds[cut_idx - 1] - reward) / noise_sd),
            };
            for (score_idx, &n_of_score) in n_by_score.iter().enumerate() {
                let probability = cdf_at(score_idx + 1) - cdf_at(score_idx);
                assert_frequency(
                    &format!("probit r={reward} sd={noise_sd} score {}", score_idx + 1),
                    n_of_score,
                    N_DRAWS,
                    probability,
                );
            }
        }
    }

    #[test]
    fn probit_parameters_are_checked() {
        assert!(check_probit_parameters(&DEFAULT_PROBIT_THRESHOLDS, 0.5).is_ok());
        assert_eq!(
            check_probit_parameters(&[0.0, 1.0], 0.5).unwrap_err(),
            "`thresholds` needs 4 cut points for scores 1 to 5, got 2"
        );
        assert!(check_probit_parameters(&[0.0, 1.0, 1.0, 2.0], 0.5).is_err());
        assert!(check_probit_parameters(&[0.0, 1.0, f64::NAN, 2.0], 0.5).is_err());
        assert!(check_probit_parameters(&DEFAULT_PROBIT_THRESHOLDS, -0.1).is_err());
        assert!(check_probit_parameters(&DEFAULT_PROBIT_THRESHOLDS, f64::NAN).is_err());
    }

    #[test]
    fn flag_rates_match_miss_and_false_alarm_rates() {
        let (miss_rate, false_alarm_rate) = (0.2, 0.05);
        let mut rng = ChaCha8Rng::seed_from_u64(41);
        let n_missed = (0..N_DRAWS)
            .filter(|_| !flag(&mut rng, true, miss_rate, false_alarm_rate))
            .count();
        assert_frequency("flag miss rate", n_missed, N_DRAWS, miss_rate);
        let n_false_alarms = (0..N_DRAWS)
            .filter(|_| flag(&mut rng, false, miss_rate, false_alarm_rate))
            .count();
        assert_frequency(
            "flag false-alarm rate",
            n_false_alarms,
            N_DRAWS,
            false_alarm_rate,
        );
        // Rates of 0 and 1 are exact.
        assert!((0..1000).all(|_| flag(&mut rng, true, 0.0, 1.0)));
        assert!((0..1000).all(|_| !flag(&mut rng, true, 1.0, 0.0)));
        assert!((0..1000).all(|_| !flag(&mut rng, false, 0.0, 0.0)));
    }
}
