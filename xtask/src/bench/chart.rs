//! PNG charts with plotters' bitmap backend. Text is drawn with ab_glyph (pure Rust) from a TTF file
//! loaded at run time (Debian's DejaVu Sans, installed by the bench), so no fontconfig/freetype is
//! linked and no label is silently dropped.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::load::Workload;
use super::report::Results;
use super::Mode;

const FONT: &str = "sans-serif";
const PERCENTILES: [&str; 4] = ["p50", "p90", "p99", "p99.9"];

fn color(mode: Mode) -> RGBColor {
    match mode {
        Mode::Direct => RGBColor(90, 90, 90),
        Mode::Sidecar => RGBColor(214, 39, 40),
        Mode::NodeEnvoy => RGBColor(31, 119, 180),
        Mode::Keel => RGBColor(44, 160, 44),
        Mode::KeelAccessLog => RGBColor(148, 103, 189),
    }
}

/// Registers `font` as plotters' "sans-serif" once per process.
fn register_font(font: &Path) -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes =
                std::fs::read(font).map_err(|e| format!("reading {}: {e}", font.display()))?;
            // plotters keeps fonts for the process's life; leaking the one font file is the API's ask.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a usable TTF font", font.display()))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn plot_err<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow!("drawing {what}: {e:?}")
}

/// Latency percentiles per mode, one panel per fixed-rate workload, log-scale milliseconds.
pub fn latency(path: &Path, r: &Results, font: &Path) -> Result<()> {
    register_font(font)?;
    let workloads: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| w.fixed_rate())
        .collect();
    let root = BitMapBackend::new(path, (1500, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err("background"))?;
    let title = format!(
        "Latency percentiles per mode (median of {} round(s), {} rps, {} conns, route policy {}, traffic policy {}) — {}",
        r.settings.rounds,
        r.settings.rate,
        r.settings.connections,
        r.settings.route_policy.name(),
        r.settings.traffic_policy.name(),
        r.machine.date_utc
    );
    let root = root.titled(&title, (FONT, 22)).map_err(plot_err("title"))?;
    let panels = root.split_evenly((1, workloads.len()));
    for (panel, w) in panels.iter().zip(workloads) {
        let series: Vec<(Mode, [f64; 4])> = r
            .settings
            .modes
            .iter()
            .filter_map(|&m| r.summary(w, m).map(|s| (m, s.latency_ms)))
            .collect();
        let values = series.iter().flat_map(|(_, l)| l.iter().copied());
        let (lo, hi) = bounds(values);
        let mut chart = ChartBuilder::on(panel)
            .caption(w.name(), (FONT, 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d((0u32..3u32).into_segmented(), (lo..hi).log_scale())
            .map_err(plot_err("latency axes"))?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency, ms (log)")
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => PERCENTILES
                    .get(*i as usize)
                    .map(|s| (*s).to_string())
                    .unwrap_or_default(),
                SegmentValue::Last => String::new(),
            })
            .y_label_formatter(&|v| log_label(*v, 2))
            .light_line_style(WHITE)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(plot_err("latency mesh"))?;
        for (mode, lat) in &series {
            let c = color(*mode);
            let points: Vec<(SegmentValue<u32>, f64)> = (0u32..4)
                .zip(lat.iter().copied())
                .filter(|(_, y)| y.is_finite() && *y > 0.0)
                .map(|(i, y)| (SegmentValue::CenterOf(i), y))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), c.stroke_width(3)))
                .map_err(plot_err("latency line"))?
                .label(mode.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
                });
            chart
                .draw_series(points.into_iter().map(|p| Circle::new(p, 4, c.filled())))
                .map_err(plot_err("latency points"))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err("latency legend"))?;
    }
    root.present()
        .map_err(plot_err("latency.png"))
        .with_context(|| format!("writing {}", path.display()))
}

/// Proxy memory (sum over the node's proxies) against pods on the node, log-scale MiB.
pub fn memory(path: &Path, r: &Results, font: &Path) -> Result<()> {
    register_font(font)?;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err("background"))?;
    type Getter = fn(&super::scale::MemoryPoint) -> Option<u64>;
    let lines: [(&str, RGBColor, Getter); 4] = [
        ("sidecars (sum of RSS)", color(Mode::Sidecar), |p| {
            p.sidecars_rss_kib
        }),
        ("sidecars (sum of PSS)", RGBColor(255, 152, 150), |p| {
            p.sidecars_pss_kib
        }),
        ("node Envoy (RSS)", color(Mode::NodeEnvoy), |p| {
            p.node_envoy_rss_kib
        }),
        ("keel (RSS)", color(Mode::Keel), |p| p.keel_rss_kib),
    ];
    let mib = |kib: u64| kib as f64 / 1024.0;
    let values = r
        .memory
        .iter()
        .flat_map(|p| lines.iter().filter_map(move |(_, _, get)| get(p)))
        .map(mib);
    let (lo, hi) = bounds(values);
    let max_pods = r.memory.iter().map(|p| p.pods).max().unwrap_or(10);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Proxy memory vs pods (and services) on the node — {}",
                r.machine.date_utc
            ),
            (FONT, 20),
        )
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..f64::from(max_pods) * 1.1, (lo..hi).log_scale())
        .map_err(plot_err("memory axes"))?;
    chart
        .configure_mesh()
        .x_desc("pods and services on the node")
        .y_desc("resident memory, MiB (log)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| log_label(*v, 0))
        .light_line_style(WHITE)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(plot_err("memory mesh"))?;
    for (name, c, get) in lines {
        let points: Vec<(f64, f64)> = r
            .memory
            .iter()
            .filter_map(|p| get(p).map(|v| (f64::from(p.pods), mib(v))))
            .collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(3)))
            .map_err(plot_err("memory line"))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart
            .draw_series(points.into_iter().map(|p| Circle::new(p, 4, c.filled())))
            .map_err(plot_err("memory points"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err("memory legend"))?;
    root.present()
        .map_err(plot_err("memory.png"))
        .with_context(|| format!("writing {}", path.display()))
}

