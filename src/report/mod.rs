//! What experiments show: summary statistics over seeds, how many labels a method needs to
//! reach a level, and self-contained SVG charts.

pub mod svg;

/// Mean and standard error of the mean (sample standard deviation / sqrt(n); NaN with
/// fewer than two values).
pub fn mean_se(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, f64::NAN);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, (var / n as f64).sqrt())
}

/// Mean and cluster-robust standard error of the mean (CR1) of observations grouped into
/// clusters (the samples of one prompt): clusters are independent, observations within
/// one need not be. With `G` clusters and `N` observations,
/// `SE² = G/(G-1) · Σ_g (Σ_{i∈g} (y_i − ȳ))² / N²`; when every cluster has the same
/// size this is the standard error of the cluster means, `sd(ȳ_g)/√G`. NaN with fewer
/// than two clusters.
pub fn clustered_mean_se<K: Ord>(observations: &[(K, f64)]) -> (f64, f64) {
    let n = observations.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = observations.iter().map(|(_, y)| y).sum::<f64>() / n as f64;
    let mut residuals: std::collections::BTreeMap<&K, f64> = std::collections::BTreeMap::new();
    for (k, y) in observations {
        *residuals.entry(k).or_insert(0.0) += y - mean;
    }
    let g = residuals.len();
    if g < 2 {
        return (mean, f64::NAN);
    }
    let sum_sq: f64 = residuals.values().map(|r| r * r).sum();
    let var = g as f64 / (g - 1) as f64 * sum_sq / (n as f64 * n as f64);
    (mean, var.sqrt())
}

/// Mean and two-way cluster-robust standard error (Cameron, Gelbach and Miller 2011) of
/// observations that belong to a run (a seed) and to a prompt at once: the runs of an
/// experiment answer the same held-out prompts, so neither the runs nor the prompts are
/// independent of each other's errors. Each observation is one (run, prompt) cell,
/// weighted equally: `V = V_run + V_prompt − V_cell`, each the CR1 variance of
/// [`clustered_mean_se`] clustered that way (`V_cell` treats every cell as its own
/// cluster). Where the difference comes out negative (possible in small samples) the
/// larger of `V_run` and `V_prompt` is used. NaN with fewer than two runs or two prompts.
pub fn two_way_clustered_mean_se<R: Ord, P: Ord>(observations: &[(R, P, f64)]) -> (f64, f64) {
    let by_run: Vec<(&R, f64)> = observations.iter().map(|(r, _, y)| (r, *y)).collect();
    let by_prompt: Vec<(&P, f64)> = observations.iter().map(|(_, p, y)| (p, *y)).collect();
    let by_cell: Vec<((&R, &P), f64)> = observations.iter().map(|(r, p, y)| ((r, p), *y)).collect();
    let (mean, se_run) = clustered_mean_se(&by_run);
    let (_, se_prompt) = clustered_mean_se(&by_prompt);
    let (_, se_cell) = clustered_mean_se(&by_cell);
    if !(se_run.is_finite() && se_prompt.is_finite() && se_cell.is_finite()) {
        return (mean, f64::NAN);
    }
    let (v_run, v_prompt) = (se_run * se_run, se_prompt * se_prompt);
    let v = v_run + v_prompt - se_cell * se_cell;
    (mean, if v > 0.0 { v } else { v_run.max(v_prompt) }.sqrt())
}

