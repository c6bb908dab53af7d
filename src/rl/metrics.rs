//! Evaluation metrics of a reward model on held-out preferences, over plain numbers.

/// P(chosen preferred) under Bradley-Terry for each pair: sigmoid(r_chosen - r_rejected).
pub fn pair_probabilities(chosen: &[f64], rejected: &[f64]) -> Vec<f64> {
    chosen
        .iter()
        .zip(rejected)
        .map(|(c, r)| 1.0 / (1.0 + (r - c).exp()))
        .collect()
}

/// Fraction of pairs ranked the right way (ties count half).
pub fn accuracy(probabilities: &[f64]) -> f64 {
    if probabilities.is_empty() {
        return f64::NAN;
    }
    probabilities
        .iter()
        .map(|&p| {
            if p > 0.5 {
                1.0
            } else if p == 0.5 {
                0.5
            } else {
                0.0
            }
        })
        .sum::<f64>()
        / probabilities.len() as f64
}

/// Mean negative log-likelihood of the observed preferences.
pub fn log_loss(probabilities: &[f64]) -> f64 {
    probabilities
        .iter()
        .map(|&p| -p.clamp(1e-12, 1.0).ln())
        .sum::<f64>()
        / probabilities.len().max(1) as f64
}

/// Expected calibration error with `bins` equal-width bins over the confidence
/// max(p, 1 - p): sum over bins of |accuracy - mean confidence| weighted by the bin's share.
pub fn expected_calibration_error(probabilities: &[f64], bins: usize) -> f64 {
    let mut count = vec![0usize; bins];
    let mut correct = vec![0f64; bins];
    let mut confidence = vec![0f64; bins];
    for &p in probabilities {
        let conf = p.max(1.0 - p);
        // Confidence lies in [0.5, 1]; spread the bins over that range.
        let b = (((conf - 0.5) * 2.0 * bins as f64) as usize).min(bins - 1);
        count[b] += 1;
        confidence[b] += conf;
        correct[b] += if p >= 0.5 { 1.0 } else { 0.0 };
    }
    let n = probabilities.len().max(1) as f64;
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| (correct[b] - confidence[b]).abs() / n)
        .sum()
}

/// Agreement with a true ordering within groups: over every pair of items of the same
/// group (a prompt) whose true values differ, the share the prediction orders the same way
/// (a predicted tie counts half). Returns (agreements, pairs compared).
pub fn ordered_pair_agreement(groups: &[&str], predicted: &[f64], truth: &[f64]) -> (f64, usize) {
    let mut by_group: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, g) in groups.iter().enumerate() {
        by_group.entry(g).or_default().push(i);
    }
    let (mut agree, mut compared) = (0.0, 0);
    for members in by_group.values() {
        for (x, &i) in members.iter().enumerate() {
            for &j in &members[x + 1..] {
                let true_order = truth[i] - truth[j];
                if true_order == 0.0 || true_order.is_nan() {
                    continue;
                }
                compared += 1;
                let predicted_order = predicted[i] - predicted[j];
                if predicted_order == 0.0 {
                    agree += 0.5;
                } else if (predicted_order > 0.0) == (true_order > 0.0) {
                    agree += 1.0;
                }
            }
        }
    }
    (agree, compared)
}

/// Spearman rank correlation (average ranks for ties).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = average;
        }
        i = j + 1;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_log_loss_by_hand() {
        let p = pair_probabilities(&[1.0, 0.0, 2.0], &[0.0, 1.0, 2.0]);
        // sigmoid(1) = 0.7310586, sigmoid(-1) = 0.2689414, 0.5
        assert!(
            (p[0] - 0.731_058_6).abs() < 1e-6 && (p[1] - 0.268_941_4).abs() < 1e-6 && p[2] == 0.5
        );
        assert!((accuracy(&p) - 0.5).abs() < 1e-12);
        // (0.3132617 + 1.3132617 + 0.6931472) / 3
        assert!((log_loss(&p) - 0.773_223_5).abs() < 1e-6);
    }

    #[test]
    fn calibration_error_by_hand() {
        // Two predictions of 0.9 for the chosen side, both "right": confidence 0.9, accuracy 1 -> 0.1.
        assert!((expected_calibration_error(&[0.9, 0.9], 10) - 0.1).abs() < 1e-12);
        // p = 0.3: confidence 0.7, wrong -> |0 - 0.7|.
        assert!((expected_calibration_error(&[0.3], 5) - 0.7).abs() < 1e-12);
    }

    #[test]
    fn spearman_handles_ties_and_monotone_maps() {
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 35.0, 100.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // ranks x = [1.5, 1.5, 3], y = [1, 2, 3]: pearson = 0.8660254
        assert!((spearman(&[5.0, 5.0, 7.0], &[1.0, 2.0, 3.0]) - 0.866_025_4).abs() < 1e-6);
    }

    #[test]
    fn pair_agreement_within_groups_skips_true_ties() {
        // Group a: truth 1 > 0 = 0; prediction orders (0, 1) right, (0, 2) wrong; (1, 2) is
        // a true tie. Group b: one pair, predicted tie (half). Across groups: not compared.
        let groups = ["a", "a", "a", "b", "b"];
        let truth = [1.0, 0.0, 0.0, 2.0, 1.0];
        let predicted = [0.5, 0.1, 0.9, 3.0, 3.0];
        let (agree, compared) = ordered_pair_agreement(&groups, &predicted, &truth);
        assert_eq!(compared, 3);
        assert!((agree - 1.5).abs() < 1e-12, "{agree}");
    }
}
