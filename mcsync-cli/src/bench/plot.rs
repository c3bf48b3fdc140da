//! PNG plots of a bench report (pure-Rust bitmap backend; the font is embedded, so no
//! system fonts are needed).

use super::{BenchResult, Report};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::Path;
use std::sync::Once;

const W: u32 = 900;
const H: u32 = 520;
const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let font = epaint_default_fonts::UBUNTU_LIGHT;
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // A font that fails to parse leaves text out; the plots still render.
            let _ = register_font("sans-serif", style, font);
        }
    });
}

/// Writes every plot the report has data for; returns how many.
pub fn write_all(r: &Report, latency_us: &[u64], out: &Path) -> BenchResult<usize> {
    fonts();
    let mut n = 0;
    if !r.throughput.is_empty() {
        throughput(r, &out.join("throughput.png"))?;
        n += 1;
    }
    if !latency_us.is_empty() {
        latency(r, latency_us, &out.join("latency.png"))?;
        n += 1;
    }
    if !r.fanout.is_empty() {
        fanout(r, &out.join("fanout.png"))?;
        n += 1;
    }
    if !r.repair.is_empty() {
        repair(r, &out.join("repair.png"))?;
        n += 1;
    }
    Ok(n)
}

fn legend_line(c: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(2))
}

fn throughput(r: &Report, path: &Path) -> BenchResult<()> {
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let all = r
        .throughput
        .iter()
        .flat_map(|x| [x.updates_per_s, x.raw_updates_per_s])
        .filter(|v| *v > 0.0);
    let (lo, hi) = all.fold((f64::INFINITY, 0f64), |(a, b), v| (a.min(v), b.max(v)));
    // Room below the lowest line for the legend.
    let (lo, hi) = (lo.max(1.0) / 40.0, hi.max(10.0) * 2.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "(a) Throughput, publish -> applied on every subscriber (solid) vs raw multicast (dashed)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.5f64..8.5f64, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("subscribers (receiving sockets)")
        .y_desc("updates / s (log)")
        .x_labels(9)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .light_line_style(WHITE)
        .draw()?;
    let mut sizes: Vec<usize> = r.throughput.iter().map(|x| x.value_bytes).collect();
    sizes.dedup();
    for (i, size) in sizes.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let rows: Vec<_> = r
            .throughput
            .iter()
            .filter(|x| x.value_bytes == *size)
            .collect();
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .map(|x| (x.subscribers as f64, x.updates_per_s))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)).point_size(4))?
            .label(format!("mcsync, {}", super::size_label(*size)))
            .legend(legend_line(c));
        let raw: Vec<(f64, f64)> = rows
            .iter()
            .map(|x| (x.subscribers as f64, x.raw_updates_per_s))
            .collect();
        chart
            .draw_series(DashedLineSeries::new(raw, 8, 5, c.stroke_width(1)))?
            .label(format!("raw UDP multicast, {}", super::size_label(*size)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(1)));
        if *size > r.settings.datagram_bytes {
            let cut: Vec<(f64, f64)> = rows
                .iter()
                .map(|x| (x.subscribers as f64, x.raw_same_datagram_updates_per_s))
                .collect();
            chart
                .draw_series(DashedLineSeries::new(cut, 2, 4, c.stroke_width(1)))?
                .label(format!(
                    "raw, {} cut to {} B datagrams",
                    super::size_label(*size),
                    r.settings.datagram_bytes
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(1))
                });
        }
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

