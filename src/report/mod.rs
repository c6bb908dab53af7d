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
    fn mean_and_standard_error_by_hand() {
        // Values 1, 2, 3, 4: mean 2.5, sample variance 5/3, SE sqrt(5/12).
        let (m, se) = mean_se(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((se - (5.0f64 / 12.0).sqrt()).abs() < 1e-12);
        assert!(mean_se(&[7.0]).1.is_nan());
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
