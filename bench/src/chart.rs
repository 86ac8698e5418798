//! The `--sweep` chart: latency percentiles and deliveries/s against room size, as SVG.

use std::path::Path;

use plotters::prelude::*;

use crate::room::Report;

/// Which figure of a report a line shows.
type Pick = fn(&Report) -> f64;

pub fn write_svg(path: &Path, reports: &[Report]) -> Result<(), String> {
    let root = SVGBackend::new(path, (1100, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(550);
    let sizes: Vec<f64> = reports.iter().map(|r| r.connections as f64).collect();
    let max_size = sizes.iter().cloned().fold(1.0, f64::max);

    let max_latency = reports.iter().map(|r| r.latency_ms.max).fold(1.0, f64::max);
    let mut latency = ChartBuilder::on(&left)
        .caption("publish → receipt latency (ms)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0.0..max_size * 1.05, 0.0..max_latency * 1.1)
        .map_err(|e| e.to_string())?;
    latency
        .configure_mesh()
        .x_desc("connections in the room")
        .draw()
        .map_err(|e| e.to_string())?;
    let series: [(&str, Pick, RGBColor); 3] = [
        ("p50", |r| r.latency_ms.p50, BLUE),
        ("p90", |r| r.latency_ms.p90, GREEN),
        ("p99", |r| r.latency_ms.p99, RED),
    ];
    for (name, pick, color) in series {
        let points: Vec<(f64, f64)> = reports
            .iter()
            .map(|r| (r.connections as f64, pick(r)))
            .collect();
        latency
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        latency
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(|e| e.to_string())?;
    }
    latency
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;

    let max_rate = reports
        .iter()
        .map(|r| r.deliveries_per_sec)
        .fold(1.0, f64::max);
    let mut rate = ChartBuilder::on(&right)
        .caption("deliveries per second", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..max_size * 1.05, 0.0..max_rate * 1.1)
        .map_err(|e| e.to_string())?;
    rate.configure_mesh()
        .x_desc("connections in the room")
        .draw()
        .map_err(|e| e.to_string())?;
    let points: Vec<(f64, f64)> = reports
        .iter()
        .map(|r| (r.connections as f64, r.deliveries_per_sec))
        .collect();
    rate.draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2)))
        .map_err(|e| e.to_string())?;
    rate.draw_series(points.into_iter().map(|p| Circle::new(p, 3, BLUE.filled())))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
