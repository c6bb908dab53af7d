//! Optimal experimental design for choosing which pairs to label (ODPO, Scheid et al. 2024):
//! the D-optimal design over pair-difference features by Frank-Wolfe (Kiefer-Wolfowitz),
//! rounded to a labelling budget.

/// The D-optimal design π over the rows `z_i` (each of dimension d): maximises
/// log det(Σ π_i z_i z_iᵀ + ridge·I). Frank-Wolfe: step towards the row with the largest
/// z_iᵀ V(π)⁻¹ z_i with the exact line-search step; stop when that maximum is within
/// (1 + eps)·d (the Kiefer-Wolfowitz equivalence: at the optimum it equals d).
pub fn d_optimal(features: &[Vec<f64>], ridge: f64, eps: f64, max_iterations: usize) -> Design {
    let n = features.len();
    let d = features.first().map_or(0, Vec::len);
    let mut weights = vec![1.0 / n as f64; n];
    let mut iterations = 0;
    let mut max_variance = f64::INFINITY;
    while iterations < max_iterations {
        let v = information(features, &weights, ridge);
        let chol = cholesky(&v, d).expect("V(π) + ridge·I is positive definite");
        let variances: Vec<f64> = features
            .iter()
            .map(|z| quadratic_inverse(&chol, d, z))
            .collect();
        let (best, &g) = variances
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .expect("non-empty");
        max_variance = g;
        if g <= (1.0 + eps) * d as f64 {
            break;
        }
        // Exact step for log det (Fedorov / Wynn): gamma = (g - d) / (d (g - 1)).
        let gamma = ((g - d as f64) / (d as f64 * (g - 1.0))).clamp(0.0, 1.0);
        for w in &mut weights {
            *w *= 1.0 - gamma;
        }
        weights[best] += gamma;
        iterations += 1;
    }
    Design {
        weights,
        iterations,
        max_variance,
    }
}

#[derive(Debug, Clone)]
pub struct Design {
    pub weights: Vec<f64>,
    pub iterations: usize,
    /// max_i z_iᵀ V(π)⁻¹ z_i at the end (d at the optimum).
    pub max_variance: f64,
}

/// Rounds a design to `budget` distinct rows greedily: among the rows the design supports
/// (weight at least 1e-3 of the largest; all rows if that leaves fewer than `budget`), pick
/// one at a time the row with the largest z V⁻¹ z, where V is ridge·I plus the rows picked
/// so far — each pick is the largest gain in log det of the labelled pairs' information.
/// Proportional rounding is meaningless when the budget is smaller than the support.
pub fn greedy_rounding(
    features: &[Vec<f64>],
    weights: &[f64],
    budget: usize,
    ridge: f64,
) -> Vec<usize> {
    let d = features.first().map_or(0, Vec::len);
    let top = weights.iter().copied().fold(0.0, f64::max);
    let mut pool: Vec<usize> = (0..weights.len())
        .filter(|&i| weights[i] >= top * 1e-3)
        .collect();
    if pool.len() < budget {
        pool = (0..weights.len()).collect();
    }
    let mut chosen: Vec<usize> = Vec::with_capacity(budget.min(pool.len()));
    // V⁻¹ and every pool row's z V⁻¹ z, kept current by Sherman-Morrison after each pick:
    // V' = V + z* z*ᵀ gives V'⁻¹ = V⁻¹ - u uᵀ / (1 + z*ᵀ u) with u = V⁻¹ z*, so each pick
    // costs O(n d + d²) instead of a factorisation and n solves.
    let mut v_inv = vec![0.0; d * d];
    for i in 0..d {
        v_inv[i * d + i] = 1.0 / ridge;
    }
    let mut variance: Vec<f64> = pool
        .iter()
        .map(|&i| features[i].iter().map(|x| x * x).sum::<f64>() / ridge)
        .collect();
    while chosen.len() < budget && !pool.is_empty() {
        let (at, _) = variance
            .iter()
            .enumerate()
            .map(|(k, &q)| (k, q * (1.0 + 1e-9 * weights[pool[k]])))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            .expect("pool is not empty");
        let i = pool.remove(at);
        let q_star = variance.remove(at);
        let z = &features[i];
        let u: Vec<f64> = (0..d)
            .map(|r| (0..d).map(|c| v_inv[r * d + c] * z[c]).sum())
            .collect();
        let denominator = 1.0 + q_star;
        for (k, &j) in pool.iter().enumerate() {
            let projection: f64 = features[j].iter().zip(&u).map(|(a, b)| a * b).sum();
            variance[k] -= projection * projection / denominator;
        }
        for r in 0..d {
            for c in 0..d {
                v_inv[r * d + c] -= u[r] * u[c] / denominator;
            }
        }
        chosen.push(i);
    }
    chosen
}

