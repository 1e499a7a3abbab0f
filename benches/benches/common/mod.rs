//! The criterion settings both micro-benchmark suites share.

use std::time::Duration;

use criterion::Criterion;

/// Shorter than criterion's defaults (3 s warm-up, 5 s measurement) so that
/// both suites together finish in about two minutes; these routines take
/// nanoseconds to microseconds, so two seconds still gather many thousands of
/// iterations. Plots are off: only the plain-text summary is wanted, and it
/// avoids looking for gnuplot.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
}
