//! Limited-memory BFGS (Nocedal & Wright, alg. 7.4/7.5) with a strong-Wolfe line search
//! (alg. 3.5/3.6, cubic interpolation). The objective is one fused call returning the value and
//! filling the gradient, so every line-search trial costs exactly one pass over the data.
//!
//! Stopping rules mirror scipy's L-BFGS-B as scikit-learn drives it, so that "same `max_iter`,
//! same `tol`" means the same thing on both sides: `max |g_i| <= gtol`, or a relative decrease
//! `(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ftol`, or `max_iter` iterations.

use crate::{Error, Result};

/// Solver settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LbfgsOptions {
    /// Iterations (one line search each). scikit-learn's `max_iter`.
    pub max_iter: usize,
    /// Number of stored correction pairs (scipy's default 10).
    pub history: usize,
    /// Converged when the largest gradient component is at most this (scikit-learn's `tol`).
    pub gtol: f64,
    /// Converged when the relative decrease of one iteration is at most this (64·eps, as sklearn).
    pub ftol: f64,
    /// Function evaluations allowed per line search (sklearn passes `maxls=50`).
    pub max_linesearch: usize,
}

impl Default for LbfgsOptions {
    fn default() -> Self {
        Self {
            max_iter: 100,
            history: 10,
            gtol: 1e-4,
            ftol: 64.0 * f64::EPSILON,
            max_linesearch: 50,
        }
    }
}

/// Why the solver stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    GradientTolerance,
    RelativeDecrease,
    MaxIterations,
    /// No step along the search direction decreased the objective (numerical floor reached).
    LineSearchFailed,
}

/// Outcome of a minimisation.
#[derive(Debug, Clone, PartialEq)]
pub struct LbfgsReport {
    pub iterations: usize,
    pub evaluations: usize,
    pub value: f64,
    pub grad_max: f64,
    pub reason: StopReason,
}

