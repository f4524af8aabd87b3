//! Percentiles and medians.

use hdrhistogram::Histogram;

/// Nearest-rank percentile (`q` in 0..=1) of an ascending-sorted slice.
pub fn percentile_sorted(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let q = q.clamp(0.0, 1.0);
    // Nearest rank: the smallest value with at least q of the samples at or below it.
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.saturating_sub(1).min(sorted.len() - 1)])
}

/// Median of unsorted values (mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// A latency histogram in microseconds, 1 µs .. 10 min, 3 significant digits.
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// p50/p99/max of a histogram in milliseconds (`None` when empty).
pub fn hist_summary_ms(h: &Histogram<u64>) -> Option<(f64, f64, f64)> {
    if h.is_empty() {
        return None;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Some((ms(h.value_at_quantile(0.50)), ms(h.value_at_quantile(0.99)), ms(h.max())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile_sorted(&v, 0.5), Some(50));
        assert_eq!(percentile_sorted(&v, 0.99), Some(99));
        assert_eq!(percentile_sorted(&v, 1.0), Some(100));
        assert_eq!(percentile_sorted(&v, 0.0), Some(1));
        assert_eq!(percentile_sorted(&[7], 0.99), Some(7));
        assert_eq!(percentile_sorted(&[], 0.5), None);
        let v = [1, 2, 3];
        assert_eq!(percentile_sorted(&v, 0.5), Some(2));
        assert_eq!(percentile_sorted(&v, 0.99), Some(3));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn histogram_summary_matches_samples() {
        let mut h = new_latency_histogram();
        assert!(hist_summary_ms(&h).is_none());
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap(); // 1..1000 ms
        }
        let (p50, p99, max) = hist_summary_ms(&h).unwrap();
        assert!((p50 - 500.0).abs() / 500.0 < 0.002, "{p50}");
        assert!((p99 - 990.0).abs() / 990.0 < 0.002, "{p99}");
        assert!((max - 1000.0).abs() / 1000.0 < 0.002, "{max}");
    }
}
