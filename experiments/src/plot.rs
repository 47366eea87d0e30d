//! The figures of `bpfstream lab` and `bpfstream bench --plot`, as SVG (plotters): line panels
//! (with optional log2 x axis and shaded intervals) and bar panels (one bar per row, value
//! printed on top).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

const WIDTH: u32 = 960;
const PANEL_HEIGHT: u32 = 380;
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the figure: {e}")
}

/// One line of a line panel.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart.
#[derive(Debug, Clone, Default)]
pub struct LinePanel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// x is bytes on a log2 axis (labels as sizes).
    pub x_bytes_log2: bool,
    /// Intervals of x to shade (e.g. when degraded), with their legend name.
    pub shaded: Vec<(f64, f64)>,
    pub shaded_name: String,
}

/// A bar chart: one bar per label.
#[derive(Debug, Clone, Default)]
pub struct BarPanel {
    pub title: String,
    pub y_label: String,
    pub labels: Vec<String>,
    pub values: Vec<f64>,
    /// Decimals of the value printed above each bar.
    pub decimals: usize,
}

/// `--plot`: an .svg file in a directory that exists.
pub fn parse_svg_path(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if path.extension().is_none_or(|e| e != "svg") {
        return Err(format!("{text}: the figure is SVG; give a file name ending in .svg"));
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(format!("{text}: directory {} does not exist", dir.display()));
    }
    Ok(path)
}

/// A y-axis tick without needless decimals.
fn tick(y: f64) -> String {
    if y.abs() >= 100.0 || y.fract() == 0.0 {
        format!("{y:.0}")
    } else {
        format!("{y:.1}")
    }
}

fn size_label(bytes: f64) -> String {
    let b = bytes.round() as u64;
    if b >= 1 << 20 && b % (1 << 20) == 0 {
        format!("{} MiB", b >> 20)
    } else if b >= 1 << 10 {
        format!("{} KiB", b >> 10)
    } else {
        format!("{b} B")
    }
}

/// Line panels stacked vertically.
pub fn lines(path: &Path, title: &str, panels: &[LinePanel]) -> Result<()> {
    let height = PANEL_HEIGHT * panels.len() as u32 + 40;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    for (panel, area) in panels.iter().zip(root.split_evenly((panels.len(), 1))) {
        line_panel(&area, panel)?;
    }
    root.present().map_err(err)
}

fn bounds(panel: &LinePanel) -> (f64, f64, f64) {
    let xs = panel.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).chain(panel.shaded.iter().map(|s| s.1));
    let (mut x0, mut x1) = (f64::MAX, f64::MIN);
    for x in xs {
        x0 = x0.min(x);
        x1 = x1.max(x);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x0 == x1 {
        x1 = x0 + 1.0;
    }
    let y1 = panel.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max);
    (x0, x1, if y1 > 0.0 { y1 * 1.1 } else { 1.0 })
}

fn line_panel<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, panel: &LinePanel) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (x0, x1, y1) = bounds(panel);
    let mut builder = ChartBuilder::on(area);
    builder.caption(&panel.title, ("sans-serif", 18)).margin(12).x_label_area_size(45).y_label_area_size(70);
    if panel.x_bytes_log2 {
        // Plot log2(bytes) on a linear axis, so that ticks fall on powers of two.
        let mut log_panel = panel.clone();
        for s in &mut log_panel.series {
            s.points.iter_mut().for_each(|p| p.0 = p.0.max(1.0).log2());
        }
        let (lo, hi) = (x0.max(1.0).log2().floor() - 0.5, x1.max(1.0).log2().ceil() + 0.5);
        let mut chart = builder.build_cartesian_2d(lo..hi, 0.0..y1).map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(&panel.x_label)
            .y_desc(&panel.y_label)
            .y_label_formatter(&|y| tick(*y))
            .x_labels((hi - lo) as usize + 1)
            .x_label_formatter(&|x| if x.fract() == 0.0 { size_label(x.exp2()) } else { String::new() })
            .draw()
            .map_err(err)?;
        draw_lines(&mut chart, &log_panel)?;
    } else {
        let mut chart = builder.build_cartesian_2d(x0..x1, 0.0..y1).map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(&panel.x_label)
            .y_desc(&panel.y_label)
            .y_label_formatter(&|y| tick(*y))
            .draw()
            .map_err(err)?;
        if !panel.shaded.is_empty() {
            let shade = RGBColor(255, 200, 80).mix(0.3);
            chart
                .draw_series(panel.shaded.iter().map(|&(a, b)| Rectangle::new([(a, 0.0), (b, y1)], shade.filled())))
                .map_err(err)?
                .label(&panel.shaded_name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], shade.filled()));
        }
        draw_lines(&mut chart, panel)?;
    }
    Ok(())
}

fn draw_lines<'a, DB, X>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
    panel: &LinePanel,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64>,
{
    for (i, s) in panel.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        if s.points.len() <= 40 {
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// Bar panels side by side (at most two per row).
pub fn bars(path: &Path, title: &str, panels: &[BarPanel]) -> Result<()> {
    let cols = panels.len().clamp(1, 2);
    let rows = panels.len().div_ceil(cols);
    let root = SVGBackend::new(path, (WIDTH, PANEL_HEIGHT * rows as u32 + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    for (panel, area) in panels.iter().zip(root.split_evenly((rows, cols))) {
        bar_panel(&area, panel)?;
    }
    root.present().map_err(err)
}

fn bar_panel<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, panel: &BarPanel) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let n = panel.values.len();
    let top = panel.values.iter().copied().fold(0.0, f64::max);
    let y1 = if top > 0.0 { top * 1.18 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((0..(n as i32 - 1).max(0)).into_segmented(), 0.0..y1)
        .map_err(err)?;
    let labels = &panel.labels;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(&panel.y_label)
        .y_label_formatter(&|y| tick(*y))
        .x_labels(n.max(1))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(err)?;
    chart
        .draw_series(panel.values.iter().enumerate().map(|(i, &v)| {
            let color = PALETTE[i % PALETTE.len()];
            let i = i as i32;
            let mut bar =
                Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), v)], color.filled());
            bar.set_margin(0, 0, 14, 14);
            bar
        }))
        .map_err(err)?;
    let decimals = panel.decimals;
    chart
        .draw_series(panel.values.iter().enumerate().map(|(i, &v)| {
            Text::new(
                format!("{v:.decimals$}"),
                (SegmentValue::CenterOf(i as i32), v + y1 * 0.02),
                ("sans-serif", 14).into_font().color(&BLACK).pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Bottom,
                )),
            )
        }))
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_svg_with_their_text() {
        let dir = std::env::temp_dir().join(format!("bpfstream-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let line = dir.join("l.svg");
        lines(
            &line,
            "Loss",
            &[LinePanel {
                title: "loss".into(),
                x_label: "buffer".into(),
                y_label: "%".into(),
                series: vec![Series { name: "ring".into(), points: vec![(4096.0, 90.0), (1048576.0, 0.0)] }],
                x_bytes_log2: true,
                ..Default::default()
            }],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&line).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("ring") && svg.contains("1 MiB"), "{svg}");
        let bar = dir.join("b.svg");
        bars(
            &bar,
            "Bars",
            &[BarPanel {
                title: "t".into(),
                y_label: "n".into(),
                labels: vec!["ring".into(), "perf".into()],
                values: vec![1.0, 250.0],
                decimals: 0,
            }],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&bar).unwrap();
        assert!(svg.contains("perf") && svg.contains("250"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