/// A log axis gets a tick at every 1..9 x 10^k; label only 1, 2 and 5 x 10^k so labels never overlap.
fn log_label(v: f64, decimals: usize) -> String {
    if !(v.is_finite() && v > 0.0) {
        return String::new();
    }
    let mantissa = v / 10f64.powf(v.log10().floor());
    if [1.0, 2.0, 5.0, 10.0]
        .iter()
        .any(|m| (mantissa - m).abs() < 0.05)
    {
        let decimals = if v >= 1.0 { 0 } else { decimals };
        format!("{v:.decimals$}")
    } else {
        String::new()
    }
}

/// Log-axis bounds with headroom around the finite positive values (a decade if there are none).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() || hi <= 0.0 {
        return (0.1, 1.0);
    }
    (lo / 1.5, hi * 2.0)
}

/// Maximum throughput (http1-max) and proxy CPU per 1,000 requests (http1-rate) per mode, as bars:
/// the cost side of the latency chart.
pub fn throughput(path: &Path, r: &Results, font: &Path) -> Result<()> {
    register_font(font)?;
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err("background"))?;
    let title = format!(
        "Throughput and proxy CPU per mode (median of {} round(s), {} conns, route policy {}, traffic policy {}) — {}",
        r.settings.rounds,
        r.settings.connections,
        r.settings.route_policy.name(),
        r.settings.traffic_policy.name(),
        r.machine.date_utc
    );
    let root = root.titled(&title, (FONT, 22)).map_err(plot_err("title"))?;
    let panels = root.split_evenly((1, 2));
    type Pick = fn(&super::report::Summary) -> f64;
    let specs: [(&str, &str, Workload, bool, Pick, usize); 2] = [
        (
            "maximum throughput (http1-max)",
            "requests per second",
            Workload::Http1Max,
            true,
            |s| s.rps,
            0,
        ),
        (
            "proxy CPU per 1,000 requests (http1-rate)",
            "CPU-seconds per 1,000 requests",
            Workload::Http1Rate,
            false,
            |s| s.cpu_per_1k,
            3,
        ),
    ];
    for (panel, (caption, y_desc, workload, with_direct, pick, decimals)) in
        panels.iter().zip(specs)
    {
        let bars: Vec<(Mode, f64)> = r
            .settings
            .modes
            .iter()
            .filter(|&&m| with_direct || m != Mode::Direct)
            .filter_map(|&m| r.summary(workload, m).map(|s| (m, pick(&s))))
            .filter(|(_, v)| v.is_finite() && *v >= 0.0)
            .collect();
        let top = bars.iter().map(|(_, v)| *v).fold(0f64, f64::max);
        let top = if top > 0.0 { top * 1.2 } else { 1.0 };
        let n = u32::try_from(bars.len()).unwrap_or(0).max(1);
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, (FONT, 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(80)
            .build_cartesian_2d((0u32..n).into_segmented(), 0f64..top)
            .map_err(plot_err("bar axes"))?;
        let names: Vec<&'static str> = bars.iter().map(|(m, _)| m.name()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(y_desc)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => names
                    .get(*i as usize)
                    .map(|s| (*s).to_string())
                    .unwrap_or_default(),
                SegmentValue::Last => String::new(),
            })
            .y_label_formatter(&|v| format!("{v:.decimals$}"))
            .light_line_style(WHITE)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(plot_err("bar mesh"))?;
        for (i, (mode, value)) in (0u32..).zip(&bars) {
            let c = color(*mode);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), *value),
                    ],
                    c.filled(),
                )))
                .map_err(plot_err("bar"))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{value:.decimals$}"),
                    (SegmentValue::CenterOf(i), *value + top * 0.02),
                    (FONT, 14).into_font().color(&BLACK),
                )))
                .map_err(plot_err("bar value"))?;
        }
    }
    root.present()
        .map_err(plot_err("throughput.png"))
        .with_context(|| format!("writing {}", path.display()))
}
