//! SVG charts of a report, written by `mqlink simulate --out DIR`:
//!
//! - `latency-cdf.svg`: latency CDF per region pair (the busiest 10 pairs);
//! - `bytes-per-link.svg`: bytes per link under mqlink, a flood bridge and a
//!   one-hop mesh (the busiest 20 links);
//! - `delivery-over-time.svg`: deliveries per second, with every fault marked;
//! - `spool-depth.svg`: messages in each region's spool over time (the
//!   10 deepest), faults marked.
//!
//! The SVG is written directly (a few lines, rectangles and text elements)
//! instead of through plotters: it needs no font metrics, so no fontconfig
//! or font files on the machine, and the output is byte-for-byte
//! deterministic like the rest of the report.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::report::{FaultReport, Report};

const W: f64 = 900.0;
const H: f64 = 520.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 50.0;
/// Room for rotated bar labels under the axis, and the axis title.
const BOTTOM: f64 = 95.0;
/// Line styles taken in turn by series that may coincide.
const DASHES: [&str; 3] = ["", "7 4", "2 3"];
/// Legend labels wrap at this many characters (the legend column is
/// `RIGHT` wide).
const LEGEND_CHARS: usize = 28;
const COLORS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

struct Plot {
    body: String,
    x_max: f64,
    y_max: f64,
    /// Where the next legend entry goes.
    legend_y: f64,
}

impl Plot {
    fn new(title: &str, x_label: &str, y_label: &str, x_max: f64, y_max: f64) -> Self {
        Self::with_ticks(title, x_label, y_label, x_max, y_max, true)
    }

    fn with_ticks(
        title: &str,
        x_label: &str,
        y_label: &str,
        x_max: f64,
        y_max: f64,
        x_ticks: bool,
    ) -> Self {
        let (y_top, y_step) = nice_axis(y_max.max(1e-9));
        let mut p = Plot {
            body: String::new(),
            x_max: x_max.max(1e-9),
            y_max: y_top,
            legend_y: TOP + 10.0,
        };
        let _ = write!(
            p.body,
            r#"<text x="{}" y="28" font-size="18" font-family="sans-serif" text-anchor="middle">{}</text>"#,
            W / 2.0,
            esc(title)
        );
        let (x0, y0, x1, y1) = (LEFT, H - BOTTOM, W - RIGHT, TOP);
        let _ = write!(
            p.body,
            r#"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>"#
        );
        let _ = write!(
            p.body,
            r#"<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>"#
        );
        if x_ticks {
            for v in ticks(p.x_max) {
                let x = x0 + v / p.x_max * (x1 - x0);
                let _ = write!(
                    p.body,
                    r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{}" stroke="#888"/>"##,
                    y0 + 5.0
                );
                let _ = write!(
                    p.body,
                    r#"<text x="{x}" y="{}" font-size="12" font-family="sans-serif" text-anchor="middle">{}</text>"#,
                    y0 + 20.0,
                    num(v)
                );
            }
        }
        let steps = (p.y_max / y_step).round() as u32;
        for i in 0..=steps {
            let f = f64::from(i) / f64::from(steps.max(1));
            let y = y0 - f * (y0 - y1);
            let _ = write!(
                p.body,
                r##"<line x1="{}" y1="{y}" x2="{x0}" y2="{y}" stroke="#888"/>"##,
                x0 - 5.0
            );
            let _ = write!(
                p.body,
                r#"<text x="{}" y="{}" font-size="12" font-family="sans-serif" text-anchor="end">{}</text>"#,
                x0 - 8.0,
                y + 4.0,
                num(f * p.y_max)
            );
        }
        let _ = write!(
            p.body,
            r#"<text x="{}" y="{}" font-size="13" font-family="sans-serif" text-anchor="middle">{}</text>"#,
            (x0 + x1) / 2.0,
            H - 15.0,
            esc(x_label)
        );
        let _ = write!(
            p.body,
            r#"<text x="20" y="{}" font-size="13" font-family="sans-serif" text-anchor="middle" transform="rotate(-90 20 {})">{}</text>"#,
            (y0 + y1) / 2.0,
            (y0 + y1) / 2.0,
            esc(y_label)
        );
        p
    }

