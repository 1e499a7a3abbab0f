//! The SVG plot of `compare`: p50, p99 and throughput against the number of
//! connections (one request in flight on each) for the floor2s, mecha and
//! Redis.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::report::Metric;
use crate::sweep::{Sweep, BENCH_GET, FLOOR2, FLOOR2_LOOP, LOADS, MECHA_GET_MEM, REDIS_GET};

/// The lines drawn, with their colours.
const SERIES: [(&str, RGBColor); 5] = [
    (FLOOR2, RGBColor(120, 120, 120)),
    (FLOOR2_LOOP, RGBColor(0, 0, 0)),
    (MECHA_GET_MEM, RGBColor(200, 30, 30)),
    (REDIS_GET, RGBColor(30, 90, 200)),
    (BENCH_GET, RGBColor(30, 150, 60)),
];

/// A named, coloured line through (connections, value) points.
type Line<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// Writes three side-by-side panels to `path`. Both axes are logarithmic:
/// connections double-and-more per point, and the scenarios differ by
/// orders of magnitude.
pub fn write(path: &Path, sweep: &Sweep) -> anyhow::Result<()> {
    // plotters' errors borrow the backend's type; flatten them to text.
    let fail = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (1500, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let panels = root.split_evenly((1, 3));
    let metrics: [(&str, Metric); 3] = [
        ("p50 latency (µs)", |o| o.p50_us),
        ("p99 latency (µs)", |o| o.p99_us),
        ("throughput (ops/s)", |o| o.ops_per_sec),
    ];
    let loads: Vec<_> = LOADS.iter().filter(|l| l.depth == 1).copied().collect();
    let max_x = loads.iter().map(|l| l.connections).max().unwrap_or(1) as f64;
    for (panel, (title, metric)) in panels.iter().zip(metrics) {
        let lines: Vec<Line> = SERIES
            .iter()
            .map(|&(name, colour)| {
                let points = loads
                    .iter()
                    .filter_map(|&l| {
                        sweep
                            .find(name, l)
                            .map(|o| (l.connections as f64, metric(o)))
                    })
                    .filter(|&(_, y)| y.is_finite() && y > 0.0)
                    .collect();
                (name, colour, points)
            })
            .collect();
        let ys = lines.iter().flat_map(|(_, _, p)| p.iter().map(|&(_, y)| y));
        let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
        if lo > hi {
            continue; // nothing measured for this panel
        }
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (0.8f64..max_x * 1.25).log_scale(),
                (lo * 0.7..hi * 1.4).log_scale(),
            )
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("connections (1 request in flight each)")
            // Whole numbers: connections, µs and ops/s need no decimals here.
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(|e| fail(&e))?;
        for (name, colour, points) in lines {
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(|e| fail(&e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))
}