/// The top `k` principal directions (unit vectors, by decreasing second moment) of the
/// rows: orthogonal iteration on Σ z zᵀ / n, from a fixed start, so the result is
/// deterministic.
pub fn principal_directions(rows: &[Vec<f64>], k: usize, iterations: usize) -> Vec<Vec<f64>> {
    let d = rows.first().map_or(0, Vec::len);
    let k = k.min(d);
    if k == 0 {
        return Vec::new();
    }
    let weights = vec![1.0 / rows.len() as f64; rows.len()];
    let c = information(rows, &weights, 0.0);
    let apply = |q: &[f64]| -> Vec<f64> {
        (0..d)
            .map(|r| (0..d).map(|j| c[r * d + j] * q[j]).sum())
            .collect()
    };
    // A fixed, generic start (an LCG), so no start vector is orthogonal to the answer.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut q: Vec<Vec<f64>> = (0..k)
        .map(|_| {
            (0..d)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
                })
                .collect()
        })
        .collect();
    let orthonormalise = |vs: &mut Vec<Vec<f64>>| {
        for i in 0..vs.len() {
            for j in 0..i {
                let dot: f64 = vs[i].iter().zip(&vs[j]).map(|(a, b)| a * b).sum();
                let prev = vs[j].clone();
                for (x, p) in vs[i].iter_mut().zip(prev) {
                    *x -= dot * p;
                }
            }
            let norm = vs[i].iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm > 0.0 {
                vs[i].iter_mut().for_each(|x| *x /= norm);
            }
        }
    };
    orthonormalise(&mut q);
    for _ in 0..iterations {
        q = q.iter().map(|v| apply(v)).collect();
        orthonormalise(&mut q);
    }
    let moment = |v: &Vec<f64>| -> f64 { v.iter().zip(apply(v)).map(|(a, b)| a * b).sum() };
    q.sort_by(|a, b| moment(b).total_cmp(&moment(a)));
    q
}

/// Each row's coordinates along `directions`.
pub fn project(rows: &[Vec<f64>], directions: &[Vec<f64>]) -> Vec<Vec<f64>> {
    rows.iter()
        .map(|z| {
            directions
                .iter()
                .map(|u| z.iter().zip(u).map(|(a, b)| a * b).sum())
                .collect()
        })
        .collect()
}

/// V(π) = Σ π_i z_i z_iᵀ + ridge·I, row-major d×d.
pub fn information(features: &[Vec<f64>], weights: &[f64], ridge: f64) -> Vec<f64> {
    let d = features.first().map_or(0, Vec::len);
    let mut v = vec![0.0; d * d];
    for (z, &w) in features.iter().zip(weights) {
        if w == 0.0 {
            continue;
        }
        for i in 0..d {
            for j in 0..d {
                v[i * d + j] += w * z[i] * z[j];
            }
        }
    }
    for i in 0..d {
        v[i * d + i] += ridge;
    }
    v
}

/// Cholesky factor L (row-major, lower) of a symmetric positive definite d×d matrix.
/// Written out: d is a reward model's hidden size (tens to hundreds), and this is the only
/// linear algebra hone needs outside candle.
pub fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let sum: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let diag = a[i * d + i] - sum;
                if diag <= 0.0 {
                    return None;
                }
                l[i * d + i] = diag.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - sum) / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// A⁻¹ b from A's Cholesky factor L (forward then back substitution).
pub fn cholesky_solve(l: &[f64], d: usize, b: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; d];
    for i in 0..d {
        let sum: f64 = (0..i).map(|k| l[i * d + k] * y[k]).sum();
        y[i] = (b[i] - sum) / l[i * d + i];
    }
    let mut x = vec![0.0; d];
    for i in (0..d).rev() {
        let sum: f64 = (i + 1..d).map(|k| l[k * d + i] * x[k]).sum();
        x[i] = (y[i] - sum) / l[i * d + i];
    }
    x
}