    fn x(&self, v: f64) -> f64 {
        LEFT + (v / self.x_max).clamp(0.0, 1.0) * (W - RIGHT - LEFT)
    }

    fn y(&self, v: f64) -> f64 {
        (H - BOTTOM) - (v / self.y_max).clamp(0.0, 1.0) * (H - BOTTOM - TOP)
    }

    fn polyline(&mut self, points: &[(f64, f64)], color: &str) {
        self.polyline_dashed(points, color, "");
    }

    /// A line with an SVG dash pattern (`""`: solid).
    fn polyline_dashed(&mut self, points: &[(f64, f64)], color: &str, dash: &str) {
        let pts: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", self.x(*x), self.y(*y)))
            .collect();
        let dash = if dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{dash}""#)
        };
        let _ = write!(
            self.body,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
            pts.join(" ")
        );
    }

    /// A dashed vertical line at each fault (named in the legend with
    /// `legend`).
    fn mark_faults(&mut self, faults: &[FaultReport], legend: bool) {
        for f in faults {
            let x = self.x(f.at_s);
            let _ = write!(
                self.body,
                r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#d62728" stroke-dasharray="4 3"/>"##,
                H - BOTTOM,
                TOP
            );
            if legend {
                self.legend(&format!("{:.0} s: {}", f.at_s, f.what), "#d62728");
            }
        }
    }

    /// The next legend entry, its label wrapped to fit the legend column.
    fn legend(&mut self, label: &str, color: &str) {
        self.legend_styled(label, color, None);
    }

    /// A legend entry whose swatch is a line in `dash` style (for line
    /// charts whose series differ by dash), or a square (`None`).
    fn legend_styled(&mut self, label: &str, color: &str, dash: Option<&str>) {
        let y = self.legend_y;
        let x = W - RIGHT + 15.0;
        let _ = match dash {
            None => write!(
                self.body,
                r#"<rect x="{x}" y="{}" width="12" height="12" fill="{color}"/>"#,
                y - 10.0
            ),
            Some(d) => write!(
                self.body,
                r#"<line x1="{x}" y1="{yl}" x2="{}" y2="{yl}" stroke="{color}" stroke-width="2" stroke-dasharray="{d}"/>"#,
                x + 14.0,
                yl = y - 4.0
            ),
        };
        for (k, line) in wrap(label, LEGEND_CHARS).iter().enumerate() {
            let _ = write!(
                self.body,
                r#"<text x="{}" y="{}" font-size="12" font-family="sans-serif">{}</text>"#,
                x + 18.0,
                y + 14.0 * k as f64,
                esc(line)
            );
            self.legend_y = y + 14.0 * k as f64 + 20.0;
        }
    }

    fn finish(self) -> String {
        format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}"><rect width="100%" height="100%" fill="white"/>{}</svg>
"#,
            self.body
        )
    }
}

