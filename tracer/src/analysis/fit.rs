//! The fitting the trend and leak rules share: weighted least squares over
//! a series, and the test for a socket count that rose steadily.

/// Fewer points than this are too few to call a trend.
pub(super) const MIN_TREND_POINTS: usize = 5;
/// How well a line must explain a socket-count series to call it a rise.
const MIN_RISE_R_SQUARED: f64 = 0.8;

/// One point of a series for a weighted least-squares fit.
#[derive(Debug, Clone, Copy)]
pub(super) struct Point {
    pub(super) x: f64,
    pub(super) y: f64,
    pub(super) weight: f64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Line {
    pub(super) slope: f64,
    pub(super) intercept: f64,
    pub(super) r_squared: f64,
}

impl Line {
    pub(super) fn at(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }
}

/// Weighted least squares; `None` when the points cannot define a line.
pub(super) fn fit(points: &[Point]) -> Option<Line> {
    let total: f64 = points.iter().map(|p| p.weight).sum();
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.weight * p.x).sum::<f64>() / total;
    let mean_y = points.iter().map(|p| p.weight * p.y).sum::<f64>() / total;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for p in points {
        let (dx, dy) = (p.x - mean_x, p.y - mean_y);
        sxx += p.weight * dx * dx;
        sxy += p.weight * dx * dy;
        syy += p.weight * dy * dy;
    }
    if sxx.is_nan() || sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    // A constant series is explained exactly by a flat line.
    let r_squared = if syy > 0.0 { (sxy * sxy / (sxx * syy)).clamp(0.0, 1.0) } else { 1.0 };
    let line = Line { slope, intercept: mean_y - slope * mean_x, r_squared };
    [line.slope, line.intercept, line.r_squared].iter().all(|v| v.is_finite()).then_some(line)
}

/// A point this many robust standard deviations (1.4826 x the median
/// absolute residual) off the first line is an outlier...
const OUTLIER_SIGMAS: f64 = 5.0;
/// ...and at most this share of the points are.
const MAX_OUTLIER_SHARE: f64 = 0.1;

/// [`fit`], then again without the points far off the first line (a lone
/// burst, a stalled second): the line and the points kept.
pub(super) fn fit_without_outliers(points: &[Point]) -> Option<(Line, Vec<Point>)> {
    let line = fit(points)?;
    let residual = |p: &Point| (p.y - line.at(p.x)).abs();
    let mut residuals: Vec<f64> = points.iter().map(residual).collect();
    residuals.sort_by(f64::total_cmp);
    let Some(&median) = residuals.get(residuals.len() / 2) else { return Some((line, points.to_vec())) };
    let limit = OUTLIER_SIGMAS * 1.4826 * median;
    let most = (points.len() as f64 * MAX_OUTLIER_SHARE) as usize;
    let outliers = residuals.iter().rev().take(most).filter(|&&r| r > limit).count();
    if outliers == 0 || limit <= 0.0 {
        return Some((line, points.to_vec()));
    }
    // The `outliers` largest residuals go (ties past the limit keep order).
    let cut = residuals[residuals.len() - outliers];
    let mut dropped = 0;
    let kept: Vec<Point> = points
        .iter()
        .filter(|p| {
            let out = dropped < outliers && residual(p) >= cut;
            dropped += usize::from(out);
            !out
        })
        .copied()
        .collect();
    Some((fit(&kept)?, kept))
}

/// A socket count that rose steadily.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rise {
    pub(super) first: u64,
    pub(super) last: u64,
    pub(super) per_sec: f64,
    pub(super) r_squared: f64,
    pub(super) span_secs: f64,
    pub(super) samples: usize,
}

pub(super) fn steady_rise(series: &[(f64, u64)], min_rise: f64) -> Option<Rise> {
    if series.len() < MIN_TREND_POINTS {
        return None;
    }
    let points: Vec<Point> = series.iter().map(|&(t, count)| Point { x: t, y: count as f64, weight: 1.0 }).collect();
    let line = fit(&points)?;
    let (first_t, first) = *series.first()?;
    let (last_t, last) = *series.last()?;
    let span_secs = last_t - first_t;
    let steady = line.slope > 0.0
        && line.r_squared >= MIN_RISE_R_SQUARED
        && line.slope * span_secs >= min_rise
        && last > first
        && thirds_increasing(&points);
    steady.then_some(Rise {
        first,
        last,
        per_sec: line.slope,
        r_squared: line.r_squared,
        span_secs,
        samples: points.len(),
    })
}

/// Whether each third of the series is higher on average than the one
/// before: a rise that went on, not one step and a plateau.
pub(super) fn thirds_increasing(points: &[Point]) -> bool {
    let n = points.len();
    let mean = |part: Option<&[Point]>| match part {
        Some(part) if !part.is_empty() => Some(part.iter().map(|p| p.y).sum::<f64>() / part.len() as f64),
        _ => None,
    };
    match (mean(points.get(..n / 3)), mean(points.get(n / 3..2 * n / 3)), mean(points.get(2 * n / 3..))) {
        (Some(a), Some(b), Some(c)) => a < b && b < c,
        _ => false,
    }
}