fn latency(r: &Report, samples: &[u64], path: &Path) -> BenchResult<()> {
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    // Always show the 5 ms target line.
    let lo = ((samples[0].max(1) as f64 / 1e3) / 1.5).min(2.0);
    let hi = ((samples[samples.len() - 1].max(2) as f64 / 1e3) * 1.5).max(10.0);
    let caption = match &r.latency {
        Some(l) => format!(
            "(b) Publish -> applied latency, {} B at {}/s to {} subscribers: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
            l.value_bytes,
            l.offered_per_s,
            l.subscribers,
            l.p50_us as f64 / 1e3,
            l.p99_us as f64 / 1e3,
            l.p999_us as f64 / 1e3
        ),
        None => "(b) Publish -> applied latency".into(),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 16))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log)")
        .y_desc("% of updates applied within")
        .x_label_formatter(&|v| {
            if *v < 1.0 {
                format!("{v:.2}")
            } else {
                format!("{v:.1}")
            }
        })
        .label_style(("sans-serif", 14))
        .light_line_style(WHITE)
        .draw()?;
    let n = samples.len();
    let step = (n / 2000).max(1);
    let mut pts: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| {
            (
                samples[i].max(1) as f64 / 1e3,
                100.0 * (i + 1) as f64 / n as f64,
            )
        })
        .collect();
    pts.push((samples[n - 1].max(1) as f64 / 1e3, 100.0));
    chart
        .draw_series(LineSeries::new(pts, COLORS[0].stroke_width(2)))?
        .label("cumulative distribution")
        .legend(legend_line(COLORS[0]));
    if let Some(l) = &r.latency {
        let target = 5.0f64;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(target, 0.0), (target, 100.0)],
                6,
                4,
                COLORS[1].stroke_width(1),
            ))?
            .label(format!("5 ms (p99 target at {}/s)", l.offered_per_s))
            .legend(legend_line(COLORS[1]));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

fn fanout(r: &Report, path: &Path) -> BenchResult<()> {
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let hi = r
        .fanout
        .iter()
        .flat_map(|x| [x.bytes_per_update, x.tcp_bytes_per_update])
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "(c) Publisher egress bytes per 1 KiB update: mcsync multicast + repair vs TCP unicast fan-out",
            ("sans-serif", 16),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..17f64, 0f64..hi)?;
    chart
        .configure_mesh()
        .x_desc("subscribers")
        .y_desc("bytes sent per update")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .light_line_style(WHITE)
        .draw()?;
    let m: Vec<(f64, f64)> = r
        .fanout
        .iter()
        .map(|x| (x.subscribers as f64, x.bytes_per_update))
        .collect();
    let t: Vec<(f64, f64)> = r
        .fanout
        .iter()
        .map(|x| (x.subscribers as f64, x.tcp_bytes_per_update))
        .collect();
    chart
        .draw_series(LineSeries::new(m, COLORS[0].stroke_width(2)).point_size(4))?
        .label("mcsync (multicast + repair)")
        .legend(legend_line(COLORS[0]));
    chart
        .draw_series(LineSeries::new(t, COLORS[1].stroke_width(2)).point_size(4))?
        .label("TCP, one connection per subscriber")
        .legend(legend_line(COLORS[1]));
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

fn repair(r: &Report, path: &Path) -> BenchResult<()> {
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let rows: Vec<_> = r.repair.iter().filter(|x| x.loss > 0.0).collect();
    let hi = rows
        .iter()
        .flat_map(|x| [x.repair_fraction.unwrap_or(0.0), x.throughput_kept])
        .fold(1.5f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "(d) Repair under injected loss: repair bytes / lost bytes, and throughput kept vs lossless",
            ("sans-serif", 16),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((0.05f64..40f64).log_scale(), 0f64..hi)?;
    chart
        .configure_mesh()
        .x_desc("injected loss, % of packets (log)")
        .y_desc("ratio")
        .x_label_formatter(&|v| format!("{v}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 14))
        .light_line_style(WHITE)
        .draw()?;
    let f: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|x| x.repair_fraction.map(|f| (x.loss * 100.0, f)))
        .collect();
    let k: Vec<(f64, f64)> = rows
        .iter()
        .map(|x| (x.loss * 100.0, x.throughput_kept))
        .collect();
    chart
        .draw_series(LineSeries::new(f, COLORS[0].stroke_width(2)).point_size(4))?
        .label("repair bytes / lost bytes (target <= 1.3 at 5 %)")
        .legend(legend_line(COLORS[0]));
    chart
        .draw_series(LineSeries::new(k, COLORS[2].stroke_width(2)).point_size(4))?
        .label("throughput kept (target >= 0.7 at 1 %)")
        .legend(legend_line(COLORS[2]));
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
