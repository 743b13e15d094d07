//! The plot of a run: throughput and p99 latency against concurrency, one
//! line per RPC, as SVG.

use plotters::prelude::*;

use super::load::LoadRow;

/// Draws `rows` to an SVG file at `path`.
pub fn draw(rows: &[LoadRow], path: &std::path::Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(550);
    let rpcs = ["MintJwt", "MintX509"];
    let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];
    let max_c = rows.iter().map(|r| r.concurrency).max().unwrap_or(1) as f64;
    let xr = (0.8f64..max_c * 1.25).log_scale();
    for (area, title, value, unit) in [
        (
            &left,
            "throughput",
            (|r: &LoadRow| r.throughput) as fn(&LoadRow) -> f64,
            "credentials/s",
        ),
        (&right, "p99 latency", |r: &LoadRow| r.p99_ms, "ms"),
    ] {
        let top = rows.iter().map(value).fold(0.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{title} vs concurrency"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(xr.clone(), 0f64..top.max(1.0))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("concurrent callers")
            .y_desc(unit)
            .draw()
            .map_err(err)?;
        for (rpc, color) in rpcs.iter().zip(colors) {
            let pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.rpc == *rpc)
                .map(|r| (r.concurrency as f64, value(r)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(*rpc)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}
