//! Figures for benchmarks (`benches/`): sample sizes from the environment, nearest-rank
//! quantiles, one aligned line of p50/p95/p99 per measurement, and the host's load.
//!
//! Benchmarks print figures; they never assert on timings (STYLE §10). On a shared machine a
//! timing says as much about the load as about the code, hence [`print_load`].

use std::time::Duration;

/// The quantiles every report prints, in permille: p50, p95, p99.
const REPORTED: [usize; 3] = [500, 950, 990];

/// The variable `name` as a number, else `default` (also when it is not a number).
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Prints the host's load average (`/proc/loadavg`) and CPU count: the figures of a run on a
/// busy machine are worth only as much as this line says. `when` names the moment ("at start").
pub fn print_load(when: &str) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fields: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "host load average {when}: {} ({} CPUs)",
        fields.join(" "),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
}

/// The sample at quantile `permille` (500 = median, 990 = p99) of `sorted`, by nearest rank:
/// index `(n - 1) × permille / 1000`, rounded half up. The slice is sorted from best to worst,
/// so p95 and p99 are the bad end whatever "bad" means for the samples.
///
/// # Panics
/// When `sorted` is empty or `permille` is above 1000.
pub fn quantile<T: Copy>(sorted: &[T], permille: usize) -> T {
    assert!(!sorted.is_empty(), "the quantile of no samples");
    assert!(permille <= 1000, "quantile {permille}‰ is above 1000‰");
    sorted[((sorted.len() - 1) * permille + 500) / 1000]
}

/// Prints p50/p95/p99 of latencies in milliseconds; returns them.
///
/// # Panics
/// When there are no samples.
pub fn report_ms(name: &str, samples: Vec<Duration>) -> [f64; 3] {
    let ms = samples
        .into_iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    report(name, ms, "ms")
}

/// Prints p50/p95/p99 of samples in `unit` where larger is worse (times, sizes); returns them.
///
/// # Panics
/// When there are no samples.
pub fn report(name: &str, mut samples: Vec<f64>, unit: &str) -> [f64; 3] {
    samples.sort_by(f64::total_cmp);
    print_line(name, &samples, unit)
}

/// Prints p50/p95/p99 of rates in `unit` where smaller is worse (throughputs): p95 and p99 are
/// the slow end. Returns them.
///
/// # Panics
/// When there are no samples.
pub fn report_rate(name: &str, mut rates: Vec<f64>, unit: &str) -> [f64; 3] {
    rates.sort_by(|a, b| b.total_cmp(a));
    print_line(name, &rates, unit)
}

/// One line `name n=.. p50=.. p95=.. p99=..` of samples sorted from best to worst.
fn print_line(name: &str, sorted: &[f64], unit: &str) -> [f64; 3] {
    assert!(!sorted.is_empty(), "{name}: no samples to report");
    let q = REPORTED.map(|permille| quantile(sorted, permille));
    println!(
        "{name:<52} n={:<5} p50={:>9.2} {unit}  p95={:>9.2} {unit}  p99={:>9.2} {unit}",
        sorted.len(),
        q[0],
        q[1],
        q[2]
    );
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_picks_the_nearest_rank() {
        let hundred_and_one: Vec<usize> = (0..=100).collect();
        let five = [10, 20, 30, 40, 50];
        // (samples, permille, expected)
        let cases: [(&[usize], usize, usize); 12] = [
            (&hundred_and_one, 0, 0),
            (&hundred_and_one, 500, 50),
            (&hundred_and_one, 950, 95),
            (&hundred_and_one, 990, 99),
            (&hundred_and_one, 1000, 100),
            (&five, 500, 30),
            // (5 - 1) × 0.95 = 3.8 and × 0.99 = 3.96: both round to the last sample
            (&five, 950, 50),
            (&five, 990, 50),
            // (5 - 1) × 0.6 = 2.4 rounds down, × 0.625 = 2.5 rounds up
            (&five, 600, 30),
            (&five, 625, 40),
            (&[7], 500, 7),
            (&[7], 990, 7),
        ];
        for (samples, permille, expected) in cases {
            assert_eq!(
                quantile(samples, permille),
                expected,
                "{permille}‰ of {samples:?}"
            );
        }
    }

    #[test]
    fn reports_put_the_bad_end_at_p95_and_p99() {
        let samples = vec![3.0, 1.0, 5.0, 2.0, 4.0];
        assert_eq!(
            report("larger is worse", samples.clone(), "s"),
            [3.0, 5.0, 5.0]
        );
        assert_eq!(
            report_rate("smaller is worse", samples, "MiB/s"),
            [3.0, 1.0, 1.0]
        );
        let latencies = [30, 10, 20].map(Duration::from_millis).to_vec();
        assert_eq!(report_ms("latencies", latencies), [20.0, 30.0, 30.0]);
    }

    #[test]
    #[should_panic(expected = "empty: no samples to report")]
    fn a_report_of_no_samples_names_it() {
        report("empty", Vec::new(), "ms");
    }
}