impl LbfgsReport {
    /// True unless the iteration budget ran out.
    pub fn converged(&self) -> bool {
        self.reason != StopReason::MaxIterations
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// Minimiser of the cubic through (a, fa, da) and (b, fb, db), or the bisection when the cubic
/// has no real minimiser.
fn cubic_min(a: f64, fa: f64, da: f64, b: f64, fb: f64, db: f64) -> f64 {
    let d1 = da + db - 3.0 * (fa - fb) / (a - b);
    let disc = d1 * d1 - da * db;
    if disc < 0.0 || !disc.is_finite() {
        return 0.5 * (a + b);
    }
    let d2 = (b - a).signum() * disc.sqrt();
    let t = b - (b - a) * (db + d2 - d1) / (db - da + 2.0 * d2);
    if t.is_finite() {
        t
    } else {
        0.5 * (a + b)
    }
}

struct Trial {
    alpha: f64,
    f: f64,
    dg: f64,
}

/// Minimises `f` from `x` (updated in place). `f(x, grad)` returns the objective and writes its
/// gradient; it may fail (e.g. on non-finite values), which aborts the solve.
pub fn minimize<F>(x: &mut [f64], mut f: F, opts: &LbfgsOptions) -> Result<LbfgsReport>
where
    F: FnMut(&[f64], &mut [f64]) -> Result<f64>,
{
    if opts.history == 0 {
        return Err(Error::config("lbfgs.history", "must be at least 1"));
    }
    let n = x.len();
    let mut g = vec![0.0; n];
    let mut fx = f(x, &mut g)?;
    let mut evaluations = 1;
    if !fx.is_finite() {
        return Err(Error::Diverged(format!(
            "objective is {fx} at the start point"
        )));
    }
    let m = opts.history;
    let mut s_hist: Vec<Vec<f64>> = Vec::with_capacity(m);
    let mut y_hist: Vec<Vec<f64>> = Vec::with_capacity(m);
    let mut rho: Vec<f64> = Vec::with_capacity(m);
    let mut d = vec![0.0; n];
    let mut alpha_buf = vec![0.0; m];
    let mut x_new = vec![0.0; n];
    let mut g_new = vec![0.0; n];
    let mut iterations = 0;
    let report = |iterations, evaluations, value, g: &[f64], reason| LbfgsReport {
        iterations,
        evaluations,
        value,
        grad_max: max_abs(g),
        reason,
    };
    loop {
        if max_abs(&g) <= opts.gtol {
            return Ok(report(
                iterations,
                evaluations,
                fx,
                &g,
                StopReason::GradientTolerance,
            ));
        }
        if iterations >= opts.max_iter {
            return Ok(report(
                iterations,
                evaluations,
                fx,
                &g,
                StopReason::MaxIterations,
            ));
        }
        // Two-loop recursion: d = -H·g with H₀ = γI, γ = sᵀy / yᵀy of the newest pair.
        d.iter_mut().zip(&g).for_each(|(di, gi)| *di = -gi);
        let k = s_hist.len();
        for i in (0..k).rev() {
            let a = rho[i] * dot(&s_hist[i], &d);
            alpha_buf[i] = a;
            d.iter_mut()
                .zip(&y_hist[i])
                .for_each(|(di, yi)| *di -= a * yi);
        }
        if k > 0 {
            let gamma = dot(&s_hist[k - 1], &y_hist[k - 1]) / dot(&y_hist[k - 1], &y_hist[k - 1]);
            d.iter_mut().for_each(|di| *di *= gamma);
        }
        for i in 0..k {
            let b = rho[i] * dot(&y_hist[i], &d);
            let a = alpha_buf[i];
            d.iter_mut()
                .zip(&s_hist[i])
                .for_each(|(di, si)| *di += (a - b) * si);
        }
        let mut dg0 = dot(&g, &d);
        if dg0 >= 0.0 || !dg0.is_finite() {
            // The curvature pairs gave a non-descent direction: restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            rho.clear();
            d.iter_mut().zip(&g).for_each(|(di, gi)| *di = -gi);
            dg0 = dot(&g, &d);
        }
        // First step of a fresh memory is scaled to unit length (as scipy), later ones try 1.
        let alpha0 = if s_hist.is_empty() {
            (1.0 / dot(&d, &d).sqrt()).min(1.0)
        } else {
            1.0
        };

        let mut eval = |alpha: f64, x_new: &mut [f64], g_new: &mut [f64]| -> Result<Trial> {
            for i in 0..n {
                x_new[i] = x[i] + alpha * d[i];
            }
            let fv = f(x_new, g_new)?;
            evaluations += 1;
            Ok(Trial {
                alpha,
                f: fv,
                dg: dot(g_new, &d),
            })
        };
        let accepted = strong_wolfe(&mut eval, fx, dg0, alpha0, opts, &mut x_new, &mut g_new)?;
        let Some(f_accepted) = accepted else {
            return Ok(report(
                iterations,
                evaluations,
                fx,
                &g,
                StopReason::LineSearchFailed,
            ));
        };
        iterations += 1;
        // x_new/g_new hold the accepted point.
        let mut s: Vec<f64> = if s_hist.len() == m {
            s_hist.remove(0)
        } else {
            vec![0.0; n]
        };
        let mut y: Vec<f64> = if y_hist.len() == m {
            rho.remove(0);
            y_hist.remove(0)
        } else {
            vec![0.0; n]
        };
        for i in 0..n {
            s[i] = x_new[i] - x[i];
            y[i] = g_new[i] - g[i];
        }
        let sy = dot(&s, &y);
        let yy = dot(&y, &y);
        if sy > f64::EPSILON * yy && sy > 0.0 {
            s_hist.push(s);
            y_hist.push(y);
            rho.push(1.0 / sy);
        }
        let f_old = fx;
        x.copy_from_slice(&x_new);
        g.copy_from_slice(&g_new);
        fx = f_accepted;
        if (f_old - fx) / f_old.abs().max(fx.abs()).max(1.0) <= opts.ftol {
            return Ok(report(
                iterations,
                evaluations,
                fx,
                &g,
                StopReason::RelativeDecrease,
            ));
        }
    }
}

/// Strong-Wolfe line search; on success `x_new`/`g_new` hold the accepted point and the value is
/// returned. `None` when no trial produced a sufficient decrease.
fn strong_wolfe<E>(
    eval: &mut E,
    f0: f64,
    dg0: f64,
    alpha0: f64,
    opts: &LbfgsOptions,
    x_new: &mut [f64],
    g_new: &mut [f64],
) -> Result<Option<f64>>
where
    E: FnMut(f64, &mut [f64], &mut [f64]) -> Result<Trial>,
{
    const C1: f64 = 1e-4;
    const C2: f64 = 0.9;
    let armijo = |t: &Trial| t.f <= f0 + C1 * t.alpha * dg0;
    // Best point with sufficient decrease seen so far, kept in case the budget runs out.
    let mut best: Option<(f64, Vec<f64>, Vec<f64>)> = None;
    let keep = |t: &Trial, x: &[f64], g: &[f64], best: &mut Option<(f64, Vec<f64>, Vec<f64>)>| {
        if t.f.is_finite() && armijo(t) && best.as_ref().is_none_or(|b| t.f < b.0) {
            *best = Some((t.f, x.to_vec(), g.to_vec()));
        }
    };
    let mut prev = Trial {
        alpha: 0.0,
        f: f0,
        dg: dg0,
    };
    let mut alpha = alpha0;
    let mut budget = opts.max_linesearch.max(1);
    let (mut lo, mut hi);
    let mut first = true;
    // Bracketing phase.
    loop {
        let t = eval(alpha, x_new, g_new)?;
        budget -= 1;
        keep(&t, x_new, g_new, &mut best);
        if !t.f.is_finite() {
            // Overflow: shrink towards the last good point.
            lo = prev;
            hi = Trial {
                alpha: t.alpha,
                f: f64::INFINITY,
                dg: f64::INFINITY,
            };
            break;
        }
        if !armijo(&t) || (!first && t.f >= prev.f) {
            lo = prev;
            hi = t;
            break;
        }
        if t.dg.abs() <= -C2 * dg0 {
            return Ok(Some(t.f));
        }
        if t.dg >= 0.0 {
            hi = prev;
            lo = t;
            break;
        }
        if budget == 0 {
            return Ok(restore(best, x_new, g_new));
        }
        first = false;
        alpha = t.alpha * 4.0;
        prev = t;
    }
    // Zoom phase: `lo` satisfies Armijo with the lowest value, `hi` brackets the step.
    while budget > 0 {
        let (a, b) = (lo.alpha, hi.alpha);
        let mut trial_alpha = if hi.f.is_finite() {
            cubic_min(lo.alpha, lo.f, lo.dg, hi.alpha, hi.f, hi.dg)
        } else {
            0.5 * (a + b)
        };
        // Safeguard: stay inside the middle 80% of the bracket.
        let (left, right) = if a < b { (a, b) } else { (b, a) };
        let margin = 0.1 * (right - left);
        if !(trial_alpha > left + margin && trial_alpha < right - margin) {
            trial_alpha = 0.5 * (a + b);
        }
        if (right - left) <= 1e-16 * right.max(1e-300) {
            break;
        }
        let t = eval(trial_alpha, x_new, g_new)?;
        budget -= 1;
        keep(&t, x_new, g_new, &mut best);
        if !t.f.is_finite() || !armijo(&t) || t.f >= lo.f {
            hi = if t.f.is_finite() {
                t
            } else {
                Trial {
                    alpha: t.alpha,
                    f: f64::INFINITY,
                    dg: f64::INFINITY,
                }
            };
        } else {
            if t.dg.abs() <= -C2 * dg0 {
                return Ok(Some(t.f));
            }
            if t.dg * (hi.alpha - lo.alpha) >= 0.0 {
                hi = lo;
            }
            lo = t;
        }
    }
    Ok(restore(best, x_new, g_new))
}

fn restore(
    best: Option<(f64, Vec<f64>, Vec<f64>)>,
    x_new: &mut [f64],
    g_new: &mut [f64],
) -> Option<f64> {
    best.map(|(f, x, g)| {
        x_new.copy_from_slice(&x);
        g_new.copy_from_slice(&g);
        f
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rosenbrock() {
        let mut x = vec![-1.2, 1.0];
        let opts = LbfgsOptions {
            max_iter: 500,
            gtol: 1e-9,
            ftol: 0.0,
            ..Default::default()
        };
        let r = minimize(
            &mut x,
            |p, g| {
                let (a, b) = (p[0], p[1]);
                g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
                g[1] = 200.0 * (b - a * a);
                Ok((1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2))
            },
            &opts,
        )
        .unwrap();
        assert!(
            (x[0] - 1.0).abs() < 1e-6 && (x[1] - 1.0).abs() < 1e-6,
            "{x:?} {r:?}"
        );
        assert!(r.converged());
    }

    #[test]
    fn quadratic_converges_in_few_iterations() {
        // Ill-conditioned diagonal quadratic.
        let diag: Vec<f64> = (0..50).map(|i| 1.0 + i as f64 * 10.0).collect();
        let mut x = vec![1.0; 50];
        let r = minimize(
            &mut x,
            |p, g| {
                let mut f = 0.0;
                for i in 0..p.len() {
                    g[i] = diag[i] * p[i];
                    f += 0.5 * diag[i] * p[i] * p[i];
                }
                Ok(f)
            },
            &LbfgsOptions {
                max_iter: 200,
                gtol: 1e-8,
                ftol: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(x.iter().all(|v| v.abs() < 1e-8), "{r:?}");
        assert_eq!(r.reason, StopReason::GradientTolerance);
    }
}