/// zᵀ A⁻¹ z from A's Cholesky factor: |L⁻¹ z|².
pub fn quadratic_inverse(l: &[f64], d: usize, z: &[f64]) -> f64 {
    let mut y = vec![0.0; d];
    for i in 0..d {
        let sum: f64 = (0..i).map(|k| l[i * d + k] * y[k]).sum();
        y[i] = (z[i] - sum) / l[i * d + i];
    }
    y.iter().map(|v| v * v).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solve_by_hand() {
        // A = [[4, 2], [2, 3]], b = [2, 1]: x = [0.5, 0].
        let l = cholesky(&[4.0, 2.0, 2.0, 3.0], 2).unwrap();
        let x = cholesky_solve(&l, 2, &[2.0, 1.0]);
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12, "{x:?}");
    }

    #[test]
    fn cholesky_by_hand() {
        // [[4, 2], [2, 3]] = L Lᵀ with L = [[2, 0], [1, sqrt 2]]
        let l = cholesky(&[4.0, 2.0, 2.0, 3.0], 2).unwrap();
        assert!(
            (l[0] - 2.0).abs() < 1e-12
                && (l[2] - 1.0).abs() < 1e-12
                && (l[3] - 2f64.sqrt()).abs() < 1e-12
        );
        // zᵀ A⁻¹ z for z = (1, 0): A⁻¹ = [[3, -2], [-2, 4]] / 8 -> 3/8
        assert!((quadratic_inverse(&l, 2, &[1.0, 0.0]) - 0.375).abs() < 1e-12);
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
    }

    #[test]
    fn frank_wolfe_finds_the_known_d_optimal_design() {
        // Rows e1, e2 and (e1 + e2)/2 in R²: the D-optimal design puts 1/2 on each unit
        // vector and nothing on the interior point (det of diag(w1, w2) is largest there).
        let rows = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.5, 0.5]];
        let design = d_optimal(&rows, 0.0, 1e-4, 10_000);
        assert!(
            (design.weights[0] - 0.5).abs() < 1e-2,
            "{:?}",
            design.weights
        );
        assert!(
            (design.weights[1] - 0.5).abs() < 1e-2,
            "{:?}",
            design.weights
        );
        assert!(design.weights[2] < 1e-2, "{:?}", design.weights);
        assert!(design.max_variance <= 2.0 * (1.0 + 1e-4));
        let picked = greedy_rounding(&rows, &design.weights, 2, 1e-6);
        assert_eq!(picked.len(), 2);
        assert!(!picked.contains(&2), "{picked:?}");
    }

    #[test]
    fn greedy_rounding_spreads_the_budget_over_directions() {
        // Near-duplicates of e1 and one e2: a budget of 2 takes one of each, not two e1s.
        let rows = vec![
            vec![1.0, 0.0],
            vec![0.99, 0.01],
            vec![0.98, 0.0],
            vec![0.0, 0.9],
        ];
        let weights = vec![0.3, 0.3, 0.3, 0.1];
        let picked = greedy_rounding(&rows, &weights, 2, 1e-3);
        assert_eq!(picked.len(), 2);
        assert!(picked.contains(&3), "{picked:?}");
        assert_eq!(greedy_rounding(&rows, &weights, 10, 1e-3).len(), 4);
    }

    #[test]
    fn a_redundant_direction_gets_little_weight() {
        // Three copies of nearly the same direction and one orthogonal: the orthogonal row
        // carries half the design.
        let rows = vec![
            vec![1.0, 0.0],
            vec![0.99, 0.01],
            vec![0.98, 0.0],
            vec![0.0, 1.0],
        ];
        let design = d_optimal(&rows, 1e-9, 1e-4, 10_000);
        assert!(
            (design.weights[3] - 0.5).abs() < 2e-2,
            "{:?}",
            design.weights
        );
    }

    #[test]
    fn incremental_rounding_picks_what_refactorising_would() {
        // Pseudo-random rows in 4-d; the reference recomputes V and its Cholesky factor
        // before every pick.
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let rows: Vec<Vec<f64>> = (0..40).map(|_| (0..4).map(|_| next()).collect()).collect();
        let weights = vec![1.0; rows.len()];
        let fast = greedy_rounding(&rows, &weights, 12, 1e-2);
        let mut picked = vec![0.0; rows.len()];
        let mut slow = Vec::new();
        for _ in 0..12 {
            let l = cholesky(&information(&rows, &picked, 1e-2), 4).unwrap();
            let best = (0..rows.len())
                .filter(|&i| picked[i] == 0.0)
                .max_by(|&a, &b| {
                    quadratic_inverse(&l, 4, &rows[a])
                        .total_cmp(&quadratic_inverse(&l, 4, &rows[b]))
                        .then(b.cmp(&a))
                })
                .unwrap();
            picked[best] = 1.0;
            slow.push(best);
        }
        assert_eq!(fast, slow);
    }

    #[test]
    fn principal_directions_find_the_spread_axes() {
        // Spread 3 along e1, 1 along e2, 0.01 along e3.
        let rows: Vec<Vec<f64>> = (0..60)
            .map(|i| {
                let t = i as f64 / 60.0 * std::f64::consts::TAU;
                vec![3.0 * t.cos(), t.sin(), 0.01 * (3.0 * t).cos()]
            })
            .collect();
        let dirs = principal_directions(&rows, 2, 200);
        assert_eq!(dirs.len(), 2);
        assert!(dirs[0][0].abs() > 0.999, "{:?}", dirs[0]);
        assert!(dirs[1][1].abs() > 0.999, "{:?}", dirs[1]);
        let projected = project(&rows, &dirs);
        assert!((projected[0][0].abs() - 3.0).abs() < 1e-2);
    }
}