/// `s` in lines of at most `width` characters, broken at spaces (a word
/// longer than that stands alone).
fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in s.split(' ') {
        match lines.last_mut() {
            Some(l) if l.chars().count() + 1 + word.chars().count() <= width => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

/// A value axis from 0: its top (`max` rounded up to a round step) and
/// the step, so ticks fall on round numbers (100M, 200M, not 110.4M).
fn nice_axis(max: f64) -> (f64, f64) {
    let step = ticks(max).get(1).copied().unwrap_or(max);
    let step = if step > 0.0 { step } else { 1.0 };
    ((max / step - 1e-9).ceil().max(1.0) * step, step)
}

/// Round tick values from 0 to `max`: a step of 1, 2, 2.5, 3, 5 or 6
/// times a power of ten, the one giving closest to five intervals (so
/// simulated seconds tick at 60, 120, ...).
fn ticks(max: f64) -> Vec<f64> {
    let top = max.log10().floor();
    let step = (-2..=0)
        .flat_map(|k| {
            let mag = 10f64.powf(top + f64::from(k));
            [1.0, 2.0, 2.5, 3.0, 5.0, 6.0].map(|m| m * mag)
        })
        .filter(|s| *s > 0.0 && (3.0..=7.0).contains(&(max / s)))
        .min_by(|a, b| (max / a - 5.0).abs().total_cmp(&(max / b - 5.0).abs()))
        .unwrap_or(max / 5.0);
    (0..=10)
        .map(|i| f64::from(i) * step)
        .take_while(|v| *v <= max * (1.0 + 1e-9))
        .collect()
}

fn num(v: f64) -> String {
    let short = |x: f64, unit: &str| {
        let s = format!("{x:.1}");
        format!("{}{unit}", s.strip_suffix(".0").unwrap_or(&s))
    };
    if v >= 1e9 {
        short(v / 1e9, "G")
    } else if v >= 1e6 {
        short(v / 1e6, "M")
    } else if v >= 1e3 {
        short(v / 1e3, "k")
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn latency_cdf(r: &Report) -> String {
    let mut pairs: Vec<_> = r.latency_cdf.iter().collect();
    pairs.sort_by_key(|p| std::cmp::Reverse(p.messages));
    pairs.truncate(10);
    // The axis ends at the slowest pair's 99th percentile: the last
    // percent of a tail stretched it so far that pairs a few ms apart drew
    // on top of each other (the curves run on, flat, at the edge).
    let x_max = pairs
        .iter()
        .filter_map(|p| p.points.iter().find(|(_, f)| *f >= 0.99).map(|(ms, _)| *ms))
        .fold(0.0, f64::max)
        * 1.1;
    let mut plot = Plot::new(
        "Latency CDF per region pair",
        "latency (ms, to the 99th percentile)",
        "fraction delivered",
        x_max,
        1.0,
    );
    // Pairs over the same path (a link's two directions) draw the same
    // curve: solid, dashed and dotted in turn, later ones on top, so each
    // shows through the gaps of the next.
    for (i, p) in pairs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = p.points.iter().map(|(ms, f)| (*ms, *f)).collect();
        let dash = DASHES[i % DASHES.len()];
        plot.polyline_dashed(&points, color, dash);
        plot.legend_styled(
            &format!("{} -> {}", p.origin, p.destination),
            color,
            Some(if dash.is_empty() { "none" } else { dash }),
        );
    }
    plot.finish()
}

fn bytes_per_link(r: &Report) -> String {
    let Some(mqlink) = r.alternatives.first() else {
        return Plot::new("no links", "", "", 1.0, 1.0).finish();
    };
    let mut order: Vec<usize> = (0..mqlink.bytes_per_link.len()).collect();
    let total = |i: usize| {
        r.alternatives
            .iter()
            .map(|a| a.bytes_per_link.get(i).map_or(0, |l| l.2))
            .max()
            .unwrap_or(0)
    };
    order.sort_by_key(|i| std::cmp::Reverse(total(*i)));
    order.truncate(20);
    let groups: Vec<String> = order
        .iter()
        .map(|i| {
            mqlink
                .bytes_per_link
                .get(*i)
                .map(|(a, b, _)| format!("{a}-{b}"))
                .unwrap_or_default()
        })
        .collect();
    let series: Vec<(String, Vec<f64>)> = r
        .alternatives
        .iter()
        .map(|a| {
            let short = a.name.split(" (").next().unwrap_or(&a.name).to_owned();
            let values = order
                .iter()
                .map(|i| a.bytes_per_link.get(*i).map_or(0, |l| l.2) as f64)
                .collect();
            (short, values)
        })
        .collect();
    bars(
        "Bytes per link, by deployment option",
        "bytes",
        &groups,
        &series,
    )
}

/// A grouped bar chart: one group per entry of `groups` (labelled under
/// the axis), one bar per series in each (`series`: name, one value per
/// group), the series named in the legend.
pub fn bars(
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
) -> String {
    let y_max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0, f64::max);
    let mut plot = Plot::with_ticks(
        title,
        "",
        y_label,
        groups.len().max(1) as f64,
        if y_max > 0.0 { y_max } else { 1.0 },
        false,
    );
    let slot = (W - RIGHT - LEFT) / groups.len().max(1) as f64;
    let bar = slot / (series.len() as f64 + 1.0);
    for (k, label) in groups.iter().enumerate() {
        for (j, (_, values)) in series.iter().enumerate() {
            let v = values.get(k).copied().unwrap_or(0.0);
            let (x, y) = (
                LEFT + k as f64 * slot + j as f64 * bar + bar / 2.0,
                plot.y(v),
            );
            let _ = write!(
                plot.body,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{bar:.1}" height="{:.1}" fill="{}"/>"#,
                (H - BOTTOM) - y,
                COLORS[j % COLORS.len()]
            );
        }
        let x = LEFT + k as f64 * slot + slot / 2.0;
        let _ = write!(
            plot.body,
            r#"<text x="{x:.1}" y="{}" font-size="10" font-family="sans-serif" text-anchor="end" transform="rotate(-30 {x:.1} {})">{}</text>"#,
            H - BOTTOM + 14.0,
            H - BOTTOM + 14.0,
            esc(label)
        );
    }
    for (j, (name, _)) in series.iter().enumerate() {
        plot.legend(name, COLORS[j % COLORS.len()]);
    }
    plot.finish()
}

fn delivery_over_time(r: &Report) -> String {
    let series = &r.deliveries_per_second;
    let y_max = series.iter().copied().max().unwrap_or(1) as f64 * 1.1;
    let mut plot = Plot::new(
        "Deliveries per second, faults marked",
        "time (s)",
        "deliveries / s",
        series.len().max(1) as f64,
        y_max,
    );
    let points: Vec<(f64, f64)> = series
        .iter()
        .enumerate()
        .map(|(t, n)| (t as f64, *n as f64))
        .collect();
    plot.polyline(&points, COLORS[0]);
    plot.mark_faults(&r.faults, true);
    plot.finish()
}

fn spool_depth(r: &Report) -> String {
    let mut series: Vec<_> = r.spool.iter().collect();
    series.sort_by_key(|s| std::cmp::Reverse(s.peak));
    series.truncate(10);
    let y_max = series.iter().map(|s| s.peak).max().unwrap_or(1) as f64 * 1.1;
    let x_max = r.deliveries_per_second.len().max(1) as f64;
    let mut plot = Plot::new(
        "Spool depth per region (QoS >= 1 waiting for a path)",
        "time (s)",
        "messages in the spool",
        x_max,
        y_max,
    );
    if series.is_empty() {
        plot.legend("nothing was spooled", "#7f7f7f");
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = s
            .per_second
            .iter()
            .enumerate()
            .map(|(t, n)| (t as f64, *n as f64))
            .collect();
        plot.polyline(&points, color);
        plot.legend(&format!("{} (peak {})", s.region, s.peak), color);
    }
    plot.mark_faults(&r.faults, false);
    plot.finish()
}

/// Write the four charts into `dir`; returns their paths.
pub fn write(r: &Report, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let charts = [
        ("latency-cdf.svg", latency_cdf(r)),
        ("bytes-per-link.svg", bytes_per_link(r)),
        ("delivery-over-time.svg", delivery_over_time(r)),
        ("spool-depth.svg", spool_depth(r)),
    ];
    let mut out = Vec::new();
    for (name, svg) in charts {
        let path = dir.join(name);
        std::fs::write(&path, svg)?;
        out.push(path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(ticks(301.0), [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]);
        assert_eq!(ticks(3610.0).last(), Some(&3600.0));
        assert_eq!(ticks(3610.0)[1], 600.0);
        assert_eq!(ticks(1.0), [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        assert_eq!(ticks(100.0).len(), 6);
    }
}