/// The smallest x at which a curve (points sorted by x) reaches `target`, interpolating
/// linearly between the last point below and the first at or above it. `None` when it
/// never does.
pub fn first_reach(curve: &[(f64, f64)], target: f64) -> Option<f64> {
    let mut previous: Option<(f64, f64)> = None;
    for &(x, y) in curve {
        if y >= target {
            return Some(match previous {
                Some((x0, y0)) if y > y0 => x0 + (target - y0) / (y - y0) * (x - x0),
                _ => x,
            });
        }
        previous = Some((x, y));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_way_clustered_standard_error_by_hand() {
        // Two runs (a, b) × three prompts (p, q, r):
        //        p  q  r
        //   a    1  2  6
        //   b    3  2  4      mean 18/6 = 3; residuals a: -2 -1 3, b: 0 -1 1.
        // V_run    = 2/1 · (0² + 0²) / 36 = 0
        // V_prompt = 3/2 · ((-2)² + (-2)² + 4²) / 36 = 3/2 · 24/36 = 1
        // V_cell   = 6/5 · (4 + 1 + 9 + 0 + 1 + 1) / 36 = 6/5 · 16/36 = 8/15
        // V = 0 + 1 - 8/15 = 7/15.
        let obs = [
            ("a", "p", 1.0),
            ("a", "q", 2.0),
            ("a", "r", 6.0),
            ("b", "p", 3.0),
            ("b", "q", 2.0),
            ("b", "r", 4.0),
        ];
        let (m, se) = two_way_clustered_mean_se(&obs);
        assert_eq!(m, 3.0);
        assert!((se * se - 7.0 / 15.0).abs() < 1e-12, "{se}");
        // The runs move together and the prompts do not differ: only the run clusters
        // carry variance, V_run = 2/1 · ((-3)² + 3²)/36 = 1, V_prompt = 0 and
        // V_cell = 6/5 · 6/36 = 1/5, so V = 4/5.
        let obs = [
            ("a", "p", 2.0),
            ("a", "q", 2.0),
            ("a", "r", 2.0),
            ("b", "p", 4.0),
            ("b", "q", 4.0),
            ("b", "r", 4.0),
        ];
        let (_, se) = two_way_clustered_mean_se(&obs);
        assert!((se * se - 0.8).abs() < 1e-12, "{se}");
        // Shared prompts widen the interval beyond the spread of the run means, which
        // is what `mean_se` over runs alone would report (0 in the first example).
        assert!(
            two_way_clustered_mean_se(&[("a", "p", 1.0), ("a", "q", 2.0)])
                .1
                .is_nan()
        );
    }

    #[test]
    fn mean_and_standard_error_by_hand() {
        // Values 1, 2, 3, 4: mean 2.5, sample variance 5/3, SE sqrt(5/12).
        let (m, se) = mean_se(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((se - (5.0f64 / 12.0).sqrt()).abs() < 1e-12);
        assert!(mean_se(&[7.0]).1.is_nan());
    }

    #[test]
    fn clustered_standard_error_by_hand() {
        // Clusters A: 1, 3; B: 5, 7; C: 2. Mean 18/5 = 3.6; residual sums -3.2, 4.8,
        // -1.6; squares 10.24 + 23.04 + 2.56 = 35.84; SE² = 3/2 · 35.84 / 25 = 2.1504.
        let obs = [("a", 1.0), ("b", 5.0), ("a", 3.0), ("c", 2.0), ("b", 7.0)];
        let (m, se) = clustered_mean_se(&obs);
        assert!((m - 3.6).abs() < 1e-12);
        assert!((se - 2.1504f64.sqrt()).abs() < 1e-12, "{se}");
        // Balanced clusters: the standard error of the cluster means.
        let obs = [
            ("a", 1.0),
            ("a", 3.0),
            ("b", 5.0),
            ("b", 7.0),
            ("c", 0.0),
            ("c", 4.0),
        ];
        let (_, se) = clustered_mean_se(&obs);
        let (_, se_means) = mean_se(&[2.0, 6.0, 2.0]);
        assert!((se - se_means).abs() < 1e-12);
        // Samples of one prompt that agree add no information: 4 copies of each of
        // 3 values give the same SE as the 3 values alone, where treating the 12 as
        // independent would shrink it by about sqrt(4) (more than the 1.4x of 4
        // partly agreeing samples).
        let copies: Vec<(usize, f64)> = [2.0, 6.0, 2.0]
            .iter()
            .enumerate()
            .flat_map(|(k, &v)| std::iter::repeat_n((k, v), 4))
            .collect();
        assert!((clustered_mean_se(&copies).1 - se_means).abs() < 1e-12);
        let naive = mean_se(&copies.iter().map(|c| c.1).collect::<Vec<_>>()).1;
        assert!(naive < se_means / 1.9, "{naive} vs {se_means}");
        assert!(clustered_mean_se(&[("a", 1.0), ("a", 2.0)]).1.is_nan());
    }

    #[test]
    fn reach_interpolates_between_the_points_around_the_target() {
        let curve = [(25.0, 0.6), (50.0, 0.7), (100.0, 0.8)];
        assert_eq!(
            first_reach(&curve, 0.55),
            Some(25.0),
            "already there at the start"
        );
        assert!((first_reach(&curve, 0.75).unwrap() - 75.0).abs() < 1e-9);
        assert_eq!(first_reach(&curve, 0.8), Some(100.0));
        assert_eq!(first_reach(&curve, 0.81), None);
    }
}
